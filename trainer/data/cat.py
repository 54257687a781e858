"""Ground-truth edit synthesis ("CAT" data): physically defined low-level edits of photos, at known values.

Each task is one operator (pure torch + kornia, float sRGB images [B, 3, H, W] in [0, 1]) with a unit and
a slider range: strength 0 is the value ``range[0]`` (by default the identity, "no change") and strength 1
is ``range[1]`` (the full edit). A trajectory applies the operator to one photo at N+1 evenly spaced
strengths and records the exact strength and physical value of every frame, in the generic trajectory
folder format (``trajectories.py``). Each task can also measure the value back from a (source, edited)
pair, to check how linear a trained model's outputs are.

Conventions: exposure, colour temperature and vignette act in linear light (what a camera or lens does);
contrast, saturation, gamma, hue and noise act on the sRGB values. Colour temperature tints the image as
if lit by a blackbody at T kelvin instead of 6500 K: lower kelvin = warmer (redder), higher = cooler (bluer).
This is the light's temperature, not a camera's white-balance setting, which runs the other way.

From the command line: ``python -m kontext_sliders.trainer synth cat --out DIR`` (see ``add_cat_arguments``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import math
import re
import sys
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ...core.atomic import atomic_write
# the operators and estimators, also reached as cat.<name> (their home before cat_ops.py)
from .cat_ops import (BLUR_SEARCH_MAX, KELVIN_IDENTITY, KELVIN_MAX, KELVIN_MIN, MID_GREY, as_batch,  # noqa: F401
                      blackbody_gains, chroma_residual, contrast, estimate_blur, estimate_contrast,  # noqa: F401
                      estimate_exposure, estimate_gamma, estimate_hue, estimate_noise,  # noqa: F401
                      estimate_saturation, estimate_temperature, estimate_vignette, exposure, gamma,  # noqa: F401
                      gaussian_blur, gaussian_noise, grey, hue_rotation, kelvin_from_red_blue,  # noqa: F401
                      linear_gain, saturation, temperature, to_linear, to_srgb, vignette)  # noqa: F401
from .trajectories import Frame, Trajectory, write_manifest

log = logging.getLogger("kontext_sliders.trainer")

TOOL = "kontext-sliders synth cat"
Operator = Callable[[torch.Tensor, float, int], torch.Tensor]  # (images, value, seed) -> edited images
Estimator = Callable[[torch.Tensor, torch.Tensor], float]  # (source, edited), both [B, 3, H, W] -> value



# ---------------------------------------------------------------- tasks

@dataclass(frozen=True)
class CatTask:
    """One physically defined edit as a slider: strength 0 -> ``range[0]``, strength 1 -> ``range[1]``."""
    name: str
    unit: str
    identity: float  # the value that leaves the image unchanged
    range: tuple[float, float]
    instructions: tuple[str, str]  # (towards higher values, towards lower values)
    operator: Operator
    estimator: Estimator
    domain: tuple[float, float] = (-math.inf, math.inf)  # values the operator accepts
    period: float | None = None  # values are circular (hue): estimates wrap around the range's middle
    # (source, edited) -> how much of the edit the estimated value leaves unexplained (0: none), where a
    # single value can look right while the image is not (saturation: a colour cast across the hues)
    residual: Estimator | None = None
    residual_name: str = ""

    def check_value(self, value: float) -> float:
        value = float(value)
        if not (math.isfinite(value) and self.domain[0] <= value <= self.domain[1]):
            raise ValueError(f"{self.name}: value {value:g} {self.unit} is outside [{self.domain[0]:g}, "
                             f"{self.domain[1]:g}]")
        return value

    def with_range(self, lo: float, hi: float) -> CatTask:
        return replace(self, range=(self.check_value(lo), self.check_value(hi)))

    def instruction(self) -> str:
        return self.instructions[0] if self.range[1] >= self.range[0] else self.instructions[1]

    def value_at(self, strength: float) -> float:
        lo, hi = self.range
        return lo * (1 - strength) + hi * strength  # exact at both ends

    def apply(self, images: torch.Tensor, value: float, seed: int = 0) -> torch.Tensor:
        """The edit at ``value``; at the identity value the input comes back bit for bit (frame 0 = source)."""
        value = self.check_value(value)
        if value == self.identity:
            return images.clone()
        return self.operator(images, value, seed)

    def estimate_residual(self, source: torch.Tensor, edited: torch.Tensor) -> float | None:
        """What ``estimate_value`` leaves unexplained (see ``residual``); None for a task without such a measure."""
        return None if self.residual is None else self.residual(as_batch(source), as_batch(edited))

    def estimate_value(self, source: torch.Tensor, edited: torch.Tensor) -> float:
        """The value this edit would need to turn ``source`` into ``edited`` ([3, H, W] or batches)."""
        value = self.estimator(as_batch(source), as_batch(edited))
        if self.period:
            middle, half = sum(self.range) / 2, self.period / 2
            value = middle + (value - middle + half) % self.period - half
        return value


TASKS: dict[str, CatTask] = {t.name: t for t in (
    CatTask("exposure", "EV", 0.0, (0.0, 2.0), ("increase the exposure", "decrease the exposure"),
            exposure, estimate_exposure),
    CatTask("contrast", "x", 1.0, (1.0, 2.0), ("increase the contrast", "decrease the contrast"),
            contrast, estimate_contrast, domain=(0.0, math.inf)),
    CatTask("saturation", "x", 1.0, (1.0, 2.0), ("make the colours more saturated", "make the colours less saturated"),
            saturation, estimate_saturation, domain=(0.0, math.inf), residual=chroma_residual,
            residual_name="residual chroma"),
    CatTask("hue", "deg", 0.0, (0.0, 180.0),
            ("rotate the hue of every colour, red towards yellow and green",
             "rotate the hue of every colour, red towards magenta and blue"),
            hue_rotation, estimate_hue, period=360.0),
    CatTask("gamma", "gamma", 1.0, (1.0, 2.0), ("brighten the midtones", "darken the midtones"),
            gamma, estimate_gamma, domain=(0.05, 20.0)),
    CatTask("temperature", "K", KELVIN_IDENTITY, (KELVIN_IDENTITY, 3000.0),
            ("make the colours cooler", "make the colours warmer"),
            temperature, estimate_temperature, domain=(KELVIN_MIN, KELVIN_MAX)),
    CatTask("blur", "px", 0.0, (0.0, 4.0), ("blur the image", "make the image less blurry"),
            gaussian_blur, estimate_blur, domain=(0.0, BLUR_SEARCH_MAX)),
    CatTask("noise", "sigma", 0.0, (0.0, 0.1), ("add noise to the image", "remove noise from the image"),
            gaussian_noise, estimate_noise, domain=(0.0, 1.0)),
    CatTask("vignette", "strength", 0.0, (0.0, 0.8), ("add a dark vignette", "remove the dark vignette"),
            vignette, estimate_vignette, domain=(0.0, 1.0)),
)}
DEFAULT_TASKS = ("exposure", "contrast", "saturation", "hue", "temperature", "blur")


def get_task(name: str) -> CatTask:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown CAT task {name!r}; known tasks: {', '.join(TASKS)}") from None


def parse_ranges(text: str) -> dict[str, tuple[float, float]]:
    """``"exposure=-2:2, temperature=6500:3000"`` -> {"exposure": (-2.0, 2.0), ...}."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        bad = f"range {item!r} is not of the form task=start:end (e.g. exposure=-2:2)"
        name, sep, span = item.partition("=")
        lo, colon, hi = span.partition(":")
        if not (sep and colon):
            raise ValueError(bad)
        task = get_task(name.strip())
        try:
            out[task.name] = (float(lo), float(hi))
        except ValueError:
            raise ValueError(bad) from None
    return out


def select_tasks(names: str, ranges: str = "") -> list[CatTask]:
    """Tasks from a comma list (or "all"), with optional range overrides (``parse_ranges``)."""
    chosen = list(TASKS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise ValueError(f"no task given; known tasks: {', '.join(TASKS)}")
    tasks = {n: get_task(n) for n in dict.fromkeys(chosen)}
    for name, (lo, hi) in parse_ranges(ranges).items():
        if name not in tasks:
            raise ValueError(f"--ranges names {name!r}, which is not among the tasks ({', '.join(tasks)})")
        tasks[name] = tasks[name].with_range(lo, hi)
    return list(tasks.values())


# ---------------------------------------------------------------- photos

@dataclass(frozen=True)
class Photo:
    name: str  # used in paths and trajectory ids
    image: torch.Tensor  # [3, S, S] float in [0, 1], exactly representable in 8 bits


SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def _square(image: Image.Image, size: int) -> torch.Tensor:
    """Centre-cropped to a square and resized to ``size`` (Lanczos), as a float tensor [3, S, S]."""
    image = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def skimage_photos(names: Sequence[str] | None = None, size: int = 512) -> list[Photo]:
    """Colour photos that ship inside scikit-image (no network)."""
    import skimage.data  # only this photo source needs scikit-image
    photos = []
    for name in names or SKIMAGE_PHOTOS:
        if name not in SKIMAGE_PHOTOS:
            raise ValueError(f"unknown scikit-image photo {name!r}; known: {', '.join(SKIMAGE_PHOTOS)}")
        photos.append(Photo(name, _square(Image.fromarray(getattr(skimage.data, name)()), size)))
    return photos


def _unique_name(stem: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "photo"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def folder_photos(path: str | Path, size: int = 512) -> tuple[list[Photo], list[str]]:
    """The images directly in a folder (sorted by name) and the names of the files that could not be read.

    Files without an image extension are ignored; unreadable images are skipped with a warning.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"photo folder {root} does not exist or is not a folder")
    extensions = set(Image.registered_extensions())
    photos, skipped, taken = [], [], set()
    for file in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions):
        try:
            with Image.open(file) as im:
                image = _square(ImageOps.exif_transpose(im), size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # PIL's "cannot identify" is an OSError
            log.warning("synth cat: skipping unreadable image %s (%s)", file, e)
            skipped.append(file.name)
            continue
        photos.append(Photo(_unique_name(file.stem, taken), image))
    return photos, skipped


def load_photos(spec: str, size: int) -> tuple[list[Photo], list[str]]:
    """``"skimage"``, ``"skimage:astronaut,coffee"`` or a folder."""
    if spec == "skimage" or spec.startswith("skimage:"):
        names = [n.strip() for n in spec.partition(":")[2].split(",") if n.strip()]
        return skimage_photos(names or None, size), []
    return folder_photos(spec, size)


# ---------------------------------------------------------------- trajectories

def trajectory_seed(seed: int, trajectory_id: str) -> int:
    """A stable 63-bit seed per trajectory (Python's hash() is randomised per process)."""
    digest = hashlib.sha256(f"{seed}:{trajectory_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def save_png(image: torch.Tensor, path: Path) -> None:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    # not fsynced (thousands of frames, seconds of fsyncs): rerunning synth makes them again; the manifest is
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), durable=False)


def synthesize_trajectory(out: Path, task: CatTask, photo: Photo, frames: int, seed: int,
                          background: Sequence[tuple[CatTask, float]] = (), extent: float = 1.0) -> Trajectory:
    """Write ``frames`` images of ``task`` on ``photo`` at strengths extent * k / (frames - 1) under
    out/task/photo/ (``extent`` < 1: a trajectory that stops short of the task's range, as real sequences do).

    ``background``: the photo's state in other tasks, (task, value) pairs held fixed along the trajectory, and
    ``task`` itself at its place in that chain (its value is the one that walks): every frame, and the source,
    is the whole chain applied in order. The values go in the trajectory's ``extra["background"]``."""
    if frames < 2:
        raise ValueError(f"a trajectory needs at least 2 frames, got {frames}")
    if not 0 < extent <= 1:
        raise ValueError(f"a trajectory's extent is a fraction of the task's range in (0, 1], got {extent}")
    tid, n = f"{task.name}/{photo.name}", frames - 1  # the id doubles as the folder
    width, source, noise_seed = max(2, len(str(n))), photo.image.unsqueeze(0), trajectory_seed(seed, tid)
    chain = list(background) if any(t.name == task.name for t, _ in background) else [(task, None)] + list(background)

    def render(value: float) -> torch.Tensor:
        image = source
        for t, v in chain:
            image = t.apply(image, value if t.name == task.name else v, noise_seed)
        return image[0]

    save_png(render(task.identity), out / tid / "source.png")
    records = []
    for k in range(frames):
        strength = k / n * extent
        value = task.value_at(strength)
        path = f"{tid}/{k:0{width}d}.png"
        save_png(render(value), out / path)
        records.append(Frame(path, strength, value))
    extra = {"background": {t.name: v for t, v in chain if t.name != task.name}} if background else {}
    return Trajectory(tid, f"{tid}/source.png", task.instruction(), tuple(records), task.name, task.unit, extra)


def background_states(task: CatTask, tasks: Sequence[CatTask], frames: int, seed: int, photo: str
                      ) -> list[tuple[CatTask, float]]:
    """The chain for ``task``'s trajectory on ``photo``: every task in ``tasks``' order, each other one at a
    strength drawn (per trajectory, seeded) from the frame grid k / (frames - 1), so a trajectory walks one axis
    of the tasks' state grid from a random point of it; ``task`` itself as a placeholder (value 0.0)."""
    g = torch.Generator().manual_seed(trajectory_seed(seed, f"{task.name}/{photo}/background"))
    chain = []
    for t in tasks:
        k = int(torch.randint(frames, (1,), generator=g))  # drawn for every task: the draws don't depend on order
        chain.append((t, 0.0 if t.name == task.name else t.value_at(k / (frames - 1))))
    return chain


def trajectory_extent(extents: Sequence[float], seed: int, trajectory_id: str) -> float:
    """One of ``extents``, drawn per trajectory (seeded: the same draw in every process)."""
    if len(extents) == 1:
        return float(extents[0])
    g = torch.Generator().manual_seed(trajectory_seed(seed, f"{trajectory_id}/extent"))
    return float(extents[int(torch.randint(len(extents), (1,), generator=g))])


def synthesize(out: str | Path, photos: Sequence[Photo], tasks: Sequence[CatTask], frames: int = 9,
               seed: int = 0, background: bool = False, extents: Sequence[float] = (1.0,)) -> list[Trajectory]:
    """Every (task, photo) trajectory under ``out``, plus its manifest; deterministic given the seed.

    ``background``: each trajectory's photo also carries the other tasks at random frame-grid values
    (``background_states``), composed in ``tasks``' order; every trajectory is still one task's single edit.
    ``extents``: fractions of the task's range; each trajectory spans one of them, drawn per trajectory (the
    frames' strengths and values say where each frame is; a 0-1 label per trajectory loses that)."""
    out = Path(out)
    trajectories = [synthesize_trajectory(out, task, photo, frames, seed,
                                          background_states(task, tasks, frames, seed, photo.name)
                                          if background and len(tasks) > 1 else (),
                                          trajectory_extent(extents, seed, f"{task.name}/{photo.name}"))
                    for task in tasks for photo in photos]
    write_manifest(out, trajectories, seed=seed, tool=TOOL, frames=frames, background=bool(background),
                   extents=[float(e) for e in extents], ranges={t.name: list(t.range) for t in tasks})
    return trajectories


# ---------------------------------------------------------------- command line

def parse_extents(text: str) -> tuple[float, ...]:
    """'0.667,1' or '1/3,2/3,1' -> the fractions as floats; each in (0, 1]."""
    message = (f"--extents takes comma-separated numbers or fractions in (0, 1], e.g. '0.667,1' or '1/3,2/3,1'; "
               f"got {text!r}")
    try:
        extents = tuple(float(Fraction(x.strip())) for x in text.split(",") if x.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(message) from None
    if not extents or not all(0 < e <= 1 for e in extents):
        raise ValueError(message)
    return extents


def add_cat_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, type=Path, help="output folder (trajectories + manifest.json)")
    parser.add_argument("--photos", default="skimage",
                        help="a folder of images, or 'skimage' (default) / 'skimage:astronaut,coffee' for "
                             f"scikit-image's sample photos ({', '.join(SKIMAGE_PHOTOS)})")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma list or 'all' (default: %(default)s; known: {', '.join(TASKS)})")
    parser.add_argument("--frames", type=int, default=9, help="frames per trajectory, N+1 (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="square side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--ranges", default="",
                        help="value ranges start:end per task, e.g. 'exposure=-2:2,temperature=6500:3000'")
    parser.add_argument("--background", action="store_true",
                        help="each trajectory's photo also carries the other chosen tasks at random frame values "
                             "(still one task's edit per trajectory): data for edits that compose")
    parser.add_argument("--extents", default="1",
                        help="comma list of fractions of each task's range, e.g. '0.667,1': each trajectory spans "
                             "one, drawn per trajectory (default: %(default)s, every trajectory the whole range)")
    return parser


def run_cat(args: argparse.Namespace) -> int:
    """Synthesise, print a summary; 0 on success, 2 (with the reason on stderr) for bad arguments or input."""
    try:
        if args.size < 8:
            raise ValueError(f"--size must be at least 8 pixels, got {args.size}")
        tasks = select_tasks(args.tasks, args.ranges)
        extents = parse_extents(args.extents)
        photos, skipped = load_photos(str(args.photos), args.size)
        if not photos:
            raise ValueError(f"no readable photo in {args.photos} ({len(skipped)} skipped)")
        trajectories = synthesize(args.out, photos, tasks, args.frames, args.seed, args.background, extents)
    except ValueError as e:
        print(f"synth cat: error: {e}", file=sys.stderr)
        return 2
    print(f"synth cat: wrote {len(trajectories)} trajectories of {args.frames} frames to {args.out}")
    for t in tasks:
        print(f"  {t.name}: {t.range[0]:g} -> {t.range[1]:g} {t.unit}, \"{t.instruction()}\"")
    print(f"  photos: {len(photos)} used, {len(skipped)} skipped" + (f" ({', '.join(skipped)})" if skipped else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synth cat", description="Ground-truth low-level edit trajectories.")
    return run_cat(add_cat_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
