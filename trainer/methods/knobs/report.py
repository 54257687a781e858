"""The knobs demo's report: ``report_knobs.md`` (per family and knob: values -> the measured edit, monotone or
not, neutral = the plain editor or not) and a strip per family (``knobs_<family>.png``)."""
from __future__ import annotations

from pathlib import Path

from ....core.atomic import atomic_write
from ...engine.report import _pil
from ...engine.validation import grid

KNOBS = {"modulation": "Kontext Modulation Strength (multiplier)",
         "sliders": "Kontext Instruction Sliders (strength)",
         "guidance": "Kontext Instruction Guidance (strength)"}
DISPLAY = {"flux1": "FLUX.1 Kontext", "flux2": "FLUX.2", "qwen_image": "Qwen-Image-Edit"}


def knob_strip(family_result, sources, path: Path, image: int = 0) -> None:
    """Rows: the knobs; columns: the source, then the knob's values (one held-out photo)."""
    rows = [[_pil(sources[image], 64)] + [_pil(sweep.frames[k, image], 64) for k in range(len(sweep.values))]
            for sweep in family_result.sweeps]
    width = max(len(r) for r in rows)
    blank = _pil(sources[image] * 0 + 1, 64)
    grid([r + [blank] * (width - len(r)) for r in rows]).save(path)


def _direction(d: int) -> str:
    return {1: "yes, rising", -1: "yes, falling", 0: "**no**"}[d]


def _sweep_rows(sweep, unit: str) -> list[str]:
    return [f"| {KNOBS[sweep.knob]} | " + ", ".join(f"{v:g}" for v in sweep.values) + " | "
            + ", ".join(f"{m:+.3f}" for m in sweep.measured) + f" {unit} | {_direction(sweep.direction)} | "
            + f"{_direction(sweep.side(False))} / {_direction(sweep.side(True))} | "
            + ("all values" if sweep.claimed_to is None else f"0 ... {sweep.claimed_to:g}")
            + (": holds" if sweep.holds else ": **missed**") + " | "
            + ("yes" if sweep.identical_at_neutral else "**no**") + " |"]


def write_knobs_report(s, task, result, sources) -> Path:
    out = s.out
    lines = [
        "# Training-free knobs on a tiny editor of each model family",
        "",
        f"Edit: {task.name} {task.value_at(1.0):+g} {task.unit} (\"{task.instruction()}\"); the exact edit measures "
        f"{result.target:+.3f} {task.unit} on the held-out photos ({', '.join(s.held_out)}: each whole and "
        f"{s.eval_crops_per_photo} crops, {sources.shape[0]} images of {s.resolution} px). Each family's editor: "
        f"`method: editor`, from scratch, {s.steps} steps of batch {s.batch_size} on the empty prompt (target: the "
        f"photo) and the instruction (target: the exact edit); {s.sample_steps} Euler steps from the same noise for "
        f"every render. Measured: the {task.name} read back from each source to its render by the CAT estimator, "
        f"averaged. Modulation Strength scales every block's text modulation ({s.terms}); Instruction Sliders move "
        f"the instruction's tokens toward the pad state in every block that sees the text; Instruction Guidance "
        f"adds (s - 1) (v - v_without) at every step, v_without the velocity on the prompt without the line (here "
        f"the empty prompt).",
        "",
        f"Monotone: the measured amount rises (or falls) from each value to the next, a step back of at most "
        f"{s.tolerance:g} of the exact edit ({s.tolerance * abs(result.target):.3f} {task.unit}: a flat end's noise) "
        f"allowed; below / above: the same over the values up to 1 and from 1 on. Neutral = plain: the render with "
        f"the knob's hooks installed at its neutral value (1) equals the plain editor's bit for bit. Claimed: Modulation "
        f"Strength and Instruction Guidance monotone over their whole sweeps, Instruction Sliders from the instruction "
        f"removed (0) to whole (1); past 1 the sliders are measured, not claimed.",
        "",
    ]
    for f in result.families:
        knob_strip(f, sources, out / f"knobs_{f.family}.png")
        lines += [f"## {DISPLAY.get(f.family, f.family)} (`{f.family}`)", "",
                  f"Editor loss {f.loss_start:.3g} -> {f.loss_end:.3g}; the plain editor's edit measures "
                  f"{f.plain:+.3f} {task.unit}, its empty prompt {f.empty_prompt:+.3f} {task.unit}; {f.seconds:.0f} s "
                  f"(training and measuring).", "",
                  f"| knob | values | measured {task.name} | monotone | below / above 1 | claimed (monotone over) "
                  f"| neutral = plain |",
                  "|---|---|---|---|---|---|---|"]
        for sweep in f.sweeps:
            lines += _sweep_rows(sweep, task.unit)
        lines += ["", f"![{f.family}](knobs_{f.family}.png) (first held-out photo; rows: the knobs, columns: the "
                      f"source, then the values above)", ""]
    lines += [f"Time: {sum(result.seconds.values()):.0f} s in all ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + f"), {s.threads} torch thread(s).", ""]
    path = out / "report_knobs.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
    return path
