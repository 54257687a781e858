"""The knobs a pack runtime carries, and the sweep protocol they share.

Every slider node adds one knob record to the model's runtime (nodes/runtime.py). A knob's value may
be one setting for every latent, or one setting per latent of the batch ("items"): row j of every
conditioning chunk is latent j. That per-item form is the sweep protocol: the sweep sampler asks the
chosen knob for ``knob.swept(values, instruction_index)`` and renders all values as one batch from
one noise. A knob added later joins by implementing the same three members: ``display``,
``is_neutral`` and ``swept``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..core.offsets import NEGATIVE_SAME


def items_for_chunk(values: tuple, chunk: int, what: str) -> tuple:
    """One knob setting per row of a conditioning chunk: a single setting repeats, N settings need N rows."""
    if len(values) == 1:
        return values * chunk
    if len(values) != chunk:
        raise ValueError(f"{what} carries {len(values)} per-latent settings (a sweep pass) but the sampler runs "
                         f"{chunk} latents per conditioning; the batch must have exactly {len(values)} latents")
    return values


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

    @property
    def lines(self) -> tuple[str, ...]:
        return self.entries[0].spans.lines

    @property
    def is_neutral(self) -> bool:
        return all(s == 1.0 for row in self.rows for s in row)

    def swept(self, values: Sequence[float], instruction_index: int = 0) -> "InstructionKnob":
        if not 0 <= instruction_index < len(self.lines):
            raise ValueError(f"{self.display}: the sweep's instruction_index {instruction_index + 1} is not a line "
                             f"of this prompt, which has {len(self.lines)} sub-instruction(s) "
                             f"({'; '.join(repr(line) for line in self.lines)})")
        values = _checked(values, self.accepted, self.display)
        base = self.rows[0]
        return dataclasses.replace(self, rows=tuple(base[:instruction_index] + (v,) + base[instruction_index + 1:]
                                                    for v in values))

    def describe(self, instruction_index: int = 0) -> str:
        line = self.lines[instruction_index] if 0 <= instruction_index < len(self.lines) else "?"
        return f"{self.display}, line {instruction_index + 1} ({line!r})"

    def extra_rows(self) -> int:
        """Leave-one-out rows per-instruction guidance adds to a forward (lines not at 1 for some item)."""
        if self.kind != "guidance":
            return 0
        return sum(1 for i in range(len(self.lines)) if any(row[i] != 1.0 for row in self.rows))
