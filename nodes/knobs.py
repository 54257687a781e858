"""Training-free knobs: modulation multiplier, per-instruction sliders, per-instruction guidance."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..core.knobs.guidance import GUIDANCE_RANGE
from ..core.knobs.schedule import EVERY_STEP
from ..core.knobs.toward_pad import SLIDER_RANGE, toward_pad_plan
from ..core.instructions import parse_strengths
from .families import family_of
from .instruction_encode import instruction_entries
from .runtime import InstructionKnob, ModulationKnob, installed_runtime, patched_clone
from .schedule import percent_range, schedule_inputs, scheduled

CATEGORY = "Kontext Sliders"
TERMS = {"mlp": (False, True), "attention": (True, False), "both": (True, True)}

def strengths_tooltip(accepted: tuple[float, float]) -> str:
    return (f"one number per sub-instruction line, comma-separated, each within {accepted[0]:g} ... {accepted[1]:g}: "
            f"1 = as written, 0 = suppressed, >1 = exaggerated, <0 = pushed the other way")


def modulation_scaled_model(model, multiplier: float, start_block: int, end_block: int, terms: str = "mlp",
                            percent: tuple[float, float] = EVERY_STEP):
    n = family_of(model).double_block_count
    last = n - 1 if end_block < 0 else end_block
    if not (0 <= start_block <= last < n):
        raise ValueError(f"block range {start_block}..{end_block} is outside this model's {n} double-stream "
                         f"blocks (0..{n - 1}; end_block -1 = the last)")
    if terms not in TERMS:
        raise ValueError(f"terms must be one of {sorted(TERMS)}, got {terms!r}")
    scale_attention, scale_mlp = TERMS[terms]
    knob = ModulationKnob(tuple(range(start_block, last + 1)), scale_attention, scale_mlp, (float(multiplier),),
                          percent=percent)
    logging.info("Kontext modulation strength: x%g on the text %s modulation of double blocks %d..%d",
                 multiplier, terms, start_block, last)
    # at 1 the knob is recorded for sweeps but patches nothing: identity, bit for bit
    return patched_clone(model, knobs=installed_runtime(model).knobs + (knob,))


def instruction_knob(conditioning, strengths: str, accepted: tuple[float, float], kind: str,
                     display: str, family=None) -> InstructionKnob:
    entries = instruction_entries(conditioning, family)
    lines = entries[0].spans.lines
    values = parse_strengths(strengths, len(lines), lines, accepted, f"{display} strengths")
    return InstructionKnob(tuple(entries), (tuple(values),), kind, accepted, display)


def instruction_sliders_model(model, conditioning, strengths: str, percent: tuple[float, float] = EVERY_STEP):
    family = family_of(model)  # a clear error for other models first
    knob = scheduled(instruction_knob(conditioning, strengths, SLIDER_RANGE, "sliders",
                                      KontextInstructionSliders.DISPLAY_NAME, family), percent)
    for entry in knob.entries:
        # bad spans fail here, not mid-sampling; a one-pad encoding is made here, once (in the model's rows)
        spans = entry.slider_target()[0]
        toward_pad_plan(spans.in_model_rows(*family.model_text_length(spans.length)), knob.rows[0])
    return patched_clone(model, knobs=installed_runtime(model).knobs + (knob,))  # all 1: recorded, patches nothing


def instruction_guidance_model(model, conditioning, strengths: str, percent: tuple[float, float] = EVERY_STEP):
    family = family_of(model)  # a clear error for other models first
    knob = scheduled(instruction_knob(conditioning, strengths, GUIDANCE_RANGE, "guidance",
                                      KontextInstructionGuidance.DISPLAY_NAME, family), percent)
    for entry in knob.entries:
        # made now, while no model is sampling, and kept for later queue runs (a sweep may need them
        # even when every strength here is 1)
        entry.leave_one_out.get()
    return patched_clone(model, knobs=installed_runtime(model).knobs + (knob,))  # all 1: recorded, patches nothing


class KontextModulationStrength(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextModulationStrength",
            display_name="Kontext Modulation Strength",
            category=CATEGORY,
            description="Training-free edit intensity: multiplies the text-stream modulation shift and scale of "
                        "the chosen double-stream blocks. 1 = unchanged.",
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("multiplier", default=1.0, min=0.0, max=3.0, step=0.01,
                               tooltip="1 = unchanged; below 1 weakens the instruction's modulation, above 1 "
                                       "strengthens it"),
                io.Int.Input("start_block", default=0, min=0, max=63, tooltip="first double-stream block (0-based)"),
                io.Int.Input("end_block", default=-1, min=-1, max=63,
                             tooltip="last double-stream block, inclusive; -1 = the last (FLUX.1 has 19)"),
                io.Combo.Input("terms", options=list(TERMS), default="mlp", optional=True,
                               tooltip="which text modulation is scaled: 'mlp' = the feed-forward shift/scale "
                                       "(the terms Kontinuous Kontext offsets), 'attention', or 'both'"),
                *schedule_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, multiplier, start_block, end_block, terms="mlp", start_percent=0.0,
                end_percent=1.0) -> io.NodeOutput:
        percent = percent_range(start_percent, end_percent, "Kontext Modulation Strength")
        return io.NodeOutput(modulation_scaled_model(model, multiplier, start_block, end_block, terms, percent))


class _InstructionKnobNode(io.ComfyNode):
    """Shared schema of the two per-instruction knobs (model, multi-instruction conditioning, strengths)."""
    NODE_ID = DISPLAY_NAME = DESCRIPTION = ""
    ACCEPTED = SLIDER_RANGE
    make_model = None

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("conditioning", tooltip="from Kontext Multi-Instruction Encode (the "
                                                              "positive prompt the sampler gets)"),
                io.String.Input("strengths", default="1, 1", tooltip=strengths_tooltip(cls.ACCEPTED)),
                *schedule_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, conditioning, strengths, start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        percent = percent_range(start_percent, end_percent, cls.DISPLAY_NAME)
        return io.NodeOutput(cls.make_model(model, conditioning, strengths, percent))


class KontextInstructionSliders(_InstructionKnobNode):
    NODE_ID = "KontextInstructionSliders"
    DISPLAY_NAME = "Kontext Instruction Sliders"
    DESCRIPTION = ("One training-free slider per sub-instruction: before every block, each instruction's text tokens "
                   "move toward the pad token's state (h <- pad + s (h - pad)).")
    make_model = staticmethod(instruction_sliders_model)


class KontextInstructionGuidance(_InstructionKnobNode):
    NODE_ID = "KontextInstructionGuidance"
    DISPLAY_NAME = "Kontext Instruction Guidance"
    ACCEPTED = GUIDANCE_RANGE
    DESCRIPTION = ("Per-instruction guidance: v_full + sum_i (s_i - 1)(v_full - v_without_i), the leave-one-out "
                   "predictions batched into the same forward. Works at cfg 1 and with cfg > 1.")
    make_model = staticmethod(instruction_guidance_model)
