"""The compare demo's report: ``report_compare.md`` (per task and knob: PSNR against the exact frames, at the two
ends, linearity, smoothness, identity away from the edit) and ``compare_contact_sheet.png`` (per task, rows: the
exact frames then each knob; columns: the sweep's strengths; one held-out photo)."""
from __future__ import annotations

import math
from pathlib import Path

from ....core.atomic import atomic_write
from ...engine.report import _pil
from ...engine.validation import grid

NAMES = {"kontinuous": "Kontinuous Kontext Apply (trained)", "modulation": "Kontext Modulation Strength",
         "conditioning": "Kontext Conditioning Strength", "velocity": "Kontext Edit Velocity"}
TILE = 48


def _f(value: float, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def contact_sheet(tasks, sweeps: dict, knobs: list[str], path: Path, image: int = 0) -> None:
    """Per task: the exact sweep, then each knob's, one held-out photo; a blank row between tasks."""
    rows = []
    blank = None
    for task in tasks:
        knob_sweeps, truth = sweeps[task.name]
        rows.append([_pil(truth[k, image], TILE) for k in range(truth.shape[0])])
        rows += [[_pil(knob_sweeps[knob][k, image], TILE) for k in range(truth.shape[0])] for knob in knobs]
        blank = blank or [_pil(truth[0, image] * 0 + 1, TILE)] * truth.shape[0]
        rows.append(blank)
    grid(rows[:-1]).save(path)


def _table(result) -> list[str]:
    lines = ["| task | knob | PSNR over the sweep (dB) | at 0 / at 1 (dB) | held-out strengths (dB) | abs(r) | "
             "triangle deficit (exact) | step KL (exact) | identity away from the edit (dB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, rows in result.tasks.items():
        for r in rows:
            m = r.summary()
            lines.append(f"| {task} | {NAMES[r.knob]} | {_f(m['psnr_sweep'])} | {_f(m['psnr_at_0'])} / "
                         f"{_f(m['psnr_at_1'])} | {_f(m['psnr_held_out'])} | {_f(m['abs_r'], 3)} | "
                         f"{_f(m['triangle_deficit'], 3)} ({_f(m['triangle_deficit_exact'], 3)}) | "
                         f"{_f(m['step_kl'], 3)} ({_f(m['step_kl_exact'], 3)}) | {_f(m['identity_psnr'])} |")
    return lines


def averages(result) -> dict[str, dict[str, float]]:
    """Per knob: the mean over tasks of each summary figure (nan-free where any task has it)."""
    out = {}
    for i, knob in enumerate(next(iter(result.tasks.values()))):
        per_task = [rows[i].summary() for rows in result.tasks.values()]
        out[knob.knob] = {k: _mean([p[k] for p in per_task]) for k in
                          ("psnr_sweep", "psnr_at_0", "psnr_at_1", "abs_r", "triangle_deficit", "step_kl",
                           "identity_psnr")}
    return out


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def write_compare_report(s, tasks, result, sweeps, sources, base_result, k_result) -> Path:
    knobs = [r.knob for r in next(iter(result.tasks.values()))]
    contact_sheet(tasks, sweeps, knobs, s.out / "compare_contact_sheet.png")
    mean = averages(result)
    lines = [
        "# The model-agnostic knobs against the trained slider, on one tiny editor",
        "",
        f"Base editor: `method: editor`, the demo transformer from scratch, {s.base_steps} steps (loss "
        f"{_f(base_result.last_loss, 4)} at the end) on each training crop's source with its task's instruction "
        f"(target: the exact edit at strength 1) and with the empty prompt (target: the source). Kontinuous: "
        f"projector and every weight fine-tuned on that base, {s.steps} steps at {s.finetune_lr:g} (loss "
        f"{_f(k_result.last_loss, 4)}), on the Kontinuous demo's frames (every twelfth of each range). Evaluated "
        f"on the held-out photos ({', '.join(s.held_out)}: {sources.shape[0]} images of {s.resolution} px) at the "
        f"strengths 0, 1/8, ..., 1 (the odd eighths never trained), {s.sample_steps} Euler steps from one noise. "
        f"Every knob runs from no edit (0) to the full edit (1): Kontinuous at its strength; on the base editor, "
        f"Modulation Strength at multiplier s ({s.terms} terms), Conditioning Strength and Edit Velocity at "
        f"strength s with the empty prompt as the neutral one.",
        "",
        "PSNR against the exact frame at each strength (at 0 the exact frame is the source: what keeping the image "
        "scores); abs(r): Pearson between the strength and the value the task's estimator measures back (held-out "
        "strengths); triangle deficit (the papers' δ_smooth: (d(a,b) + d(b,c) − d(a,c)) / d(a,c) over adjacent "
        "frames, RMS distance) and the step-size KL, each beside the exact frames' own; identity: PSNR to the source "
        "on the pixels the exact full edit leaves unchanged (the vignette's centre; the global edits have none: –).",
        "",
        *_table(result),
        "",
        "Mean over the tasks:",
        "",
        "| knob | PSNR over the sweep | at 0 / at 1 | abs(r) | triangle deficit | step KL | identity |",
        "|---|---|---|---|---|---|---|",
        *[f"| {NAMES[k]} | {_f(v['psnr_sweep'])} | {_f(v['psnr_at_0'])} / {_f(v['psnr_at_1'])} | {_f(v['abs_r'], 3)} "
          f"| {_f(v['triangle_deficit'], 3)} | {_f(v['step_kl'], 3)} | {_f(v['identity_psnr'])} |"
          for k, v in mean.items()],
        "",
        f"Each training-free knob at 1 is the base editor bit for bit: "
        f"{'yes' if result.identities_hold() else '**no**'}.",
        "",
        "![contact sheet](compare_contact_sheet.png)",
        "",
        "Contact sheet: per task, the exact frames, then " + ", ".join(NAMES[k] for k in knobs) + "; strengths 0 "
        "to 1 left to right; the first held-out image.",
        "",
        "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + ".",
    ]
    path = s.out / "report_compare.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return path
