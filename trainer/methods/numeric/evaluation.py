"""How the NumeriKontrol demo measures its two models on held-out photos: single edits (PSNR against the exact
edit, the value measured back) and two-line prompts against the single edits chained."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ....core.numeric import load_numeric_weights
from ...data import cat
from ...engine.codecs import text_encoder_for
from ...engine.config import TrainConfig
from ...engine.metrics import psnr
from ...engine.sampling import euler, sample_edit
from ...families.flux1 import load_transformer
from .method import encoder_text
from .model import NumericModel

SOURCE_STRENGTH = 0.5  # sources in the middle of the range ...
TARGET_STRENGTHS = (1 / 8, 3 / 8, 5 / 8, 7 / 8)  # ... edited to held-out values: deltas of +-1/8, +-3/8 of the range
# two-edit requests: (strength of task A's target, of task B's), from both sources at 1/2: all four direction pairs
TWO_EDIT_TARGETS = ((5 / 8, 7 / 8), (1 / 8, 5 / 8), (7 / 8, 3 / 8), (3 / 8, 1 / 8))
TARGETS = {"two_edit_gap_db": 2.0, "swap_db": 0.5}


def _mean(values) -> float:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------- data


class NumericEditor:
    """The exported NumeriKontrol file on the exported transformer; prompts encoded as in training."""

    def __init__(self, config: TrainConfig, transformer_dir: Path, weights_file: Path, sample_steps: int, seed: int):
        transformer = load_transformer(transformer_dir)
        self.weights = load_numeric_weights(weights_file)
        self.model = NumericModel.from_weights(transformer, self.weights, config.numeric.guidance)
        self.registry, self.config = self.weights.registry, config
        self.text = text_encoder_for(config, torch.device("cpu"), config.numeric.max_edits)
        self.sample_steps, self.seed = sample_steps, seed

    @torch.no_grad()
    def __call__(self, sources: torch.Tensor, edits: list[tuple[str, float]], lines: list[str] | None = None,
                 ) -> torch.Tensor:
        """``sources`` [B, 3, H, W] in [0, 1], the same ``edits`` (task, delta) for every row; the prompt's lines
        default to the edits' rendered templates in the same order."""
        lines = lines or [self.registry.task(t).render(d) for t, d in edits]
        text = self.text.encode_lines([encoder_text(self.config, line) for line in lines])
        b, src = sources.shape[0], sources * 2 - 1
        context, pooled = text["context"].expand(b, -1, -1), text["pooled"].expand(b, -1)
        row = [(self.registry.task_id(t), float(d)) for t, d in edits]
        noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(self.seed))
        out = euler(lambda x, sigma: self.model(x, src, sigma, context, pooled, [row] * b), noise, self.sample_steps)
        return ((out + 1) / 2).clamp(0, 1)


def kontinuous_editor(model, sample_steps: int, seed: int, mean_extent: float = 1.0, text=None):
    """(sources, task, delta in the task's unit) -> the baseline's edit: the task's increasing or decreasing
    instruction by the delta's sign, strength |delta| / (``mean_extent`` x the task's range): its training
    strengths were fractions of each trajectory's extent, so its "1" is on average that far. ``text``: an
    offline per-line encoder for a model without its own learned text embedding."""
    @torch.no_grad()
    def edit(sources: torch.Tensor, task: cat.CatTask, delta: float) -> torch.Tensor:
        n = sources.shape[0]
        strength = abs(delta) / (mean_extent * abs(task.range[1] - task.range[0]))
        up = (delta >= 0) == (task.range[1] >= task.range[0])
        instruction = task.instructions[0 if up else 1]
        prompt = {"instructions": [instruction] * n}
        if text is not None:
            t = text.encode(instruction)
            prompt = {"context": t["context"].expand(n, -1, -1), "pooled": t["pooled"].expand(n, -1)}
        out = sample_edit(model, sources * 2 - 1, torch.full((n,), strength), sample_steps,
                          torch.Generator().manual_seed(seed), **prompt)
        return ((out + 1) / 2).clamp(0, 1)
    return edit


# ---------------------------------------------------------------- evaluation

def measure(task: cat.CatTask, sources: torch.Tensor, edited: torch.Tensor) -> list[float]:
    out = []
    for src, e in zip(sources, edited):
        try:
            out.append(float(task.estimate_value(src, e)))
        except ValueError:  # nothing measurable (e.g. every pixel clipped)
            out.append(math.nan)
    return out


def evaluate_single(task: cat.CatTask, photos: torch.Tensor, numeric, kontinuous, seed: int):
    """One task: sources at the middle of the range, every held-out target value; also the strips' frames."""
    v0 = task.value_at(SOURCE_STRENGTH)
    sources = task.apply(photos, v0, seed)
    rows, frames = [], []
    for s in TARGET_STRENGTHS:
        v1 = task.value_at(s)
        delta = float(f"{v1 - v0:.6g}")
        truth = task.apply(photos, v1, seed)
        outs = {"numeric": numeric(sources, [(task.name, delta)]), "kontinuous": kontinuous(sources, task, delta)}
        row = {"delta": delta, "target_value": v1, "psnr_no_edit": float(psnr(sources, truth).mean())}
        for name, out in outs.items():
            measured = measure(task, sources, out)
            row[f"psnr_{name}"] = float(psnr(out, truth).mean())
            row[f"mae_{name}"] = _mean([abs(m - delta) for m in measured])
        row["mae_exact"] = _mean([abs(m - delta) for m in measure(task, sources, truth)])  # the estimator's own
        rows.append(row)
        frames.append((sources, outs["numeric"], outs["kontinuous"], truth))
    summary = {"task": task.name, "unit": task.unit, "source_value": v0, "per_delta": rows}
    for k in ("psnr_numeric", "psnr_kontinuous", "psnr_no_edit", "mae_numeric", "mae_kontinuous", "mae_exact"):
        summary[k] = _mean([r[k] for r in rows])
    return summary, frames


def composed_error_psnr(psnr_a: float, psnr_b: float) -> float:
    """The PSNR two edits would reach together if each kept its single-edit error and the errors added
    (independent, mean squared errors summed): what a perfect composition of these single edits scores."""
    return -10 * math.log10(10 ** (-psnr_a / 10) + 10 ** (-psnr_b / 10))


def evaluate_two_edit(a: cat.CatTask, b: cat.CatTask, photos: torch.Tensor, numeric: NumericEditor, seed: int,
                      single_psnr: float):
    """Two lines at once (zero-shot) against the composed exact edit (A then B); each order of the lines.

    The reference on the same composed ground truth is the single-edit route: the two single edits one after the
    other (two sampling passes), in either order; ``gap_db`` is the better chain's PSNR minus the two-line
    instruction's. ``single_psnr`` (the single edits on their own ground truth) is reported beside it."""
    compose = lambda va, vb: b.apply(a.apply(photos, va, seed), vb, seed)
    va0, vb0 = a.value_at(SOURCE_STRENGTH), b.value_at(SOURCE_STRENGTH)
    sources = compose(va0, vb0)
    rows, frames = [], []
    for sa, sb in TWO_EDIT_TARGETS:
        va, vb = a.value_at(sa), b.value_at(sb)
        edits = [(a.name, float(f"{va - va0:.6g}")), (b.name, float(f"{vb - vb0:.6g}"))]
        truth = compose(va, vb)
        ab = numeric(sources, edits)
        ba = numeric(sources, edits[::-1])  # the prompt's lines and the numeric tokens both swapped
        ba_tokens = numeric(sources, edits[::-1], [numeric.registry.task(t).render(d) for t, d in edits])
        chain_ab = numeric(numeric(sources, edits[:1]), edits[1:])  # single edits, one after the other
        chain_ba = numeric(numeric(sources, edits[1:]), edits[:1])
        rows.append({"edits": edits, "psnr_ab": float(psnr(ab, truth).mean()), "psnr_ba": float(psnr(ba, truth).mean()),
                     "psnr_chain_ab": float(psnr(chain_ab, truth).mean()),
                     "psnr_chain_ba": float(psnr(chain_ba, truth).mean()),
                     "psnr_no_edit": float(psnr(sources, truth).mean()),
                     "psnr_ab_vs_ba": float(psnr(ab, ba).mean()),
                     "psnr_ab_vs_ba_tokens_only": float(psnr(ab, ba_tokens).mean()),
                     "max_abs_tokens_only": float((ab - ba_tokens).abs().max())})
        frames.append((sources, ab, ba, chain_ab, truth))
    two = {"tasks": [a.name, b.name], "per_request": rows, "single_edit_psnr": single_psnr}
    for k in ("psnr_ab", "psnr_ba", "psnr_chain_ab", "psnr_chain_ba", "psnr_no_edit", "psnr_ab_vs_ba",
              "psnr_ab_vs_ba_tokens_only"):
        two[k] = _mean([r[k] for r in rows])
    two["max_abs_tokens_only"] = max(r["max_abs_tokens_only"] for r in rows)
    two["psnr_single_route"] = max(two["psnr_chain_ab"], two["psnr_chain_ba"])
    two["gap_db"] = two["psnr_single_route"] - two["psnr_ab"]
    two["gap_to_single_gt_db"] = single_psnr - two["psnr_ab"]
    two["swap_db"] = abs(two["psnr_ab"] - two["psnr_ba"])
    return two, frames


# ---------------------------------------------------------------- the command
