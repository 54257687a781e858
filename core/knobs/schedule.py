"""When a knob acts: a range of the sampling schedule, as ComfyUI's ``start_percent`` / ``end_percent``.

ComfyUI's meaning (``ControlNetApplyAdvanced``, ``ConditioningSetTimestepRange``): fractions of the
schedule, turned into sigmas by the model's own sampling object (``model_sampling.percent_to_sigma``), and
a step at sigma acts when ``sigma(end) <= sigma <= sigma(start)`` (start 0 = the first step, end 1 = the
last). Outside the range a knob's step is the unpatched model's. (0, 1) is every step: today's behaviour.
"""
from __future__ import annotations

import math

EVERY_STEP = (0.0, 1.0)


def checked_percent_range(start: float, end: float, what: str) -> tuple[float, float]:
    """(start, end) as floats, or a clear error: both in 0 ... 1 and start <= end."""
    for name, value in (("start_percent", start), ("end_percent", end)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{what}: {name} must be a fraction of the sampling schedule within 0 ... 1 "
                             f"(0 = the first step, 1 = the last), got {value!r}")
    if start > end:
        raise ValueError(f"{what}: start_percent {start:g} is after end_percent {end:g}; the knob acts from "
                         f"start to end of the schedule, so set start_percent <= end_percent")
    return float(start), float(end)


def acts_at(sigma: float, percent: tuple[float, float], percent_to_sigma) -> bool:
    """Whether a knob with range ``percent`` acts on a step at ``sigma`` (ComfyUI's comparison)."""
    if percent == EVERY_STEP:
        return True
    return percent_to_sigma(percent[1]) <= sigma <= percent_to_sigma(percent[0])
