"""Numbers that say whether a slider edits well: fidelity, linearity, smoothness.

Images are float tensors in [0, 1], [3, H, W] or batches [B, 3, H, W]. Pure torch, no model here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

PSNR_CAP_DB = 100.0  # identical images: reported as this instead of +inf, so averages stay finite


def psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (peak 1.0), capped at ``PSNR_CAP_DB``."""
    if image.shape != reference.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(image.shape)} vs {tuple(reference.shape)}")
    if image.dim() == 3:
        image, reference = image.unsqueeze(0), reference.unsqueeze(0)
    mse = (image.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).float()


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan when either side is constant."""
    a, b = torch.tensor(list(x), dtype=torch.float64), torch.tensor(list(y), dtype=torch.float64)
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"pearson_r needs two equally long sequences of 2+ numbers, got {a.numel()} and {b.numel()}")
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else math.nan


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def adjacent_distances(frames: Sequence[torch.Tensor]) -> list[float]:
    """RMS distance between consecutive frames of a sweep."""
    return [rms_distance(a, b) for a, b in zip(frames[:-1], frames[1:])]


def triangle_deficit(frames: Sequence[torch.Tensor]) -> float:
    """Mean over interior frames k of (d(k-1, k) + d(k, k+1)) / d(k-1, k+1) - 1.

    0 when every frame lies on the straight segment between its neighbours (the sweep moves steadily
    in one direction); grows when a frame jumps sideways or the sweep doubles back. Triples whose
    outer frames are equal (d(k-1, k+1) = 0) are skipped: a sweep that does not move is not unsmooth.
    """
    if len(frames) < 3:
        raise ValueError(f"triangle_deficit needs 3+ frames, got {len(frames)}")
    values = []
    for before, here, after in zip(frames[:-2], frames[1:-1], frames[2:]):
        span = rms_distance(before, after)
        if span > 0:
            values.append((rms_distance(before, here) + rms_distance(here, after)) / span - 1.0)
    return sum(values) / len(values) if values else 0.0


def mean_of_finite(values: Sequence[float]) -> float:
    """The mean of the values that are not nan (nan when none is)."""
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def measured_value(task, sources: torch.Tensor, edited: torch.Tensor) -> float:
    """A CAT task's value (``data.cat.CatTask.estimate_value``) measured from each source to its edit, averaged
    over the images it can be measured on (an all-clipped image is left out)."""
    values = []
    for src, out in zip(sources, edited):
        try:
            values.append(task.estimate_value(src, out))
        except ValueError:  # nothing measurable in this image (e.g. all clipped)
            values.append(math.nan)
    return mean_of_finite(values)
