"""NumeriKontrol's tasks: which numbers, with which units, mean which edit. Data, not code.

A task is one attribute with a canonical unit. An edit of it is a signed **delta** in that unit:

* ``scale = "linear"``: the delta is a signed difference of the task's value (exposure +1.5 EV, hue -30
  degrees, temperature -800 K, blur +2 px, gamma +0.5). No change is 0. Between two frames at values a and b
  the delta is ``b - a``.
* ``scale = "log"``: the delta is a factor, always > 0 (contrast, saturation: unit ``x``). No change is 1.
  "Increase the contrast by 1.5x" is the factor 1.5; "decrease the contrast by 2x" is the factor 0.5 (the
  contrast becomes half of what it was). This is how ``trainer/data/cat.py``'s operators compose: contrast
  and saturation scale the distances from grey, so going from factor a to factor b is the factor ``b / a``.

Task ids (the adapter's ``emb(task)``) are positions in the registry, so trained weights carry the registry
they were trained with (``weights.py``) and the parser and nodes use that one with them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

REGISTRY_FORMAT = "numerikontrol-registry"
REGISTRY_VERSION = 1
SCALES = ("linear", "log")
_WORD = re.compile(r"[^\W\d_]+")  # a word: letters only
_PHRASE = re.compile(r"[^\W\d_]+( [^\W\d_]+)*")  # words separated by single spaces
_UNIT = re.compile(r"°|×|[^\W\d_]+")  # what the parser reads as a unit right after a number


class RegistryError(ValueError):
    """A registry (given in Python, or read from JSON / a weight file's header) that cannot be used."""


def format_number(x: float) -> str:
    """Shortest text that reads back as exactly ``x``, without an exponent (``1e-05`` -> ``0.00001``)."""
    from decimal import Decimal
    text = format(Decimal(repr(float(x))), "f")
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class NumericTask:
    name: str  # the task id's name (the trainer's task name); also a name the parser reads
    unit: str  # canonical unit of the delta; "" = a plain number
    units: tuple[str, ...]  # accepted spellings, case-insensitive (the canonical unit among them); () = plain
    delta_range: tuple[float, float]  # accepted deltas (the trained ones), in the canonical unit
    template: str  # "{verb} the exposure by {amount} EV": {verb} from increase/decrease, {amount} = |delta|
    scale: str = "linear"  # "linear": signed difference (0 = no change); "log": a factor (1 = no change)
    names: tuple[str, ...] = ()  # other names the parser reads ("colour temperature")
    increase: tuple[str, ...] = ("increase",)  # wording for a positive delta (a factor > 1); [0] renders
    decrease: tuple[str, ...] = ("decrease",)  # wording for a negative delta (a factor < 1); [0] renders

    def __post_init__(self) -> None:
        def bad(what: str) -> RegistryError:
            return RegistryError(f"task {self.name!r}: {what}")
        if not isinstance(self.name, str) or not _WORD.fullmatch(self.name):
            raise RegistryError(f"a task name must be one word of letters, got {self.name!r}")
        for key in ("units", "names", "increase", "decrease"):
            value = getattr(self, key)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise bad(f"{key} must be a list of strings, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        for key in ("unit", "template", "scale"):
            if not isinstance(getattr(self, key), str):
                raise bad(f"{key} must be a string, got {getattr(self, key)!r}")
        if self.scale not in SCALES:
            raise bad(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if bool(self.unit) != bool(self.units) or (self.unit and self.unit.casefold() not in self.spellings):
            raise bad(f"the canonical unit {self.unit!r} must be among the spellings {list(self.units)} "
                      f"(both empty for a plain number)")
        for unit in self.units:
            if not _UNIT.fullmatch(unit):
                raise bad(f"unit spelling {unit!r} is not one word of letters, '°' or '×'")
        if self.scale == "log" and not self.unit:
            raise bad("a factor task (scale 'log') needs a unit such as 'x'")
        for phrase in self.all_names:
            if not _PHRASE.fullmatch(phrase):
                raise bad(f"name {phrase!r} is not words of letters separated by single spaces")
        if not self.increase or not self.decrease:
            raise bad("needs at least one increase and one decrease word")
        for word in self.increase + self.decrease:
            if not _WORD.fullmatch(word):
                raise bad(f"direction word {word!r} is not one word of letters")
        both = {w.casefold() for w in self.increase} & {w.casefold() for w in self.decrease}
        if both:
            raise bad(f"{sorted(both)} are both increase and decrease words")
        self._check_range()
        if self.template.count("{verb}") != 1 or self.template.count("{amount}") != 1:
            raise bad(f"template {self.template!r} must hold {{verb}} and {{amount}} once each")
        try:
            self.template.format(verb="v", amount="1")
        except (KeyError, IndexError, ValueError) as e:
            raise bad(f"template {self.template!r} holds a placeholder other than {{verb}} and {{amount}} ({e})") \
                from None

    def _check_range(self) -> None:
        r = self.delta_range
        if (not isinstance(r, (tuple, list)) or len(r) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r)):
            raise RegistryError(f"task {self.name!r}: delta_range must be two finite numbers, got {r!r}")
        lo, hi = float(r[0]), float(r[1])
        object.__setattr__(self, "delta_range", (lo, hi))
        if self.scale == "linear" and not lo <= 0 <= hi or self.scale == "log" and not 0 < lo <= 1 <= hi or lo == hi:
            need = "lo <= 0 <= hi, lo < hi" if self.scale == "linear" else "factors 0 < lo <= 1 <= hi, lo < hi"
            raise RegistryError(f"task {self.name!r}: delta_range {[lo, hi]} must satisfy {need}")

    # ---------------------------------------------------------------- what the parser reads

    @property
    def all_names(self) -> tuple[str, ...]:
        return (self.name, *self.names)

    @property
    def spellings(self) -> frozenset[str]:
        return frozenset(u.casefold() for u in self.units)

    @property
    def identity(self) -> float:
        """The delta that changes nothing: 0, or the factor 1."""
        return 1.0 if self.scale == "log" else 0.0

    def direction(self, delta: float) -> int:
        """+1 for an increase (delta > 0, factor > 1), -1 for a decrease, 0 for no change."""
        d = delta - self.identity
        return (d > 0) - (d < 0)

    # ---------------------------------------------------------------- values and deltas

    def delta_between(self, source: float, target: float) -> float:
        """The delta that takes the task's value ``source`` to ``target`` (how the trainer labels a frame pair)."""
        return target / source if self.scale == "log" else target - source

    def compose(self, value: float, delta: float) -> float:
        """The value after applying ``delta`` to ``value`` (the inverse of ``delta_between``)."""
        return value * delta if self.scale == "log" else value + delta

    def normaliser(self) -> tuple[bool, float]:
        """(log?, scale): the adapter's signed coordinate is delta / scale, or log(delta) / scale; the ends of
        the range map into [-1, 1], with the larger end on +-1 and no change on 0."""
        lo, hi = self.delta_range
        if self.scale == "log":
            return True, max(-math.log(lo), math.log(hi))
        return False, max(-lo, hi)

    def normalise(self, delta: float) -> float:
        log, scale = self.normaliser()
        return (math.log(delta) if log else delta) / scale

    # ---------------------------------------------------------------- text

    def amount(self, value: float) -> str:
        """``value`` with the canonical unit, as the messages write it."""
        if self.scale == "log":
            return f"{format_number(value)}{self.unit}"
        text = format_number(value)
        return text if not self.unit else f"{text}{self.unit}" if self.unit in "°×" else f"{text} {self.unit}"

    def canonical(self, delta: float) -> str:
        """The edit's canonical line, as the parse command prints it: ``exposure +1.5 EV``, ``contrast 0.5x``,
        ``hue -30 deg``; it reads back to exactly (task, delta)."""
        if self.scale == "log":
            return f"{self.name} {self.amount(delta)}"
        return f"{self.name} {'+' if delta > 0 else ''}{self.amount(delta)}"

    def describe(self) -> str:
        """``exposure -2 ... 2 EV (units: EV, ev, stop, stops)``: what this task accepts, for messages."""
        lo, hi = self.delta_range
        if self.scale == "log":
            span = f"factor {self.amount(lo)} ... {self.amount(hi)}"
        else:
            span = f"{format_number(lo)} ... {self.amount(hi)}"
        units = f"units: {', '.join(self.units)}" if self.units else "a plain number"
        names = f", also called {', '.join(repr(n) for n in self.names)}" if self.names else ""
        return f"{self.name} {span} ({units}{names})"

    def render(self, delta: float, decrease: bool = False) -> str:
        """The instruction line for ``delta`` (the template filled in), which ``parse_line`` reads back to it.
        No change reads either way ("increase ... by 0" by default; ``decrease``: "decrease ... by 0");
        ``decrease`` with a delta that changes something is an error."""
        direction = self.direction(delta)
        if decrease and direction > 0:
            raise ValueError(f"{self.name}: {delta} is an increase; only no change may be worded as a decrease")
        up = direction > 0 or (direction == 0 and not decrease)
        if self.scale == "log":
            magnitude = delta if up else 1.0 / delta
        else:
            magnitude = abs(delta)
        line = self.template.format(verb=(self.increase if up else self.decrease)[0], amount=format_number(magnitude))
        return line[:1].upper() + line[1:]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "units": list(self.units), "delta_range": list(self.delta_range),
                "template": self.template, "scale": self.scale, "names": list(self.names),
                "increase": list(self.increase), "decrease": list(self.decrease)}
