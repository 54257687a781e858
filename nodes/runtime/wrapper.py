"""The pack's runtime record and its APPLY_MODEL wrapper: the per-call decisions.

One immutable ``PackRuntime`` per patched clone (a ModelPatcher attachment) holds the knob records
(nodes/runtime/knobs.py) of every slider node applied so far. Its ``wrapper`` sees each model call's batch
layout (``cond_or_uncond``), matches the positive chunks against the multi-instruction prompts the nodes
were given, adds the leave-one-out rows per-instruction guidance needs (one batched forward), fills the
clone's ``CallSlot`` (offsets per row, toward-pad plan per row, multipliers, LoRA factors) and combines the
outputs. It runs outside ``diffusion_model``, so under TorchCompileModel these Python decisions are never
traced (it drops guards on transformer_options). Any knob's setting may vary per latent of the batch: that
is how a sweep renders all its values in one batch (nodes/runtime/sweep.py). A knob with a range of the
schedule (``percent``) takes part only in the calls whose sigma lies in it: the call runs a view of the
runtime with the others idle (same slot, same caches), so outside every range the step is the plain model's.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from ...core.knobs.guidance import combine_instruction_guidance
from ...core.knobs.schedule import EVERY_STEP, acts_at
from ...core.knobs.toward_pad import toward_pad_plan
from ...core.kontinuous.offsets import offsets_for_rows
from .adapter_rows import lora_factor_rows
from .caches import emptied, reference_caches
from .jobs import ChunkJob, run_jobs
from .knobs import (ConditioningKnob, InstructionKnob, KontinuousKnob, ModulationKnob, NumericKnob, SliderEditKnob,
                    VelocityKnob, items_for_chunk)
from .slot import CallSlot


@dataclass(frozen=True)
class PackRuntime:
    knobs: tuple = ()  # knob records (nodes/runtime/knobs.py) in the order the nodes were applied
    idle: frozenset = frozenset()  # in a call's view: the knobs (their places) whose range excludes the step
    pooled_key: str | None = None  # the model call's pooled-vector kwarg (the family's), None = it has none
    # the family's ``model_text_length``: conditioning rows -> (rows the model's text sequence has, where the
    # conditioning's first row sits in it); FLUX.2 left-pads to 512, so the sampler's context is the padded one
    text_length: Callable | None = field(default=None, compare=False)
    slot: CallSlot = field(default_factory=CallSlot, compare=False)
    _device_cache: dict = field(default_factory=dict, compare=False)

    def with_(self, **changes) -> "PackRuntime":
        # a fresh slot and cache: the new clone's patches must not share per-call state with the old one
        return dataclasses.replace(self, slot=CallSlot(), _device_cache={}, **changes)

    def adding(self, knob) -> "PackRuntime":
        return self.with_(knobs=self.knobs + (knob,))

    def _active(self, kind):
        return tuple(k for i, k in enumerate(self.knobs)
                     if i not in self.idle and isinstance(k, kind) and not k.is_neutral)

    def key(self, knob) -> int:
        """A knob's adapter key: its place among the runtime's knobs (the same in a call's view, and from one
        queue item to the next, so TorchCompileModel's guards on it hold)."""
        return next(i for i, k in enumerate(self.knobs) if k is knob)

    @property
    def offset_sources(self) -> tuple[KontinuousKnob, ...]:
        return self._active(KontinuousKnob)

    @property
    def multipliers(self) -> tuple[ModulationKnob, ...]:
        return self._active(ModulationKnob)

    @property
    def sliders(self) -> tuple[InstructionKnob, ...]:
        return tuple(k for k in self._active(InstructionKnob) if k.kind == "sliders")

    @property
    def guidance(self) -> tuple[InstructionKnob, ...]:
        return tuple(k for k in self._active(InstructionKnob) if k.kind == "guidance")

    @property
    def slideredit(self) -> tuple[SliderEditKnob, ...]:
        return self._active(SliderEditKnob)

    @property
    def numeric(self) -> tuple[NumericKnob, ...]:
        return self._active(NumericKnob)

    @property
    def conditioning(self) -> tuple[ConditioningKnob, ...]:
        return self._active(ConditioningKnob)

    @property
    def velocity(self) -> tuple[VelocityKnob, ...]:
        return self._active(VelocityKnob)

    @property
    def plans_jobs(self) -> bool:
        """Whether a call needs per-chunk planning (knobs acting on the positive prompt's rows)."""
        return bool(self.sliders or self.guidance or self.numeric or self.conditioning or self.velocity)

    def block_multipliers(self, index: int) -> tuple[float | None, float | None]:
        """(attention, mlp) multipliers of double block ``index`` for single-setting knobs; None where none scales."""
        attention = mlp = None
        for knob in self.multipliers:
            if index in knob.blocks:
                m = knob.values[0]
                if knob.attention:
                    attention = m if attention is None else attention * m
                if knob.mlp:
                    mlp = m if mlp is None else mlp * m
        return attention, mlp

    # -- per-call decisions

    def _on(self, tensor: torch.Tensor, device, dtype=None) -> torch.Tensor:
        key = (id(tensor), device, dtype)
        if key not in self._device_cache:
            self._device_cache[key] = (tensor, tensor.to(device=device, dtype=dtype or tensor.dtype))
        return self._device_cache[key][1]

    def _offset_rows(self, batch: int, cond_or_uncond: list[int], device):
        """Per-row offsets [batch, 2H]: stacked Apply nodes sum; row j of a chunk is latent j."""
        total = None
        for knob in self.offset_sources:
            rows = offsets_for_rows(self._on(knob.table, device), batch, cond_or_uncond, knob.negative)
            total = rows if total is None else total + rows
        return total

    def _multiplier_rows(self, cond_or_uncond: list[int], chunk: int, device) -> dict:
        """double block -> (attention [B] | None, mlp [B] | None); stacked nodes multiply; every row scaled."""
        out: dict = {}
        for knob in self.multipliers:
            per_item = torch.tensor(items_for_chunk(knob.values, chunk, knob.display), dtype=torch.float32)
            rows = per_item.repeat(len(cond_or_uncond)).to(device)
            for block in knob.blocks:
                attention, mlp = out.get(block, (None, None))
                if knob.attention:
                    attention = rows if attention is None else attention * rows
                if knob.mlp:
                    mlp = rows if mlp is None else mlp * rows
                out[block] = (attention, mlp)
        return out

    def _model_rows(self, context: torch.Tensor) -> torch.Tensor:
        """A conditioning's text sequence as the model sees it (FLUX.2: zero rows in front, as its model_base
        pads), kept per tensor; the identity where the family changes nothing."""
        key = ("model rows", id(context))
        if key not in self._device_cache:
            rows = self._padded_rows(context)
            if rows is context:
                return context
            self._device_cache[key] = (context, rows)
        return self._device_cache[key][1]

    def _padded_rows(self, context: torch.Tensor) -> torch.Tensor:
        """``_model_rows`` without keeping the result (for a tensor made for one pass)."""
        total, offset = self.text_length(context.shape[1]) if self.text_length else (context.shape[1], 0)
        if (total, offset) == (context.shape[1], 0):
            return context
        rows = context.new_zeros(context.shape[0], total, context.shape[2])
        rows[:, offset:offset + context.shape[1]] = context
        return rows

    def _model_spans(self, spans):
        """Spans in the model's text rows (the family's ``model_text_length``)."""
        return spans.in_model_rows(*self.text_length(spans.length)) if self.text_length else spans

    def _matching_entry(self, knob: InstructionKnob, chunk_context: torch.Tensor, repeats: bool = False):
        """The knob's conditioning entry whose text this chunk carries, or None. With ``repeats``, also a text
        repeated k times along the sequence (ComfyUI's batching repeats the shorter of cond / uncond up to
        their least common multiple): then (entry, k), else (entry, 1)."""
        for entry in knob.entries:
            context = self._model_rows(entry.context)
            length, width = context.shape[1:]
            k = chunk_context.shape[1] // length
            if chunk_context.shape[2] != width or chunk_context.shape[1] != k * length or not (k == 1 or repeats):
                continue
            expected = self._on(context, chunk_context.device, chunk_context.dtype)
            if torch.equal(chunk_context, expected.repeat(1, k, 1).expand_as(chunk_context)):
                return (entry, k) if repeats else entry
        return None

    def _warn_unmatched(self, knob: InstructionKnob):
        if id(knob) in self._device_cache.setdefault("warned", set()):
            return
        self._device_cache["warned"].add(id(knob))
        logging.warning("%s (%s): the sampler's positive prompt is not the conditioning wired to the node "
                        "(its text differs), so the knob leaves it unchanged. Wire the same Kontext Multi-Instruction "
                        "Encode output to the knob and (through ReferenceLatent / FluxGuidance) to the sampler.",
                        knob.display, "; ".join(knob.lines))

    def _toward_pad_plan(self, spans, strengths: tuple[float, ...]):
        key = ("plan", id(spans), strengths)  # built once per (prompt, strengths), not every step
        if key not in self._device_cache:
            self._device_cache[key] = (spans, toward_pad_plan(self._model_spans(spans), strengths))
        return self._device_cache[key][1]

    def _same_text(self, context: torch.Tensor, chunk_context: torch.Tensor) -> bool:
        """Whether a chunk carries ``context`` (conditioning rows) as the model sees it."""
        rows = self._model_rows(context)
        return rows.shape[1:] == chunk_context.shape[1:] and torch.equal(
            chunk_context, self._on(rows, chunk_context.device, chunk_context.dtype).expand_as(chunk_context))

    def _conditioning_rows(self, record, strengths: tuple[float, ...]):
        """(text [chunk, L, D] in model rows, pooled [chunk, P] or None): the node's conditioning at each
        strength, made as the node makes it (one row per strength), once per sweep pass."""
        key = ("conditioning", id(record), strengths)
        if key not in self._device_cache:
            states = [record.at(s) for s in strengths]
            text = torch.cat([self._padded_rows(c) for c, _ in states])
            pooled = None if states[0][1] is None else torch.cat([p.reshape(1, -1) for _, p in states])
            self._device_cache[key] = (record, (text, pooled))
        return self._device_cache[key][1]

    def _plan_jobs(self, context: torch.Tensor, cond_or_uncond: list[int], chunk: int):
        jobs, extra, guided = [], [], {}
        matched = set()
        for j, tag in enumerate(cond_or_uncond):
            job = ChunkJob(source=j, tag=tag)
            jobs.append(job)
            if tag != 0 or context is None:
                continue  # per-instruction knobs act on the positive prompt only
            chunk_context = context[j * chunk:(j + 1) * chunk]
            for knob in self.numeric:
                if self._matching_entry(knob, chunk_context) is None:
                    continue
                matched.add(id(knob))
                if job.numeric:
                    raise ValueError("two NumeriKontrol Edit nodes act on the same prompt; put all numeric edits "
                                     "of one prompt into one node (one line each)")
                items_for_chunk(tuple(range(knob.tokens.shape[0])), chunk, knob.display)  # 1 or chunk items
                tokens = self._on(knob.tokens, chunk_context.device, chunk_context.dtype)  # [items, m, T5 width]
                rows_tokens = tokens.expand(chunk, -1, -1)
                text = chunk_context
                if knob.texts is not None:  # a sweep: each item's instruction text carries its own number
                    text = self._on(knob.texts[0], chunk_context.device, chunk_context.dtype).expand(chunk, -1, -1)
                    job.pooled = knob.texts[1]
                job.context = torch.cat([rows_tokens, text], dim=1)
                job.numeric = rows_tokens.shape[1]
            for knob in self.conditioning:
                record = next((r for r in knob.records if self._same_text(r.context, chunk_context)), None)
                if record is None:
                    continue
                matched.add(id(knob))
                if job.context is not None:
                    raise ValueError("a Kontext Conditioning Strength sweep and NumeriKontrol Edit act on the same "
                                     "prompt; sweep the numbers in NumeriKontrol Edit instead")
                job.context, job.pooled = self._conditioning_rows(record, items_for_chunk(knob.values, chunk,
                                                                                          knob.display))
                job.keeps_tokens = True
            rows = None  # per row of the chunk: one strength per line
            for knob in self.sliders:
                entry = self._matching_entry(knob, chunk_context)
                if entry is not None:  # stacked slider nodes on one prompt: s1 * s2 (lerp of a lerp)
                    matched.add(id(knob))
                    mine = items_for_chunk(knob.rows, chunk, knob.display)
                    rows = mine if rows is None else tuple(tuple(a * b for a, b in zip(r, m))
                                                           for r, m in zip(rows, mine))
                    spans, padded_context = entry.slider_target()
            if rows is not None and any(s != 1.0 for row in rows for s in row):
                if job.keeps_tokens:
                    raise ValueError("a Kontext Conditioning Strength sweep and Kontext Instruction Sliders act on the "
                                     "same prompt; sweep one of them")
                if job.numeric:
                    raise ValueError("Kontext Instruction Sliders and NumeriKontrol Edit act on the same prompt; "
                                     "the numeric tokens in front of it would move the sliders' token positions. "
                                     "Use one of them on a prompt")
                plans = [self._toward_pad_plan(spans, row) for row in rows]
                job.pad_plan = (torch.stack([p[0] for p in plans]), torch.stack([p[1] for p in plans]))
                # None unless the prompt left no pad row in the sequence
                job.context = None if padded_context is None else self._model_rows(padded_context)
                if padded_context is not None:
                    job.hidden_row = self._model_spans(spans).pad_index
            for knob in self.guidance:
                entry = self._matching_entry(knob, chunk_context)
                if entry is None:
                    continue
                matched.add(id(knob))
                per_row = items_for_chunk(knob.rows, chunk, knob.display)
                for i, (loo_context, loo_pooled) in enumerate(entry.without):
                    strengths = tuple(row[i] for row in per_row)
                    if any(s != 1.0 for s in strengths):
                        loo = ChunkJob(source=j, tag=0, context=self._model_rows(loo_context), pooled=loo_pooled)
                        extra.append(loo)
                        guided.setdefault(j, []).append((strengths, loo))
            for knob in self.velocity:  # the neutral prompt's prediction, batched; combined as guidance is
                per_row = items_for_chunk(knob.values, chunk, knob.display)
                neutral = ChunkJob(source=j, tag=0, context=self._model_rows(knob.context), pooled=knob.pooled)
                extra.append(neutral)
                guided.setdefault(j, []).append((per_row, neutral))
        if 0 in cond_or_uncond and context is not None:
            for knob in self.sliders + self.guidance + self.numeric + self.conditioning:
                if id(knob) not in matched:
                    self._warn_unmatched(knob)
        return jobs, extra, guided

    @property
    def forward_loras(self) -> tuple:
        """Knobs whose method LoRA runs in the forward (scheduled Kontinuous / NumeriKontrol knobs)."""
        return tuple(k for i, k in enumerate(self.knobs) if i not in self.idle and getattr(k, "forward_lora", ()))

    def acting(self, sigma: float, percent_to_sigma) -> "PackRuntime":
        """This runtime with the knobs whose range of the schedule excludes ``sigma`` idle (itself when none)."""
        idle = frozenset(i for i, k in enumerate(self.knobs) if not acts_at(sigma, k.percent, percent_to_sigma))
        return self if not idle else dataclasses.replace(self, idle=idle)

    def wrapper(self, executor, x, *args, **kwargs):
        if any(k.percent != EVERY_STEP for k in self.knobs):
            # ComfyUI's reading of a step's sigma (its first row) and its model's own percent -> sigma
            sampling = executor.class_obj.model_sampling
            view = self.acting(float(args[0].reshape(-1)[0]), sampling.percent_to_sigma)
            if view is not self:
                return view._call(executor, x, *args, **kwargs)
        return self._call(executor, x, *args, **kwargs)

    def _call(self, executor, x, *args, **kwargs):
        # BaseModel._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        t, c_concat, context, control, transformer_options = (list(args) + [None] * 5)[:5]
        transformer_options = transformer_options if transformer_options is not None else {}
        batch = x.shape[0]
        cond_or_uncond = list(transformer_options.get("cond_or_uncond") or [0])
        if batch % len(cond_or_uncond):
            raise ValueError(f"batch of {batch} rows does not split into {len(cond_or_uncond)} conditioning chunks")
        chunk = batch // len(cond_or_uncond)
        offsets = self._offset_rows(batch, cond_or_uncond, x.device) if self.offset_sources else None
        multipliers = self._multiplier_rows(cond_or_uncond, chunk, x.device) if self.multipliers else None
        jobs, extra, guided = self._plan_jobs(context, cond_or_uncond, chunk) if self.plans_jobs else ([], [], {})
        lora_rows = lora_factor_rows(self, context, cond_or_uncond, chunk) if (self.slideredit or self.forward_loras) else {}
        if self.plans_jobs and len(args) < 5:
            raise RuntimeError("unexpected apply_model call layout: the per-instruction knobs need the text "
                               "sequence and transformer_options as positional arguments")
        previous = self.slot.state()
        caches = reference_caches(transformer_options)  # emptied before each forward (nodes/runtime/caches.py)
        try:
            if not extra and not any(job.pad_plan or job.numeric or job.keeps_tokens for job in jobs):
                # the common case: one forward on the batch as it came
                self.slot.set(offsets, multipliers=multipliers, lora_scales=lora_rows or None)
                emptied(caches)
                return executor(x, *args, **kwargs)
            run_jobs(self, executor, jobs + extra, chunk, offsets, multipliers, lora_rows, x, args, kwargs,
                     transformer_options, caches)
        finally:
            self.slot.set(*previous)
        outputs = []
        for job in jobs:
            pairs = guided.get(job.source, [])
            outputs.append(combine_instruction_guidance(job.output, [loo.output for _, loo in pairs],
                                                        [s for s, _ in pairs]))
        return torch.cat(outputs, dim=0)
