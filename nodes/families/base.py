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
    ``offset(out, dscale, dshift)`` adds the Kontinuous offsets ([B, 1, H]) to the MLP half's scale / shift.
    """
    path: str
    module: torch.nn.Module
    blocks: tuple[int, ...]
    reference: Callable
    rescale: Callable
    offset: Callable


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

    def modulation_sites(self) -> list[ModulationSite]: ...

    def text_stream_sites(self) -> list[TextStreamSite]: ...

    def adapter_sizes(self):
        """The sizes a trained adapter (SliderEdit) must fit, as core's family module describes them."""

    def linear_site(self, module_path: str) -> tuple[str, torch.nn.Module]:
        """(object-patch path of its ``forward``, the module) of an adapter's Linear (a core module path)."""
