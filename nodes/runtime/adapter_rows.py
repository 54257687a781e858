"""The factors of the LoRAs a runtime runs in the forward, per row or per text token of a model call.

SliderEdit's adapters (STLoRA: the positive rows' instruction tokens, each line its own factor; GSTLoRA: one
factor per row) and a trained method's LoRA on part of the schedule (its strength on every row). Keyed by the
knob's place in the runtime (``PackRuntime.key``), as the Linear patches are (nodes/runtime/install.py).
"""
from __future__ import annotations

import torch

from ...core.slideredit.lora import stlora_token_scales
from .knobs import items_for_chunk


def token_scales(runtime, spans, strengths: tuple[float, ...], length: int) -> torch.Tensor:
    key = ("tokens", id(spans), strengths, length)  # once per (prompt, strengths), not every step
    if key not in runtime._device_cache:
        runtime._device_cache[key] = (spans, stlora_token_scales(spans.spans, strengths, length))
    return runtime._device_cache[key][1]

def lora_factor_rows(runtime, context, cond_or_uncond: list[int], chunk: int) -> dict:
    """Adapter key (``PackRuntime.key``) -> factors for the incoming batch: [B, L] per text token (STLoRA:
    the positive rows of its prompt, 0 elsewhere) or [B, 1] per row (GSTLoRA: every chunk, latent j its
    own; a method LoRA run in the forward: its strength on every row)."""
    out = {}
    batch = chunk * len(cond_or_uncond)
    for knob in runtime.forward_loras:
        out[runtime.key(knob)] = torch.full((batch, 1), float(knob.forward_lora_strength))
    for knob in runtime.slideredit:
        key = runtime.key(knob)
        if knob.variant == "gstlora":
            per_item = [knob.alphas(row)[0] for row in items_for_chunk(knob.rows, chunk, knob.display)]
            out[key] = torch.tensor(per_item, dtype=torch.float32).repeat(len(cond_or_uncond)).unsqueeze(-1)
            continue
        if context is None:
            continue
        rows, matched = torch.zeros(batch, context.shape[1]), False
        for j, tag in enumerate(cond_or_uncond):
            if tag != 0:
                continue  # the adapter reaches the positive prompt's instruction tokens only
            found = runtime._matching_entry(knob, context[j * chunk:(j + 1) * chunk], repeats=True)
            if found is None:
                continue
            (entry, copies), matched = found, True
            length = context.shape[1] // copies
            for r, strengths in enumerate(items_for_chunk(knob.rows, chunk, knob.display)):
                # each copy of a repeated prompt has its instructions' tokens at the same offsets
                rows[j * chunk + r] = token_scales(runtime, entry.spans, strengths, length).repeat(copies)
        if 0 in cond_or_uncond and not matched:
            runtime._warn_unmatched(knob)
        if rows.any():
            out[key] = rows
    return out


def group_lora_rows(lora_rows: dict, jobs, chunk: int, length: int) -> dict:
    """The factors of a regrouped forward: a job on another prompt (leave-one-out) gets no token factors;
    a job whose text grew (one pad appended, or numeric tokens in front) keeps its tokens' factors at their positions."""
    out = {}
    for key, rows in lora_rows.items():
        parts = []
        for job in jobs:
            mine = rows[job.source * chunk:(job.source + 1) * chunk]
            if rows.shape[1] > 1:  # per token; numeric tokens in front shift the prompt's positions by their count
                other_prompt = job.pooled is not None and not (job.numeric or job.keeps_tokens)
                mine = torch.zeros(chunk, length) if other_prompt else torch.nn.functional.pad(
                    mine, (job.numeric, length - job.numeric - mine.shape[1]))
            parts.append(mine)
        out[key] = torch.cat(parts)
    return out
