"""The sweep protocol on a patched MODEL: which knob a sweep varies, and the clone rendering one value per latent."""
from __future__ import annotations

from .install import installed_runtime, patched_clone
from .knobs import (CONDITIONING_STRENGTH_KEY, ConditioningKnob, KontinuousKnob, ModulationKnob, NumericKnob,
                    SliderEditKnob, VelocityKnob)

CONDITIONING_STRENGTH = "Kontext Conditioning Strength"
KNOB_CHOICES = {"last": None, "Kontinuous Kontext Apply": KontinuousKnob, "Kontext Modulation Strength": ModulationKnob,
                "Kontext Instruction Sliders": "sliders", "Kontext Instruction Guidance": "guidance",
                "SliderEdit Apply": SliderEditKnob, "NumeriKontrol Edit": NumericKnob,
                "Kontext Edit Velocity": VelocityKnob, CONDITIONING_STRENGTH: ConditioningKnob}
SLIDER_NODES = ("Kontinuous Kontext Apply", "Kontext Modulation Strength", "Kontext Instruction Sliders",
                "Kontext Instruction Guidance", "SliderEdit Apply", "NumeriKontrol Edit", "Kontext Edit Velocity")


def sweep_model(patcher, which: str, positive) -> tuple:
    """(model, index of the knob a sweep varies). Kontext Conditioning Strength changes the positive prompt, not
    the model: swept when ``which`` names it, or with "last" when the model has no knob and the prompt came
    through it; the sweep's model then carries it as a knob (one strength per latent)."""
    records = tuple(c[1][CONDITIONING_STRENGTH_KEY] for c in positive or () if CONDITIONING_STRENGTH_KEY in c[1])
    knobs = installed_runtime(patcher).knobs
    if which == CONDITIONING_STRENGTH or (which == "last" and not knobs and records):
        if not records:
            raise ValueError(f"the sweep's knob is {CONDITIONING_STRENGTH}, but the positive prompt did not come "
                             f"through a {CONDITIONING_STRENGTH} node; put one between the encoder and the sampler")
        knob = ConditioningKnob(records, (records[-1].strength,))
        return patched_clone(patcher, knobs=knobs + (knob,)), len(knobs)
    return patcher, sweep_target(patcher, which)


def sweep_target(patcher, which: str = "last") -> int:
    """Index (in the runtime's knobs) of the knob a sweep varies: the last slider node, or the last of a kind."""
    knobs = installed_runtime(patcher).knobs
    if not knobs:
        raise ValueError(f"this MODEL has no Kontext Sliders knob to sweep; put one of these nodes between the model "
                         f"loader and the sweep sampler: {', '.join(SLIDER_NODES)} (or {CONDITIONING_STRENGTH} "
                         f"between the encoder and the sampler's positive input)")
    if which not in KNOB_CHOICES:
        raise ValueError(f"knob must be one of {list(KNOB_CHOICES)}, got {which!r}")
    kind = KNOB_CHOICES[which]
    for index in range(len(knobs) - 1, -1, -1):
        knob = knobs[index]
        if kind is None or (isinstance(kind, str) and getattr(knob, "kind", None) == kind) or (
                isinstance(kind, type) and isinstance(knob, kind)):
            return index
    raise ValueError(f"this MODEL has no {which} node to sweep (it has: {', '.join(k.display for k in knobs)})")


def swept_clone(patcher, index: int, values, instruction_index: int = 0):
    """A clone whose knob ``index`` takes one value per latent (``values``, in batch order)."""
    knobs = list(installed_runtime(patcher).knobs)
    knobs[index] = knobs[index].swept(values, instruction_index)
    return patched_clone(patcher, knobs=tuple(knobs))
