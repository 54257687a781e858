"""SliderEdit's adapters on a model: size checks, updates of the host's fused Linears, per-token factors.

Pure torch; where each diffusers Linear sits in the host's layout comes from the model family's module.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ..families.flux1 import DIFFUSERS_MODULE, FluxSizes, fuse_lora_modules, lora_shape
from ..fused_lora import FusedLoRA
from .weights import STRENGTH_RANGE, SliderEditWeights, alpha_from_strength


def check_fits(weights: SliderEditWeights, sizes: FluxSizes) -> None:
    """A clear error when the adapter was trained for another model (width, depth, text width)."""
    name = Path(weights.source).name or "these SliderEdit weights"
    if weights.hidden_size != sizes.hidden_size:
        raise ValueError(f"{name} was trained for hidden size {weights.hidden_size}, this model has "
                         f"{sizes.hidden_size}; use weights trained for this model (FLUX.1 Kontext: 3072)")
    if weights.context_in_dim is not None and weights.context_in_dim != sizes.context_in_dim:
        raise ValueError(f"{name} was trained for a text encoder of width {weights.context_in_dim}, this model "
                         f"reads {sizes.context_in_dim}; use weights trained for this model")
    for module, (a, b) in weights.modules.items():
        m = DIFFUSERS_MODULE.match(module)
        index = int(m["index"])
        double = m["kind"] == "transformer_blocks"
        count = sizes.double_blocks if double else sizes.single_blocks
        if index >= count:
            raise ValueError(f"{name} adapts {module}, but this model has {count} "
                             f"{'double' if double else 'single'}-stream blocks; the weights are for a deeper model")
        out, inp = lora_shape(m["suffix"], double, sizes)
        if (b.shape[0], a.shape[1]) != (out, inp):
            raise ValueError(f"{name}: {module} is {b.shape[0]}x{a.shape[1]} but this model's is {out}x{inp}; "
                             f"the weights were trained for another model size")


def fused_loras(weights: SliderEditWeights, sizes: FluxSizes) -> list[FusedLoRA]:
    """The adapter as updates of BFL / ComfyUI Linears (fused qkv / linear1 by row slices)."""
    check_fits(weights, sizes)
    return fuse_lora_modules(weights.modules, weights.scale, sizes.hidden_size)


# ---------------------------------------------------------------- the per-token slider scale

def stlora_token_scales(spans: Sequence[tuple[int, int]], strengths: Sequence[float], length: int) -> torch.Tensor:
    """[length] fp32: the LoRA factor of each text token, as the authors' pipeline builds it.

    A token inside sub-instruction i's span gets alpha_i = 1 - s_i (overlapping spans multiply); every
    other token (end token, pads, words between instructions) gets 0: base weights only. Kept in fp32
    (the authors' pipeline builds it in bf16: a 6.5e-4 difference on a tiny model).
    """
    if len(spans) != len(strengths):
        raise ValueError(f"{len(strengths)} strengths for {len(spans)} sub-instructions")
    mask = torch.zeros(length, dtype=torch.bool)
    scale = torch.ones(length, dtype=torch.float32)
    for (start, end), s in zip(spans, strengths):
        if not 0 <= start < end <= length:
            raise ValueError(f"span {start}:{end} outside a text sequence of {length} tokens")
        mask[start:end] = True
        scale[start:end] *= alpha_from_strength(s)
    return scale * mask


def check_strength(value: float, what: str) -> float:
    low, high = STRENGTH_RANGE
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{what}: {value!r} is outside the accepted range {low:g} ... {high:g} "
                         f"(1 = as written, 0 = suppressed, >1 = exaggerated)")
    return float(value)


def first_token_span(prompt_ids: Sequence[int], line_ids: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the first occurrence of ``line_ids`` in ``prompt_ids``, or None (also for empty ``line_ids``).

    How the authors locate a sub-instruction: ``line_ids`` are its T5 ids without the closing ``</s>``.
    """
    n = len(line_ids)
    if n == 0:
        return None
    line = list(line_ids)
    for start in range(len(prompt_ids) - n + 1):
        if list(prompt_ids[start:start + n]) == line:
            return start, start + n
    return None
