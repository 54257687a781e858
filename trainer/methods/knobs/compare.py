"""``kontext-sliders demo --method compare``: the model-agnostic and training-free knobs against the trained
Kontinuous slider, on one tiny editor, measured against the exact edits (offline, 2 CPU cores, minutes).

1. data: the Kontinuous demo's CAT trajectories (frames at every twelfth of each task's range) on its training
   crops; the base editor's samples from them: each source with its task's instruction (target: the frame at
   strength 1) and with the empty prompt (target: the source itself: the neutral prompt keeps the image);
2. a base editor (``method: editor``, the demo transformer from scratch, the offline per-line text encoder);
3. Kontinuous fine-tuned on that base (projector + every weight, the Kontinuous demo's frames and recipe);
4. on the held-out photos, at the Kontinuous demo's sweep (0, 1/8, ..., 1; the odd eighths never trained), four
   knobs from "no edit" (0) to the full edit (1): Kontinuous Kontext Apply (trained), and on the base editor
   Kontext Modulation Strength (multiplier), Kontext Conditioning Strength and Kontext Edit Velocity (strength;
   the empty prompt as the neutral one), through their diffusers twins (tests/crosscheck/). Measured with the
   Kontinuous demo's evaluation: PSNR against the exact frames, |r| of the measured attribute in the strength,
   triangle deficit and step KL of the sweep; and identity away from the edit: PSNR to the source on the pixels
   the exact full edit leaves unchanged (the vignette's centre; global edits have none).
   ``report_compare.md``, ``metrics_compare.json``, ``compare_contact_sheet.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ....core.atomic import atomic_write
from ...data import cat
from ...data.edits import EditSample, write_edits
from ...engine.codecs import text_encoder_for
from ...engine.config import TrainConfig, config_from_dict
from ...engine.demo import DemoSettings, demo_photos, demo_tasks, register_demo, run_or_report, with_threads
from ...engine.export import export_checkpoint
from ...engine.features import PixelCodec
from ...engine.loop import train
from ...engine.sampling import sample_edit
from ...families.flux1 import load_transformer
from ..kontinuous.demo import KontinuousDemoSettings, demo_config
from ..kontinuous.evaluation import HELD_OUT_STRENGTHS, SWEEP, TaskEvaluation, evaluate_task
from ..kontinuous.export import kontinuous_on_base
from .evaluation import KnobEditor

TEXT_TOKENS = 4
KNOBS = ("kontinuous", "modulation", "conditioning", "velocity")
UNCHANGED = 2 / 255  # a pixel the exact full edit moves less than this counts as away from the edit
_K = KontinuousDemoSettings(Path("."))


@dataclass
class CompareDemoSettings(DemoSettings):
    tasks: str = "exposure,saturation,hue,contrast,vignette"
    ranges: str = _K.ranges
    base_steps: int = 2000  # the base editor, from scratch
    steps: int = 3000  # Kontinuous fine-tuned on the base (every weight and the projector)
    finetune_lr: float = 3e-4
    threads: int = _K.threads
    train_frames: int = _K.train_frames
    pixel_chroma_scale: float = _K.pixel_chroma_scale
    terms: str = "both"  # the text modulation terms the modulation knob scales (the knobs demo's)


@dataclass
class KnobResult:
    knob: str
    evaluation: TaskEvaluation
    identity_psnr: float  # mean over the sweep: PSNR to the source away from the edit (nan: no such pixels)
    neutral_is_plain: bool  # the knob at its "as written" value equals the plain editor bit for bit

    def summary(self) -> dict:
        e = self.evaluation
        return {"knob": self.knob, "psnr_sweep": _mean(e.psnr_model), "psnr_held_out": e.psnr_held_out,
                "psnr_at_0": e.psnr_model[0], "psnr_at_1": e.psnr_model[-1], "abs_r": e.abs_r_held_out,
                "abs_r_all": e.abs_r_all, "triangle_deficit": e.triangle_deficit_model,
                "triangle_deficit_exact": e.triangle_deficit_truth, "step_kl": e.step_kl_model,
                "step_kl_exact": e.step_kl_truth, "identity_psnr": self.identity_psnr,
                "neutral_is_plain": self.neutral_is_plain, "measured": e.measured}


@dataclass
class CompareResult:
    out: Path
    tasks: dict[str, list[KnobResult]]  # task -> one result per knob, in KNOBS order
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def identities_hold(self) -> bool:
        return all(r.neutral_is_plain for rows in self.tasks.values() for r in rows if r.knob != "kontinuous")


def _mean(values) -> float:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------- data and training

def base_samples(root: Path, frames_dir: Path, trajectories, tasks: dict) -> Path:
    """Per trajectory: the source with its instruction (target: the frame at strength 1) and with the empty
    prompt (target: the source)."""
    rel = Path(os.path.relpath(frames_dir, root))
    samples = []
    for t in trajectories:
        source, full = str(rel / t.frames[0].path), str(rel / t.frames[-1].path)
        samples += [EditSample(f"{t.id}/none", source, (), source),
                    EditSample(f"{t.id}/edit", source, (tasks[t.task].instruction(),), full)]
    return write_edits(root, samples, tool="kontext-sliders demo --method compare")


def _lines_text(d: dict) -> dict:
    d["data"].update(text_encoder="lines", learned_text_tokens=TEXT_TOKENS)
    d.setdefault("slideredit", {})["max_lines"] = 1
    return d


def base_config(s: CompareDemoSettings, edits: Path, frames_dir: Path) -> TrainConfig:
    d = demo_config(s, frames_dir).to_dict()
    d["method"] = "editor"
    d.pop("projector", None)
    d["data"].update(trajectories=[], edits=[str(edits)], cache_dir=str(s.out / "cache_base"))
    d["run"].update(output_dir=str(s.out / "base_run"), max_steps=s.base_steps,
                    checkpoint_every=max(s.base_steps // 3, 1))
    d["run"].pop("validation_strengths", None)
    return config_from_dict(_lines_text(d))


def kontinuous_config(s: CompareDemoSettings, frames_dir: Path, base: Path) -> TrainConfig:
    d = demo_config(s, frames_dir).to_dict()
    d["model"].update(pretrained=str(base), scratch=None, train_transformer=True)
    d["optim"]["lr"] = s.finetune_lr
    d["data"]["cache_dir"] = str(s.out / "cache_kontinuous")
    d["run"]["output_dir"] = str(s.out / "kontinuous_run")
    return config_from_dict(_lines_text(d))


# ---------------------------------------------------------------- evaluation

def kontinuous_knob(model, text, codec: PixelCodec, steps: int, seed: int):
    """(sources, task, strength) -> the trained slider's edit, the prompt encoded as in training."""
    @torch.no_grad()
    def edit(sources: torch.Tensor, task: cat.CatTask, strength: float) -> torch.Tensor:
        n, t = sources.shape[0], text.encode(task.instruction())
        out = sample_edit(model, codec.to_latent(sources * 2 - 1), torch.full((n,), float(strength)), steps,
                          torch.Generator().manual_seed(seed), context=t["context"].expand(n, -1, -1),
                          pooled=t["pooled"].expand(n, -1))
        return ((codec.decode(out) + 1) / 2).clamp(0, 1)
    return edit


def identity_psnr(sweep: torch.Tensor, truth: torch.Tensor, sources: torch.Tensor) -> float:
    """Mean over the sweep and the images of the PSNR to the source on the pixels the exact full edit leaves
    unchanged (nan where an image has under 5 % of them: a global edit)."""
    values = []
    for i in range(sources.shape[0]):
        keep = (truth[-1, i] - sources[i]).abs().amax(dim=0) < UNCHANGED
        if keep.float().mean() < 0.05:
            continue
        for frame in sweep[:, i]:
            mse = ((frame - sources[i]) ** 2)[:, keep].mean().clamp_min(1e-10)
            values.append(float(-10 * torch.log10(mse)))
    return _mean(values)


def evaluate_knobs(task: cat.CatTask, sources: torch.Tensor, editors: dict, plain: torch.Tensor, seed: int):
    """Every knob on ``task``: (results, {knob: sweep [S, B, 3, H, W]}, the exact sweep)."""
    results, sweeps, truth = [], {}, None
    for knob, edit in editors.items():
        evaluation, sweep, truth = evaluate_task(edit, task, sources, seed, SWEEP)
        neutral = knob == "kontinuous" or torch.equal(sweep[-1], plain)
        results.append(KnobResult(knob, evaluation, identity_psnr(sweep, truth, sources), neutral))
        sweeps[knob] = sweep
    return results, sweeps, truth


# ---------------------------------------------------------------- the command

def run_compare_demo(s: CompareDemoSettings) -> CompareResult:
    return with_threads(s.threads, lambda: _run(s))


def _run(s: CompareDemoSettings) -> CompareResult:
    from .compare_report import write_compare_report
    tasks = demo_tasks(s)
    seconds, t0 = {}, time.perf_counter()
    train_photos, held_out = demo_photos(s)
    s.out.mkdir(parents=True, exist_ok=True)
    frames_dir = s.out / "data" / "frames"
    trajectories = cat.synthesize(frames_dir, train_photos, tasks, s.train_frames, s.seed)
    edits = s.out / "data" / "base"
    base_samples(edits, frames_dir, trajectories, {t.name: t for t in tasks})
    seconds["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    base_result = train(base_config(s, edits, frames_dir))
    base = s.out / "weights" / "base_editor"
    export_checkpoint(base_result.output_dir, base)
    seconds["train base editor"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    k_config = kontinuous_config(s, frames_dir, base)
    k_result = train(k_config)
    k_file, tuned = s.out / "weights" / "kontinuous_demo.safetensors", s.out / "weights" / "kontinuous_transformer"
    export_checkpoint(k_result.output_dir, k_file, transformer_dir=tuned)
    k_model = kontinuous_on_base(k_config, k_file, tuned)
    seconds["train Kontinuous"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    codec = PixelCodec(s.resolution, s.pixel_chroma_scale)
    sources = torch.stack([p.image for p in held_out])
    text = text_encoder_for(k_config, torch.device("cpu"))
    transformer = load_transformer(base)
    results, sweeps = {}, {}
    for task in tasks:
        ke = KnobEditor(transformer, task.instruction(), TEXT_TOKENS, 1, s.sample_steps, s.seed, codec=codec)
        editors = {"kontinuous": kontinuous_knob(k_model, text, codec, s.sample_steps, s.seed),
                   "modulation": lambda src, _t, v, ke=ke: ke.modulation(src, v, s.terms),
                   "conditioning": lambda src, _t, v, ke=ke: ke.conditioning_strength(src, v),
                   "velocity": lambda src, _t, v, ke=ke: ke.edit_velocity(src, v)}
        results[task.name], knob_sweeps, truth = evaluate_knobs(task, sources, editors, ke.render(sources), s.seed)
        sweeps[task.name] = (knob_sweeps, truth)
    seconds["evaluate"] = time.perf_counter() - t0
    result = CompareResult(s.out, results, seconds)
    result.report = write_compare_report(s, tasks, result, sweeps, sources, base_result, k_result)
    atomic_write(s.out / "metrics_compare.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"tasks": {name: [r.summary() for r in rows] for name, rows in results.items()},
         "held_out_strengths": HELD_OUT_STRENGTHS, "identities_hold": result.identities_hold(), "seconds": seconds,
         "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}},
        indent=1), encoding="utf-8"))
    return result


def run_command(args: argparse.Namespace, common: dict) -> int:
    extra = {"steps": args.steps} if args.steps is not None else {}
    if args.base_steps is not None:
        extra["base_steps"] = args.base_steps
    result = run_or_report(run_compare_demo, CompareDemoSettings(args.out, **extra, **common))
    if result is None:
        return 2
    for task, rows in result.tasks.items():
        print(f"{task}: " + "; ".join(f"{r.knob} {r.summary()['psnr_sweep']:.2f} dB |r| {r.evaluation.abs_r_held_out:.3f}"
                                      for r in rows))
    print(f"demo: {sum(result.seconds.values()):.0f} s in all; knobs at 1 = the base editor: "
          f"{'yes' if result.identities_hold() else 'NO'}; report: {result.report}")
    return 1 if args.require_targets and not result.identities_hold() else 0


_C = CompareDemoSettings(Path("."))
register_demo("compare", run_command, "the model-agnostic knobs (Conditioning Strength, Edit Velocity) and "
              "Modulation Strength against the trained Kontinuous slider on one tiny editor (report_compare.md)",
              order=4,
              notes={"tasks": f"compare: {_C.tasks}", "steps": f"compare: {_C.steps} for the Kontinuous fine-tune",
                     "targets": "compare: every training-free knob at 1 is the base editor bit for bit"})
