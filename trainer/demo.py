"""``kontext-sliders demo``: the whole pipeline offline, small enough for 2 CPU cores in minutes.

1. data: ground-truth CAT trajectories (``data/cat.py``) on crops of scikit-image's photos, frames at
   strengths 0, 1/4, ..., 1; two photos are held out entirely;
2. train: the real trainer (``loop.train``) on a tiny FLUX-architecture editor (diffusers
   ``FluxTransformer2DModel``, pixel space, every weight trainable: there is no pretrained base) with
   the strength projector and a learned embedding per instruction as its text encoder;
3. export: the projector file the ComfyUI loader reads, plus the whole editor;
4. evaluate on the held-out photos at the held-out strengths 1/8, 3/8, 5/8, 7/8 with the editor
   rebuilt from the exported files: PSNR against the exact frame, linearity (Pearson |r| between the
   requested strength and the value the task measures back from the output), smoothness (triangle
   deficit and step-size KL of the sweep); write ``report.md`` with plots, a sweep GIF and a contact sheet.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..core.atomic import atomic_write
from ..core.kontinuous.weights import load_kontinuous
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import TrainConfig, config_from_dict
from .data import cat
from .data.official import smoothness_kl
from .export import export_checkpoint
from .metrics import adjacent_distances, pearson_r, psnr, triangle_deficit
from .model import KontextSliderModel, build_model
from .sampling import sample_edit

log = logging.getLogger("kontext_sliders.trainer")

# hidden 64 = 2 heads x 32 (RoPE axes 8 + 12 + 12 = 32), 2 double + 2 single blocks; pixels packed 2x2
DEMO_TRANSFORMER = {"patch_size": 1, "in_channels": 12, "out_channels": 12, "num_layers": 2,
                    "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
                    "joint_attention_dim": 64, "pooled_projection_dim": 64, "guidance_embeds": False,
                    "axes_dims_rope": [8, 12, 12]}
TRAIN_FRAMES = 5  # strengths 0, 1/4, 1/2, 3/4, 1 are trained on ...
SWEEP = [k / 8 for k in range(9)]  # ... so the odd eighths of the evaluation sweep are held out
HELD_OUT_STRENGTHS = SWEEP[1::2]
TARGETS = {"exposure": {"psnr_db": 25.0, "abs_r": 0.95}}


@dataclass
class DemoSettings:
    out: Path
    tasks: str = "exposure,saturation"
    ranges: str = "saturation=1:0"  # desaturate: strength 1 = grey
    held_out: tuple[str, ...] = ("chelsea", "coffee")
    # photos are resized to each of these sizes and cut into resolution-sized crops: zoomed out, in
    # between and close up, so that 5 training photos give crops of many kinds of content
    photo_sizes: tuple[int, ...] = (32, 64, 128)
    resolution: int = 16
    crops_per_photo: int = 64
    eval_crops_per_photo: int = 8
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    sample_steps: int = 10
    seed: int = 0
    progress: bool = True
    # torch threads for the whole demo. Its tensors are tiny, so a pool as wide as the machine gains little
    # (2 cores: 0.079 s/step with 2 threads, 0.105 with 1) but spins waiting for a core that another busy
    # process holds (0.34 s/step with 2 threads beside one busy process, 6 s/step beside two; 0.10 with 1).
    threads: int = 1
    transformer: dict = field(default_factory=lambda: dict(DEMO_TRANSFORMER))


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

    def targets_met(self) -> bool | None:
        target = TARGETS.get(self.task)
        if target is None:
            return None
        return self.psnr_held_out >= target["psnr_db"] and self.abs_r_held_out >= target["abs_r"]


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------- data

def crops(photo: cat.Photo, size: int, count: int, generator: torch.Generator) -> list[cat.Photo]:
    """``count`` random size x size crops (positions drawn from ``generator``)."""
    _, h, w = photo.image.shape
    out = []
    for i in range(count):
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        out.append(cat.Photo(f"{photo.name}-{i:03d}", photo.image[:, y:y + size, x:x + size].contiguous()))
    return out


def demo_photos(s: DemoSettings) -> tuple[list[cat.Photo], list[cat.Photo]]:
    """(training crops, held-out images): held-out = each held-out photo whole (resized) + its crops."""
    unknown = [n for n in s.held_out if n not in cat.SKIMAGE_PHOTOS]
    if unknown:
        raise ValueError(f"held-out photo(s) {unknown} are not scikit-image photos ({', '.join(cat.SKIMAGE_PHOTOS)})")
    train_names = [n for n in cat.SKIMAGE_PHOTOS if n not in s.held_out]
    if not train_names or not s.held_out:
        raise ValueError("the demo needs at least one training photo and one held-out photo")
    if any(size < s.resolution for size in s.photo_sizes):
        raise ValueError(f"photo sizes {s.photo_sizes} must be at least the resolution {s.resolution}")
    g = torch.Generator().manual_seed(s.seed)
    per_size = [s.crops_per_photo // len(s.photo_sizes) + (i < s.crops_per_photo % len(s.photo_sizes))
                for i in range(len(s.photo_sizes))]
    train = []
    for size, count in zip(s.photo_sizes, per_size):
        for p in cat.skimage_photos(train_names, size):
            train += [cat.Photo(f"{c.name}-{size}", c.image) for c in crops(p, s.resolution, count, g)]
    held, g = [], torch.Generator().manual_seed(s.seed + 1)  # own generator: same held-out set whatever the data
    middle = sorted(s.photo_sizes)[len(s.photo_sizes) // 2]
    wholes = cat.skimage_photos(list(s.held_out), s.resolution)
    for whole, p in zip(wholes, cat.skimage_photos(list(s.held_out), middle)):
        held.append(whole)
        held += crops(p, s.resolution, s.eval_crops_per_photo, g)
    return train, held


def demo_tasks(s: DemoSettings) -> list[cat.CatTask]:
    """The chosen tasks; a range given for a task that is not chosen is ignored (the defaults name saturation)."""
    ranges = cat.parse_ranges(s.ranges)
    return [t.with_range(*ranges[t.name]) if t.name in ranges else t for t in cat.select_tasks(s.tasks)]


def demo_config(s: DemoSettings, data_dir: Path) -> TrainConfig:
    return config_from_dict({
        "model": {"scratch": s.transformer, "gradient_checkpointing": False},
        "lora": {"enabled": False},  # scratch: the whole transformer trains, a LoRA would add nothing
        "projector": {"strength_embed_dim": 64, "slider_dropout": 0.0},
        "data": {"trajectories": [str(data_dir)], "resolution": s.resolution, "text_encoder": "learned",
                 "pixel_space": True, "cache_dir": str(s.out / "cache")},
        "optim": {"lr": s.lr, "weight_decay": 0.0, "scheduler": "cosine", "warmup_steps": s.warmup_steps},
        "run": {"output_dir": str(s.out / "run"), "max_steps": s.steps, "batch_size": s.batch_size,
                "seed": s.seed, "mixed_precision": "no", "checkpoint_every": max(s.steps // 3, 1),
                "keep_checkpoints": 1, "log_every": 100, "validation_pairs": 2,
                "validation_strengths": SWEEP[::2], "sample_steps": s.sample_steps, "progress": s.progress},
    })


# ---------------------------------------------------------------- weights

def save_editor(model: KontextSliderModel, config: TrainConfig, path: Path) -> None:
    """The whole demo editor (transformer, learned text embedding, projector) in one safetensors file."""
    meta = {"kontext_sliders_demo_editor": json.dumps({
        "transformer": config.model.scratch, "projector": config.to_dict()["projector"],
        "instructions": model.text_encoder.instructions, "learned_text_tokens": config.data.learned_text_tokens})}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def load_editor(editor_file: Path, projector_file: Path | None = None) -> KontextSliderModel:
    """Rebuild the editor from ``save_editor``'s file; ``projector_file`` (the loader's format) replaces
    its projector."""
    from safetensors import safe_open
    with safe_open(str(editor_file), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("kontext_sliders_demo_editor", "null") or "null")
    if meta is None:
        raise ValueError(f"{editor_file} is not a demo editor file (no kontext_sliders_demo_editor metadata)")
    config = config_from_dict({"model": {"scratch": meta["transformer"], "gradient_checkpointing": False},
                               "lora": {"enabled": False}, "projector": meta["projector"],
                               "data": {"text_encoder": "learned", "pixel_space": True,
                                        "learned_text_tokens": meta["learned_text_tokens"]}})
    model = build_model(config, meta["instructions"])
    model.load_state_dict(load_file(editor_file))
    if projector_file is not None:
        weights = load_kontinuous(projector_file)
        if weights.projector_config != model.projector.config:
            raise ValueError(f"{projector_file} holds a projector for {weights.projector_config}, "
                             f"the editor needs {model.projector.config}")
        model.projector.load_state_dict(weights.projector_state)
    return model.eval()


def export_editor_model(config: TrainConfig, result, instructions: list[str], weights_dir: Path) -> KontextSliderModel:
    """A scratch Kontinuous run's files: the projector the ComfyUI loader reads
    (``kontinuous_demo.safetensors``), its transformer as a diffusers folder (``transformer/``) and the whole editor
    (``demo_editor.safetensors``: transformer, learned text embedding, projector); returns the editor rebuilt from
    the last file, so what is evaluated is exactly what was written."""
    projector_file = weights_dir / "kontinuous_demo.safetensors"
    export_checkpoint(result.output_dir, projector_file, transformer_dir=weights_dir)
    trainable, _ = load_checkpoint(latest_checkpoint(result.output_dir))
    trained = build_model(config, instructions)
    missing = {n for n, p in trained.named_parameters() if p.requires_grad} - set(trainable)
    if missing:
        raise RuntimeError(f"the checkpoint lacks trainable tensors: {sorted(missing)[:3]}")
    trained.load_state_dict(trainable, strict=False)
    editor_file = weights_dir / "demo_editor.safetensors"
    save_editor(trained, config, editor_file)
    return load_editor(editor_file, projector_file)


# ---------------------------------------------------------------- evaluation

Editor = Callable[[torch.Tensor, cat.CatTask, float], torch.Tensor]


def model_editor(model: KontextSliderModel, sample_steps: int, seed: int) -> Editor:
    """(sources in [0, 1], task, strength) -> edited images in [0, 1]; the same noise for every strength."""
    def edit(sources: torch.Tensor, task: cat.CatTask, strength: float) -> torch.Tensor:
        n = sources.shape[0]
        out = sample_edit(model, sources * 2 - 1, torch.full((n,), float(strength)), sample_steps,
                          torch.Generator().manual_seed(seed), instructions=[task.instruction()] * n)
        return ((out + 1) / 2).clamp(0, 1)
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

@dataclass
class DemoResult:
    out: Path
    evaluations: list[TaskEvaluation]
    seconds: dict[str, float]
    report: Path

    def targets_met(self) -> bool:
        return all(e.targets_met() is not False for e in self.evaluations)


def with_threads(threads: int, run: Callable[[], object]):
    """``run()`` with ``threads`` torch threads (the caller's setting is restored afterwards)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def run_demo(s: DemoSettings) -> DemoResult:
    """The whole demo with ``s.threads`` torch threads."""
    return with_threads(s.threads, lambda: _run_demo(s))


def timing_line(seconds: dict[str, float]) -> str:
    return f"demo: {sum(seconds.values()):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})"


def _run_demo(s: DemoSettings) -> DemoResult:
    from .loop import train
    from .report import write_report
    tasks = demo_tasks(s)  # bad arguments fail here, before anything is written
    seconds, t0 = {}, time.perf_counter()
    train_photos, held_out = demo_photos(s)
    torch.manual_seed(s.seed)
    s.out.mkdir(parents=True, exist_ok=True)
    data_dir = s.out / "data"
    cat.synthesize(data_dir, train_photos, tasks, TRAIN_FRAMES, s.seed)
    seconds["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = demo_config(s, data_dir)
    result = train(config)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = export_editor_model(config, result, sorted({t.instruction() for t in tasks}), s.out / "weights")
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sources = torch.stack([p.image for p in held_out])
    edit = model_editor(model, s.sample_steps, s.seed)
    evaluations, sweeps = [], {}
    for task in tasks:
        evaluation, model_sweep, truth_sweep = evaluate_task(edit, task, sources, s.seed)
        evaluations.append(evaluation)
        sweeps[task.name] = (model_sweep, truth_sweep)
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = write_report(s, config, result, evaluations, sweeps, sources, held_out, train_photos, seconds,
                          sum(p.numel() for p in model.parameters()))
    seconds["report"] = time.perf_counter() - t0
    atomic_write(s.out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"evaluations": [asdict(e) | {"psnr_held_out": e.psnr_held_out, "residual_held_out": e.residual_held_out,
                                      "targets_met": e.targets_met()}
                         for e in evaluations], "seconds": seconds,
         "torch_threads": torch.get_num_threads(),
         "train": {"steps": result.steps, "seconds_per_step": result.seconds_per_step,
                   "peak_memory_bytes": result.peak_memory_bytes, "last_loss": result.last_loss}},
        indent=1), encoding="utf-8"))
    return DemoResult(s.out, evaluations, seconds, report)


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = DemoSettings(Path("."))
    from .slideredit_demo import SliderEditDemoSettings
    e = SliderEditDemoSettings(Path("."))
    from .numeric_demo import NumericDemoSettings
    n = NumericDemoSettings(Path("."))
    parser.add_argument("--method", choices=["kontinuous", "slideredit", "numeric"], default="kontinuous",
                        help="which method the demo trains and measures (default: %(default)s): a Kontinuous "
                             "strength slider, SliderEdit per-instruction sliders (a tiny base editor, then an "
                             "STLoRA trained with PPS on it; report_slideredit.md), or NumeriKontrol against a "
                             "Kontinuous baseline on the same frame pairs (report_numeric.md)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: %(default)s)")
    parser.add_argument("--tasks", help=f"CAT tasks (default: {d.tasks}; slideredit: exactly two, {e.tasks}; "
                                        f"numeric: two or more, {n.tasks}; known: "
                                        f"{', '.join(cat.TASKS)})")
    parser.add_argument("--ranges", help=f"value ranges start:end per task, used for the tasks chosen (default: "
                                         f"{d.ranges}; slideredit: {e.ranges})")
    parser.add_argument("--held-out", default=",".join(d.held_out),
                        help="scikit-image photos kept out of training (default: %(default)s)")
    parser.add_argument("--steps", type=int, help=f"training steps (default: {d.steps}; numeric: {n.steps} for each "
                                                  f"of the two models)")
    parser.add_argument("--extents", default=",".join(str(Fraction(x).limit_denominator(64)) for x in n.extents),
                        help="numeric: fractions of each task's range the training trajectories span, one drawn "
                             "per trajectory; the baseline's 0-1 strength is per trajectory (default: %(default)s)")
    parser.add_argument("--base-steps", type=int, default=n.base_steps,
                        help="numeric: > 0 trains a base editor for this many steps first and fine-tunes both "
                             "models on it (see --finetune), the paper's setting; 0: both from scratch "
                             "(default: %(default)s)")
    parser.add_argument("--base-composed", type=int, default=n.base_composed,
                        help="numeric with --base-steps: two-line edits per training photo in the base editor's "
                             "data (default: %(default)s)")
    parser.add_argument("--lines-pooled", choices=("mean", "sum"),
                        help="numeric with --base-steps: the offline text encoder's pooled vector of a prompt of "
                             f"several lines, the mean of its lines' or their sum (default: {n.lines_pooled})")
    parser.add_argument("--finetune-rank", type=int, default=n.finetune_rank,
                        help="numeric with --base-steps: LoRA rank of both fine-tunes (default: %(default)s)")
    parser.add_argument("--finetune", choices=("lora", "whole"), default=n.finetune,
                        help="numeric with --base-steps: what the two fine-tunes train besides the adapter / "
                             "projector: a LoRA, or every weight of the base (model.train_transformer) "
                             "(default: %(default)s)")
    parser.add_argument("--finetune-lr", type=float, default=n.finetune_lr,
                        help="numeric with --base-steps: learning rate of both fine-tunes (default: %(default)g)")
    parser.add_argument("--finetune-transformer-lr", type=float, default=n.finetune_transformer_lr,
                        help="numeric with --finetune whole: learning rate of the base's own weights, the adapter "
                             "and the projector keeping --finetune-lr (default: one rate for all)")
    parser.add_argument("--editor-steps", type=int, default=e.editor_steps,
                        help="slideredit: steps of the base editor (default: %(default)s)")
    parser.add_argument("--slider-steps", type=int, default=e.slider_steps,
                        help="slideredit: steps of the STLoRA (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=d.resolution,
                        help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of the crops, the initial weights and the noise (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads (default: %(default)s; more spin waiting for a core that another busy "
                             "process holds, several times slower; on an idle 2-core machine 2 are ~25%% faster)")
    parser.add_argument("--require-targets", action="store_true",
                        help="exit with status 1 when a target is missed (kontinuous: exposure PSNR >= 25 dB, "
                             "|r| >= 0.95; slideredit: PPS loss drop >= 10x, and per line monotonic, suppression "
                             ">= 5, decoupling <= 0.2; numeric: PSNR above Kontinuous on average and per task, "
                             "a two-edit prompt within 2 dB of the single edits chained, on the composed truth; order swap "
                             "< 0.5 dB)")
    return parser


def run_demo_command(args: argparse.Namespace) -> int:
    if args.resolution % 2 or not 8 <= args.resolution <= 64:
        print(f"demo: error: --resolution must be even and within 8..64, got {args.resolution}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"demo: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    common = dict(held_out=tuple(n.strip() for n in args.held_out.split(",") if n.strip()),
                  resolution=args.resolution, seed=args.seed, threads=args.threads)
    common.update({k: v for k, v in (("tasks", args.tasks), ("ranges", args.ranges)) if v is not None})
    if args.method == "slideredit":
        return _run_slideredit_command(args, common)
    if args.method == "numeric":
        return _run_numeric_command(args, common)
    settings = DemoSettings(args.out, **common, **({} if args.steps is None else {"steps": args.steps}))
    result = _run_or_report(run_demo, settings)
    if result is None:
        return 2
    for e in result.evaluations:
        met = {True: "target met", False: "TARGET MISSED", None: "no target"}[e.targets_met()]
        print(f"{e.task}: held-out PSNR {e.psnr_held_out:.2f} dB (no edit: {e.psnr_no_edit_held_out:.2f} dB), "
              f"linearity |r| {e.abs_r_held_out:.3f}, triangle deficit {e.triangle_deficit_model:.3f} "
              f"(exact frames: {e.triangle_deficit_truth:.3f}) - {met}")
    print(f"{timing_line(result.seconds)}; report: {result.report}")
    return 1 if args.require_targets and not result.targets_met() else 0


def _run_or_report(run: Callable, settings):
    """``run(settings)``, or None after printing a ValueError as the command's error (exit status 2)."""
    try:
        return run(settings)
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return None


def _targets_exit(args: argparse.Namespace, result) -> int:
    print(f"{timing_line(result.seconds)}; targets {'met' if result.targets_met() else 'MISSED'}; "
          f"report: {result.report}")
    return 1 if args.require_targets and not result.targets_met() else 0


def _run_slideredit_command(args: argparse.Namespace, common: dict) -> int:
    from .slideredit_demo import SliderEditDemoSettings, run_slideredit_demo
    settings = SliderEditDemoSettings(args.out, editor_steps=args.editor_steps, slider_steps=args.slider_steps,
                                      **common)
    result = _run_or_report(run_slideredit_demo, settings)
    if result is None:
        return 2
    print(f"PPS loss {result.loss_start:.3g} -> {result.loss_end:.3g} ({result.loss_drop:.1f}x lower)")
    for name, rows in (("STLoRA", result.stlora), ("training-free", result.training_free)):
        for r in rows:
            print(f"{name} line {r['line'] + 1} ({r['task']}): range {r['movement']:.2f} of the task's, "
                  f"monotonic {'yes' if r['monotonic'] else 'no'}, decoupling {r['decoupling']:.3f}, "
                  f"suppression {r['suppression']:.2f}")
    return _targets_exit(args, result)


def _run_numeric_command(args: argparse.Namespace, common: dict) -> int:
    from .numeric_demo import NumericDemoSettings, run_numeric_demo
    try:
        extents = cat.parse_extents(args.extents)
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    if args.base_steps < 0 or args.finetune_rank < 1 or args.base_composed < 1:
        print(f"demo: error: --base-steps must be >= 0, --finetune-rank and --base-composed >= 1, got "
              f"{args.base_steps}, {args.finetune_rank} and {args.base_composed}", file=sys.stderr)
        return 2
    rates = (("--finetune-lr", args.finetune_lr), ("--finetune-transformer-lr", args.finetune_transformer_lr))
    for flag, value in rates:
        if value is not None and not value > 0:
            print(f"demo: error: {flag} must be > 0, got {value}", file=sys.stderr)
            return 2
    if args.finetune_transformer_lr is not None and (args.finetune != "whole" or not args.base_steps):
        print("demo: error: --finetune-transformer-lr is the rate of the base's weights in a whole fine-tune: it "
              "needs --base-steps > 0 and --finetune whole", file=sys.stderr)
        return 2
    if args.lines_pooled is not None and not args.base_steps:
        print("demo: error: --lines-pooled sets the text of the base editor and its fine-tunes: it needs "
              "--base-steps > 0", file=sys.stderr)
        return 2
    settings = NumericDemoSettings(args.out, extents=extents, base_steps=args.base_steps,
                                   base_composed=args.base_composed,
                                   **({} if args.lines_pooled is None else {"lines_pooled": args.lines_pooled}),
                                   finetune_rank=args.finetune_rank, finetune=args.finetune,
                                   finetune_lr=args.finetune_lr,
                                   finetune_transformer_lr=args.finetune_transformer_lr, **common,
                                   **({} if args.steps is None else {"steps": args.steps}))
    result = _run_or_report(run_numeric_demo, settings)
    if result is None:
        return 2
    for t in result.tasks:
        print(f"{t['task']}: held-out PSNR NumeriKontrol {t['psnr_numeric']:.2f} dB, Kontinuous "
              f"{t['psnr_kontinuous']:.2f} dB (no edit: {t['psnr_no_edit']:.2f} dB); measured-value MAE "
              f"{t['mae_numeric']:.3g} {t['unit']} (Kontinuous {t['mae_kontinuous']:.3g}, exact {t['mae_exact']:.3g})")
    avg, two = result.average, result.two_edit
    print(f"average: NumeriKontrol {avg['psnr_numeric']:.2f} dB, Kontinuous {avg['psnr_kontinuous']:.2f} dB; "
          f"two-edit {two['psnr_ab']:.2f} dB (the single edits chained: {two['psnr_single_route']:.2f} dB, gap "
          f"{two['gap_db']:.2f} dB; single edits on their own truth: {two['single_edit_psnr']:.2f} dB), order swap "
          f"{two['swap_db']:.3f} dB")
    return _targets_exit(args, result)
