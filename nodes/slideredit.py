"""SliderEdit nodes: load a trained adapter (STLoRA / GSTLoRA), one slider per sub-instruction."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from comfy_api.latest import io

from ..core.instructions import parse_strengths
from ..core.slideredit.weights import STRENGTH_RANGE, SliderEditWeights, alpha_from_strength, load_slideredit
from ..core.knobs.schedule import EVERY_STEP
from ..core.slideredit.lora import fused_loras
from .families import trained_family
from .instruction_encode import instruction_entries
from .lora import add_diffusers_lora
from .model_folder import list_weight_entries, resolve_weight_entry
from .runtime import SliderEditKnob, installed_runtime, patched_clone
from .schedule import percent_range, schedule_inputs, scheduled

CATEGORY = "Kontext Sliders"
SliderEditWeightsType = io.Custom("SLIDEREDIT_WEIGHTS")
DISPLAY_NAME = "SliderEdit Apply"


@dataclass
class LoadedSliderEdit:
    weights: SliderEditWeights
    name: str


def slideredit_model(model, loaded: LoadedSliderEdit, conditioning, strengths: str,
                     percent: tuple[float, float] = EVERY_STEP):
    """The patched clone. STLoRA: a per-token update on the text stream of the prompt in ``conditioning``;
    GSTLoRA: one strength, merged into the weights by ComfyUI's weight patches (on part of the schedule,
    ``percent``: run in the forward on those steps instead)."""
    weights = loaded.weights
    family = trained_family(model, DISPLAY_NAME)
    sizes = family.adapter_sizes()  # other models fail here, before anything else
    loras = tuple(fused_loras(weights, sizes))  # another model size fails here, naming what was found
    if weights.variant == "stlora":
        entries = tuple(instruction_entries(conditioning, family))  # another family's encoder: refused
        lines = entries[0].spans.lines
        values = parse_strengths(strengths, len(lines), lines, STRENGTH_RANGE, f"{DISPLAY_NAME} strengths")
        knob = SliderEditKnob(loras, "stlora", entries, (tuple(values),), accepted=STRENGTH_RANGE, name=loaded.name)
    else:
        values = parse_strengths(strengths, 1, ["the GSTLoRA's one slider (all tokens)"], STRENGTH_RANGE,
                                 f"{DISPLAY_NAME} strengths (a GSTLoRA has one slider)")
        merged = alpha_from_strength(values[0]) if percent == EVERY_STEP else 0.0
        knob = SliderEditKnob(loras, "gstlora", (), (tuple(values),), merged=merged, accepted=STRENGTH_RANGE,
                              name=loaded.name)
    knob = scheduled(knob, percent)
    patched = patched_clone(model, knobs=installed_runtime(model).knobs + (knob,))
    if knob.merged:
        lora_state = {f"transformer.{m}.{half}.weight": t for m, (a, b) in weights.modules.items()
                      for half, t in (("lora_A", a), ("lora_B", b))}
        add_diffusers_lora(patched, lora_state, weights.alpha, knob.merged, loaded.name)
    logging.info("SliderEdit: %s (%s), strengths %s (alpha %s)", loaded.name, weights.describe(),
                 ", ".join(f"{v:g}" for v in values), ", ".join(f"{alpha_from_strength(v):g}" for v in values))
    return patched


class SliderEditLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SliderEditLoader",
            display_name="SliderEdit Loader",
            category=CATEGORY,
            description="Loads a SliderEdit adapter from models/kontext_sliders/: a Kontext Sliders .safetensors "
                        "file (STLoRA or GSTLoRA), the authors' STLoRA selective_lora.pt, or a GSTLoRA "
                        "pytorch_lora_weights.safetensors.",
            inputs=[io.Combo.Input("weights", options=list_weight_entries("slideredit"),
                                   tooltip="a .safetensors file, a selective_lora.pt, or a folder holding one")],
            outputs=[SliderEditWeightsType.Output(display_name="slideredit_weights")],
        )

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        return io.NodeOutput(LoadedSliderEdit(load_slideredit(resolve_weight_entry(weights)), weights))


class SliderEditApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        low, high = STRENGTH_RANGE
        return io.Schema(
            node_id="SliderEditApply",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description="One trained slider per sub-instruction (SliderEdit). STLoRA: the adapter acts only on each "
                        "sub-instruction's tokens, scaled by that line's strength; GSTLoRA: one slider on all "
                        "tokens. Strength 1 = as written (the unpatched model), 0 = suppressed, > 1 = exaggerated.",
            inputs=[
                io.Model.Input("model"),
                SliderEditWeightsType.Input("slideredit_weights"),
                io.Conditioning.Input("conditioning", tooltip="from Kontext Multi-Instruction Encode (the positive "
                                                              "prompt the sampler gets); a GSTLoRA accepts any"),
                io.String.Input("strengths", default="1, 1",
                                tooltip=f"STLoRA: one number per sub-instruction line, comma-separated; GSTLoRA: "
                                        f"one number. Each within {low:g} ... {high:g}: 1 = as written, "
                                        f"0 = suppressed, >1 = exaggerated (the authors' alpha is 1 - strength)"),
                *schedule_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, slideredit_weights, conditioning, strengths, start_percent=0.0,
                end_percent=1.0) -> io.NodeOutput:
        percent = percent_range(start_percent, end_percent, DISPLAY_NAME)
        return io.NodeOutput(slideredit_model(model, slideredit_weights, conditioning, strengths, percent))
