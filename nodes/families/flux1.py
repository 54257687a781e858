"""FLUX.1 / FLUX.1 Kontext in ComfyUI (``comfy.ldm.flux.model.Flux``): detection, sites, facts.

Everything the pack knows about ComfyUI's FLUX.1 modules is here: the double blocks' own text modulation
(``double_blocks.i.txt_mod``, returning (attention, MLP) ``ModulationOut``s), where the text tokens are in a
double block's arguments (the ``txt`` kwarg or the second positional) and in a single block's joint
sequence (text first), the pooled-vector kwarg ``y``, and the BFL Linear paths SliderEdit's adapters use
(``double_blocks.N.txt_attn.qkv`` ..., from core/families/flux1.py).
"""
from __future__ import annotations

import comfy.ldm.flux.layers
import comfy.ldm.flux.model
import torch

from ...core.families.flux1 import DISPLAY, NAME, TINY, FluxSizes, TinyFlux, fuse_lora_modules, seeded_
from .base import PREFIX, AdapterBase, argument, with_argument, ModulationSite, TextStreamSite, UnsupportedVariant, detected_tiny_model

__all__ = ["DISPLAY", "NAME", "Flux1", "adapt"]


# ---------------------------------------------------------------- site functions (plain, stateless: see base)

def _scaled(mod, multiplier):
    if multiplier is None:
        return mod
    return comfy.ldm.flux.layers.ModulationOut(shift=mod.shift * multiplier, scale=mod.scale * multiplier,
                                               gate=mod.gate)


def modulation_reference(out):
    return out[1].shift


def modulation_rescaled(out, attention, mlp):
    mod1, mod2 = out
    return _scaled(mod1, attention), _scaled(mod2, mlp)


def modulation_offset(out, dscale, dshift):
    mod1, mod2 = out
    return mod1, comfy.ldm.flux.layers.ModulationOut(shift=mod2.shift + dshift, scale=mod2.scale + dscale,
                                                     gate=mod2.gate)


def double_block_text(args, kwargs, n_txt):
    return argument(args, kwargs, "txt", 1)


def double_block_with_text(args, kwargs, txt, n_txt):
    return with_argument(args, kwargs, "txt", 1, txt)


def single_block_text(args, kwargs, n_txt):
    x = kwargs["x"] if "x" in kwargs else args[0]
    return x[:, :n_txt]


def single_block_with_text(args, kwargs, txt, n_txt):
    x = kwargs.pop("x") if "x" in kwargs else args[0]
    x = torch.cat([txt, x[:, n_txt:]], dim=1)
    args = (x,) + tuple(args[1:]) if args else (x,)
    return args, kwargs


# ---------------------------------------------------------------- the adapter

class Flux1(AdapterBase):
    """A FLUX.1 (Kontext) MODEL seen through the family interface (nodes/families/base.py)."""
    name = NAME
    display = DISPLAY
    pooled_key = "y"

    @property
    def hidden_size(self) -> int:
        return self.diffusion_model.hidden_size

    def modulation_sites(self) -> list[ModulationSite]:
        return [ModulationSite(f"{PREFIX}.double_blocks.{i}.txt_mod.forward", block.txt_mod, (i,),
                               modulation_reference, modulation_rescaled, modulation_offset)
                for i, block in enumerate(self.double_blocks)]

    def text_stream_sites(self) -> list[TextStreamSite]:
        return ([TextStreamSite(f"{PREFIX}.double_blocks.{i}.forward", block, double_block_text, double_block_with_text)
                 for i, block in enumerate(self.double_blocks)]
                + [TextStreamSite(f"{PREFIX}.single_blocks.{i}.forward", block, single_block_text, single_block_with_text)
                   for i, block in enumerate(self.diffusion_model.single_blocks)])

    def adapter_sizes(self) -> FluxSizes:
        """The sizes a SliderEdit adapter must fit, read from the model's modules (logical shapes, also for GGUF)."""
        mlp_in = self.double_blocks[0].txt_mlp[0]
        return FluxSizes(hidden_size=self.hidden_size, mlp_hidden=int(mlp_in.weight.shape[0]),
                         double_blocks=len(self.double_blocks), single_blocks=len(self.diffusion_model.single_blocks),
                         context_in_dim=self.context_dim)

    def forward_lora(self, modules: dict, scale: float) -> list:
        return fuse_lora_modules(modules, scale, self.hidden_size)


def adapt(patcher, diffusion_model) -> Flux1 | None:
    """The adapter when ``diffusion_model`` is a FLUX.1 transformer; None for other classes."""
    if not isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        return None
    if getattr(diffusion_model.params, "global_modulation", False) and hasattr(diffusion_model,
                                                                               "double_stream_modulation_txt"):
        return None  # FLUX.2: nodes/families/flux2.py
    blocks = list(diffusion_model.double_blocks)
    if not blocks or not all(getattr(b, "modulation", False) for b in blocks):
        raise UnsupportedVariant("this Flux variant has no per-block text modulation; the Kontext Sliders "
                                 "patches need FLUX.1's per-block txt_mod or FLUX.2's shared one")
    return Flux1(patcher, diffusion_model, blocks)


# ---------------------------------------------------------------- tiny models for tests (ComfyUI's own classes)

def tiny_unet_config(tiny: TinyFlux = TINY, hidden: int | None = None, pooled_dim: int | None = None) -> dict:
    """The unet config of ComfyUI's Flux at a tiny size (``hidden`` / ``pooled_dim`` override ``tiny``'s)."""
    return {"image_model": "flux", "in_channels": tiny.latent_channels, "out_channels": tiny.latent_channels,
            "patch_size": 2, "vec_in_dim": pooled_dim or tiny.pooled_dim, "context_in_dim": tiny.context_dim,
            "hidden_size": hidden or tiny.hidden, "mlp_ratio": 4.0, "num_heads": tiny.heads, "depth": tiny.depth,
            "depth_single_blocks": tiny.depth_single, "axes_dim": list(tiny.axes), "theta": 10000, "qkv_bias": True,
            "guidance_embed": True, "txt_ids_dims": []}


def tiny_state_dict(seed: int = 0, tiny: TinyFlux = TINY, hidden: int | None = None,
                    pooled_dim: int | None = None) -> dict[str, torch.Tensor]:
    """Seeded FLUX weights in BFL / ComfyUI names, made by the host's own Flux class, so in the host's own
    layout (RMSNorms ``...norm.scale`` up to ComfyUI 0.8, ``...norm.weight`` from 0.33)."""
    import comfy.ops
    cfg = {k: v for k, v in tiny_unet_config(tiny, hidden, pooled_dim).items() if k != "image_model"}
    model = comfy.ldm.flux.model.Flux(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
                                      **cfg)
    return {k: v.clone() for k, v in seeded_(model, seed).state_dict().items()}


def tiny_model(bfl_sd: dict[str, torch.Tensor], tiny: TinyFlux = TINY, dtype=torch.float32, manual_cast=None,
               **unet_overrides):
    """A real ModelPatcher around ComfyUI's Flux (model_base.Flux via detection and supported_models), on the CPU.

    Built from the detected config with heads and RoPE axes overridden (ComfyUI's detection hard-codes
    FLUX.1's 24 heads and [16, 56, 56]).
    """
    return detected_tiny_model(bfl_sd, "flux", dict(num_heads=tiny.heads, axes_dim=list(tiny.axes), **unet_overrides),
                               dtype, manual_cast)


# FLUX's text encoder pair at a tiny size: ComfyUI's own FluxTokenizer (CLIP-L + T5 tokenizers, shipped in
# ComfyUI) and FluxClipModel, with the layer sizes overridden through model_options.
TINY_CLIP_L_POOLED = 64
TINY_CLIP_L = {"hidden_size": TINY_CLIP_L_POOLED, "intermediate_size": 128, "num_attention_heads": 2,
               "num_hidden_layers": 2}


def tiny_t5_config(tiny: TinyFlux = TINY, **changes) -> dict:
    """The tiny T5's sizes (``changes`` override them: a larger T5 for benches)."""
    return dict({"d_model": tiny.context_dim, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}, **changes)


def tiny_text_encoder(seed: int = 0, tiny: TinyFlux = TINY, t5: dict | None = None):
    """A real comfy.sd.CLIP (tokenizers, scheduled encode, patcher) with seeded tiny encoders (``t5``: the T5's
    sizes, default ``tiny_t5_config(tiny)``)."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    t5 = t5 or tiny_t5_config(tiny)
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                    comfy.text_encoders.flux.flux_clip())
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(TINY_CLIP_L), "t5xxl_model_config": t5,
                                                "dtype": torch.float32})
    seeded_(clip.cond_stage_model, seed, std=0.3).requires_grad_(False)
    return clip
