"""A model call split into jobs: chunks of rows, each with its own text (a leave-one-out prompt, a neutral
prompt, a sweep's per-row conditioning, numeric tokens in front), run as few forwards as their text lengths
allow, each with the slot (nodes/runtime/slot.py) filled for its rows."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapter_rows import group_lora_rows
from .attention import hidden_key_override, numeric_mask_override
from .caches import emptied


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
class ChunkJob:
    """One chunk of rows in a (possibly regrouped) forward."""
    source: int  # chunk index in the incoming batch
    tag: int  # cond_or_uncond entry
    context: torch.Tensor | None = None  # replacement text sequence [1, L, D]
    pooled: torch.Tensor | None = None  # replacement pooled vector [1, D]
    pad_plan: tuple | None = None  # (index [chunk, L], weight [chunk, L]) toward-pad plan per row
    numeric: int = 0  # NumeriKontrol tokens in front of ``context`` (then [chunk, m + L, D], one per row)
    hidden_row: int | None = None  # an appended pad row (model rows) no query attends to (attention.py)
    keeps_tokens: bool = False  # ``context`` is this chunk's prompt with other states in the same rows
    output: torch.Tensor | None = None


def run_jobs(runtime, executor, jobs, chunk, offsets, multipliers, lora_rows, x, args, kwargs, transformer_options,
             caches=()):
    """Forwards grouped by text length (one forward when every job's text has the same length)."""
    batch = x.shape[0]
    context = args[2]
    groups: dict = {}
    for job in jobs:  # one forward per (text length, numeric tokens, hidden row): each group's attention is one
        length = (job.context if job.context is not None else context).shape[1]
        groups.setdefault((length, job.numeric, job.hidden_row), []).append(job)
    uuids = transformer_options.get("uuids")
    for (length, numeric, hidden_row), group in groups.items():
        rows = torch.cat([torch.arange(j.source * chunk, (j.source + 1) * chunk) for j in group])
        g_x = x.index_select(0, rows.to(x.device))
        g_args = [take_rows(a, rows, batch) for a in args[:4]] + [None] + list(args[5:])
        g_kwargs = take_rows(dict(kwargs), rows, batch)
        g_context = g_args[2]
        if any(j.context is not None for j in group):
            g_context = torch.cat([
                (j.context if j.numeric else runtime._on(j.context, context.device, context.dtype).expand(chunk, -1, -1))
                if j.context is not None else context[j.source * chunk:(j.source + 1) * chunk]
                for j in group])
            g_args[2] = g_context
            pooled_key = runtime.pooled_key
            if pooled_key is not None and pooled_key in g_kwargs and g_kwargs[pooled_key] is not None:
                y = kwargs[pooled_key]
                g_kwargs[pooled_key] = torch.cat([
                    (runtime._on(j.pooled, y.device, y.dtype).reshape(-1, j.pooled.shape[-1])[:, :y.shape[-1]]
                     .expand(chunk, -1) if j.pooled is not None else y[j.source * chunk:(j.source + 1) * chunk])
                    for j in group])
        options = dict(transformer_options)
        options["cond_or_uncond"] = [j.tag for j in group]
        if uuids is not None and len(uuids) * chunk == batch:
            options["uuids"] = [uuids[j.source] for j in group]
        if numeric > 1:  # numeric tokens of different edits do not attend to each other
            options["optimized_attention_override"] = numeric_mask_override(
                numeric, options.get("optimized_attention_override"))
        if hidden_row is not None:
            options["optimized_attention_override"] = hidden_key_override(
                hidden_row, options.get("optimized_attention_override"))
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
        g_lora = group_lora_rows(lora_rows, group, chunk, g_context.shape[1]) if lora_rows else None
        runtime.slot.set(None if offsets is None else offsets.index_select(0, rows.to(offsets.device)),
                      pad_index, pad_weight, g_multipliers, g_lora)
        emptied(caches)
        out = executor(g_x, *g_args, **g_kwargs)
        for k, job in enumerate(group):
            job.output = out[k * chunk:(k + 1) * chunk]
