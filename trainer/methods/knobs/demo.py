"""``kontext-sliders demo --method knobs``: the training-free knobs on a tiny editor of each model family,
measured (offline, 2 CPU cores, minutes).

1. data: the demos' crops of scikit-image photos (two photos held out), each twice: the empty prompt (target:
   the photo itself) and one CAT edit with its exact target (default: exposure +1 EV, "increase the exposure");
2. per family (``--family flux1|flux2|qwen_image|all``): a tiny editor (``method: editor``, ``model.family``:
   the family module's ``DEMO_TRANSFORMER``, from scratch, pixel space, the offline line encoder), exported;
3. from the exported editor, on the held-out photos: Kontext Modulation Strength (every block's text
   modulation, ``terms``) and Kontext Instruction Sliders (the instruction's tokens toward the pad state), each
   swept on both sides of neutral through the knobs' diffusers twins (``modulation_hook``, ``toward_pad_hook``:
   equal to the nodes, tests/crosscheck/), and Kontext Instruction Guidance (``core.knobs.guidance``: the
   empty prompt's velocity is the line's leave-one-out), the edit measured back with the task's estimator: is the amount
   monotone in the knob's value, and is the knob at its neutral value the plain editor bit for bit;
   ``report_knobs.md``, ``metrics_knobs.json``, a strip per family (``knobs_<family>.png``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ....core.atomic import atomic_write
from ...data import cat
from ...data.edits import EditSample, write_edits
from ...engine.config import config_from_dict
from ...engine.demo import DemoSettings, demo_photos, demo_tasks, register_demo, run_or_report, with_threads
from ...engine.export import export_checkpoint
from ...engine.features import to_pil
from ...engine.loop import train
from ...engine.metrics import measured_value
from ...families import FAMILIES, family
from .evaluation import TERMS, KnobEditor, KnobSweep, knob_sweep
from .report import write_knobs_report

MODULATION = [0.0, 0.5, 1.0, 1.5, 2.0]
SLIDERS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
GUIDANCE = [0.0, 0.5, 1.0, 1.5, 2.0]
TEXT_TOKENS, MAX_LINES = 4, 2  # one 4-token line, the end token, 4 pad tokens (the sliders' target)


@dataclass
class KnobsDemoSettings(DemoSettings):
    tasks: str = "exposure"
    ranges: str = "exposure=0:1"  # the edit: +1 EV
    families: tuple[str, ...] = FAMILIES
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    crops_per_photo: int = 32
    terms: str = "both"  # which halves of the text modulation the modulation knob scales
    # a step against a sweep's direction of at most this fraction of the exact edit still counts as monotone (the
    # flat ends: a suppressed edit measures a few hundredths of an EV either way)
    tolerance: float = 0.02
    modulation: tuple[float, ...] = tuple(MODULATION)
    sliders: tuple[float, ...] = tuple(SLIDERS)
    guidance: tuple[float, ...] = tuple(GUIDANCE)


@dataclass
class FamilyResult:
    family: str
    loss_start: float
    loss_end: float
    plain: float  # the edit measured on the editor's output (the instruction, no knob)
    empty_prompt: float  # ... on the empty prompt's output (the editor's "no edit")
    sweeps: list[KnobSweep]
    seconds: float

    def summary(self) -> dict:
        return {"family": self.family, "loss": {"start": self.loss_start, "end": self.loss_end},
                "plain": self.plain, "empty_prompt": self.empty_prompt, "seconds": self.seconds,
                "knobs": [s.summary() for s in self.sweeps]}


@dataclass
class KnobsDemoResult:
    out: Path
    task: str
    target: float  # the exact edit's amount
    families: list[FamilyResult]
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def targets_met(self) -> bool:
        return all(s.holds and s.identical_at_neutral for f in self.families for s in f.sweeps)


# ---------------------------------------------------------------- data and training

def write_knob_edits(folder: Path, photos: list[cat.Photo], task: cat.CatTask, seed: int) -> Path:
    """Per photo: the empty prompt (target: the photo) and the task's instruction (target: its exact edit at
    strength 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for p in photos:
        image, target = f"{p.name}.png", f"{p.name}-edit.png"
        to_pil(p.image * 2 - 1).save(folder / image)
        to_pil(task.apply(p.image.unsqueeze(0), task.value_at(1.0), seed)[0] * 2 - 1).save(folder / target)
        samples += [EditSample(f"{p.name}/none", image, (), image),
                    EditSample(f"{p.name}/edit", image, (task.instruction(),), target)]
    return write_edits(folder, samples, tool="kontext-sliders demo --method knobs")


def editor_config(s: KnobsDemoSettings, name: str, edits: Path):
    return config_from_dict({
        "method": "editor",
        "model": {"family": name, "scratch": dict(family(name).DEMO_TRANSFORMER), "gradient_checkpointing": False},
        "lora": {"enabled": False},
        "data": {"edits": [str(edits)], "resolution": s.resolution, "text_encoder": "learned", "pixel_space": True,
                 "learned_text_tokens": TEXT_TOKENS, "cache_dir": str(s.out / "cache")},
        "slideredit": {"max_lines": MAX_LINES},
        "optim": {"lr": s.lr, "weight_decay": 0.0, "scheduler": "cosine", "warmup_steps": s.warmup_steps},
        "run": {"output_dir": str(s.out / f"editor_{name}"), "max_steps": s.steps, "batch_size": s.batch_size,
                "seed": s.seed, "mixed_precision": "no", "checkpoint_every": s.steps, "keep_checkpoints": 1,
                "log_every": 100, "validation_pairs": 2, "sample_steps": s.sample_steps, "progress": s.progress}})


def _loss_ends(losses: list[float]) -> tuple[float, float]:
    losses = losses or [math.nan]
    window = max(1, min(20, len(losses) // 10))
    return sum(losses[:window]) / window, sum(losses[-window:]) / window


def run_family(s: KnobsDemoSettings, name: str, edits: Path, task: cat.CatTask, sources: torch.Tensor,
               tolerance: float) -> FamilyResult:
    """Train and export the family's editor, then sweep both knobs on it."""
    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    trained = train(editor_config(s, name, edits))
    editor_dir = s.out / "weights" / f"editor_{name}"
    export_checkpoint(trained.output_dir, editor_dir)
    editor = KnobEditor(family(name).load_transformer(editor_dir), task.instruction(), TEXT_TOKENS, MAX_LINES,
                        s.sample_steps, s.seed)
    plain = editor.render(sources)
    empty = editor.render(sources, editor.empty)
    sweeps = [knob_sweep("modulation", lambda m: editor.modulation(sources, m, s.terms), s.modulation, 1.0, plain,
                         sources, task, tolerance),
              # claimed from the instruction removed to whole: an editor trained on one amount has no larger edit
              # to extrapolate its text toward (docs/results.md: past 1 the sweep turns back on every family)
              knob_sweep("sliders", lambda v: editor.sliders(sources, v), s.sliders, 1.0, plain, sources, task,
                         tolerance, claimed_to=1.0),
              knob_sweep("guidance", lambda w: editor.instruction_guidance(sources, w), s.guidance, 1.0, plain,
                         sources, task, tolerance)]
    start, end = _loss_ends(trained.losses)
    return FamilyResult(name, start, end, measured_value(task, sources, plain), measured_value(task, sources, empty),
                        sweeps, time.perf_counter() - t0)


# ---------------------------------------------------------------- the command

def run_knobs_demo(s: KnobsDemoSettings) -> KnobsDemoResult:
    """The whole knobs demo with ``s.threads`` torch threads."""
    return with_threads(s.threads, lambda: _run(s))


def _run(s: KnobsDemoSettings) -> KnobsDemoResult:
    tasks = demo_tasks(s)
    if len(tasks) != 1:
        raise ValueError(f"the knobs demo measures one edit: give one task, got {s.tasks!r}")
    unknown = [f for f in s.families if f not in FAMILIES]
    if unknown or not s.families:
        raise ValueError(f"families must be among {', '.join(FAMILIES)}, got {', '.join(unknown) or 'none'}")
    if s.terms not in TERMS:
        raise ValueError(f"terms must be one of {', '.join(TERMS)}, got {s.terms!r}")
    task = tasks[0]
    seconds, t0 = {}, time.perf_counter()
    train_photos, held_out = demo_photos(s)
    edits = s.out / "data" / "editor"
    write_knob_edits(edits, train_photos, task, s.seed)
    sources = torch.stack([p.image for p in held_out])
    exact = measured_value(task, sources, task.apply(sources, task.value_at(1.0), s.seed))
    seconds["data"] = time.perf_counter() - t0
    results = []
    for name in s.families:
        results.append(run_family(s, name, edits, task, sources, s.tolerance * abs(exact)))
        seconds[name] = results[-1].seconds
    result = KnobsDemoResult(s.out, task.name, exact, results, seconds)
    result.report = write_knobs_report(s, task, result, sources)
    atomic_write(s.out / "metrics_knobs.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"task": task.name, "unit": task.unit, "exact": result.target,
         "families": {f.family: f.summary() for f in results}, "targets_met": result.targets_met(),
         "seconds": seconds,
         "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}},
        indent=1), encoding="utf-8"))
    return result


def run_command(args: argparse.Namespace, common: dict) -> int:
    families = FAMILIES if args.family == "all" else (args.family,)
    extra = {"steps": args.steps} if args.steps is not None else {}
    settings = KnobsDemoSettings(args.out, families=families, terms=args.terms, **extra, **common)
    result = run_or_report(run_knobs_demo, settings)
    if result is None:
        return 2
    for f in result.families:
        print(f"{f.family}: editor loss {f.loss_start:.3g} -> {f.loss_end:.3g}; {result.task} plain "
              f"{f.plain:+.2f} (exact {result.target:+.2f}), empty prompt {f.empty_prompt:+.2f}")
        for sweep in f.sweeps:
            pairs = ", ".join(f"{v:g}: {m:+.2f}" for v, m in zip(sweep.values, sweep.measured))
            sides = "/".join({1: "rising", -1: "falling", 0: "no"}[sweep.side(above)] for above in (False, True))
            claim = "" if sweep.claimed_to is None else f"; over 0 ... {sweep.claimed_to:g}: " + \
                ("yes" if sweep.holds else "NO")
            print(f"  {sweep.knob}: {pairs}; monotone {'yes' if sweep.monotone else 'NO'} (below/above 1: {sides})"
                  f"{claim}, neutral = plain {'bit for bit' if sweep.identical_at_neutral else 'NO'}")
    print(f"demo: {sum(result.seconds.values()):.0f} s in all; targets {'met' if result.targets_met() else 'MISSED'}; "
          f"report: {result.report}")
    return 1 if args.require_targets and not result.targets_met() else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES + ("all",), default="all",
                        help="knobs: which model family's tiny editor (default: %(default)s)")
    parser.add_argument("--terms", choices=list(TERMS), default=KnobsDemoSettings(Path(".")).terms,
                        help="knobs: the halves of the text modulation the modulation knob scales "
                             "(default: %(default)s)")


_K = KnobsDemoSettings(Path("."))
register_demo("knobs", run_command, "the training-free knobs (Modulation Strength, Instruction Sliders) on a "
              "tiny editor of each model family, measured (report_knobs.md)", add_arguments, order=3,
              notes={"tasks": f"knobs: exactly one, {_K.tasks}", "ranges": f"knobs: {_K.ranges}",
                     "steps": f"knobs: {_K.steps} per family's editor",
                     "targets": "knobs: Modulation Strength and Instruction Guidance monotone over their sweeps, "
                     "Instruction Sliders over 0 ... 1, and every knob's neutral value the plain editor bit for bit"})
