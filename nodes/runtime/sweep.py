"""The sweep protocol on a patched MODEL: which knob a sweep varies, and the clone rendering one value per latent."""
from __future__ import annotations

from .install import installed_runtime, patched_clone
from .knobs import KontinuousKnob, ModulationKnob, NumericKnob, SliderEditKnob


KNOB_CHOICES = {"last": None, "Kontinuous Kontext Apply": KontinuousKnob, "Kontext Modulation Strength": ModulationKnob,
                "Kontext Instruction Sliders": "sliders", "Kontext Instruction Guidance": "guidance",
                "SliderEdit Apply": SliderEditKnob, "NumeriKontrol Edit": NumericKnob}
SLIDER_NODES = ("Kontinuous Kontext Apply", "Kontext Modulation Strength", "Kontext Instruction Sliders",
                "Kontext Instruction Guidance", "SliderEdit Apply", "NumeriKontrol Edit")


def sweep_target(patcher, which: str = "last") -> int:
    """Index (in the runtime's knobs) of the knob a sweep varies: the last slider node, or the last of a kind."""
    knobs = installed_runtime(patcher).knobs
    if not knobs:
        raise ValueError(f"this MODEL has no Kontext Sliders knob to sweep; put one of these nodes between the model "
                         f"loader and the sweep sampler: {', '.join(SLIDER_NODES)}")
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
