"""Kontinuous Kontext nodes: load the released (or our) weights, apply a strength slider.

The offsets ride the pack runtime (nodes/runtime/): the APPLY_MODEL wrapper picks each row's offset from
the precomputed table (``cond_or_uncond`` decides positive/negative rows), the text-modulation patch adds
it to the MLP modulation's shift and scale of every double block. Stacked Apply nodes sum.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..core.knobs.schedule import EVERY_STEP
from ..core.kontinuous.weights import KontinuousWeights, load_kontinuous
from ..core.kontinuous.offsets import NEGATIVE_MODES, NEGATIVE_SAME, offset_table
from ..core.kontinuous.projector import SliderProjector
from .families import trained_family
from .lora import add_diffusers_lora
from .model_folder import list_weight_entries, resolve_weight_entry
from .runtime import KontinuousKnob, installed_runtime, patched_clone
from .schedule import forward_lora, percent_range, schedule_inputs

CATEGORY = "Kontext Sliders"
KontinuousWeightsType = io.Custom("KONTINUOUS_WEIGHTS")


@dataclass
class LoadedKontinuous:
    """What travels on a KONTINUOUS_WEIGHTS wire: the files' content and the fp32 projector."""
    weights: KontinuousWeights
    projector: SliderProjector
    name: str


def load_for_nodes(path: str, name: str) -> LoadedKontinuous:
    weights = load_kontinuous(path)
    # fp32 on the CPU, as the official inference runs it; it runs once per strength, never per step.
    projector = weights.build_projector(torch.float32)
    # the projector module now owns its (upcast) tensors: don't keep the file's copy alive too (~245 MB)
    return LoadedKontinuous(dataclasses.replace(weights, projector_state={}), projector, name)


def pooled_from_conditioning(conditioning) -> torch.Tensor:
    """The instruction's pooled CLIP-L vector [1, D] from a CONDITIONING list."""
    pooled = [c[1].get("pooled_output") for c in conditioning]
    if not pooled or any(p is None for p in pooled):
        raise ValueError("the conditioning has no pooled_output: connect the edit instruction encoded by a "
                         "FLUX CLIP (CLIPTextEncode with the DualCLIPLoader's flux pair), whose pooled CLIP-L "
                         "vector feeds the strength projector")
    first = pooled[0]
    if any(p.shape != first.shape or not torch.equal(p, first) for p in pooled[1:]):
        raise ValueError(f"the conditioning holds {len(pooled)} different prompts; connect only the edit "
                         "instruction (before any ConditioningCombine) so its pooled vector is unambiguous")
    if not torch.any(first):
        raise ValueError("the conditioning's pooled vector is all zeros (a ConditioningZeroOut output?); connect "
                         "the encoded edit instruction, whose pooled CLIP-L vector the projector was trained on")
    return first.reshape(1, -1)


def apply_kontinuous_offsets(patcher, source: KontinuousKnob):
    """A clone of ``patcher`` with ``source``'s offsets added (on top of earlier Kontinuous patches)."""
    hidden = trained_family(patcher, "Kontinuous Kontext Apply").hidden_size
    if source.table.shape[-1] != 2 * hidden:
        raise ValueError(f"offsets of width {source.table.shape[-1]} need a model of hidden size "
                         f"{source.table.shape[-1] // 2}, this model has {hidden}")
    return patched_clone(patcher, knobs=installed_runtime(patcher).knobs + (source,))


def kontinuous_patched_model(model, loaded: LoadedKontinuous, conditioning, strengths, lora_strength: float,
                             negative: str = NEGATIVE_SAME, percent: tuple[float, float] = EVERY_STEP):
    """The patched clone; shared by the Apply node and the later sweep nodes (``strengths``: list). On part of
    the schedule (``percent``) the LoRA runs in the forward on those steps only; else it is merged."""
    config = loaded.weights.projector_config
    family = trained_family(model, "Kontinuous Kontext Apply")  # a clear error for other models before anything else
    hidden = family.hidden_size
    if config.hidden_size != hidden:
        raise ValueError(f"{loaded.name} was made for a transformer of hidden size {config.hidden_size} "
                         f"(projector output {config.out_dim}); this model has hidden size {hidden}. "
                         f"Use weights trained for this model.")
    pooled = pooled_from_conditioning(conditioning) if config.uses_clip else None
    if pooled is not None and pooled.shape[-1] != config.clip_dim:
        raise ValueError(f"the conditioning's pooled vector has width {pooled.shape[-1]}, {loaded.name} expects "
                         f"{config.clip_dim} (pooled CLIP-L)")
    def make_table(values):  # the projector runs once per strength, here and for every sweep value
        return offset_table(loaded.projector, values, pooled)

    strengths = tuple(float(v) for v in strengths)
    w = loaded.weights
    knob = KontinuousKnob(make_table(strengths), negative, strengths, make_table)
    if percent != EVERY_STEP:
        knob = dataclasses.replace(knob, percent=percent, forward_lora_strength=float(lora_strength),
                                   forward_lora=forward_lora(family, w.lora_state, w.lora_scale, loaded.name)
                                   if lora_strength else ())
    patched = apply_kontinuous_offsets(model, knob)
    if percent == EVERY_STEP:
        add_diffusers_lora(patched, w.lora_state, w.lora_alpha, lora_strength, loaded.name)
    logging.info("Kontinuous Kontext: %s, strength %s, LoRA %d modules at %g x alpha/rank %g, negative rows: %s",
                 loaded.name, ", ".join(f"{v:g}" for v in strengths), len(w.lora_state) // 2, lora_strength,
                 w.lora_scale, negative)
    return patched


class KontinuousKontextLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontinuousKontextLoader",
            display_name="Kontinuous Kontext Loader",
            category=CATEGORY,
            description="Loads Kontinuous Kontext weights (strength projector + LoRA) from models/kontext_sliders/: "
                        "a Kontext Sliders .safetensors file or an official release folder.",
            inputs=[io.Combo.Input("weights", options=list_weight_entries(),
                                   tooltip="a .safetensors file, or a folder holding slider_projector.pth + "
                                           "pytorch_lora_weights.safetensors")],
            outputs=[KontinuousWeightsType.Output(display_name="kontinuous_weights")],
        )

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        return io.NodeOutput(load_for_nodes(resolve_weight_entry(weights), weights))


class KontinuousKontextApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontinuousKontextApply",
            display_name="Kontinuous Kontext Apply",
            category=CATEGORY,
            description="Gives a FLUX.1 Kontext edit a strength knob: 0 = barely edited, 1 = the full edit, "
                        "beyond = extrapolated. Reproduces the official Kontinuous Kontext implementation.",
            inputs=[
                io.Model.Input("model"),
                KontinuousWeightsType.Input("kontinuous_weights"),
                io.Conditioning.Input("conditioning", tooltip="the edit instruction; its pooled CLIP-L output "
                                                              "feeds the strength projector"),
                io.Float.Input("strength", default=1.0, min=-0.5, max=1.5, step=0.01,
                               tooltip="edit strength: 0 to 1 is the trained range, -0.5 to 1.5 extrapolates"),
                io.Float.Input("lora_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="strength of the Kontinuous LoRA (1 = as trained)"),
                io.Combo.Input("negative", options=list(NEGATIVE_MODES), default=NEGATIVE_SAME, optional=True,
                               tooltip="with CFG > 1: 'same offset' adds the instruction's offset to the negative "
                                       "pass too (official behaviour); 'unmodified' leaves negative rows as the "
                                       "plain model computes them"),
                *schedule_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, kontinuous_weights, conditioning, strength, lora_strength,
                negative=NEGATIVE_SAME, start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        percent = percent_range(start_percent, end_percent, "Kontinuous Kontext Apply")
        return io.NodeOutput(kontinuous_patched_model(model, kontinuous_weights, conditioning, [strength],
                                                      lora_strength, negative, percent))
