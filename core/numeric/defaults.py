"""The default registry: the `synth cat` tasks of ``trainer/data/cat.py``, as data (core never imports trainer;
a test keeps the two in step)."""
from __future__ import annotations

from typing import Any

from .registry import Registry
from .tasks import REGISTRY_FORMAT, REGISTRY_VERSION


_INCREASE = ("increase", "raise", "boost", "add", "more", "higher")
_DECREASE = ("decrease", "lower", "reduce", "remove", "less")


def _task(name: str, unit: str, units: tuple[str, ...], delta_range: tuple[float, float], template: str,
          scale: str = "linear", names: tuple[str, ...] = (), increase: tuple[str, ...] = (),
          decrease: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "unit": unit, "units": list(units), "delta_range": list(delta_range), "template": template,
            "scale": scale, "names": list(names), "increase": [*_INCREASE, *increase],
            "decrease": [*_DECREASE, *decrease]}


_FACTOR = ("x", "×", "times")
# The deltas between any two frames of a default `synth cat` trajectory (trainer/data/cat.py: TASKS' default
# ranges; a test keeps them in step), in cat's task order. Temperature is the light's (cat's convention):
# more kelvin = cooler, so "white balance", which runs the other way, is deliberately not a name for it.
DEFAULT_REGISTRY_DATA: dict[str, Any] = {"format": REGISTRY_FORMAT, "version": REGISTRY_VERSION, "tasks": [
    _task("exposure", "EV", ("EV", "stop", "stops"), (-2.0, 2.0), "{verb} the exposure by {amount} EV",
          increase=("brighten", "brighter"), decrease=("darken", "darker")),
    _task("contrast", "x", _FACTOR, (0.5, 2.0), "{verb} the contrast by {amount}x", scale="log"),
    _task("saturation", "x", _FACTOR, (0.5, 2.0), "{verb} the saturation by {amount}x", scale="log",
          names=("colour saturation", "color saturation")),
    _task("hue", "deg", ("deg", "°", "degree", "degrees"), (-180.0, 180.0), "{verb} the hue by {amount} degrees"),
    _task("gamma", "", (), (-1.0, 1.0), "{verb} the gamma by {amount}"),
    _task("temperature", "K", ("K", "kelvin", "kelvins"), (-3500.0, 3500.0),
          "{verb} the colour temperature by {amount} K", names=("colour temperature", "color temperature"),
          increase=("cooler",), decrease=("warmer",)),
    _task("blur", "px", ("px", "pixel", "pixels"), (-4.0, 4.0), "{verb} the blur by {amount} px",
          names=("gaussian blur",), decrease=("sharpen", "sharper")),
    _task("noise", "", (), (-0.1, 0.1), "{verb} the noise by {amount}", decrease=("denoise",)),
    _task("vignette", "", (), (-0.8, 0.8), "{verb} the vignette by {amount}", names=("vignetting",)),
]}
DEFAULT_REGISTRY = Registry.from_json(DEFAULT_REGISTRY_DATA)
