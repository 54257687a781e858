"""NumeriKontrol nodes: numbers with units as edit strengths ("increase the exposure by 1.5 EV")."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..core.instructions import joined_prompt, split_instructions
from ..core.knobs.schedule import EVERY_STEP
from ..core.numeric import DEFAULT_REGISTRY, NumericAdapter, NumericEdit, NumericParseError, parse_line
from ..core.numeric.weights import NumericWeights, load_numeric_weights, read_numeric_header
from ..core.weights_io import WeightsFormatError
from .families import trained_family
from .instruction_encode import encode
from .lora import add_diffusers_lora
from .model_folder import list_weight_entries, resolve_weight_entry
from .runtime import NumericKnob, PromptEntry, installed_runtime, patched_clone
from .schedule import forward_lora, percent_range, schedule_inputs

CATEGORY = "Kontext Sliders"
NumericWeightsType = io.Custom("NUMERIC_WEIGHTS")
DISPLAY_NAME = "NumeriKontrol Edit"


@dataclass
class LoadedNumeric:
    """What travels on a NUMERIC_WEIGHTS wire: the file's content and its adapter (fp32, CPU)."""
    weights: NumericWeights
    adapter: NumericAdapter
    name: str


def load_for_nodes(path: str, name: str) -> LoadedNumeric:
    weights = load_numeric_weights(path)
    return LoadedNumeric(weights, weights.build_adapter(torch.float32).eval().requires_grad_(False), name)


_header_cache: dict[tuple, str] = {}


def _listed_tasks(path: str) -> str:
    """One file's tasks, from its header only (cached on path, size and mtime: the schema is rebuilt on every
    node-list request and every prompt validation)."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _header_cache:
        if len(_header_cache) > 256:  # files replaced many times in a long session
            _header_cache.clear()
        try:
            _header_cache[key] = "".join(f"\n  {t.describe()}" for t in read_numeric_header(path).registry.tasks)
        except WeightsFormatError as e:
            _header_cache[key] = f" unreadable ({e})"
    return _header_cache[key]


def tasks_tooltip() -> str:
    """What the edits box accepts: the tasks each NumeriKontrol file in the model folders was trained with (its
    header's registry, the one the node then parses with), or the default registry when there is none."""
    lines = []
    for entry in list_weight_entries("numeric"):
        try:
            lines.append(f"{entry}:{_listed_tasks(resolve_weight_entry(entry))}")
        except (OSError, WeightsFormatError) as e:
            lines.append(f"{entry}: unreadable ({e})")  # a file deleted since the listing
    head = "one numeric edit per line ('increase the exposure by 1.5 EV', 'hue: -30°'), with the tasks "
    if not lines:
        return head + "of the loaded weights' registry; no NumeriKontrol file found yet, the default registry:" \
            + "".join(f"\n  {t.describe()}" for t in DEFAULT_REGISTRY.tasks)
    return head + "the loaded file knows (units and delta ranges):\n" + "\n".join(lines)


def parse_edits(text: str, loaded: LoadedNumeric) -> list[NumericEdit]:
    """One numeric instruction per line, in the canonical order (the registry's): the prompt and the tokens
    then do not depend on the order the lines were written in."""
    registry = loaded.weights.registry
    edits = []
    for i, line in enumerate(split_instructions(text)):
        try:
            edits.append(parse_line(line, registry))
        except NumericParseError as e:
            raise ValueError(f"{DISPLAY_NAME}, line {i + 1}: {e}") from None
    seen: dict[str, int] = {}
    for i, edit in enumerate(edits):
        if edit.task in seen:
            raise ValueError(f"{DISPLAY_NAME}: lines {seen[edit.task] + 1} and {i + 1} both edit {edit.task}; give "
                             f"each task one line (its deltas do not add up in general)")
        seen[edit.task] = i
    return sorted(edits, key=lambda e: registry.task_id(e.task))


def numeric_model(model, loaded: LoadedNumeric, clip, edits_text: str, percent: tuple[float, float] = EVERY_STEP):
    """(patched clone, CONDITIONING of the edits' instructions) for the numeric edits in ``edits_text``. On part
    of the schedule (``percent``) the LoRA runs in the forward on those steps only; else it is merged."""
    family = trained_family(model, DISPLAY_NAME)  # a clear error for other models first
    width = family.context_dim
    config = loaded.weights.adapter_config
    if config.out_dim != width:
        raise ValueError(f"{loaded.name} makes numeric tokens of width {config.out_dim} (the T5 width it was "
                         f"trained for), but this model's text input takes {width}; use weights trained for it")
    edits = parse_edits(edits_text, loaded)
    registry = loaded.weights.registry
    tasks = [registry.task(e.task) for e in edits]
    lines = tuple(t.render(e.delta) for t, e in zip(tasks, edits))
    if clip is None:
        raise RuntimeError("clip input is invalid: None (connect a FLUX text encoder)")
    conditioning = encode(clip, joined_prompt(lines))
    if conditioning[0][0].shape[-1] != width:
        raise ValueError(f"the text encoder makes {conditioning[0][0].shape[-1]}-wide T5 tokens, the model and "
                         f"{loaded.name} use {width}; connect the FLUX text encoder pair of this model")
    ids = [registry.task_id(t.name) for t in tasks]

    @torch.no_grad()
    def make_tokens(rows: tuple[tuple[float, ...], ...]) -> torch.Tensor:  # once per value, never per step
        task_ids = torch.tensor(ids * len(rows), dtype=torch.long)
        deltas = torch.tensor([d for row in rows for d in row], dtype=torch.float64)
        return loaded.adapter(task_ids, deltas).view(len(rows), len(ids), -1).float()

    encoded = {joined_prompt(lines): conditioning[0]}

    def make_texts(rows: tuple[tuple[float, ...], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sweep item's instruction text (its numbers rendered), encoded once per distinct text."""
        out = []
        for row in rows:
            prompt = joined_prompt([t.render(d) for t, d in zip(tasks, row)])
            if prompt not in encoded:
                encoded[prompt] = encode(clip, prompt)[0]
            out.append(encoded[prompt])
        if len({c.shape for c, _ in out}) > 1:
            raise ValueError(f"{DISPLAY_NAME}: the swept instructions encode to texts of different lengths "
                             f"({sorted({c.shape[1] for c, _ in out})} tokens); sweep a narrower range")
        return torch.cat([c for c, _ in out]), torch.cat([e["pooled_output"].reshape(1, -1) for _, e in out])

    rows = (tuple(e.delta for e in edits),)
    knob = NumericKnob(tuple(PromptEntry(c[0]) for c in conditioning), lines, rows, make_tokens(rows),
                       tuple(tuple(t.delta_range) for t in tasks), make_tokens, make_texts,
                       units=tuple(t.unit for t in tasks))
    w = loaded.weights
    if percent != EVERY_STEP:
        knob = dataclasses.replace(knob, percent=percent,
                                   forward_lora=forward_lora(family, w.lora_state, w.lora_scale, loaded.name))
    patched = patched_clone(model, knobs=installed_runtime(model).knobs + (knob,))
    if percent == EVERY_STEP:
        add_diffusers_lora(patched, w.lora_state, w.lora_alpha, 1.0, loaded.name)
    logging.info("NumeriKontrol: %s; %s", loaded.name, "; ".join(f"{e.task} {e.delta:+g} {e.unit}" for e in edits))
    return patched, conditioning


class NumeriKontrolLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NumeriKontrolLoader",
            display_name="NumeriKontrol Loader",
            category=CATEGORY,
            description="Loads NumeriKontrol weights (numeric adapter + task embeddings + LoRA + the task registry "
                        "they were trained with) from models/kontext_sliders/.",
            inputs=[io.Combo.Input("weights", options=list_weight_entries("numeric"),
                                   tooltip="a NumeriKontrol .safetensors file (written by kontext-sliders export)")],
            outputs=[NumericWeightsType.Output(display_name="numeric_weights")],
        )

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        return io.NodeOutput(load_for_nodes(resolve_weight_entry(weights), weights))


class NumeriKontrolEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NumeriKontrolEdit",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description="Edits given as numbers with units, one per line ('increase the exposure by 1.5 EV', "
                        "'hue: -30°'): each becomes a numeric token in front of the text; several at once, in any "
                        "order. Outputs the patched model and the instruction conditioning for the sampler.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                NumericWeightsType.Input("numeric_weights"),
                io.String.Input("edits", multiline=True, default="increase the exposure by 1 EV",
                                tooltip=tasks_tooltip()),
                *schedule_inputs(),
            ],
            outputs=[io.Model.Output(), io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, model, clip, numeric_weights, edits, start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        percent = percent_range(start_percent, end_percent, DISPLAY_NAME)
        return io.NodeOutput(*numeric_model(model, numeric_weights, clip, edits, percent))
