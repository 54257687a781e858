"""Kontext Instruction Guidance: v_full + sum_i (s_i - 1) (v_full - v_without_i), leave-one-out per instruction."""
from __future__ import annotations

from typing import Sequence

import torch

GUIDANCE_RANGE = (-1.0, 3.0)  # as the sliders' range (core/knobs/toward_pad.py says why)


def combine_instruction_guidance(full: torch.Tensor, without: Sequence[torch.Tensor],
                                 strengths: Sequence) -> torch.Tensor:
    """v_full + sum_i (s_i - 1) (v_full - v_without_i); instructions at 1 cost nothing.

    ``strengths[i]`` is one number, or one number per row of ``full`` (a sweep: each latent its own s_i).
    """
    out = full
    for v_without, s in zip(without, strengths):
        rows = [float(s)] if isinstance(s, (int, float)) else [float(r) for r in s]
        if all(r == rows[0] for r in rows):  # one value for every row: a Python scalar, as always
            if rows[0] != 1.0:
                out = out + (rows[0] - 1.0) * (full - v_without)
            continue
        if len(rows) != full.shape[0]:
            raise ValueError(f"{len(rows)} per-row strengths for a prediction of {full.shape[0]} rows")
        coefficient = torch.tensor([r - 1.0 for r in rows], dtype=full.dtype, device=full.device)
        out = out + coefficient.view(-1, *([1] * (full.ndim - 1))) * (full - v_without)
    return out
