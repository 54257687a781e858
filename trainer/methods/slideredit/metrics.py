"""How well per-instruction sliders work, measured on images: the demo's SliderEdit evaluation.

A slider sweep renders a two-or-more-line edit with one line's strength swept (the others at 1) and
measures, with the CAT estimators (``data/cat.py``), the attribute each line edits:

* range and monotonicity: the slid line's attribute against its strength;
* decoupling: how far every other line's attribute moves meanwhile, relative to the slid one (both in
  units of their task's full range, so exposure in EV and temperature in K compare);
* suppression: at strength 0 the output should be the teacher (the model on the prompt without the
  line); the distance to it at 0 against the distance at 1 (where the output is the unpatched model).

Pure torch: an "editor" is any function (sources [B, 3, H, W] in [0, 1], strengths per line) -> images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ...data import cat
from ...engine.metrics import measured_value as measure

SliderEditor = Callable[[torch.Tensor, tuple[float, ...]], torch.Tensor]


@dataclass
class SliderSweep:
    """One line swept, the others held at 1."""
    line: int
    tasks: tuple[str, ...]  # the task of every line
    spans: tuple[float, ...]  # |range| of every line's task: the unit movements are expressed in
    strengths: list[float]
    measured: list[list[float]]  # [strength][line]: each line's attribute measured from the sources
    teacher_distance: list[float]  # [strength]: mean squared distance to the teacher's output
    teacher_measured: list[float] = field(default_factory=list)  # each line's attribute in the teacher's output

    def _column(self, line: int) -> list[float]:
        return [row[line] for row in self.measured]

    def movement(self, line: int) -> float:
        """max - min of a line's attribute over the sweep, in units of its task's range."""
        column = [v for v in self._column(line) if not math.isnan(v)]
        return (max(column) - min(column)) / self.spans[line] if column else math.nan

    @property
    def monotonic(self) -> bool:
        """The slid line's attribute moves one way only as the strength grows (ties allowed)."""
        column = self._column(self.line)
        if any(math.isnan(v) for v in column):
            return False
        steps = [b - a for a, b in zip(column, column[1:])]
        return all(d >= 0 for d in steps) or all(d <= 0 for d in steps)

    @property
    def decoupling(self) -> float:
        """The largest movement of another line's attribute over the slid line's (0 = perfectly decoupled)."""
        others = [self.movement(j) for j in range(len(self.tasks)) if j != self.line]
        slid = self.movement(self.line)
        return max(others) / slid if others and slid > 0 else math.nan

    @property
    def suppression(self) -> float:
        """Distance to the teacher at strength 1 over the distance at strength 0 (>= 5: strength 0 is the
        prompt without the line, five times closer than the unpatched output)."""
        d0, d1 = (self.teacher_distance[self.strengths.index(s)] for s in (0.0, 1.0))
        return d1 / d0 if d0 > 0 else math.inf

    @property
    def suppression_rms(self) -> float:
        """The same in root-mean-square distance (the square root of ``suppression``)."""
        return math.sqrt(self.suppression)

    def summary(self) -> dict:
        return {"line": self.line, "task": self.tasks[self.line], "monotonic": self.monotonic,
                "movement": self.movement(self.line), "decoupling": self.decoupling,
                "suppression": self.suppression, "suppression_rms": self.suppression_rms}


def slider_sweep(editor: SliderEditor, teacher: torch.Tensor, sources: torch.Tensor, tasks: Sequence[cat.CatTask],
                 line: int, strengths: Sequence[float]) -> tuple[SliderSweep, torch.Tensor]:
    """Sweep ``line`` over ``strengths`` (0 and 1 among them) with ``editor``; also the frames [S, B, 3, H, W].

    ``teacher``: the output on the prompt without ``line`` (what strength 0 should give).
    """
    strengths = [float(s) for s in strengths]
    if 0.0 not in strengths or 1.0 not in strengths:
        raise ValueError("a slider sweep needs strengths 0 and 1 among its values")
    frames, measured, distance = [], [], []
    for s in strengths:
        row = tuple(s if j == line else 1.0 for j in range(len(tasks)))
        out = editor(sources, row)
        frames.append(out)
        measured.append([measure(t, sources, out) for t in tasks])
        distance.append(float((out - teacher).pow(2).mean()))
    sweep = SliderSweep(line, tuple(t.name for t in tasks), tuple(abs(t.range[1] - t.range[0]) for t in tasks),
                        strengths, measured, distance, [measure(t, sources, teacher) for t in tasks])
    return sweep, torch.stack(frames)


def ground_truth_editor(tasks: Sequence[cat.CatTask], seed: int = 0) -> SliderEditor:
    """The exact composed edit: each line's task at ``value_at(strength)``, applied in line order."""
    def edit(sources: torch.Tensor, strengths: tuple[float, ...]) -> torch.Tensor:
        out = sources
        for task, s in zip(tasks, strengths):
            out = task.apply(out, task.value_at(s), seed)
        return out
    return edit
