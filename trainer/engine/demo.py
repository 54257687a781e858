"""``kontext-sliders demo``: the shared part of the offline demos (one per method, each registered here with
``register_demo`` by its method package, e.g. ``methods/kontinuous/demo.py``): the settings every demo has, the
photos and crops, the torch threads, and the command line (``demo --method NAME`` dispatches through the demo
registry). Imports no method.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data import cat
from ..families.flux1 import DEMO_TRANSFORMER
from .registry import load_methods

TRAIN_FRAMES = 5  # strengths 0, 1/4, 1/2, 3/4, 1 are trained on (the Kontinuous demo holds out the odd eighths)


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
    # frames per trajectory, and the pixel codec's colour weighting (``data.pixel_chroma_scale``; 0: RGB): what
    # every demo trains with unless its own settings say otherwise (the Kontinuous demo's do)
    train_frames: int = TRAIN_FRAMES
    pixel_chroma_scale: float = 0.0


# ---------------------------------------------------------------- the demo registry

@dataclass(frozen=True)
class DemoEntry:
    """A method's demo on the command line: ``run_command(args, common)`` -> exit status (``common``: the
    settings every demo takes, parsed); ``add_arguments(parser)`` adds its own flags; ``help`` says what it
    trains (in ``--method``'s help); ``notes`` add to the shared flags' help ("tasks", "ranges", "steps",
    "targets": its defaults / targets)."""
    name: str
    run_command: Callable[[argparse.Namespace, dict], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    notes: dict = field(default_factory=dict)
    order: int = 0  # where it stands in --method's choices and the shared flags' help


_DEMOS: dict[str, DemoEntry] = {}


def register_demo(name: str, run_command: Callable[[argparse.Namespace, dict], int], help: str,
                  add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                  notes: dict | None = None, order: int = 0) -> None:
    _DEMOS[name] = DemoEntry(name, run_command, help, add_arguments, dict(notes or {}), order)


def demos() -> list[DemoEntry]:
    """Every method's demo, in their ``order``."""
    load_methods()
    return sorted(_DEMOS.values(), key=lambda d: (d.order, d.name))


def demo_for(name: str) -> DemoEntry:
    load_methods()
    return _DEMOS[name]


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


# ---------------------------------------------------------------- the command

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


def timing_line(seconds: dict[str, float]) -> str:
    return f"demo: {sum(seconds.values()):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})"


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = DemoSettings(Path("."))
    entries = demos()

    def noted(key: str) -> str:
        return "; ".join(e.notes[key] for e in entries if key in e.notes)

    helps = [e.help for e in entries]
    parser.add_argument("--method", choices=[e.name for e in entries], default="kontinuous",
                        help="which method the demo trains and measures (default: %(default)s): "
                             + ", ".join(helps[:-1]) + (", or " if len(helps) > 1 else "") + helps[-1])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: %(default)s)")
    parser.add_argument("--tasks", help=f"CAT tasks (default: {noted('tasks')}; known: {', '.join(cat.TASKS)})")
    parser.add_argument("--ranges", help=f"value ranges start:end per task, used for the tasks chosen (default: "
                                         f"{noted('ranges')})")
    parser.add_argument("--held-out", default=",".join(d.held_out),
                        help="scikit-image photos kept out of training (default: %(default)s)")
    parser.add_argument("--steps", type=int, help=f"training steps (default: {noted('steps')})")
    for e in entries:
        if e.add_arguments is not None:
            e.add_arguments(parser)
    parser.add_argument("--resolution", type=int, default=d.resolution,
                        help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of the crops, the initial weights and the noise (default: %(default)s)")
    parser.add_argument("--threads", type=int,
                        help=f"torch threads (default: {noted('threads') or d.threads}, otherwise {d.threads}; more "
                             f"spin waiting for a core that another busy process holds, several times slower; on an "
                             f"idle 2-core machine 2 are ~25%% faster)")
    parser.add_argument("--require-targets", action="store_true",
                        help=f"exit with status 1 when a target is missed ({noted('targets')})")
    return parser


def run_demo_command(args: argparse.Namespace) -> int:
    if args.resolution % 2 or not 8 <= args.resolution <= 64:
        print(f"demo: error: --resolution must be even and within 8..64, got {args.resolution}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"demo: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    common = dict(held_out=tuple(n.strip() for n in args.held_out.split(",") if n.strip()),
                  resolution=args.resolution, seed=args.seed)
    # not given: each method's own default (its settings class)
    common.update({k: v for k, v in (("tasks", args.tasks), ("ranges", args.ranges), ("threads", args.threads))
                   if v is not None})
    return demo_for(args.method).run_command(args, common)


def run_or_report(run: Callable, settings):
    """``run(settings)``, or None after printing a ValueError as the command's error (exit status 2)."""
    try:
        return run(settings)
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return None


def targets_exit(args: argparse.Namespace, result) -> int:
    print(f"{timing_line(result.seconds)}; targets {'met' if result.targets_met() else 'MISSED'}; "
          f"report: {result.report}")
    return 1 if args.require_targets and not result.targets_met() else 0
