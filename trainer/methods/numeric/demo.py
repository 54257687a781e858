"""``kontext-sliders demo --method numeric``: NumeriKontrol against a 0-1 strength, offline, on 2 CPU cores.

1. data: ``synth cat`` trajectories (5 frames evenly over 1/3, 2/3 or all of each task's range, ``extents``) on
   the Kontinuous demo's training crops (``demo.demo_photos``: two photos held out entirely);
2. NumeriKontrol (``method: numeric``, ``model.train_transformer``): the demo's tiny FLUX transformer from
   scratch, every weight trained with the numeric adapter, no LoRA; rows = any two frames of one trajectory,
   the delta in the task's unit, the instruction from the registry's template;
3. the baseline, Kontinuous (``method: kontinuous``, the Kontinuous demo's recipe: ``demo.demo_config``) on the
   SAME frame pairs with 0-1 normalised strengths, the paper's Table 1 comparison: each frame k of a trajectory
   is a source twice, once with the frames above it ("increase ...", strength = |value - value_k| / the
   trajectory's extent) and once with those below ("decrease ..."); same steps, batch, lr schedule, seed;
4. export (the NumeriKontrol file + the transformer folder; the Kontinuous projector + editor) and evaluate from
   the exported files on the held-out photos: sources at the middle of the range (strength 1/2, the exact
   operator on the photo), requested deltas of +-1/8 and +-3/8 of the range (never a trained delta: those are
   multiples of 1/12, 1/6 or 1/4) to the held-out values 1/8 ... 7/8, against the exact operator at the composed
   value: PSNR of both models, the value measured back (CAT estimators) against the requested delta; two-edit
   instructions (NumeriKontrol only, zero-shot: trained on single edits) against the composed exact edit, beside the
   single-edit route to it (the two single edits chained), and with the two lines' order swapped;
   ``report_numeric.md``, ``metrics_numeric.json`` and image strips.

``base_steps`` > 0 (``--base-steps``, the default): the paper's setting instead of 2-3: a base editor first
(``base_edits``, ``method: editor``), then both models fine-tuned on it, with a LoRA or every weight (``finetune``;
``numeric_config`` / ``kontinuous_config``). ``base_steps`` = 0: 2-3 as written, both models from scratch.
"""
from __future__ import annotations

import json
import math
import sys
import time
import argparse
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from ....core.atomic import atomic_write
from ...engine.config import TrainConfig, config_from_dict
from ...data import cat
from ...engine.demo import (TRAIN_FRAMES, DemoSettings, demo_photos, demo_tasks, register_demo, run_or_report,
                            targets_exit, with_threads)
from ...engine.loop import train
from ..kontinuous.demo import demo_config, export_editor_model
from ..kontinuous.export import kontinuous_on_base  # noqa: F401 (also for tests)
from .report import write_numeric_report
from ...engine.codecs import text_encoder_for
from ...engine.export import export_checkpoint
from .demo_data import BASE_STEP, base_edits, kontinuous_pairs, trajectory_extents, two_line_replay  # noqa: F401 (for tests)
from .evaluation import (SOURCE_STRENGTH, TARGET_STRENGTHS, TARGETS, TWO_EDIT_TARGETS,  # noqa: F401 (for tests)
                         NumericEditor, composed_error_psnr, evaluate_single, evaluate_two_edit, kontinuous_editor)

@dataclass
class NumericDemoSettings(DemoSettings):
    tasks: str = "exposure,hue"
    ranges: str = ""  # the tasks' default ranges: exposure 0 -> 2 EV, hue 0 -> 180 degrees
    # each of the two models' steps (from scratch or fine-tuning the base editor)
    steps: int = 3000
    max_edits: int = 2  # text room (learned encoder) for two-line prompts
    # sources carrying the other task at random frame values (``synth cat --background``): measured, not the
    # default (docs/results.md: it cost exposure PSNR and did not close the two-edit gap)
    background: bool = False
    # each trajectory spans one of these fractions of its task's range (``synth cat --extents``), and the
    # baseline's 0-1 strength is per trajectory: sequences that stop at different places, which a 0-1 label cannot
    # say and a number with a unit does (the paper's Table 1 comparison). docs/results.md: measured against (1,), every
    # trajectory the whole range, where both models get the same information
    extents: tuple[float, ...] = (1 / 3, 2 / 3, 1.0)
    # > 0: the paper's setting, both methods fine-tuned from one base editor: first a plain editor (``method:
    # editor``, from scratch, this many steps) on the same frames at one fixed amount per instruction (half the
    # range, as an editor without a slider does: "increase the exposure"), in both text forms, plus two-line edits
    # on the composed truth (``base_edits``); then NumeriKontrol (adapter) and Kontinuous (projector) fine-tuned on
    # that base (``finetune``: every weight, or a LoRA on the frozen base), ``steps`` each, the same fixed per-line
    # text vectors for all three (``data.text_encoder: lines``).
    # 0: both models from scratch, every weight trained. The defaults (base 3000 steps, whole fine-tunes at 3e-4,
    # 3000 steps each, the pooled sum) are the setting measured to hold every claim (docs/results.md: five seeds of six)
    base_steps: int = 3000
    finetune_rank: int = 16
    # what the two fine-tunes train besides the adapter / the projector: "lora" (rank ``finetune_rank``; the
    # numeric LoRA on Q/K/V, the Kontinuous one on its official targets) or "whole" (every weight of the base,
    # ``model.train_transformer``); at ``finetune_lr`` (None: ``lr``)
    finetune: str = "whole"
    finetune_lr: float | None = 3e-4
    # "whole" only: the base's own weights at this rate (``optim.transformer_lr``), the adapter / projector at
    # ``finetune_lr``; None: one rate for all
    finetune_transformer_lr: float | None = None
    # two-line edits per training photo in the base editor's data (``base_edits``): how much of the base's data
    # is several instructions at once (1: about a tenth)
    base_composed: int = 1
    # the offline line encoder's pooled vector of a two-line prompt (``data.lines_pooled``) in all three runs of
    # the base setting: "mean" of the lines' or their "sum" (docs/results.md: the sum keeps each line's
    # modulation input as in its single edit, and the zero-shot two-line prompt composes)
    lines_pooled: str = "sum"
    # fine-tunes on the base only: this fraction of the NumeriKontrol fine-tune's rows replays the base editor's
    # two-line edits (``two_line_replay``), without numeric tokens, as the base was trained (prior preservation of
    # what it knew of several instructions; the numeric tokens still see single edits only); 0: none
    finetune_replay: float = 0.0


@dataclass
class NumericDemoResult:
    out: Path
    tasks: list[dict]  # per task: PSNRs, measured-value errors, per delta
    two_edit: dict
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    @property
    def average(self) -> dict[str, float]:
        return {k: _mean([t[k] for t in self.tasks]) for k in ("psnr_numeric", "psnr_kontinuous", "psnr_no_edit")}

    def checks(self) -> dict[str, bool]:
        """Each measured claim: held or not."""
        return {"numeric beats Kontinuous on average": self.average["psnr_numeric"] > self.average["psnr_kontinuous"],
                **{f"numeric beats Kontinuous on {t['task']}": t["psnr_numeric"] > t["psnr_kontinuous"]
                   for t in self.tasks},
                f"two-edit within {TARGETS['two_edit_gap_db']:g} dB of the single edits on the composed truth":
                    self.two_edit["gap_db"] <= TARGETS["two_edit_gap_db"],
                f"order swap < {TARGETS['swap_db']:g} dB": self.two_edit["swap_db"] < TARGETS["swap_db"]}

    def targets_met(self) -> bool:
        return all(self.checks().values())


def _mean(values) -> float:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


def _finetune(d: dict, s: NumericDemoSettings, base: Path | None) -> dict:
    """A run on the base editor (its transformer folder ``base``) with the base's text vectors: a LoRA on the
    frozen base, or every weight of it (``s.finetune``), at ``s.finetune_lr``."""
    if base is not None:
        d["model"]["pretrained"], d["model"]["scratch"] = str(base), None
        d["model"]["train_transformer"] = s.finetune == "whole"
        if s.finetune == "whole":
            d["lora"] = {"enabled": False}  # Kontinuous; a numeric run adds no LoRA when every weight trains
        d["optim"]["lr"] = s.lr if s.finetune_lr is None else s.finetune_lr
        if s.finetune == "whole" and s.finetune_transformer_lr is not None:
            d["optim"]["transformer_lr"] = s.finetune_transformer_lr
        d["data"]["text_encoder"] = "lines"
        d["data"]["lines_pooled"] = s.lines_pooled
        d.setdefault("slideredit", {})["max_lines"] = s.max_edits  # the same prompt length as the base's
    return d


def base_config(s: NumericDemoSettings, edits: Path) -> TrainConfig:
    """The base editor: the demo's transformer from scratch, the demo's optimiser, ``base_steps`` steps."""
    d = demo_config(s, edits).to_dict()
    d["method"] = "editor"
    d.pop("projector", None)
    d["data"].update(trajectories=[], edits=[str(edits)], text_encoder="lines", lines_pooled=s.lines_pooled,
                     cache_dir=str(s.out / "cache_base"))
    d["slideredit"] = {"max_lines": s.max_edits}
    d["run"].update(output_dir=str(s.out / "base_run"), max_steps=s.base_steps,
                    checkpoint_every=max(s.base_steps // 3, 1), validation_pairs=4)
    d["run"].pop("validation_strengths", None)
    return config_from_dict(d)


def numeric_config(s: NumericDemoSettings, frames_dir: Path, base: Path | None = None) -> TrainConfig:
    """The Kontinuous demo's recipe (steps, batch, lr schedule, seed, transformer) as a numeric run; on the
    ``base`` editor (adapter + LoRA of rank ``finetune_rank``) when given."""
    d = demo_config(s, frames_dir).to_dict()
    d["method"] = "numeric"
    d.pop("projector", None)
    d["numeric"] = {"max_edits": s.max_edits} if base is None else {"max_edits": s.max_edits, "rank": s.finetune_rank}
    d["model"]["train_transformer"] = base is None
    if base is not None and s.finetune_replay > 0:
        d["numeric"].update(replay_edits=[str(s.out / "data" / "base_two_line")], replay_fraction=s.finetune_replay)
    d["data"]["cache_dir"] = str(s.out / "cache_numeric")
    d["run"]["output_dir"] = str(s.out / "numeric_run")
    return config_from_dict(_finetune(d, s, base))


def kontinuous_config(s: NumericDemoSettings, pairs_dir: Path, base: Path | None = None) -> TrainConfig:
    """The Kontinuous demo's recipe; on the ``base`` editor (projector + LoRA of rank ``finetune_rank`` on the
    official targets) when given."""
    d = demo_config(s, pairs_dir).to_dict()
    if base is not None and s.finetune == "lora":
        d["lora"] = {"enabled": True, "rank": s.finetune_rank, "alpha": float(s.finetune_rank)}
    return config_from_dict(_finetune(d, s, base))


def run_numeric_demo(s: NumericDemoSettings) -> NumericDemoResult:
    """The whole NumeriKontrol demo with ``s.threads`` torch threads."""
    return with_threads(s.threads, lambda: _run(s))


def _run(s: NumericDemoSettings) -> NumericDemoResult:
    tasks = demo_tasks(s)
    if len(tasks) < 2:
        raise ValueError(f"the NumeriKontrol demo measures two-edit instructions: give at least two tasks, "
                         f"got {s.tasks!r}")
    from ....core.numeric import DEFAULT_REGISTRY
    missing = [t.name for t in tasks if t.name not in DEFAULT_REGISTRY.names]
    if missing:
        raise ValueError(f"task(s) {missing} are not in the numeric registry ({', '.join(DEFAULT_REGISTRY.names)})")
    seconds, t0 = {}, time.perf_counter()
    train_photos, held_out = demo_photos(s)
    s.out.mkdir(parents=True, exist_ok=True)
    frames_dir, pairs_dir = s.out / "data" / "frames", s.out / "data" / "kontinuous"
    trajectories = cat.synthesize(frames_dir, train_photos, tasks, TRAIN_FRAMES, s.seed, s.background, s.extents)
    kontinuous_pairs(pairs_dir, frames_dir, trajectories, {t.name: t for t in tasks})
    if s.base_steps:
        base_edits(s.out / "data" / "base", frames_dir, trajectories, tasks, train_photos, s.seed,
                   s.base_composed)
        two_line_replay(s.out / "data" / "base_two_line", s.out / "data" / "base")
    seconds["data"] = time.perf_counter() - t0

    weights, base = s.out / "weights", None
    if s.base_steps:
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)
        base_result = train(base_config(s, s.out / "data" / "base"))
        base = weights / "base_editor"
        export_checkpoint(base_result.output_dir, base)
        seconds["train base editor"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    n_config = numeric_config(s, frames_dir, base)
    n_result = train(n_config)
    numeric_file = weights / "numeric_demo.safetensors"
    export_checkpoint(n_result.output_dir, numeric_file,
                      transformer_dir=weights / "numeric_transformer" if n_config.model.train_transformer else None)
    seconds["train numeric"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    k_config = kontinuous_config(s, pairs_dir, base)
    k_result = train(k_config)
    text = None
    if base is None:
        instructions = sorted({i for t in tasks for i in t.instructions})
        k_model = export_editor_model(k_config, k_result, instructions, weights / "kontinuous")
    else:
        tuned = weights / "kontinuous_transformer" if k_config.model.train_transformer else None
        export_checkpoint(k_result.output_dir, weights / "kontinuous_demo.safetensors", transformer_dir=tuned)
        k_model = kontinuous_on_base(k_config, weights / "kontinuous_demo.safetensors", tuned)
        text = text_encoder_for(k_config, torch.device("cpu"))
    seconds["train Kontinuous"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    numeric = NumericEditor(n_config, weights / "numeric_transformer" if n_config.model.train_transformer else base,
                            numeric_file, s.sample_steps, s.seed)
    kontinuous = kontinuous_editor(k_model, s.sample_steps, s.seed, _mean(trajectory_extents(trajectories, tasks)),
                                   text)
    photos = torch.stack([p.image for p in held_out])
    singles, strips = [], {}
    for task in tasks:
        summary, frames = evaluate_single(task, photos, numeric, kontinuous, s.seed)
        singles.append(summary)
        strips[task.name] = frames
    single_psnr = _mean([t["psnr_numeric"] for t in singles[:2]])
    two, strips["two-edit"] = evaluate_two_edit(tasks[0], tasks[1], photos, numeric, s.seed, single_psnr)
    two["composed_error_psnr"] = composed_error_psnr(singles[0]["psnr_numeric"], singles[1]["psnr_numeric"])
    seconds["evaluate"] = time.perf_counter() - t0

    result = NumericDemoResult(s.out, singles, two, seconds)
    result.report = write_numeric_report(s, tasks, result, strips, n_result, k_result)
    atomic_write(s.out / "metrics_numeric.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"tasks": singles, "average": result.average, "two_edit": two, "checks": result.checks(),
         "targets": TARGETS, "targets_met": result.targets_met(), "seconds": seconds,
         "torch_threads": torch.get_num_threads(),
         "train": {name: {"steps": r.steps, "seconds_per_step": r.seconds_per_step, "last_loss": r.last_loss}
                   for name, r in (("numeric", n_result), ("kontinuous", k_result))},
         "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}},
        indent=1), encoding="utf-8"))
    return result


def run_command(args: argparse.Namespace, common: dict) -> int:
    try:
        extents = cat.parse_extents(args.extents)
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    if args.base_steps is None:
        args.base_steps = NumericDemoSettings(Path(".")).base_steps
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
    if not 0 <= args.finetune_replay < 1 or (args.finetune_replay and not args.base_steps):
        print(f"demo: error: --finetune-replay is a fraction in [0, 1) of the fine-tune's rows and needs "
              f"--base-steps > 0, got {args.finetune_replay}", file=sys.stderr)
        return 2
    if args.lines_pooled is not None and not args.base_steps:
        print("demo: error: --lines-pooled sets the text of the base editor and its fine-tunes: it needs "
              "--base-steps > 0", file=sys.stderr)
        return 2
    settings = NumericDemoSettings(args.out, extents=extents, base_steps=args.base_steps,
                                   base_composed=args.base_composed,
                                   **({} if args.lines_pooled is None else {"lines_pooled": args.lines_pooled}),
                                   finetune_rank=args.finetune_rank, finetune=args.finetune,
                                   finetune_replay=args.finetune_replay,
                                   finetune_lr=args.finetune_lr,
                                   finetune_transformer_lr=args.finetune_transformer_lr, **common,
                                   **({} if args.steps is None else {"steps": args.steps}))
    result = run_or_report(run_numeric_demo, settings)
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
    return targets_exit(args, result)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    n = NumericDemoSettings(Path("."))
    parser.add_argument("--extents", default=",".join(str(Fraction(x).limit_denominator(64)) for x in n.extents),
                        help="numeric: fractions of each task's range the training trajectories span, one drawn "
                             "per trajectory; the baseline's 0-1 strength is per trajectory (default: %(default)s)")
    parser.add_argument("--base-steps", type=int, default=None,
                        help=f"numeric: > 0 trains a base editor for this many steps first and fine-tunes both "
                             f"models on it (see --finetune), the paper's setting; 0: both from scratch (default: "
                             f"{n.base_steps}). compare: the base editor's steps (default: 2000)")
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
    parser.add_argument("--finetune-replay", type=float, default=n.finetune_replay,
                        help="numeric with --base-steps: fraction of the NumeriKontrol fine-tune's rows that replay "
                             "the base editor's two-line edits, without numeric tokens (default: %(default)g)")
    parser.add_argument("--finetune-transformer-lr", type=float, default=n.finetune_transformer_lr,
                        help="numeric with --finetune whole: learning rate of the base's own weights, the adapter "
                             "and the projector keeping --finetune-lr (default: one rate for all)")


_N = NumericDemoSettings(Path("."))
register_demo("numeric", run_command, "NumeriKontrol against a Kontinuous baseline on the same frame pairs "
              "(report_numeric.md)", add_arguments, order=2,
              notes={"tasks": f"numeric: two or more, {_N.tasks}", "steps": f"numeric: {_N.steps} for each of the "
                     "two models", "targets": "numeric: PSNR above Kontinuous on average and per task, a two-edit "
                     "prompt within 2 dB of the single edits chained, on the composed truth; order swap < 0.5 dB"})
