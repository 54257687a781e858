"""Turning slider values into per-row modulation offsets.

The projector runs once per strength (``offset_table``); every model call then only picks
rows out of that table (``offsets_for_rows``), so the per-step cost is an index and an add.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .projector import SliderProjector

NEGATIVE_SAME = "same offset"  # official pipeline: the positive instruction's offset on the CFG pass too
NEGATIVE_UNMODIFIED = "unmodified"  # negative rows computed exactly as by the unpatched model
NEGATIVE_MODES = (NEGATIVE_SAME, NEGATIVE_UNMODIFIED)

# The strength encoding [sin(pi s), cos(pi s)] has period 2: -0.5 and 1.5 are the same code, so a wider
# range only repeats itself. 0 ... 1 is the trained range. (The Apply node's widget has these limits;
# this check covers callers that pass strengths directly, e.g. sweeps.)
STRENGTH_RANGE = (-0.5, 1.5)


def check_strengths(strengths: Sequence[float]) -> list[float]:
    low, high = STRENGTH_RANGE
    values = [float(v) for v in strengths]
    for i, v in enumerate(values):
        if not low <= v <= high:  # also refuses NaN
            raise ValueError(f"Kontinuous strength {v!r} (item {i + 1}) is outside {low:g} ... {high:g}; 0 ... 1 is "
                             f"the trained range and the strength code repeats beyond {high:g}")
    return values


@torch.no_grad()
def offset_table(projector: SliderProjector, strengths: Sequence[float],
                 pooled: torch.Tensor | None) -> torch.Tensor:
    """Offsets [N, 2H] for N strengths, computed in the projector's dtype (fp32 = official inference).

    ``pooled`` is the instruction's pooled CLIP-L vector ([768] or [1, 768]); the same vector
    serves every strength, as in the official pipeline.
    """
    if len(strengths) == 0:
        raise ValueError("at least one strength is needed")
    weight = projector.pe_extender.weight
    s = torch.tensor(check_strengths(strengths), dtype=weight.dtype, device=weight.device)
    if pooled is not None:
        pooled = pooled.reshape(-1, pooled.shape[-1])
        if pooled.shape[0] != 1:
            raise ValueError(f"expected one pooled embedding for the instruction, got {pooled.shape[0]}")
        pooled = pooled.to(device=weight.device)
    # One row per call, as the official pipeline runs it: a batched matmul rounds differently (~1e-6),
    # and the strength a latent gets should not depend on which other strengths share its batch.
    return torch.cat([projector(s[i:i + 1], pooled) for i in range(len(s))]).float()


def offsets_for_rows(table: torch.Tensor, batch_size: int, cond_or_uncond: Sequence[int] | None,
                     negative: str = NEGATIVE_SAME) -> torch.Tensor:
    """Per-row offsets [batch_size, 2H] for one model call.

    A sampler batches its conditionings in equal chunks (``cond_or_uncond``: 0 = positive,
    1 = negative, one entry per chunk); inside a chunk, row j is latent j. A table of one
    strength covers every row; a table of N strengths gives latent j strength j and needs
    chunks of exactly N rows.
    """
    if negative not in NEGATIVE_MODES:
        raise ValueError(f"negative must be one of {NEGATIVE_MODES}, got {negative!r}")
    chunks = list(cond_or_uncond) if cond_or_uncond else [0]
    if batch_size % len(chunks):
        raise ValueError(f"batch of {batch_size} rows does not split into {len(chunks)} conditioning chunks")
    chunk = batch_size // len(chunks)
    n = table.shape[0]
    if n == 1:
        per_chunk = table.expand(chunk, -1)
    elif n == chunk:
        per_chunk = table
    else:
        raise ValueError(f"{n} strengths were given but the sampler runs {chunk} latents per conditioning; "
                         f"give one strength, or a latent batch of exactly {n}")
    zeros = torch.zeros_like(per_chunk)
    parts = [zeros if (c == 1 and negative == NEGATIVE_UNMODIFIED) else per_chunk for c in chunks]
    return torch.cat(parts, dim=0)
