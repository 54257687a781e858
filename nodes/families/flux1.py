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

from ...core.families.flux1 import DISPLAY, NAME, FluxSizes
from .base import ModulationSite, TextStreamSite, UnsupportedVariant

__all__ = ["DISPLAY", "NAME", "Flux1", "adapt"]

PREFIX = "diffusion_model"


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
    return kwargs["txt"] if "txt" in kwargs else args[1]


def double_block_with_text(args, kwargs, txt, n_txt):
    if "txt" in kwargs:
        kwargs["txt"] = txt
    else:
        args = list(args)
        args[1] = txt
    return args, kwargs


def single_block_text(args, kwargs, n_txt):
    x = kwargs["x"] if "x" in kwargs else args[0]
    return x[:, :n_txt]


def single_block_with_text(args, kwargs, txt, n_txt):
    x = kwargs.pop("x") if "x" in kwargs else args[0]
    x = torch.cat([txt, x[:, n_txt:]], dim=1)
    args = (x,) + tuple(args[1:]) if args else (x,)
    return args, kwargs


# ---------------------------------------------------------------- the adapter

class Flux1:
    """A FLUX.1 (Kontext) MODEL seen through the family interface (nodes/families/base.py)."""
    name = NAME
    display = DISPLAY
    pooled_key = "y"

    def __init__(self, patcher, diffusion_model, double_blocks: list):
        self.patcher, self.diffusion_model, self.double_blocks = patcher, diffusion_model, double_blocks

    @property
    def hidden_size(self) -> int:
        return self.diffusion_model.hidden_size

    @property
    def double_block_count(self) -> int:
        return len(self.double_blocks)

    @property
    def context_dim(self) -> int:
        return int(self.diffusion_model.txt_in.weight.shape[1])

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

    def linear_site(self, module_path: str) -> tuple[str, torch.nn.Module]:
        return f"{PREFIX}.{module_path}.forward", self.patcher.get_model_object(f"{PREFIX}.{module_path}")


def adapt(patcher, diffusion_model) -> Flux1 | None:
    """The adapter when ``diffusion_model`` is a FLUX.1 transformer; None for other classes."""
    if not isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        return None
    blocks = list(diffusion_model.double_blocks)
    if not blocks or not all(getattr(b, "modulation", False) for b in blocks):
        raise UnsupportedVariant("this Flux variant has no per-block text modulation (global modulation, e.g. "
                                 "FLUX.2 / Chroma); the Kontext Sliders patches need FLUX.1's per-block txt_mod")
    return Flux1(patcher, diffusion_model, blocks)
