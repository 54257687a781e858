"""Strength sweeps: which values to render, and perceptual re-spacing from a probe.

Pure Python / torch. A sweep is a list of knob values rendered as one batch from one noise; the
sampler node (nodes/sweep/sampler.py) runs them, the preview and save nodes show them in order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .instructions import parse_number_list

SPACINGS = ("linear", "perceptual")
MAX_VALUES = 256


@dataclass(frozen=True)
class Sweep:
    """What travels on a KONTEXT_SWEEP wire.

    Before sampling: the request (``values`` are the requested ones; for ``perceptual`` spacing the
    sampler re-chooses them). After sampling: ``values`` are the values actually rendered, in frame
    order, and ``knob`` names the knob they were given to.
    """
    values: tuple[float, ...]
    spacing: str = "linear"
    instruction_index: int = 0  # which sub-instruction (0-based) a per-instruction knob varies
    probe_steps: int = 4  # perceptual spacing: the probe sweep's sampling steps ...
    probe_resolution: int = 256  # ... the longer side of its latent, in pixels (8 per latent cell)
    probe_count: int = 17  # ... and how many values it renders
    knob: str = ""  # filled by the sampler: e.g. "Kontext Instruction Sliders, line 2 ('turn the car red')"

    def __post_init__(self):
        if not 2 <= len(self.values) <= MAX_VALUES:
            raise ValueError(f"a sweep needs 2 ... {MAX_VALUES} values, got {len(self.values)}")
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError(f"sweep values must be finite numbers, got {list(self.values)}")
        if self.spacing not in SPACINGS + ("explicit",):
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")

    def with_values(self, values: Sequence[float], **changes) -> "Sweep":
        return replace(self, values=tuple(float(v) for v in values), **changes)

    def labels(self) -> list[str]:
        return [format_value(v) for v in self.values]


def format_value(value: float) -> str:
    """Short, exact enough for a label: 0.375 -> '0.375', 1/3 -> '0.333', 2.0 -> '2'."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def linear_values(start: float, end: float, count: int) -> list[float]:
    if not 2 <= count <= MAX_VALUES:
        raise ValueError(f"count must be 2 ... {MAX_VALUES}, got {count}")
    return [start + (end - start) * k / (count - 1) for k in range(count)]


def parse_values(text: str) -> list[float]:
    """An explicit list '0, 0.25, 1.5': plain decimal numbers, comma or semicolon separated."""
    _, values = parse_number_list(text.strip().strip(",;"), "sweep values",
                                  "write plain decimal numbers separated by commas, e.g. '0, 0.25, 0.5, 1'")
    if not 2 <= len(values) <= MAX_VALUES:
        raise ValueError(f"sweep values: {len(values)} given, a sweep needs 2 ... {MAX_VALUES}")
    return values


def frame_distances(frames: torch.Tensor) -> torch.Tensor:
    """RMS distance between consecutive frames [N, ...] -> [N - 1] (fp64 for the cumulative sums)."""
    flat = frames.reshape(frames.shape[0], -1).double()
    return (flat[1:] - flat[:-1]).pow(2).mean(dim=1).sqrt()


def perceptual_values(probe_values: Sequence[float], distances: Sequence[float], count: int) -> list[float]:
    """Values whose consecutive frames are equally far apart, by inverting the cumulative distance.

    ``distances[k]`` is the distance between the probe frames at ``probe_values[k]`` and ``[k + 1]``
    (increasing or decreasing values both work). The cumulative distance is interpolated linearly
    between probe values; the ends are kept exactly. A probe with no change at all falls back to
    linear spacing (nothing to equalise).
    """
    probe = [float(v) for v in probe_values]
    d = [max(0.0, float(x)) for x in distances]
    if len(d) != len(probe) - 1 or len(probe) < 2:
        raise ValueError("need one distance between each pair of consecutive probe values")
    cumulative = [0.0]
    for x in d:
        cumulative.append(cumulative[-1] + x)
    total = cumulative[-1]
    if not total > 0:
        return linear_values(probe[0], probe[-1], count)
    values = []
    for j in range(count):
        target = total * j / (count - 1)
        k = next((i for i in range(1, len(cumulative)) if cumulative[i] >= target), len(cumulative) - 1)
        span = cumulative[k] - cumulative[k - 1]
        t = 0.0 if span <= 0 else (target - cumulative[k - 1]) / span
        values.append(probe[k - 1] + t * (probe[k] - probe[k - 1]))
    values[0], values[-1] = probe[0], probe[-1]
    return values


def spread(distances: Sequence[float]) -> float:
    """max / min of consecutive-frame distances: 1 = perfectly even steps."""
    d = [float(x) for x in distances]
    return max(d) / min(d) if min(d) > 0 else math.inf


def frame_order(count: int, ping_pong: bool = False) -> list[int]:
    """Frame indices to play: 0 .. N-1, and with ping-pong back down to 1 (2N - 2 frames, so a looping
    player never shows the two end frames twice in a row)."""
    if count < 1:
        raise ValueError(f"need at least one frame, got {count}")
    forward = list(range(count))
    return forward + forward[-2:0:-1] if ping_pong else forward
