"""SliderEdit's adapters on a model: size checks, updates of the host's fused Linears, per-token factors.

Pure torch; where each diffusers Linear sits in the host's layout comes from the model family's module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..families.flux1 import DIFFUSERS_MODULE, DOUBLE_LINEARS, SINGLE_LINEARS, FluxSizes, lora_shape
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


@dataclass
class FusedLoRA:
    """One BFL Linear's low-rank update: its parts merged block-diagonally (q, k, v share the input).

    ``delta(x) = (x @ A.T) @ B.T`` covers output rows ``rows[0]:rows[1]`` of the Linear; the
    weights' alpha / rank is folded into ``B``.
    """
    module: str  # BFL path, e.g. "double_blocks.3.txt_attn.qkv"
    rows: tuple[int, int]
    A: torch.Tensor  # [R, in]
    B: torch.Tensor  # [rows[1] - rows[0], R]
    stream: str  # "txt" | "img" | "joint"
    _cast: dict = field(default_factory=dict, repr=False, compare=False)

    def on(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cast:
            self._cast[key] = (self.A.to(device=device, dtype=dtype), self.B.to(device=device, dtype=dtype))
        return self._cast[key]


def fused_loras(weights: SliderEditWeights, sizes: FluxSizes) -> list[FusedLoRA]:
    """The adapter as updates of BFL / ComfyUI Linears (fused qkv / linear1 by row slices)."""
    check_fits(weights, sizes)
    h = sizes.hidden_size
    grouped: dict[str, list] = {}
    for module, (a, b) in sorted(weights.modules.items()):
        m = DIFFUSERS_MODULE.match(module)
        double = m["kind"] == "transformer_blocks"
        target, part, stream = (DOUBLE_LINEARS if double else SINGLE_LINEARS)[m["suffix"]]
        path = f"{'double_blocks' if double else 'single_blocks'}.{m['index']}.{target}"
        start = 0 if part is None else part * h
        grouped.setdefault(path, []).append((start, start + b.shape[0], a.float(), b.float() * weights.scale, stream))
    out = []
    for path, parts in grouped.items():
        parts.sort(key=lambda p: p[0])
        lo, hi = parts[0][0], parts[-1][1]
        rank_total = sum(p[2].shape[0] for p in parts)
        A = torch.cat([p[2] for p in parts])
        B = torch.zeros(hi - lo, rank_total)
        r = 0
        for start, end, a, b, _ in parts:
            B[start - lo:end - lo, r:r + a.shape[0]] = b
            r += a.shape[0]
        out.append(FusedLoRA(path, (lo, hi), A, B, parts[0][4]))
    return out


def add_lora_delta(out: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rows: tuple[int, int],
                   scale: torch.Tensor) -> torch.Tensor:
    """out + scale * (x A^T B^T) on output rows ``rows``; every other output element is ``out``'s, exactly.

    ``scale`` broadcasts over [B, L, 1]: per token ([B, L, 1]) or per row ([B, 1, 1]).
    """
    delta = torch.matmul(torch.matmul(x.to(A.dtype), A.t()), B.t()) * scale.to(A.dtype)
    delta = delta.to(out.dtype)
    lo, hi = rows
    if lo == 0 and hi == out.shape[-1]:
        return out + delta
    return torch.cat([out[..., :lo], out[..., lo:hi] + delta, out[..., hi:]], dim=-1)


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
