"""How the Kontinuous demo measures an editor on held-out photos: PSNR against the exact frame, linearity
(Pearson |r| between the requested strength and the value the task measures back), smoothness (triangle deficit
and step-size KL of the sweep), at the sweep's strengths (the odd eighths held out of training)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch

from ...data import cat
from ...data.official import smoothness_kl
from ...engine.features import PixelCodec
from ...engine.metrics import adjacent_distances, pearson_r, psnr, triangle_deficit
from ...engine.sampling import sample_edit
from .model import KontextSliderModel

SWEEP = [k / 8 for k in range(9)]  # ... so the odd eighths of the evaluation sweep are held out
HELD_OUT_STRENGTHS = SWEEP[1::2]
TARGETS = {"exposure": {"psnr_db": 25.0, "abs_r": 0.95}}
# Every task's: the sweep's step KL at most 0.02 (or twice the exact frames' own, where a task's exact steps are
# uneven themselves); the first held-out step (0 -> 1/8), from the output at 0 and from no change, within 20 % of
# what was asked; where the task measures a residual (saturation: residual chroma), at most 0.03 at every strength.
SMOOTHNESS = {"step_kl": 0.02, "first_step": 0.20, "residual": 0.03}
# Goals the report measures but ``--require-targets`` does not yet hold the demo to (the report marks them):
# none since residual chroma met 0.03 at every strength (4000 training steps; docs/results.md, Kontinuous demo).
NOT_YET_REQUIRED: frozenset[str] = frozenset()


class Check(NamedTuple):
    what: str
    value: float
    target: str
    met: bool
    required: bool = True


@dataclass
class TaskEvaluation:
    task: str
    unit: str
    instruction: str
    value_range: tuple[float, float]
    strengths: list[float]
    psnr_model: list[float]  # mean over held-out images, per sweep strength
    psnr_no_edit: list[float]  # the source itself against the exact frame: what doing nothing scores
    measured: list[list[float]]  # [strength][image] value measured back from the model's output (nan: unmeasurable)
    measured_truth: list[list[float]]  # the same measured on the exact frames (the estimator's own error)
    abs_r_held_out: float
    abs_r_all: float
    triangle_deficit_model: float
    triangle_deficit_truth: float
    step_kl_model: float
    step_kl_truth: float
    step_distances_model: list[float]  # mean over images, per adjacent pair of the sweep
    step_distances_truth: list[float]
    # what the measured value leaves unexplained (task.residual; saturation: residual chroma), [strength][image];
    # empty when the task has no such measure
    residual_name: str = ""
    residual_model: list[list[float]] = field(default_factory=list)
    residual_truth: list[list[float]] = field(default_factory=list)

    @property
    def psnr_held_out(self) -> float:
        return _mean([p for s, p in zip(self.strengths, self.psnr_model) if s in HELD_OUT_STRENGTHS])

    @property
    def residual_held_out(self) -> float:
        return _mean([v for s, row in zip(self.strengths, self.residual_model) if s in HELD_OUT_STRENGTHS for v in row])

    @property
    def psnr_no_edit_held_out(self) -> float:
        return _mean([p for s, p in zip(self.strengths, self.psnr_no_edit) if s in HELD_OUT_STRENGTHS])

    @property
    def first_step(self) -> tuple[float, float, float]:
        """(requested, measured from the output at strength 0, measured from no change) for the step to the
        first held-out strength, in the task's unit."""
        k = self.strengths.index(HELD_OUT_STRENGTHS[0])
        lo, hi = self.value_range
        at = _mean(self.measured[k])
        return (hi - lo) * self.strengths[k], at - _mean(self.measured[0]), at - lo

    @property
    def residual_worst_strength(self) -> float:
        """The largest residual (mean over images) at any strength; nan without a residual measure."""
        return max((_mean(row) for row in self.residual_model), default=math.nan)

    def checks(self) -> list[Check]:
        """Every target of this task, measured."""
        out = []
        target = TARGETS.get(self.task)
        if target is not None:
            out += [Check("PSNR (dB)", self.psnr_held_out, f">= {target['psnr_db']:g}",
                          self.psnr_held_out >= target["psnr_db"]),
                    Check("linearity abs(r)", self.abs_r_held_out, f">= {target['abs_r']:g}",
                          self.abs_r_held_out >= target["abs_r"])]
        kl_max = max(SMOOTHNESS["step_kl"], 2 * self.step_kl_truth)
        out.append(Check("step KL", self.step_kl_model, f"<= {kl_max:.3g}", self.step_kl_model <= kl_max))
        requested, from_output, from_source = self.first_step
        for what, value in (("first step / asked, from the output at 0", from_output),
                            ("first step / asked, from no change", from_source)):
            ratio = value / requested
            out.append(Check(what, ratio, f"1 +- {SMOOTHNESS['first_step']:g}",
                             abs(ratio - 1) <= SMOOTHNESS["first_step"] + 1e-12))
        if self.residual_model:
            worst = self.residual_worst_strength
            out.append(Check(f"{self.residual_name}, worst strength", worst, f"<= {SMOOTHNESS['residual']:g}",
                             worst <= SMOOTHNESS["residual"], "residual" not in NOT_YET_REQUIRED))
        return out

    def targets_met(self) -> bool:
        """Every required target met (``checks()`` says which are required)."""
        return all(c.met for c in self.checks() if c.required)


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------- evaluation

Editor = Callable[[torch.Tensor, cat.CatTask, float], torch.Tensor]


def model_editor(model: KontextSliderModel, sample_steps: int, seed: int, codec: PixelCodec | None = None) -> Editor:
    """(sources in [0, 1], task, strength) -> edited images in [0, 1]; the same noise for every strength.
    ``codec``: the pixel codec the model was trained with (None: RGB)."""
    codec = codec or PixelCodec(0)

    def edit(sources: torch.Tensor, task: cat.CatTask, strength: float) -> torch.Tensor:
        n = sources.shape[0]
        out = sample_edit(model, codec.to_latent(sources * 2 - 1), torch.full((n,), float(strength)), sample_steps,
                          torch.Generator().manual_seed(seed), instructions=[task.instruction()] * n)
        return ((codec.decode(out) + 1) / 2).clamp(0, 1)
    return edit


def _measure(task: cat.CatTask, sources: torch.Tensor, edited: torch.Tensor, what: str = "value") -> list[float]:
    estimate = task.estimate_value if what == "value" else task.estimate_residual
    values = []
    for src, out in zip(sources, edited):
        try:
            values.append(estimate(src, out))
        except ValueError:  # e.g. every pixel clipped: nothing to measure in this image
            values.append(math.nan)
    return values


def _abs_r(strengths: Sequence[float], measured: Sequence[Sequence[float]], keep: Callable[[float], bool]) -> float:
    pairs = [(s, v) for s, row in zip(strengths, measured) if keep(s) for v in row if not math.isnan(v)]
    return abs(pearson_r(*zip(*pairs))) if len(pairs) >= 2 else math.nan


def evaluate_task(editor: Editor, task: cat.CatTask, sources: torch.Tensor, seed: int = 0,
                  strengths: Sequence[float] = SWEEP) -> tuple[TaskEvaluation, torch.Tensor, torch.Tensor]:
    """Metrics of one task on ``sources`` [B, 3, H, W] in [0, 1]; also the sweeps [S, B, 3, H, W] (model, truth)."""
    strengths = list(strengths)
    model = torch.stack([editor(sources, task, s) for s in strengths])
    truth = torch.stack([task.apply(sources, task.value_at(s), seed) for s in strengths])
    measured = [_measure(task, sources, m) for m in model]
    measured_truth = [_measure(task, sources, t) for t in truth]
    per_image = lambda sweep, f: _mean([f(list(sweep[:, i])) for i in range(sources.shape[0])])
    steps = lambda sweep: [_mean([v for v in column]) for column in
                           zip(*[adjacent_distances(list(sweep[:, i])) for i in range(sources.shape[0])])]
    evaluation = TaskEvaluation(
        task=task.name, unit=task.unit, instruction=task.instruction(), value_range=task.range,
        strengths=strengths,
        psnr_model=[float(psnr(m, t).mean()) for m, t in zip(model, truth)],
        psnr_no_edit=[float(psnr(sources, t).mean()) for t in truth],
        measured=measured, measured_truth=measured_truth,
        abs_r_held_out=_abs_r(strengths, measured, lambda s: s in HELD_OUT_STRENGTHS),
        abs_r_all=_abs_r(strengths, measured, lambda s: True),
        triangle_deficit_model=per_image(model, triangle_deficit),
        triangle_deficit_truth=per_image(truth, triangle_deficit),
        step_kl_model=per_image(model, _step_kl), step_kl_truth=per_image(truth, _step_kl),
        step_distances_model=steps(model), step_distances_truth=steps(truth))
    if task.residual is not None:
        evaluation.residual_name = task.residual_name
        evaluation.residual_model = [_measure(task, sources, m, "residual") for m in model]
        evaluation.residual_truth = [_measure(task, sources, t, "residual") for t in truth]
    return evaluation, model, truth


def _step_kl(frames: list[torch.Tensor]) -> float:
    distances = adjacent_distances(frames)
    return smoothness_kl(distances) if sum(distances) > 0 else math.nan


# ---------------------------------------------------------------- the command
