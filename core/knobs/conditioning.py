"""Kontext Conditioning Strength: the conditioning moved from a neutral prompt's toward the edit's and past it.

``neutral + s (edit - neutral)`` on the token states (every row, or the instruction's rows only) and on the
pooled vector where the family has one: 0 = the neutral prompt, 1 = the edit as written (the input itself,
bit for bit), above 1 = exaggerated, below 0 = pushed the other way. A neutral of another length is made the
edit's length as ComfyUI's ConditioningAverage does: zero rows appended, or rows cut. It only touches the
conditioning, so it works on any model and with any prefix cache keyed on the context.
"""
from __future__ import annotations

from typing import Sequence

import torch

CONDITIONING_RANGE = (-1.0, 3.0)


def aligned(neutral: torch.Tensor, length: int) -> torch.Tensor:
    """``neutral`` [B, Ln, D] with ``length`` rows: zero rows appended or rows cut (ConditioningAverage's rule)."""
    if neutral.shape[1] >= length:
        return neutral[:, :length]
    pad = neutral.new_zeros(neutral.shape[0], length - neutral.shape[1], neutral.shape[2])
    return torch.cat([neutral, pad], dim=1)


def instruction_rows(spans: Sequence[tuple[int, int]], length: int) -> torch.Tensor:
    """[length] bool: the rows inside any instruction span."""
    rows = torch.zeros(length, dtype=torch.bool)
    for start, end in spans:
        if not 0 <= start < end <= length:
            raise ValueError(f"instruction span {start}:{end} outside a text sequence of {length} rows")
        rows[start:end] = True
    return rows


def interpolated(neutral: torch.Tensor, edit: torch.Tensor, strength: float,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
    """neutral + s (edit - neutral) (torch.lerp: exactly ``neutral`` at 0, exactly ``edit`` at 1), on ``rows``
    of dim 1 only when given (the others stay the edit's); ``edit`` itself at s = 1."""
    if strength == 1.0:
        return edit
    if neutral.shape != edit.shape:
        raise ValueError(f"the neutral conditioning {tuple(neutral.shape)} does not match the edit's "
                         f"{tuple(edit.shape)}; encode both with the same text encoder")
    mixed = torch.lerp(neutral.to(edit.dtype), edit, float(strength))
    if rows is None:
        return mixed
    return torch.where(rows.to(edit.device).view(1, -1, *[1] * (edit.ndim - 2)), mixed, edit)
