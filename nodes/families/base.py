"""The family interface (see nodes/families/__init__.py): sites and the adapter protocol."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch


class UnsupportedVariant(TypeError):
    """A family recognised the model's class but not this variant (e.g. a global-modulation Flux)."""


@dataclass(frozen=True)
class ModulationSite:
    """A text-modulation module, its ``forward`` object-patched at ``path``.

    ``blocks``: the double-stream blocks whose text modulation this output is (one per block in FLUX.1;
    a shared modulation serves several and takes the multipliers of its first). On the module's output:
    ``reference(out)`` a tensor whose dtype/device the slot's terms are cast to; ``rescale(out, attention,
    mlp)`` multiplies the attention / MLP halves' shift and scale ([B, 1, 1] tensors, or None = as is);
    ``offset(out, dscale, dshift)`` adds the Kontinuous offsets ([B, 1, H]) to the MLP half's scale / shift
    (None: the family takes no offsets; Kontinuous weights are trained for FLUX.1).

    Two kinds: by default ``module.forward(vec)`` returns the modulation (FLUX.1's and Qwen-Image's per-block
    ``txt_mod``). With ``read`` / ``write``, ``module`` is a block that receives the modulation among its
    arguments (FLUX.2: one shared modulation handed to every block): ``read(args, kwargs)`` -> out,
    ``write(args, kwargs, out)`` -> (args, kwargs); a block range is then scaled where each block receives it.
    """
    path: str
    module: torch.nn.Module
    blocks: tuple[int, ...]
    reference: Callable
    rescale: Callable
    offset: Callable | None
    read: Callable | None = None
    write: Callable | None = None


@dataclass(frozen=True)
class TextStreamSite:
    """A block whose ``forward`` (object-patched at ``path``) sees the text tokens.

    ``text(args, kwargs, n_txt)`` -> the text tokens [B, n_txt, D] among the forward's arguments;
    ``with_text(args, kwargs, text, n_txt)`` -> (args, kwargs) with them replaced.
    """
    path: str
    module: torch.nn.Module
    text: Callable
    with_text: Callable


class HostFamily(Protocol):
    """One MODEL seen through its family (an adapter over its diffusion model)."""
    name: str  # "flux1"
    display: str  # "FLUX.1 (Kontext)"
    hidden_size: int  # transformer width (Kontinuous offsets are 2 x this wide)
    double_block_count: int  # double-stream blocks the modulation knob can address
    context_dim: int  # width of the text sequence the model takes (T5 tokens; NumeriKontrol's tokens)
    pooled_key: str | None  # the model call's kwarg carrying the pooled text vector, or None

    def model_text_length(self, length: int) -> tuple[int, int]:
        """(rows of the text sequence the blocks see, row of the conditioning's first token in it) for a
        conditioning of ``length`` rows (FLUX.2 left-pads to 512; FLUX.1, Qwen-Image: (length, 0)). A
        staticmethod in the adapters: the runtime keeps it without holding the adapter (and its patcher)."""

    def modulation_sites(self) -> list[ModulationSite]: ...

    def text_stream_sites(self) -> list[TextStreamSite]: ...

    def adapter_sizes(self):
        """The sizes a trained adapter (SliderEdit) must fit, as core's family module describes them."""

    def linear_site(self, module_path: str) -> tuple[str, torch.nn.Module]:
        """(object-patch path of its ``forward``, the module) of an adapter's Linear (a core module path)."""

    def forward_lora(self, modules: dict, scale: float) -> list:
        """A diffusers-keyed LoRA (``{module: (A, B)}``, alpha / rank ``scale``) as updates of this model's
        Linears (``core.fused_lora.FusedLoRA``), to run in the forward (a trained method's LoRA on part of the
        schedule)."""


PREFIX = "diffusion_model"


def argument(args, kwargs, name: str, position: int):
    """A forward's argument passed by keyword ``name`` or at ``position``."""
    return kwargs[name] if name in kwargs else args[position]


def with_argument(args, kwargs, name: str, position: int, value):
    """(args, kwargs) with that argument replaced (kwargs is the patch's own dict)."""
    if name in kwargs:
        kwargs[name] = value
    else:
        args = list(args)
        args[position] = value
    return args, kwargs


class AdapterBase:
    """What every family adapter shares: the patcher, its diffusion model, the text input's width (``txt_in``
    in every family so far), where an adapter's Linear is patched, and a text sequence the blocks see as the
    conditioning has it (FLUX.2 overrides ``model_text_length``)."""

    def __init__(self, patcher, diffusion_model, double_blocks: list):
        self.patcher, self.diffusion_model, self.double_blocks = patcher, diffusion_model, double_blocks

    @property
    def double_block_count(self) -> int:
        return len(self.double_blocks)

    @property
    def context_dim(self) -> int:
        return int(self.diffusion_model.txt_in.weight.shape[1])

    @staticmethod  # no state: the runtime keeps the function itself (nodes/runtime/install.py)
    def model_text_length(length: int) -> tuple[int, int]:
        return length, 0

    def linear_site(self, module_path: str) -> tuple[str, torch.nn.Module]:
        return f"{PREFIX}.{module_path}.forward", self.patcher.get_model_object(f"{PREFIX}.{module_path}")

    def forward_lora(self, modules: dict, scale: float) -> list:
        raise UnsupportedVariant(f"no trained LoRA of this pack fits {self.display} yet")


def detected_tiny_model(sd: dict[str, torch.Tensor], image_model: str, overrides: dict, dtype=torch.float32,
                        manual_cast=None):
    """A real ModelPatcher on the CPU built the way ComfyUI loads a checkpoint (detection, supported_models,
    model_base), with ``overrides`` set on the detected config: ComfyUI reads some widths from the weights and
    takes others (heads, RoPE axes) from the full-size model, which a tiny test model must replace."""
    import comfy.model_detection
    import comfy.model_patcher
    sd = dict(sd)
    unet_config = comfy.model_detection.detect_unet_config(sd, "")
    if unet_config is None or unet_config.get("image_model") != image_model:
        raise ValueError(f"ComfyUI did not detect these weights as {image_model}: {unet_config}")
    unet_config.update(overrides)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(sd, "")
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
