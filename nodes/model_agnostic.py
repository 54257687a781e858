"""Knobs that need no training and no particular model: Kontext Conditioning Strength, Kontext Edit Velocity.

Conditioning Strength moves the conditioning between a neutral prompt's and the edit's (core/knobs/conditioning.py):
it only touches the CONDITIONING, so it works on every model ComfyUI loads. Edit Velocity batches the neutral
prompt's prediction with the edit's in every model call and takes neutral + s (edit - neutral) for the positive
rows, inside CFG (the runtime, as Instruction Guidance's leave-one-out rows). The neutral prompt is the one wired
to ``neutral``, else the empty prompt encoded by ``clip`` (as CLIPTextEncode), else, for a conditioning from
Kontext Multi-Instruction Encode, its encoder's empty prompt (Qwen-Image-Edit: with the same images).
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from comfy_api.latest import io

from ..core.knobs.conditioning import CONDITIONING_RANGE, aligned, instruction_rows
from .instruction_encode import METADATA_KEY
from .runtime import (CONDITIONING_STRENGTH_KEY, ConditioningStrengthRecord, VelocityKnob, installed_runtime,
                      patched_clone)
from .schedule import percent_range, schedule_inputs, scheduled

CATEGORY = "Kontext Sliders"
TOKENS = ("all", "instruction")
VELOCITY_RANGE = (-1.0, 3.0)
NEUTRAL_HELP = ("the neutral / source-preserving prompt (e.g. CLIPTextEncode with an empty prompt; for "
                "Qwen-Image-Edit, TextEncodeQwenImageEditPlus with an empty prompt and the same images). Optional: "
                "else the empty prompt encoded by clip, else the empty prompt of Kontext Multi-Instruction Encode")


def strength_input(accepted: tuple[float, float], zero: str) -> io.Float.Input:
    return io.Float.Input("strength", default=1.0, min=accepted[0], max=accepted[1], step=0.01,
                          tooltip=f"1 = the edit as written (unchanged), 0 = {zero}, above 1 = exaggerated, below 0 "
                                  f"= pushed the other way")


def neutral_inputs(help_text: str) -> list:
    return [io.Conditioning.Input("neutral", optional=True, tooltip=help_text),
            io.Clip.Input("clip", optional=True, tooltip="encodes the empty prompt as the neutral one when 'neutral' "
                                                         "is not connected")]


def neutral_states(conditioning, neutral, clip, node: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(token states [1, L, D], pooled [1, P] or None) of the neutral prompt (the module's docstring says which)."""
    if neutral is not None:
        if not neutral:
            raise ValueError(f"{node}: the neutral conditioning is empty; connect an encoded prompt")
        return neutral[0][0], neutral[0][1].get("pooled_output")
    if clip is not None:
        tokens = clip.tokenize("")
        encoded = clip.encode_from_tokens_scheduled(tokens)
        return encoded[0][0], encoded[0][1].get("pooled_output")
    meta = next((c[1][METADATA_KEY] for c in conditioning or () if METADATA_KEY in c[1]), None)
    if meta is not None:
        return meta.empty.get()
    raise ValueError(f"{node} needs a neutral prompt: connect 'neutral' (an encoded empty or source-preserving "
                     f"prompt) or 'clip' (the text encoder: the empty prompt is encoded with it)"
                     + ("" if conditioning is None else ", or encode the edit with Kontext Multi-Instruction Encode"))


def _checked_strength(strength: float, accepted: tuple[float, float], node: str) -> float:
    low, high = accepted
    if not low <= strength <= high:
        raise ValueError(f"{node}: strength {strength:g} is outside {low:g} ... {high:g} (0 = the neutral prompt, "
                         f"1 = the edit as written, above 1 = exaggerated)")
    return float(strength)


def conditioning_at_strength(conditioning, strength: float, tokens: str = "all", neutral=None, clip=None):
    """The conditioning with every entry moved to ``strength`` (1: the input's tensors themselves)."""
    node = KontextConditioningStrength.DISPLAY_NAME
    strength = _checked_strength(strength, CONDITIONING_RANGE, node)
    if tokens not in TOKENS:
        raise ValueError(f"{node}: tokens must be one of {list(TOKENS)}, got {tokens!r}")
    n_context, n_pooled = neutral_states(conditioning, neutral, clip, node)
    out = []
    for context, extra in conditioning:
        if n_context.shape[-1] != context.shape[-1]:
            raise ValueError(f"{node}: the neutral prompt's tokens are {n_context.shape[-1]} wide, the edit's "
                             f"{context.shape[-1]}; encode both with the same text encoder")
        rows = None
        if tokens == "instruction":
            meta = extra.get(METADATA_KEY)
            if meta is None:
                raise ValueError(f"{node}: tokens = 'instruction' needs the instruction's rows: encode the edit with "
                                 f"Kontext Multi-Instruction Encode, or choose tokens = 'all'")
            rows = instruction_rows(meta.spans.spans, context.shape[1])
        pooled = extra.get("pooled_output")
        usable = n_pooled if pooled is not None and n_pooled is not None and n_pooled.shape == pooled.shape else None
        record = ConditioningStrengthRecord(context, aligned(n_context.to(context), context.shape[1]), pooled,
                                            None if usable is None else usable.to(pooled), rows, strength, context)
        new_context, new_pooled = record.at(strength)
        extra = dict(extra)
        if new_pooled is not None:
            extra["pooled_output"] = new_pooled
        extra[CONDITIONING_STRENGTH_KEY] = dataclasses.replace(record, context=new_context)
        if METADATA_KEY in extra:  # per-instruction knobs downstream still find their prompt's rows
            extra[METADATA_KEY] = extra[METADATA_KEY].with_context(new_context)
        out.append([new_context, extra])
    logging.info("Kontext conditioning strength: %g over %s rows", strength, tokens)
    return out


def edit_velocity_model(model, strength: float, neutral=None, clip=None, percent=(0.0, 1.0)):
    node = KontextEditVelocity.DISPLAY_NAME
    strength = _checked_strength(strength, VELOCITY_RANGE, node)
    context, pooled = neutral_states(None, neutral, clip, node)
    knob = scheduled(VelocityKnob(context, pooled, (strength,), VELOCITY_RANGE), percent)
    return patched_clone(model, knobs=installed_runtime(model).knobs + (knob,))  # 1: recorded, patches nothing


class KontextConditioningStrength(io.ComfyNode):
    DISPLAY_NAME = "Kontext Conditioning Strength"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextConditioningStrength",
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description="Training-free edit strength on any model: the conditioning becomes neutral + s (edit - "
                        "neutral), token states and pooled vector. 0 = the neutral prompt, 1 = the edit as written, "
                        "above 1 = exaggerated.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="the edit prompt (positive)"),
                strength_input(CONDITIONING_RANGE, "the neutral prompt"),
                io.Combo.Input("tokens", options=list(TOKENS), default="all",
                               tooltip="'all': every token row; 'instruction': only the rows of the instruction's "
                                       "lines (a prompt from Kontext Multi-Instruction Encode), the template's rows "
                                       "stay the edit's"),
                *neutral_inputs(NEUTRAL_HELP),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, strength, tokens="all", neutral=None, clip=None) -> io.NodeOutput:
        return io.NodeOutput(conditioning_at_strength(conditioning, strength, tokens, neutral, clip))


class KontextEditVelocity(io.ComfyNode):
    DISPLAY_NAME = "Kontext Edit Velocity"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextEditVelocity",
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description="Training-free edit strength on any model: each step predicts the edit prompt and a neutral "
                        "prompt in one batched pass and uses neutral + s (edit - neutral) as the positive "
                        "prediction (inside CFG). 1 = the plain edit, 0 = the neutral prompt's prediction.",
            inputs=[
                io.Model.Input("model"),
                strength_input(VELOCITY_RANGE, "the neutral prompt's prediction"),
                *neutral_inputs(NEUTRAL_HELP.replace(", else the empty prompt of Kontext Multi-Instruction Encode", "")),
                *schedule_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, strength, neutral=None, clip=None, start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        percent = percent_range(start_percent, end_percent, cls.DISPLAY_NAME)
        return io.NodeOutput(edit_velocity_model(model, strength, neutral, clip, percent))
