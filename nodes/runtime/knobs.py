"""The knobs a pack runtime carries, and the sweep protocol they share.

Every slider node adds one knob record to the model's runtime (nodes/runtime/). A knob's value may
be one setting for every latent, or one setting per latent of the batch ("items"): row j of every
conditioning chunk is latent j. That per-item form is the sweep protocol: the sweep sampler asks the
chosen knob for ``knob.swept(values, instruction_index)`` and renders all values as one batch from
one noise. A knob added later joins by implementing the same three members: ``display``,
``is_neutral`` and ``swept``, and carries ``percent``: the part of the sampling schedule it acts on
(core/knobs/schedule.py; outside it the step is the unpatched model's). A knob whose method merges a LoRA
into the weights carries it as ``forward_lora`` instead when its range is not every step (weights cannot
change between steps; the forward can).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ...core.knobs.conditioning import interpolated
from ...core.knobs.schedule import EVERY_STEP
from ...core.kontinuous.offsets import NEGATIVE_SAME


def items_for_chunk(values: tuple, chunk: int, what: str) -> tuple:
    """One knob setting per row of a conditioning chunk: a single setting repeats, N settings need N rows."""
    if len(values) == 1:
        return values * chunk
    if len(values) != chunk:
        raise ValueError(f"{what} carries {len(values)} per-latent settings (a sweep pass) but the sampler runs "
                         f"{chunk} latents per conditioning; the batch must have exactly {len(values)} latents")
    return values


def _rows_varying(knob, values: Sequence[float], instruction_index: int, what: str) -> tuple[tuple[float, ...], ...]:
    """One row per sweep value: the knob's first row with line ``instruction_index`` set to the value."""
    if not 0 <= instruction_index < len(knob.lines):
        raise ValueError(f"{knob.display}: the sweep's instruction_index {instruction_index + 1} is not {what}, "
                         f"which has {len(knob.lines)} ({'; '.join(repr(line) for line in knob.lines)})")
    values = _checked(values, knob.accepted, knob.display)
    base = knob.rows[0]
    return tuple(base[:instruction_index] + (v,) + base[instruction_index + 1:] for v in values)


def _checked(values: Sequence[float], accepted: tuple[float, float], what: str) -> tuple[float, ...]:
    low, high = accepted
    for v in values:
        if not low <= v <= high:
            raise ValueError(f"{what}: sweep value {v:g} is outside its accepted range {low:g} ... {high:g}; "
                             f"choose start / end (or values) inside it")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class KontinuousKnob:
    """Kontinuous Kontext offsets: ``table`` [N items, 2H] from the projector (run once per strength)."""
    table: torch.Tensor
    negative: str = NEGATIVE_SAME
    strengths: tuple[float, ...] = ()
    make_table: Callable[[Sequence[float]], torch.Tensor] | None = field(default=None, compare=False)
    display: str = "Kontinuous Kontext Apply"
    percent: tuple[float, float] = EVERY_STEP
    forward_lora: tuple = ()  # core.fused_lora.FusedLoRA: the method's LoRA run in the forward (scheduled knob)
    forward_lora_strength: float = 1.0

    @property
    def is_neutral(self) -> bool:
        return False  # the projector's offset at any strength is generally non-zero

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "KontinuousKnob":
        if self.make_table is None:
            raise ValueError("these Kontinuous offsets were made without their projector and cannot be swept")
        values = tuple(float(v) for v in values)
        return dataclasses.replace(self, table=self.make_table(values), strengths=values)

    def describe(self, instruction_index: int = 0) -> str:
        return f"{self.display} strength"


@dataclass(frozen=True)
class ModulationKnob:
    """Multiplier on the text modulation shift/scale of some double blocks; ``values`` per item."""
    blocks: tuple[int, ...]
    attention: bool
    mlp: bool
    values: tuple[float, ...]
    accepted: tuple[float, float] = (0.0, 3.0)
    display: str = "Kontext Modulation Strength"
    percent: tuple[float, float] = EVERY_STEP

    @property
    def is_neutral(self) -> bool:
        return all(v == 1.0 for v in self.values)

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "ModulationKnob":
        return dataclasses.replace(self, values=_checked(values, self.accepted, self.display))

    def describe(self, instruction_index: int = 0) -> str:
        return f"{self.display} multiplier"


@dataclass(frozen=True)
class InstructionKnob:
    """Per-instruction strengths for one multi-instruction prompt (its conditioning entries).

    ``rows``: per item, one strength per sub-instruction (a single row = every latent alike).
    ``kind``: "sliders" (toward-pad) or "guidance" (leave-one-out rows).
    """
    entries: tuple  # InstructionConditioning, one per conditioning entry carrying spans
    rows: tuple[tuple[float, ...], ...]
    kind: str = "sliders"
    accepted: tuple[float, float] = (-1.0, 3.0)
    display: str = "Kontext Instruction Sliders"
    percent: tuple[float, float] = EVERY_STEP

    @property
    def lines(self) -> tuple[str, ...]:
        return self.entries[0].spans.lines

    @property
    def is_neutral(self) -> bool:
        return all(s == 1.0 for row in self.rows for s in row)

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "InstructionKnob":
        rows = _rows_varying(self, values, instruction_index, "a line of this prompt")
        return dataclasses.replace(self, rows=rows)

    def describe(self, instruction_index: int = 0) -> str:
        line = self.lines[instruction_index] if 0 <= instruction_index < len(self.lines) else "?"
        return f"{self.display}, line {instruction_index + 1} ({line!r})"

    def extra_rows(self) -> int:
        """Leave-one-out rows per-instruction guidance adds to a forward (lines not at 1 for some item)."""
        if self.kind != "guidance":
            return 0
        return sum(1 for i in range(len(self.lines)) if any(row[i] != 1.0 for row in self.rows))


@dataclass(frozen=True)
class SliderEditKnob:
    """A trained SliderEdit adapter (nodes/slideredit.py) and its strengths.

    STLoRA: ``rows`` per item, one strength per sub-instruction of the prompt in ``entries``; the
    update reaches only those tokens. GSTLoRA: one strength per item, every token of every row. A
    single GSTLoRA strength goes into the weights through ComfyUI's weight patches (``merged`` is that
    alpha), so only a sweep's per-item differences from it run in the forward; a scheduled one merges nothing.
    """
    loras: tuple  # core.fused_lora.FusedLoRA, on this model's BFL Linears
    variant: str  # "stlora" | "gstlora"
    entries: tuple  # InstructionConditioning of the prompt (STLoRA); () for a GSTLoRA
    rows: tuple[tuple[float, ...], ...]
    merged: float = 0.0
    accepted: tuple[float, float] = (-1.0, 3.0)
    name: str = ""
    display: str = "SliderEdit Apply"
    percent: tuple[float, float] = EVERY_STEP

    @property
    def lines(self) -> tuple[str, ...]:
        return self.entries[0].spans.lines if self.entries else ("(the whole prompt)",)

    def alphas(self, row: tuple[float, ...]) -> tuple[float, ...]:
        """The adapter's factor per sub-instruction (STLoRA) or for all tokens less the merged part (GSTLoRA)."""
        return tuple((1.0 - s) - self.merged for s in row)

    @property
    def is_neutral(self) -> bool:
        return all(a == 0.0 for row in self.rows for a in self.alphas(row))

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "SliderEditKnob":
        if self.variant == "gstlora":
            instruction_index = 0  # one slider for the whole prompt, whichever line the sweep names
        rows = _rows_varying(self, values, instruction_index, f"a slider of this {self.variant.upper()}")
        return dataclasses.replace(self, rows=rows)

    def describe(self, instruction_index: int = 0) -> str:
        line = self.lines[instruction_index] if 0 <= instruction_index < len(self.lines) else "?"
        return f"{self.display} ({self.variant.upper()}), slider {instruction_index + 1} ({line!r})"


@dataclass(frozen=True)
class PromptEntry:
    """A positive prompt a knob acts on, identified by its text sequence [1, L, D] (as the runtime matches)."""
    context: torch.Tensor


@dataclass(frozen=True)
class NumericKnob:
    """NumeriKontrol numeric tokens for one prompt: ``tokens`` [items, m, T5 width] (fp32, CPU), put in front of
    that prompt's text sequence; ``rows``: per item, one delta per line (in the line's task unit).

    ``make_tokens(rows)`` runs the numeric adapter (once per sweep value); ``ranges`` is each line's accepted
    delta range (the task's, from the weights' registry). The instruction text carries the number too, so a
    sweep also gives each item its own encoded text: ``make_texts(rows)`` -> (contexts [items, L, D],
    pooled [items, P]); ``texts`` is None for the single setting (the prompt the sampler gets)."""
    entries: tuple  # PromptEntry of the encoded instruction prompt
    lines: tuple[str, ...]  # the canonical instruction per edit (the template, rendered)
    rows: tuple[tuple[float, ...], ...]
    tokens: torch.Tensor
    ranges: tuple[tuple[float, float], ...]
    make_tokens: Callable[[tuple[tuple[float, ...], ...]], torch.Tensor] = field(compare=False)
    make_texts: Callable | None = field(default=None, compare=False)
    texts: tuple[torch.Tensor, torch.Tensor] | None = None
    units: tuple[str, ...] = ()
    display: str = "NumeriKontrol Edit"
    percent: tuple[float, float] = EVERY_STEP
    forward_lora: tuple = ()  # as KontinuousKnob's
    forward_lora_strength: float = 1.0

    @property
    def is_neutral(self) -> bool:
        return False  # the tokens are part of what the model was trained to read, at any value

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "NumericKnob":
        if not 0 <= instruction_index < len(self.lines):
            raise ValueError(f"{self.display}: the sweep's instruction_index {instruction_index + 1} is not an edit "
                             f"line; there are {len(self.lines)} ({'; '.join(repr(x) for x in self.lines)})")
        low, high = self.ranges[instruction_index]
        values = _checked(values, (low, high), f"{self.display} ({self.lines[instruction_index]!r}, "
                                               f"{self.units[instruction_index] if self.units else ''})")
        base = self.rows[0]
        rows = tuple(base[:instruction_index] + (v,) + base[instruction_index + 1:] for v in values)
        texts = self.make_texts(rows) if self.make_texts is not None else None
        return dataclasses.replace(self, rows=rows, tokens=self.make_tokens(rows), texts=texts)

    def describe(self, instruction_index: int = 0) -> str:
        line = self.lines[instruction_index] if 0 <= instruction_index < len(self.lines) else "?"
        unit = self.units[instruction_index] if 0 <= instruction_index < len(self.units) else ""
        return f"{self.display}, edit {instruction_index + 1} ({line!r}; value in {unit})"


@dataclass(frozen=True)
class ConditioningKnob:
    """Kontext Conditioning Strength as the sweep sampler varies it: ``records`` are the node's (one per
    conditioning entry; core/knobs/conditioning.py), ``values`` the strength per item. The node itself changes
    the conditioning, not the model: this record exists only in the sampler's sweep clone."""
    records: tuple  # nodes.conditioning_strength.ConditioningStrengthRecord
    values: tuple[float, ...]
    accepted: tuple[float, float] = (-1.0, 3.0)
    display: str = "Kontext Conditioning Strength"
    percent: tuple[float, float] = EVERY_STEP

    @property
    def is_neutral(self) -> bool:
        return all(v == self.records[0].strength for v in self.values)  # the conditioning as the node made it

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "ConditioningKnob":
        return dataclasses.replace(self, values=_checked(values, self.accepted, self.display))

    def describe(self, instruction_index: int = 0) -> str:
        return f"{self.display} strength"


@dataclass(frozen=True)
class VelocityKnob:
    """Kontext Edit Velocity: every positive row's prediction becomes neutral + s (edit - neutral), the neutral
    prompt's prediction batched into the same forward; ``values`` per item; 1 = the plain edit."""
    context: torch.Tensor  # the neutral prompt's text sequence [1, L, D] (conditioning rows)
    pooled: torch.Tensor | None  # its pooled vector [1, P], where the model takes one
    values: tuple[float, ...]
    accepted: tuple[float, float] = (-1.0, 3.0)
    display: str = "Kontext Edit Velocity"
    percent: tuple[float, float] = EVERY_STEP

    @property
    def is_neutral(self) -> bool:
        return all(v == 1.0 for v in self.values)

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "VelocityKnob":
        return dataclasses.replace(self, values=_checked(values, self.accepted, self.display))

    def describe(self, instruction_index: int = 0) -> str:
        return f"{self.display} strength"


CONDITIONING_STRENGTH_KEY = "kontext_sliders_conditioning_strength"


@dataclass(frozen=True)
class ConditioningStrengthRecord:
    """What Kontext Conditioning Strength leaves in each conditioning entry it made (under
    ``CONDITIONING_STRENGTH_KEY``), so that a sweep can remake the entry at other strengths exactly as the node
    makes it (``at``); ``context`` is the entry the node output: it identifies the sampler's rows."""
    edit: torch.Tensor  # [1, L, D] the conditioning as it came in
    neutral: torch.Tensor  # [1, L, D] the neutral one, made the edit's length
    edit_pooled: torch.Tensor | None
    neutral_pooled: torch.Tensor | None
    rows: torch.Tensor | None  # [L] bool: the instruction's rows; None = every row
    strength: float
    context: torch.Tensor

    def at(self, strength: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token states, pooled vector or None) at ``strength``."""
        context = interpolated(self.neutral, self.edit, strength, self.rows)
        if self.edit_pooled is None or self.neutral_pooled is None:
            return context, None
        return context, interpolated(self.neutral_pooled, self.edit_pooled, strength)
