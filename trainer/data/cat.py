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

import kornia
import numpy as np
import torch
from PIL import Image, ImageOps

from ...core.atomic import atomic_write
from .trajectories import Frame, Trajectory, write_manifest

log = logging.getLogger("kontext_sliders.trainer")

TOOL = "kontext-sliders synth cat"
Operator = Callable[[torch.Tensor, float, int], torch.Tensor]  # (images, value, seed) -> edited images
Estimator = Callable[[torch.Tensor, torch.Tensor], float]  # (source, edited), both [B, 3, H, W] -> value

MID_GREY = 0.5  # the sRGB value contrast pivots around
# Values this close to 0 or 1 may have been clipped (or crushed by 8-bit rounding): estimators skip them.
_DARK, _BRIGHT = 2 / 255, 1 - 2 / 255


# ---------------------------------------------------------------- light and colour helpers

def to_linear(images: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_linear_rgb(images)


def to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear light back to sRGB, clipped to the displayable [0, 1] first (overexposure saturates)."""
    return kornia.color.linear_rgb_to_rgb(linear.clamp(0, 1)).clamp(0, 1)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_grayscale(images).expand_as(images)


# CIE 1931 XYZ -> linear sRGB (D65), IEC 61966-2-1.
_XYZ_TO_SRGB = ((3.2404542, -1.5371385, -0.4985314),
                (-0.9692660, 1.8760108, 0.0415560),
                (0.0556434, -0.2040259, 1.0572252))
KELVIN_MIN, KELVIN_MAX = 1667.0, 25000.0  # where the Planckian-locus approximation holds
KELVIN_IDENTITY = 6500.0


def planckian_xy(kelvin: float) -> tuple[float, float]:
    """CIE xy chromaticity of a blackbody (Kang et al. 2002 cubic fit of the Planckian locus)."""
    if not KELVIN_MIN <= kelvin <= KELVIN_MAX:
        raise ValueError(f"colour temperature {kelvin} K is outside [{KELVIN_MIN:g}, {KELVIN_MAX:g}] K")
    t = kelvin
    if t <= 4000:
        x = -0.2661239e9 / t ** 3 - 0.2343589e6 / t ** 2 + 0.8776956e3 / t + 0.179910
    else:
        x = -3.0258469e9 / t ** 3 + 2.1070379e6 / t ** 2 + 0.2226347e3 / t + 0.240390
    if t <= 2222:
        y = -1.1063814 * x ** 3 - 1.34811020 * x ** 2 + 2.18555832 * x - 0.20219683
    elif t <= 4000:
        y = -0.9549476 * x ** 3 - 1.37418593 * x ** 2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x ** 3 - 5.87338670 * x ** 2 + 3.75112997 * x - 0.37001483
    return x, y


def _blackbody_rgb(kelvin: float) -> tuple[float, ...]:
    """Linear sRGB colour of a blackbody at unit luminance (a floor keeps deep-red blue above zero)."""
    x, y = planckian_xy(kelvin)
    xyz = (x / y, 1.0, (1 - x - y) / y)
    return tuple(max(sum(m * c for m, c in zip(row, xyz)), 1e-4) for row in _XYZ_TO_SRGB)


def _luma(rgb: Sequence[float]) -> float:
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def blackbody_gains(kelvin: float) -> tuple[float, float, float]:
    """Linear-light gains that re-light a 6500 K scene at ``kelvin``: 6500 K gives exactly (1, 1, 1).

    Normalised to unit luma so only the colour changes, not the brightness.
    """
    def unit(k: float) -> list[float]:
        rgb = _blackbody_rgb(k)
        return [c / _luma(rgb) for c in rgb]
    # Dividing by the same computation at 6500 K makes the identity exact (v / v == 1 in floating point).
    r, g, b = (c / c0 for c, c0 in zip(unit(kelvin), unit(KELVIN_IDENTITY)))
    return r, g, b


def _red_blue(kelvin: float) -> float:
    r, _, b = blackbody_gains(kelvin)
    return math.log(r / b)


def kelvin_from_red_blue(log_ratio: float) -> float:
    """Inverse of the gains' log(R/B), which falls monotonically with temperature (bisection)."""
    lo, hi = KELVIN_MIN, KELVIN_MAX
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _red_blue(mid) > log_ratio else (lo, mid)
    return 0.5 * (lo + hi)


def _radius2(images: torch.Tensor) -> torch.Tensor:
    """Squared distance from the image centre, [H, W], 0 at the centre and 1 at the corner pixels."""
    h, w = images.shape[-2:]
    y = torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype)
    x = torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype)
    return (y[:, None] ** 2 + x[None, :] ** 2) / 2


# ---------------------------------------------------------------- operators: (images, value, seed) -> images

def exposure(images: torch.Tensor, ev: float, seed: int = 0) -> torch.Tensor:
    """One EV = one camera stop: linear light times 2**ev, clipping at white."""
    return to_srgb(to_linear(images) * 2.0 ** ev)


def contrast(images: torch.Tensor, factor: float, seed: int = 0) -> torch.Tensor:
    """Distances from mid-grey scaled by ``factor`` (torch.lerp is exact at factor 0 and 1)."""
    return torch.lerp(torch.full_like(images, MID_GREY), images, factor).clamp(0, 1)


def saturation(images: torch.Tensor, factor: float, seed: int = 0) -> torch.Tensor:
    """Distances from each pixel's grey scaled by ``factor``: 0 = grey, 1 = unchanged."""
    return torch.lerp(_grey(images), images, factor).clamp(0, 1)


def hue_rotation(images: torch.Tensor, degrees: float, seed: int = 0) -> torch.Tensor:
    """HSV hue turned by ``degrees`` (red -> yellow -> green for positive); modulo a full turn."""
    h, s, v = kornia.color.rgb_to_hsv(images).unbind(-3)
    h = torch.remainder(h + math.radians(degrees), 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.stack((h, s, v), -3)).clamp(0, 1)


def gamma(images: torch.Tensor, g: float, seed: int = 0) -> torch.Tensor:
    """Levels-style gamma: x ** (1 / g); g > 1 brightens the midtones, black and white stay put."""
    return images.pow(1.0 / g)


def temperature(images: torch.Tensor, kelvin: float, seed: int = 0) -> torch.Tensor:
    """Re-light in linear light with blackbody gains (6500 K = identity, lower = warmer)."""
    gains = torch.tensor(blackbody_gains(kelvin), dtype=images.dtype, device=images.device).view(3, 1, 1)
    return to_srgb(to_linear(images) * gains)


def gaussian_blur(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian blur of ``sigma`` pixels (reflected borders); sigma 0 returns the input exactly."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return images.clone()
    # 4 sigma keeps the truncation smooth in sigma (the blur estimator searches over it); reflect padding
    # needs the kernel's half-width below the image side.
    size = min(2 * math.ceil(4 * sigma) + 1, 2 * min(images.shape[-2:]) - 1)
    return kornia.filters.gaussian_blur2d(images, (size, size), (sigma, sigma), border_type="reflect")


def gaussian_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Additive gaussian noise of std ``sigma`` in sRGB; the field depends on ``seed`` only, so a trajectory's
    frames share one field scaled by sigma (a slider, not a flicker)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32).to(images)
    return (images + sigma * noise).clamp(0, 1)


def vignette(images: torch.Tensor, strength: float, seed: int = 0) -> torch.Tensor:
    """Radial darkening in linear light: gain 1 - strength * r**2 (r = 1 at the corners, 0 at the centre)."""
    return to_srgb(to_linear(images) * (1 - strength * _radius2(images)))


# ---------------------------------------------------------------- estimators: (source, edited) -> value

def _unclipped(images: torch.Tensor) -> torch.Tensor:
    return (images > _DARK) & (images < _BRIGHT)


def _fit_slope(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    """Least-squares slope of b against a through the origin."""
    den = float((a * a).sum())
    if a.numel() == 0 or den <= 0:
        raise ValueError(f"cannot measure {what}: no usable pixels (image flat, black or clipped)")
    return float((a * b).sum()) / den


def _linear_gain(source: torch.Tensor, edited: torch.Tensor, channel: int | None = None) -> float:
    """Ratio of summed linear light over pixels unclipped in both images (one channel, or all)."""
    mask = _unclipped(source) & _unclipped(edited)
    lin_src, lin_edit = to_linear(source), to_linear(edited)
    if channel is not None:
        mask, lin_src, lin_edit = mask[:, channel], lin_src[:, channel], lin_edit[:, channel]
    den = float(lin_src[mask].sum())
    if den <= 0:
        raise ValueError("cannot measure a gain: no pixel is unclipped in both images")
    return float(lin_edit[mask].sum()) / den


def _estimate_exposure(source: torch.Tensor, edited: torch.Tensor, rounds: int = 8) -> float:
    """log2 of the linear-light gain, measured on the pixels that the measured gain keeps below white.

    A pixel close to white in the edit may have been clipped there, softly (a model that rolls off
    towards 1) or hard; counting it pulls the gain down. So the gain is re-measured on the source pixels
    that stay under 1/1.25 of white at the current estimate, until the estimate settles (for an exact
    edit it is exact at once; a soft roll-off no longer biases it).
    """
    gain = _linear_gain(source, edited)
    lin_src = to_linear(source)
    for _ in range(rounds):
        keep = lin_src * (1.25 * max(gain, 1.0)) < 1.0
        if not keep.any():
            break
        new = _linear_gain(torch.where(keep, source, 0.0), torch.where(keep, edited, 0.0))
        if abs(new - gain) < 1e-6 * gain:
            break
        gain = new
    return math.log2(gain)


def _estimate_contrast(source: torch.Tensor, edited: torch.Tensor) -> float:
    mask = _unclipped(edited)
    return _fit_slope(source[mask] - MID_GREY, edited[mask] - MID_GREY, "contrast")


def _chroma(source: torch.Tensor, edited: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's chroma (its distance from its own grey) in both images, over pixels unclipped in the edit."""
    mask = _unclipped(edited).all(dim=1, keepdim=True).expand_as(edited)
    return (source - _grey(source))[mask], (edited - _grey(edited))[mask]


def _estimate_saturation(source: torch.Tensor, edited: torch.Tensor) -> float:
    """The chroma factor along the source's own chroma: signed, so an edit that turns every colour to its
    opposite hue reads -1 (not +1), grey reads 0."""
    chroma_src, chroma_edit = _chroma(source, edited)
    return _fit_slope(chroma_src, chroma_edit, "saturation")


def chroma_residual(source: torch.Tensor, edited: torch.Tensor) -> float:
    """RMS of the edited chroma that the saturation factor does not explain, relative to the source's chroma.

    The factor only sees chroma along the source's hues; a cast (a teal tint over an output that should be
    grey) is mostly across them and reads as factor ~0, i.e. "grey". This is the part the factor misses:
    0 for an exact saturation edit, about |cast| / |source chroma| for a tinted one.
    """
    chroma_src, chroma_edit = _chroma(_batch(source), _batch(edited))
    factor = _fit_slope(chroma_src, chroma_edit, "saturation")
    return float((chroma_edit - factor * chroma_src).pow(2).mean().sqrt() / chroma_src.pow(2).mean().sqrt())


def _estimate_hue(source: torch.Tensor, edited: torch.Tensor) -> float:
    """Circular mean of the per-pixel hue shift, weighted to trust saturated, lit pixels."""
    hs, ss, vs = kornia.color.rgb_to_hsv(source).unbind(-3)
    he, se, ve = kornia.color.rgb_to_hsv(edited).unbind(-3)
    weight = torch.minimum(ss, se) * torch.minimum(vs, ve)
    shift = he - hs
    y, x = float((weight * shift.sin()).sum()), float((weight * shift.cos()).sum())
    if x == 0 and y == 0:
        raise ValueError("cannot measure a hue shift: the images have no saturated pixels")
    return math.degrees(math.atan2(y, x))


def _estimate_gamma(source: torch.Tensor, edited: torch.Tensor) -> float:
    mask = (source > 0.05) & (source < 0.95) & _unclipped(edited)
    return 1.0 / _fit_slope(source[mask].log(), edited[mask].log(), "gamma")


def _estimate_temperature(source: torch.Tensor, edited: torch.Tensor) -> float:
    red, blue = _linear_gain(source, edited, 0), _linear_gain(source, edited, 2)
    return kelvin_from_red_blue(math.log(red / blue))


def _golden_min(f: Callable[[float], float], lo: float, hi: float, steps: int = 24) -> float:
    """Minimiser of a unimodal function on [lo, hi] (golden-section search)."""
    r = (math.sqrt(5) - 1) / 2
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - r * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + r * (hi - lo)
            fb = f(b)
    return 0.5 * (lo + hi)


BLUR_SEARCH_MAX = 16.0  # px
_BLUR_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _estimate_blur(source: torch.Tensor, edited: torch.Tensor) -> float:
    """The sigma whose blur of the source best matches the edit (the error is unimodal in sigma):
    a coarse grid brackets it, a golden-section search refines it."""
    def error(sigma: float) -> float:
        return float((gaussian_blur(source, sigma) - edited).pow(2).mean())
    top = min(BLUR_SEARCH_MAX, min(source.shape[-2:]) / 4)
    grid = [s for s in _BLUR_GRID if s < top] + [top]
    errors = [error(s) for s in grid]
    i = errors.index(min(errors))
    best = _golden_min(error, grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)])
    return 0.0 if errors[0] <= error(best) else best


def _estimate_noise(source: torch.Tensor, edited: torch.Tensor) -> float:
    """Std of the difference over midtones, where clipping at 0 or 1 barely trims the noise."""
    diff = edited - source
    mid = diff[(source > 0.25) & (source < 0.75)]
    return float((mid if mid.numel() >= 256 else diff).std())


def _estimate_vignette(source: torch.Tensor, edited: torch.Tensor) -> float:
    lin_src, lin_edit = to_linear(source), to_linear(edited)
    mask = _unclipped(source)
    expected = (lin_src * _radius2(source))[mask]  # darkening per unit strength
    return -_fit_slope(expected, (lin_edit - lin_src)[mask], "vignette")


# ---------------------------------------------------------------- tasks

def _batch(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an image [3, H, W] or a batch [B, 3, H, W], got shape {tuple(images.shape)}")
    return images.float()


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
        return None if self.residual is None else self.residual(_batch(source), _batch(edited))

    def estimate_value(self, source: torch.Tensor, edited: torch.Tensor) -> float:
        """The value this edit would need to turn ``source`` into ``edited`` ([3, H, W] or batches)."""
        value = self.estimator(_batch(source), _batch(edited))
        if self.period:
            middle, half = sum(self.range) / 2, self.period / 2
            value = middle + (value - middle + half) % self.period - half
        return value


TASKS: dict[str, CatTask] = {t.name: t for t in (
    CatTask("exposure", "EV", 0.0, (0.0, 2.0), ("increase the exposure", "decrease the exposure"),
            exposure, _estimate_exposure),
    CatTask("contrast", "x", 1.0, (1.0, 2.0), ("increase the contrast", "decrease the contrast"),
            contrast, _estimate_contrast, domain=(0.0, math.inf)),
    CatTask("saturation", "x", 1.0, (1.0, 2.0), ("make the colours more saturated", "make the colours less saturated"),
            saturation, _estimate_saturation, domain=(0.0, math.inf), residual=chroma_residual,
            residual_name="residual chroma"),
    CatTask("hue", "deg", 0.0, (0.0, 180.0),
            ("rotate the hue of every colour, red towards yellow and green",
             "rotate the hue of every colour, red towards magenta and blue"),
            hue_rotation, _estimate_hue, period=360.0),
    CatTask("gamma", "gamma", 1.0, (1.0, 2.0), ("brighten the midtones", "darken the midtones"),
            gamma, _estimate_gamma, domain=(0.05, 20.0)),
    CatTask("temperature", "K", KELVIN_IDENTITY, (KELVIN_IDENTITY, 3000.0),
            ("make the colours cooler", "make the colours warmer"),
            temperature, _estimate_temperature, domain=(KELVIN_MIN, KELVIN_MAX)),
    CatTask("blur", "px", 0.0, (0.0, 4.0), ("blur the image", "make the image less blurry"),
            gaussian_blur, _estimate_blur, domain=(0.0, BLUR_SEARCH_MAX)),
    CatTask("noise", "sigma", 0.0, (0.0, 0.1), ("add noise to the image", "remove noise from the image"),
            gaussian_noise, _estimate_noise, domain=(0.0, 1.0)),
    CatTask("vignette", "strength", 0.0, (0.0, 0.8), ("add a dark vignette", "remove the dark vignette"),
            vignette, _estimate_vignette, domain=(0.0, 1.0)),
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
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


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
