"""``start_percent`` / ``end_percent`` on every knob node: the part of the sampling schedule a knob acts on.

ComfyUI's meaning (as ``ControlNetApplyAdvanced`` and ``ConditioningSetTimestepRange``); the math and the
comparison are in core/knobs/schedule.py, the per-call decision in the runtime's wrapper. Optional inputs
appended after a node's other widgets: a workflow saved before them loads with 0 and 1, every step.
"""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..core.knobs.schedule import EVERY_STEP, checked_percent_range
from ..core.weights_io import lora_modules


def schedule_inputs() -> list:
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                       tooltip="where in the sampling schedule the knob starts acting (0 = the first step); "
                               "before it, steps are the unpatched model's"),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, optional=True,
                       tooltip="where it stops acting (1 = the last step); after it, steps are the unpatched "
                               "model's. Early steps set the layout, late steps the texture"),
    ]


def percent_range(start_percent: float, end_percent: float, node: str) -> tuple[float, float]:
    return checked_percent_range(start_percent, end_percent, node)


def scheduled(knob, percent: tuple[float, float]):
    return knob if percent == EVERY_STEP else dataclasses.replace(knob, percent=percent)


def forward_lora(family, lora_state: dict, scale: float, name: str) -> tuple:
    """A method's LoRA as updates run in the forward (its knob acts on part of the schedule, where merged
    weights cannot follow)."""
    return tuple(family.forward_lora(lora_modules(lora_state, name), scale)) if lora_state else ()
