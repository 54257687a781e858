"""The `synth cat` operators and estimators: photometric edits with a known value, and reading that value back.

Operators: (images [B, 3, H, W] sRGB in 0..1, value, seed) -> images; estimators: (source, edited) -> value.
``cat.py`` builds tasks, photos and trajectories from them.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import kornia
import torch

MID_GREY = 0.5  # the sRGB value contrast pivots around
# Values this close to 0 or 1 may have been clipped (or crushed by 8-bit rounding): estimators skip them.
_DARK, _BRIGHT = 2 / 255, 1 - 2 / 255


def as_batch(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an image [3, H, W] or a batch [B, 3, H, W], got shape {tuple(images.shape)}")
    return images.float()


# ---------------------------------------------------------------- light and colour helpers

def to_linear(images: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_linear_rgb(images)


def to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear light back to sRGB, clipped to the displayable [0, 1] first (overexposure saturates)."""
    return kornia.color.linear_rgb_to_rgb(linear.clamp(0, 1)).clamp(0, 1)


def grey(images: torch.Tensor) -> torch.Tensor:
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
    return torch.lerp(grey(images), images, factor).clamp(0, 1)


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


def linear_gain(source: torch.Tensor, edited: torch.Tensor, channel: int | None = None) -> float:
    """Ratio of summed linear light over pixels unclipped in both images (one channel, or all)."""
    mask = _unclipped(source) & _unclipped(edited)
    lin_src, lin_edit = to_linear(source), to_linear(edited)
    if channel is not None:
        mask, lin_src, lin_edit = mask[:, channel], lin_src[:, channel], lin_edit[:, channel]
    den = float(lin_src[mask].sum())
    if den <= 0:
        raise ValueError("cannot measure a gain: no pixel is unclipped in both images")
    return float(lin_edit[mask].sum()) / den


def estimate_exposure(source: torch.Tensor, edited: torch.Tensor, rounds: int = 8) -> float:
    """log2 of the linear-light gain, measured on the pixels that the measured gain keeps below white.

    A pixel close to white in the edit may have been clipped there, softly (a model that rolls off
    towards 1) or hard; counting it pulls the gain down. So the gain is re-measured on the source pixels
    that stay under 1/1.25 of white at the current estimate, until the estimate settles (for an exact
    edit it is exact at once; a soft roll-off no longer biases it).
    """
    gain = linear_gain(source, edited)
    lin_src = to_linear(source)
    for _ in range(rounds):
        keep = lin_src * (1.25 * max(gain, 1.0)) < 1.0
        if not keep.any():
            break
        new = linear_gain(torch.where(keep, source, 0.0), torch.where(keep, edited, 0.0))
        if abs(new - gain) < 1e-6 * gain:
            break
        gain = new
    return math.log2(gain)


def estimate_contrast(source: torch.Tensor, edited: torch.Tensor) -> float:
    mask = _unclipped(edited)
    return _fit_slope(source[mask] - MID_GREY, edited[mask] - MID_GREY, "contrast")


def _chroma(source: torch.Tensor, edited: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's chroma (its distance from its own grey) in both images, over pixels unclipped in the edit."""
    mask = _unclipped(edited).all(dim=1, keepdim=True).expand_as(edited)
    return (source - grey(source))[mask], (edited - grey(edited))[mask]


def estimate_saturation(source: torch.Tensor, edited: torch.Tensor) -> float:
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
    chroma_src, chroma_edit = _chroma(as_batch(source), as_batch(edited))
    factor = _fit_slope(chroma_src, chroma_edit, "saturation")
    return float((chroma_edit - factor * chroma_src).pow(2).mean().sqrt() / chroma_src.pow(2).mean().sqrt())


def estimate_hue(source: torch.Tensor, edited: torch.Tensor) -> float:
    """Circular mean of the per-pixel hue shift, weighted to trust saturated, lit pixels."""
    hs, ss, vs = kornia.color.rgb_to_hsv(source).unbind(-3)
    he, se, ve = kornia.color.rgb_to_hsv(edited).unbind(-3)
    weight = torch.minimum(ss, se) * torch.minimum(vs, ve)
    shift = he - hs
    y, x = float((weight * shift.sin()).sum()), float((weight * shift.cos()).sum())
    if x == 0 and y == 0:
        raise ValueError("cannot measure a hue shift: the images have no saturated pixels")
    return math.degrees(math.atan2(y, x))


def estimate_gamma(source: torch.Tensor, edited: torch.Tensor) -> float:
    mask = (source > 0.05) & (source < 0.95) & _unclipped(edited)
    return 1.0 / _fit_slope(source[mask].log(), edited[mask].log(), "gamma")


def estimate_temperature(source: torch.Tensor, edited: torch.Tensor) -> float:
    red, blue = linear_gain(source, edited, 0), linear_gain(source, edited, 2)
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


def estimate_blur(source: torch.Tensor, edited: torch.Tensor) -> float:
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


def estimate_noise(source: torch.Tensor, edited: torch.Tensor) -> float:
    """Std of the difference over midtones, where clipping at 0 or 1 barely trims the noise."""
    diff = edited - source
    mid = diff[(source > 0.25) & (source < 0.75)]
    return float((mid if mid.numel() >= 256 else diff).std())


def estimate_vignette(source: torch.Tensor, edited: torch.Tensor) -> float:
    lin_src, lin_edit = to_linear(source), to_linear(edited)
    mask = _unclipped(source)
    expected = (lin_src * _radius2(source))[mask]  # darkening per unit strength
    return -_fit_slope(expected, (lin_edit - lin_src)[mask], "vignette")
