"""Kontext Instruction Sliders: move an instruction's text tokens toward the pad token's state.

h <- pad + s (h - pad) on instruction i's tokens, in every block: s = 1 as written, 0 suppressed.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..instructions import InstructionSpans

# Both knobs' formulas extrapolate linearly in s, so beyond a few units from 1 an edit is amplified past
# anything a model was ever shown (and 1e30 overflows to NaN): 1 +- 2 covers "suppressed" through
# "pushed the other way" and "exaggerated" with room to spare.
SLIDER_RANGE = (-1.0, 3.0)


def toward_pad_plan(spans: InstructionSpans, strengths: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (source index, weight) for h <- lerp(h[pad], h, w): w = s on instruction i's tokens.

    Tokens outside every span (and instructions at strength 1) keep index = own position and w = 1,
    for which ``torch.lerp`` returns h exactly (it computes end - (end - start) * (1 - w) for w >= 0.5).
    """
    if spans.pad_index is None:
        raise ValueError("this prompt fills the whole padded text sequence, so no pad token is there to "
                         "interpolate toward; shorten the prompt (it must leave at least one pad token)")
    index = torch.arange(spans.length)
    weight = torch.ones(spans.length)
    for (start, end), s in zip(spans.spans, strengths):
        if s != 1.0:
            index[start:end] = spans.pad_index
            weight[start:end] = s
    return index, weight


def lerp_toward_pad(txt: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """txt [B, L, D]; index [B, L] (long, the pad position per token); weight [B, L, 1] -> moved txt."""
    pad = torch.gather(txt, 1, index.unsqueeze(-1).expand(-1, -1, txt.shape[-1]))
    return torch.lerp(pad, txt, weight.to(txt.dtype))
