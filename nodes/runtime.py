"""The pack's one runtime patch on a Flux ModelPatcher clone; every knob node adds to it.

Pieces, installed on a clone (the input model is never touched):

* one APPLY_MODEL wrapper. It sees each model call's batch layout (``cond_or_uncond``), matches the
  positive chunks against the multi-instruction prompts the nodes were given, adds the leave-one-out
  rows per-instruction guidance needs (one batched forward), fills a per-call slot (offsets per row,
  toward-pad plan per row) and combines the outputs. It runs outside ``diffusion_model``, so under
  TorchCompileModel these Python decisions are never traced (it drops guards on transformer_options);
* object patches, all closures reading the slot: ``double_blocks.i.txt_mod.forward`` (Kontinuous
  offsets, modulation multiplier) and, for instruction sliders, ``double_blocks.i.forward`` /
  ``single_blocks.i.forward``. Each runs the class's own forward (never another clone's patch), so
  nothing stacks across queue items. Outside a wrapped call the slot is empty: plain forwards.

Stacked nodes accumulate knob records (nodes/knobs.py) in one immutable ``PackRuntime`` (kept as a
ModelPatcher attachment), so a second node re-installs every patch against one fresh slot instead of
layering a second machinery. Any knob's setting may vary per latent of the batch: that is how a sweep
renders all its values in one batch (``swept_clone``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import comfy.ldm.flux.layers
import comfy.ldm.flux.model
import comfy.patcher_extension
import torch

from ..core.knobs.guidance import combine_instruction_guidance
from ..core.knobs.toward_pad import lerp_toward_pad, toward_pad_plan
from ..core.kontinuous.offsets import offsets_for_rows
from ..core.kontinuous.projector import split_offsets
from ..core.slideredit.lora import add_lora_delta, stlora_token_scales
from .knobs import InstructionKnob, KontinuousKnob, ModulationKnob, NumericKnob, SliderEditKnob, items_for_chunk

ATTACHMENT_KEY = "kontext_sliders.runtime"
WRAPPER_KEY = "kontext_sliders.runtime"


# ---------------------------------------------------------------- the per-call slot

class CallSlot:
    """What the block patches of one clone read during a wrapped call."""

    def __init__(self):
        self.offsets: torch.Tensor | None = None  # [B, 2H] fp32
        self.multipliers: dict | None = None  # double block -> (attention [B] | None, mlp [B] | None) fp32
        self.pad_index: torch.Tensor | None = None  # [B, L] long: the position each token moves toward
        self.pad_weight: torch.Tensor | None = None  # [B, L, 1] fp32: 1 = untouched
        # SliderEdit knob -> its LoRA factor per text token [B, L] (STLoRA) or per row [B, 1] (GSTLoRA), fp32
        self.lora_scales: dict | None = None
        self._cast: dict = {}

    def set(self, offsets=None, pad_index=None, pad_weight=None, multipliers=None, lora_scales=None):
        self.offsets, self.pad_index, self.pad_weight, self.multipliers = offsets, pad_index, pad_weight, multipliers
        self.lora_scales = lora_scales
        self._cast = {}

    def state(self):
        return self.offsets, self.pad_index, self.pad_weight, self.multipliers, self.lora_scales

    def offset_terms(self, dtype: torch.dtype, device: torch.device):
        """(delta scale, delta shift) as [B, 1, H] in the modulation's dtype; cast once per call."""
        key = ("offsets", dtype, device)
        if key not in self._cast:
            self._cast[key] = split_offsets(self.offsets.to(device=device, dtype=dtype).unsqueeze(1))
        return self._cast[key]

    def block_multipliers(self, index: int, dtype: torch.dtype, device: torch.device):
        """(attention, mlp) multipliers of double block ``index`` as [B, 1, 1] (or None), cast once per call."""
        key = ("multipliers", index, dtype, device)
        if key not in self._cast:
            pair = (self.multipliers or {}).get(index, (None, None))
            self._cast[key] = tuple(None if m is None else m.to(device=device, dtype=dtype).view(-1, 1, 1)
                                    for m in pair)
        return self._cast[key]

    def lora_scale(self, key: int, dtype: torch.dtype, device: torch.device):
        """SliderEdit knob ``key``'s factors as [B, L, 1] / [B, 1, 1], or None when it adds nothing this call."""
        cache_key = ("lora", key, dtype, device)
        if cache_key not in self._cast:
            rows = self.lora_scales.get(key)
            self._cast[cache_key] = None if rows is None else rows.to(device=device, dtype=dtype).unsqueeze(-1)
        return self._cast[cache_key]

    def pad_plan(self, dtype: torch.dtype, device: torch.device):
        key = ("pad", dtype, device)
        if key not in self._cast:
            self._cast[key] = (self.pad_index.to(device), self.pad_weight.to(device=device, dtype=dtype))
        return self._cast[key]


# ---------------------------------------------------------------- block patches (closures: see kontinuous doc)

def txt_modulation_patch(module: torch.nn.Module, index: int, slot: CallSlot):
    """Replacement for ``double_blocks.i.txt_mod.forward``: per-row multipliers on shift/scale, then offsets.

    A plain function, not a callable object: torch.compile guards a patched ``forward`` that is a
    function on its code object, any other callable on its identity (a recompile per new strength).
    Multipliers and offsets come from the slot as tensors, never as Python floats: dynamo lifts tensors
    as graph inputs but bakes floats in as constants (a recompile for every new multiplier).
    """

    def scaled(mod, multiplier):
        if multiplier is None:
            return mod
        return comfy.ldm.flux.layers.ModulationOut(shift=mod.shift * multiplier, scale=mod.scale * multiplier,
                                                   gate=mod.gate)

    def txt_mod_forward(vec):
        # the class's forward, never the instance attribute: that may be another clone's patch
        mod1, mod2 = type(module).forward(module, vec)
        if slot.multipliers is not None:
            attention, mlp = slot.block_multipliers(index, mod2.shift.dtype, mod2.shift.device)
            mod1, mod2 = scaled(mod1, attention), scaled(mod2, mlp)
        if slot.offsets is None:
            return mod1, mod2
        dscale, dshift = slot.offset_terms(mod2.shift.dtype, mod2.shift.device)
        return mod1, comfy.ldm.flux.layers.ModulationOut(shift=mod2.shift + dshift, scale=mod2.scale + dscale,
                                                         gate=mod2.gate)

    return txt_mod_forward


def double_block_patch(block: torch.nn.Module, slot: CallSlot):
    """Replacement for ``double_blocks.i.forward``: text tokens move toward the pad state first."""

    def double_forward(*args, **kwargs):
        if slot.pad_index is not None:
            if "txt" in kwargs:
                txt = kwargs["txt"]
                kwargs["txt"] = lerp_toward_pad(txt, *slot.pad_plan(txt.dtype, txt.device))
            else:
                args = list(args)
                args[1] = lerp_toward_pad(args[1], *slot.pad_plan(args[1].dtype, args[1].device))
        return type(block).forward(block, *args, **kwargs)

    return double_forward


def single_block_patch(block: torch.nn.Module, slot: CallSlot):
    """Replacement for ``single_blocks.i.forward``: the same on the text part of the joint sequence."""

    def single_forward(*args, **kwargs):
        if slot.pad_index is not None:
            x = kwargs.pop("x") if "x" in kwargs else args[0]
            index, weight = slot.pad_plan(x.dtype, x.device)
            n_txt = index.shape[1]
            x = torch.cat([lerp_toward_pad(x[:, :n_txt], index, weight), x[:, n_txt:]], dim=1)
            args = (x,) + tuple(args[1:]) if args else (x,)
        return type(block).forward(block, *args, **kwargs)

    return single_forward


def lora_linear_patch(module: torch.nn.Module, adapters: tuple, slot: CallSlot):
    """Replacement for a Linear's ``forward``: the Linear as ComfyUI runs it (its own dtype casting,
    offloading, fp8 / GGUF weights, weight patches), plus each SliderEdit update scaled per token or per
    row. A token whose factor is 0 gets exactly the base output."""

    def lora_forward(x, *args, **kwargs):
        out = type(module).forward(module, x, *args, **kwargs)
        if slot.lora_scales is None:
            return out
        for key, lora in adapters:
            scale = slot.lora_scale(key, x.dtype, x.device)
            if scale is None:
                continue
            if scale.shape[1] not in (1, x.shape[1]):
                raise RuntimeError(f"SliderEdit: {lora.module} received {x.shape[1]} text tokens but the slider "
                                   f"scales cover {scale.shape[1]}; another node changed the text sequence length")
            a, b = lora.on(x.device, x.dtype)
            out = add_lora_delta(out, x, a, b, lora.rows, scale)
        return out

    return lora_forward


def numeric_mask_override(numeric: int, previous=None):
    """An ``optimized_attention_override`` applying NumeriKontrol's multi-numeric mask: over the joint sequence
    (text first, the ``numeric`` tokens at its front), numeric token i may not attend to numeric token j != i;
    all else is open. Another override already in place runs for both calls below.

    Only the ``numeric`` query rows are masked, so the sequence is attended once with no mask (ComfyUI's fastest
    kernel: a mask rules out flash attention) and those few rows once more with their [numeric, N] mask: the
    same result as the full [N, N] mask at O(numeric x N) extra cost."""

    built: dict = {}  # one mask per (length, dtype, device): not rebuilt in every attention call of every block

    def attention(func, q, k, v, heads, *args, mask=None, **kwargs):
        attend = func if previous is None else (lambda *a, **kw: previous(func, *a, **kw))
        out = attend(q, k, v, heads, *args, mask=mask, **kwargs)
        query_dim = 2 if kwargs.get("skip_reshape") else 1
        n = q.shape[query_dim]
        key = (n, q.dtype, q.device)
        if key not in built:
            # built out of place (no in-place writes into views): torch.compile can trace it
            i, j = torch.arange(numeric, device=q.device), torch.arange(n, device=q.device)
            pair = (j[None, :] < numeric) & (i[:, None] != j[None, :])
            built[key] = torch.zeros(numeric, n, dtype=q.dtype, device=q.device).masked_fill(pair, float("-inf"))
        rows_mask = built[key]
        if mask is not None:  # another mask over the whole sequence: its rows of the numeric queries
            rows_mask = rows_mask + (mask.narrow(-2, 0, numeric) if mask.shape[-2] == n else mask)
        rows = attend(q.narrow(query_dim, 0, numeric), k, v, heads, *args, mask=rows_mask, **kwargs)
        out_dim = 2 if kwargs.get("skip_output_reshape") else 1
        return torch.cat((rows, out.narrow(out_dim, numeric, out.shape[out_dim] - numeric)), dim=out_dim)

    return attention


# ---------------------------------------------------------------- the runtime

def take_rows(value, index: torch.Tensor, batch: int):
    """Select batch rows from a model-call argument (tensors with a leading batch dim; lists/dicts of them)."""
    if torch.is_tensor(value):
        return value.index_select(0, index.to(value.device)) if value.ndim and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(take_rows(v, index, batch) for v in value)
    if isinstance(value, dict):
        return {k: take_rows(v, index, batch) for k, v in value.items()}
    return value


@dataclass
class _ChunkJob:
    """One chunk of rows in a (possibly regrouped) forward."""
    source: int  # chunk index in the incoming batch
    tag: int  # cond_or_uncond entry
    context: torch.Tensor | None = None  # replacement text sequence [1, L, D]
    pooled: torch.Tensor | None = None  # replacement pooled vector [1, D]
    pad_plan: tuple | None = None  # (index [chunk, L], weight [chunk, L]) toward-pad plan per row
    numeric: int = 0  # NumeriKontrol tokens in front of ``context`` (then [chunk, m + L, D], one per row)
    output: torch.Tensor | None = None


@dataclass(frozen=True)
class PackRuntime:
    knobs: tuple = ()  # knob records (nodes/knobs.py) in the order the nodes were applied
    slot: CallSlot = field(default_factory=CallSlot, compare=False)
    _device_cache: dict = field(default_factory=dict, compare=False)

    def with_(self, **changes) -> "PackRuntime":
        # a fresh slot and cache: the new clone's patches must not share per-call state with the old one
        return dataclasses.replace(self, slot=CallSlot(), _device_cache={}, **changes)

    def adding(self, knob) -> "PackRuntime":
        return self.with_(knobs=self.knobs + (knob,))

    def _active(self, kind):
        return tuple(k for k in self.knobs if isinstance(k, kind) and not k.is_neutral)

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

    def _matching_entry(self, knob: InstructionKnob, chunk_context: torch.Tensor, repeats: bool = False):
        """The knob's conditioning entry whose text this chunk carries, or None. With ``repeats``, also a text
        repeated k times along the sequence (ComfyUI's batching repeats the shorter of cond / uncond up to
        their least common multiple): then (entry, k), else (entry, 1)."""
        for entry in knob.entries:
            length, width = entry.context.shape[1:]
            k = chunk_context.shape[1] // length
            if chunk_context.shape[2] != width or chunk_context.shape[1] != k * length or not (k == 1 or repeats):
                continue
            expected = self._on(entry.context, chunk_context.device, chunk_context.dtype)
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

    def _token_scales(self, spans, strengths: tuple[float, ...], length: int) -> torch.Tensor:
        key = ("tokens", id(spans), strengths, length)  # once per (prompt, strengths), not every step
        if key not in self._device_cache:
            self._device_cache[key] = (spans, stlora_token_scales(spans.spans, strengths, length))
        return self._device_cache[key][1]

    def _lora_rows(self, context, cond_or_uncond: list[int], chunk: int) -> dict:
        """SliderEdit knob index -> factors for the incoming batch: [B, L] per text token (STLoRA: the
        positive rows of its prompt, 0 elsewhere) or [B, 1] per row (GSTLoRA: every chunk, latent j its own)."""
        out = {}
        batch = chunk * len(cond_or_uncond)
        for key, knob in enumerate(self.slideredit):
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
                found = self._matching_entry(knob, context[j * chunk:(j + 1) * chunk], repeats=True)
                if found is None:
                    continue
                (entry, copies), matched = found, True
                length = context.shape[1] // copies
                for r, strengths in enumerate(items_for_chunk(knob.rows, chunk, knob.display)):
                    # each copy of a repeated prompt has its instructions' tokens at the same offsets
                    rows[j * chunk + r] = self._token_scales(entry.spans, strengths, length).repeat(copies)
            if 0 in cond_or_uncond and not matched:
                self._warn_unmatched(knob)
            if rows.any():
                out[key] = rows
        return out

    @staticmethod
    def _group_lora_rows(lora_rows: dict, jobs, chunk: int, length: int) -> dict:
        """The factors of a regrouped forward: a job on another prompt (leave-one-out) gets no token factors;
        a job whose text grew (one pad appended, or numeric tokens in front) keeps its tokens' factors at their positions."""
        out = {}
        for key, rows in lora_rows.items():
            parts = []
            for job in jobs:
                mine = rows[job.source * chunk:(job.source + 1) * chunk]
                if rows.shape[1] > 1:  # per token; numeric tokens in front shift the prompt's positions by their count
                    mine = torch.zeros(chunk, length) if job.pooled is not None and not job.numeric else torch.nn.functional.pad(
                        mine, (job.numeric, length - job.numeric - mine.shape[1]))
                parts.append(mine)
            out[key] = torch.cat(parts)
        return out

    def _toward_pad_plan(self, spans, strengths: tuple[float, ...]):
        key = ("plan", id(spans), strengths)  # built once per (prompt, strengths), not every step
        if key not in self._device_cache:
            self._device_cache[key] = (spans, toward_pad_plan(spans, strengths))
        return self._device_cache[key][1]

    def _plan_jobs(self, context: torch.Tensor, cond_or_uncond: list[int], chunk: int):
        jobs, extra, guided = [], [], {}
        matched = set()
        for j, tag in enumerate(cond_or_uncond):
            job = _ChunkJob(source=j, tag=tag)
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
                if job.numeric:
                    raise ValueError("Kontext Instruction Sliders and NumeriKontrol Edit act on the same prompt; "
                                     "the numeric tokens in front of it would move the sliders' token positions. "
                                     "Use one of them on a prompt")
                plans = [self._toward_pad_plan(spans, row) for row in rows]
                job.pad_plan = (torch.stack([p[0] for p in plans]), torch.stack([p[1] for p in plans]))
                job.context = padded_context  # None unless the prompt left no pad token in the sequence
            for knob in self.guidance:
                entry = self._matching_entry(knob, chunk_context)
                if entry is None:
                    continue
                matched.add(id(knob))
                per_row = items_for_chunk(knob.rows, chunk, knob.display)
                for i, (loo_context, loo_pooled) in enumerate(entry.without):
                    strengths = tuple(row[i] for row in per_row)
                    if any(s != 1.0 for s in strengths):
                        loo = _ChunkJob(source=j, tag=0, context=loo_context, pooled=loo_pooled)
                        extra.append(loo)
                        guided.setdefault(j, []).append((strengths, loo))
        if 0 in cond_or_uncond and context is not None:
            for knob in self.sliders + self.guidance + self.numeric:
                if id(knob) not in matched:
                    self._warn_unmatched(knob)
        return jobs, extra, guided

    def wrapper(self, executor, x, *args, **kwargs):
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
        jobs, extra, guided = self._plan_jobs(context, cond_or_uncond, chunk) if (
            self.sliders or self.guidance or self.numeric) else ([], [], {})
        lora_rows = self._lora_rows(context, cond_or_uncond, chunk) if self.slideredit else {}
        if (self.sliders or self.guidance or self.numeric) and len(args) < 5:
            raise RuntimeError("unexpected apply_model call layout: the per-instruction knobs need the text "
                               "sequence and transformer_options as positional arguments")
        previous = self.slot.state()
        try:
            if not extra and not any(job.pad_plan or job.numeric for job in jobs):
                # the common case: one forward on the batch as it came
                self.slot.set(offsets, multipliers=multipliers, lora_scales=lora_rows or None)
                return executor(x, *args, **kwargs)
            self._run_jobs(executor, jobs + extra, chunk, offsets, multipliers, lora_rows, x, args, kwargs,
                           transformer_options)
        finally:
            self.slot.set(*previous)
        outputs = []
        for job in jobs:
            pairs = guided.get(job.source, [])
            outputs.append(combine_instruction_guidance(job.output, [loo.output for _, loo in pairs],
                                                        [s for s, _ in pairs]))
        return torch.cat(outputs, dim=0)

    def _run_jobs(self, executor, jobs, chunk, offsets, multipliers, lora_rows, x, args, kwargs, transformer_options):
        """Forwards grouped by text length (one forward when every job's text has the same length)."""
        batch = x.shape[0]
        context = args[2]
        groups: dict = {}
        for job in jobs:  # one forward per (text length, numeric tokens): each group's mask is one
            length = (job.context if job.context is not None else context).shape[1]
            groups.setdefault((length, job.numeric), []).append(job)
        uuids = transformer_options.get("uuids")
        for (length, numeric), group in groups.items():
            rows = torch.cat([torch.arange(j.source * chunk, (j.source + 1) * chunk) for j in group])
            g_x = x.index_select(0, rows.to(x.device))
            g_args = [take_rows(a, rows, batch) for a in args[:4]] + [None] + list(args[5:])
            g_kwargs = take_rows(dict(kwargs), rows, batch)
            g_context = g_args[2]
            if any(j.context is not None for j in group):
                g_context = torch.cat([
                    (j.context if j.numeric else self._on(j.context, context.device, context.dtype).expand(chunk, -1, -1))
                    if j.context is not None else context[j.source * chunk:(j.source + 1) * chunk]
                    for j in group])
                g_args[2] = g_context
                if "y" in g_kwargs and g_kwargs["y"] is not None:
                    y = kwargs["y"]
                    g_kwargs["y"] = torch.cat([
                        (self._on(j.pooled, y.device, y.dtype).reshape(-1, j.pooled.shape[-1])[:, :y.shape[-1]]
                         .expand(chunk, -1) if j.pooled is not None else y[j.source * chunk:(j.source + 1) * chunk])
                        for j in group])
            options = dict(transformer_options)
            options["cond_or_uncond"] = [j.tag for j in group]
            if uuids is not None and len(uuids) * chunk == batch:
                options["uuids"] = [uuids[j.source] for j in group]
            if numeric > 1:  # numeric tokens of different edits do not attend to each other
                options["optimized_attention_override"] = numeric_mask_override(
                    numeric, options.get("optimized_attention_override"))
            g_args[4] = options
            pad_index = pad_weight = None
            if any(j.pad_plan for j in group):
                n_txt = g_context.shape[1]
                identity = (torch.arange(n_txt).expand(chunk, -1), torch.ones(chunk, n_txt))
                plans = [j.pad_plan or identity for j in group]
                pad_index = torch.cat([p[0] for p in plans]).to(x.device)
                pad_weight = torch.cat([p[1] for p in plans]).unsqueeze(-1).to(x.device)
            g_multipliers = None if multipliers is None else {
                block: tuple(None if m is None else m.index_select(0, rows.to(m.device)) for m in pair)
                for block, pair in multipliers.items()}
            g_lora = self._group_lora_rows(lora_rows, group, chunk, g_context.shape[1]) if lora_rows else None
            self.slot.set(None if offsets is None else offsets.index_select(0, rows.to(offsets.device)),
                          pad_index, pad_weight, g_multipliers, g_lora)
            out = executor(g_x, *g_args, **g_kwargs)
            for k, job in enumerate(group):
                job.output = out[k * chunk:(k + 1) * chunk]


# ---------------------------------------------------------------- installing on a clone

def flux_double_blocks(patcher) -> list:
    """The double-stream blocks of a Flux model, or a clear error for anything else."""
    diffusion_model = patcher.get_model_object("diffusion_model")
    if not isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        raise TypeError(f"this node needs a FLUX.1 (Kontext) model; this MODEL is "
                        f"{type(diffusion_model).__module__}.{type(diffusion_model).__name__}")
    blocks = list(diffusion_model.double_blocks)
    if not blocks or not all(getattr(b, "modulation", False) for b in blocks):
        raise TypeError("this Flux variant has no per-block text modulation (global modulation, e.g. FLUX.2 / "
                        "Chroma); the Kontext Sliders patches need FLUX.1's per-block txt_mod")
    return blocks


def flux_hidden_size(patcher) -> int:
    return patcher.get_model_object("diffusion_model").hidden_size


def memory_with_extra_rows(base_model, factor: int):
    """``BaseModel.memory_required`` for a batch ``factor`` times larger: per-instruction guidance adds
    leave-one-out rows inside the call, and ComfyUI sizes its cond batches (and model loading) by this."""

    def memory_required(input_shape, *args, **kwargs):
        shape = (input_shape[0] * factor,) + tuple(input_shape[1:])
        return type(base_model).memory_required(base_model, shape, *args, **kwargs)

    return memory_required


def installed_runtime(patcher) -> PackRuntime:
    return patcher.get_attachment(ATTACHMENT_KEY) or PackRuntime()


def patched_clone(patcher, **changes):
    """A clone of ``patcher`` whose runtime is the installed one with ``changes``; every patch re-installed.

    Neutral knobs are recorded (a sweep can still find them) but install nothing: a model whose knobs
    are all neutral computes exactly what the input model computes.
    """
    blocks = flux_double_blocks(patcher)
    model = patcher.clone()
    runtime = installed_runtime(patcher).with_(**changes)
    model.set_attachments(ATTACHMENT_KEY, runtime)
    prefix = "diffusion_model"
    for key in [k for k, v in model.object_patches.items() if getattr(v, "__module__", None) == __name__]:
        del model.object_patches[key]  # the clone's dict: an earlier runtime's patches go (others' stay)
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    if not (runtime.offset_sources or runtime.multipliers or runtime.sliders or runtime.guidance
            or runtime.slideredit or runtime.numeric):
        return model
    if runtime.offset_sources or runtime.multipliers:
        for i, block in enumerate(blocks):
            model.add_object_patch(f"{prefix}.double_blocks.{i}.txt_mod.forward",
                                   txt_modulation_patch(block.txt_mod, i, runtime.slot))
    if runtime.sliders:
        for i, block in enumerate(blocks):
            model.add_object_patch(f"{prefix}.double_blocks.{i}.forward", double_block_patch(block, runtime.slot))
        for i, block in enumerate(patcher.get_model_object(prefix).single_blocks):
            model.add_object_patch(f"{prefix}.single_blocks.{i}.forward", single_block_patch(block, runtime.slot))
    adapters: dict[str, list] = {}
    for key, knob in enumerate(runtime.slideredit):
        for lora in knob.loras:
            adapters.setdefault(lora.module, []).append((key, lora))
    for path, entries in adapters.items():
        model.add_object_patch(f"{prefix}.{path}.forward", lora_linear_patch(
            patcher.get_model_object(f"{prefix}.{path}"), tuple(entries), runtime.slot))
    extra_rows = sum(knob.extra_rows() for knob in runtime.guidance)
    if extra_rows:
        model.add_object_patch("memory_required", memory_with_extra_rows(patcher.model, 1 + extra_rows))
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, runtime.wrapper)
    return model


# ---------------------------------------------------------------- the sweep protocol

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
