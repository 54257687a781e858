"""A trained LoRA as updates of the host's own Linears, applied in the forward (shared by every method).

ComfyUI's weight patches merge a LoRA into the weights: right for a LoRA that is on for a whole run. A LoRA
that must act on some rows or tokens only (SliderEdit's sliders, a sweep's per-latent strengths) or on
some steps only (a knob's ``start_percent`` / ``end_percent``) runs beside the Linear instead:
``out + factor * (x A^T) B^T``. Where each diffusers Linear sits in the host's fused Linears is the model
family's fact (``core.families.<family>.fuse_lora_modules``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FusedLoRA:
    """One host Linear's low-rank update: its parts merged block-diagonally (q, k, v share the input).

    ``delta(x) = (x @ A.T) @ B.T`` covers output rows ``rows[0]:rows[1]`` of the Linear; the
    weights' alpha / rank is folded into ``B``.
    """
    module: str  # host (BFL) path, e.g. "double_blocks.3.txt_attn.qkv"
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


def merge_parts(path: str, parts: list, stream: str) -> FusedLoRA:
    """One host Linear's update from its parts ``(first row, end row, A [r, in], B [rows, r])``: the A's
    stacked, the B's block-diagonal, so one pair of matmuls serves every part."""
    parts = sorted(parts, key=lambda p: p[0])
    lo, hi = parts[0][0], parts[-1][1]
    A = torch.cat([p[2] for p in parts])
    B = torch.zeros(hi - lo, A.shape[0])
    r = 0
    for start, end, a, b in parts:
        B[start - lo:end - lo, r:r + a.shape[0]] = b
        r += a.shape[0]
    return FusedLoRA(path, (lo, hi), A, B, stream)


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
