"""One line of text -> (task, signed delta in the task's canonical unit), read against a registry.

The grammar, case-insensitive; words other than these are ignored:

* exactly one NUMBER: an optional sign (``+``, ``-`` or ``−``), digits with an optional decimal point
  (``1.5``, ``.5``, ``800``, ``1,000``; no exponent, no decimal comma), a fraction (``2/3``), a unicode
  vulgar fraction (``½``, ``⅓``) or a mixed number (``1 1/2``, ``1½``): thirds and halves of a stop as
  photographers write them. Factor tasks also read a prefix ``x1.5`` / ``×1.5``.
* an optional UNIT right after the number, touching it or after spaces (``1.5EV``, ``30°``, ``2 stops``;
  ``%`` on factor tasks: ``+30 %`` is the factor 1.3, ``-30 %`` 0.7; refused on additive tasks):
  one of the task's spellings. A word after the number that is no unit of any task, no task name and no
  filler word (and, for, to, ...) is read as an unknown unit. Without a unit the canonical one is meant.
* the TASK: one of its names as whole words (``exposure``, ``colour temperature``); when the line names no
  task, a unit that belongs to exactly one task names it (``+1.5 EV``, ``30°``).
* the DIRECTION: the task's increase words (increase, raise, ..., ``cooler`` for temperature) or decrease
  words, or the number's sign; both present is refused as ambiguous in either direction (``increase ... by
  -1`` and ``decrease ... by -1`` alike). Neither: positive.
* factor tasks (scale ``log``, unit ``x``): with increase/decrease wording the number says how many times
  larger or smaller, so it must be >= 1 (``decrease the contrast by 2x`` = factor 0.5); without wording the
  number is the factor itself (``contrast x0.5``). A negative factor is an error.

The delta must lie in the task's ``delta_range``. Every failure is a ``NumericParseError`` saying what was
found and listing what is accepted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .tasks import NumericTask, RegistryError, format_number

if TYPE_CHECKING:  # the registry checks its templates with this module: a type-only import
    from .registry import Registry

# Unicode vulgar fractions, as photographers write thirds and halves of a stop (½ EV, 1⅓ stops).
VULGAR = {"½": Fraction(1, 2), "⅓": Fraction(1, 3), "⅔": Fraction(2, 3), "¼": Fraction(1, 4), "¾": Fraction(3, 4),
          "⅕": Fraction(1, 5), "⅖": Fraction(2, 5), "⅗": Fraction(3, 5), "⅘": Fraction(4, 5), "⅙": Fraction(1, 6),
          "⅚": Fraction(5, 6), "⅛": Fraction(1, 8), "⅜": Fraction(3, 8), "⅝": Fraction(5, 8), "⅞": Fraction(7, 8)}
_V = "[" + "".join(VULGAR) + "]"
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|\.\d+"
# a mixed number (1 1/2, 1½), a fraction (2/3), a vulgar fraction (½) or a decimal; tried in that order
_NUM = (rf"(?P<whole>\d+)(?:[ \t]+(?P<mixed>\d+/\d+)(?![\d/])|(?P<mixed_v>{_V}))"
        rf"|(?P<ratio>\d+/\d+)(?![\d/])|(?P<vulgar>{_V})|{_DECIMAL}")
# A sign may follow a letter ("exposure-1"); an unsigned number may not touch a word, a sign or a decimal point.
# A number never touches a slash either: "1/2/3" is no number, not two.
NUMBER_RE = re.compile(rf"(?:(?<![\w.,/])(?P<prefix>[x×]))?"
                       rf"(?:(?<![\d.,/])(?P<sign>[+\-−])|(?(prefix)|(?<![\w.,/+\-−])))(?P<num>(?:{_NUM})(?!/))")
_UNIT_AFTER = re.compile(r"(\s*)(°|×|%|[^\W\d_]+)")
_STRAY = re.compile(r"\S*\d\S*")
_WORDS = re.compile(r"[^\W\d_]+")
FILLER = frozenset("a an and at but by for from in of on or overall please so the then to while with".split())
_SIGNS = {"+": 1, "-": -1, "−": -1}


class NumericParseError(ValueError):
    """A line the parser cannot read; the message says what was found and what is accepted."""


@dataclass(frozen=True)
class NumericEdit:
    task: str  # the registry task's name
    delta: float  # in the task's canonical unit: a signed difference, or a factor for scale "log"
    unit: str  # the canonical unit ("" = a plain number)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "delta": self.delta, "unit": self.unit}


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    for a, b in spans:
        text = text[:a] + " " * (b - a) + text[b:]
    return text


def _name_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, phrase.casefold().split())) + r"(?!\w)")


def _find_tasks(text: str, registry: Registry) -> tuple[list[NumericTask], list[tuple[int, int]]]:
    """Tasks named in ``text`` (casefolded), longest names first, non-overlapping; and where they stand."""
    hits = sorted(((m.start(), m.end(), task) for task in registry.tasks for phrase in task.all_names
                   for m in _name_pattern(phrase).finditer(text)), key=lambda h: h[0] - h[1])
    taken: list[tuple[int, int, NumericTask]] = []
    for a, b, task in hits:
        if all(b <= a2 or a >= b2 for a2, b2, _ in taken):
            taken.append((a, b, task))
    taken.sort(key=lambda h: h[0])
    tasks = list({id(t): t for _, _, t in taken}.values())
    return tasks, [(a, b) for a, b, _ in taken]


def number_value(match: re.Match) -> float:
    """The value of a ``NUMBER_RE`` match: a decimal (``1,000.5``), a fraction (``2/3``), a vulgar fraction (``½``)
    or a mixed number (``1 1/2``, ``1½``), without its sign. A zero denominator raises ZeroDivisionError."""
    if match["whole"] is not None:
        part = Fraction(match["mixed"]) if match["mixed"] else VULGAR[match["mixed_v"]]
        return float(int(match["whole"]) + part)
    if match["ratio"]:
        return float(Fraction(match["ratio"]))
    if match["vulgar"]:
        return float(VULGAR[match["vulgar"]])
    return float(match["num"].replace(",", ""))


def read_line(line: str, registry: Registry) -> NumericEdit:
    """Read one instruction line (see the module's grammar) against ``registry`` (a ``registry.Registry``)."""
    text = line.strip()

    def fail(what: str, task: NumericTask | None = None) -> NumericParseError:
        accepted = task.describe() if task else f"accepted: {registry.describe()}"
        return NumericParseError(f"{text!r}: {what}; {accepted}")

    if not text:
        raise fail("the line is empty")
    numbers = list(NUMBER_RE.finditer(text))
    stray = _STRAY.search(_blank(text, [m.span() for m in numbers]))
    if stray:
        raise fail(f"{stray.group()!r} is not a number this parser reads (write numbers like 1.5, -30, +800, "
                   f"1,000, 2/3, ½ or 1 1/2, with a decimal point)")
    if not numbers:
        raise fail("found no number (write it in digits, e.g. 'increase the exposure by 1.5 EV')")
    if len(numbers) > 1:
        listed = ", ".join(m.group() for m in numbers)
        raise fail(f"found {len(numbers)} numbers ({listed}); write one edit per line")
    number = numbers[0]
    try:
        value = number_value(number)
    except ZeroDivisionError:
        raise fail(f"{number['num']!r} divides by zero") from None
    sign = _SIGNS.get(number["sign"] or "", 0)
    lower = text.casefold()

    known_units = {u for t in registry.tasks for u in t.spellings}
    name_words = {p.split()[0].casefold() for t in registry.tasks for p in t.all_names}
    unit, spans = "", [number.span()]
    after = _UNIT_AFTER.match(lower, number.end())
    if after:
        word = after.group(2)
        if not after.group(1) or word in known_units or word not in FILLER | name_words:
            unit = text[after.start(2):after.end(2)]
            spans.append(after.span(2))
    found = text[number.start():spans[-1][1]]  # the number and its unit, as written
    if number["prefix"]:
        if unit:
            raise fail(f"found two units around {found!r} (write one, e.g. '2x')")
        unit = number["prefix"]

    tasks, name_spans = _find_tasks(_blank(lower, spans), registry)
    if len(tasks) > 1:
        raise fail(f"names {len(tasks)} tasks ({', '.join(t.name for t in tasks)}); write one edit per line")
    owners = [t for t in registry.tasks if unit.casefold() in t.spellings] if unit else []
    if not tasks:
        if len(owners) == 1:
            tasks = owners
        elif owners:
            raise fail(f"names no task, and the unit {unit!r} of {found!r} fits {', '.join(t.name for t in owners)}: "
                       f"name the task")
        else:
            raise fail(f"names no task (found {found!r})")
    task = tasks[0]
    percent = unit == "%"  # a change of a factor: +30 % is x1.3, -30 % x0.7 (factor tasks only)
    if percent and task.scale != "log":
        what = f"its unit is {task.unit}" if task.unit else "it takes a plain number"
        raise fail(f"percent changes a factor, but {task.name} is changed by adding ({what}): write e.g. "
                   f"'{task.render(task.delta_range[1] / 2)}'", task)
    if unit and not percent and unit.casefold() not in task.spellings:
        if not task.units:
            raise fail(f"{task.name} takes a plain number, found {found!r} with the unit {unit!r}", task)
        elsewhere = f" (it is a unit of {', '.join(t.name for t in owners)})" if owners else ""
        raise fail(f"unknown unit {unit!r} for {task.name} in {found!r}{elsewhere}", task)

    words = set(_WORDS.findall(_blank(lower, spans + name_spans)))
    up = [w for w in task.increase if w.casefold() in words]
    down = [w for w in task.decrease if w.casefold() in words]
    if up and down:
        raise fail(f"has both increase wording ({up[0]!r}) and decrease wording ({down[0]!r})", task)
    wording = 1 if up else -1 if down else 0
    said = repr((up or down or [""])[0])
    if wording and sign:  # either way round: is "decrease by -1" a decrease or an increase? Refused alike.
        relation = "the opposite sign" if wording != sign else "a sign as well"
        raise fail(f"says {said} but the number {number.group()} has {relation}: ambiguous; write the amount "
                   f"without a sign after {said} (e.g. {said[:-1]} ... by {number['num']}'), or the signed number "
                   f"without {said}", task)
    direction = wording or sign

    if percent:
        factor = 1.0 + (direction or 1) * value / 100.0
        if factor <= 0:
            raise fail(f"{found!r} leaves a factor of {format_number(factor)}; a factor must stay above 0 "
                       f"(-100 % would remove the {task.name} entirely)", task)
        delta = factor
    elif task.scale == "log":
        if sign < 0:
            raise fail(f"a factor is never negative, found {found!r} (to make the {task.name} smaller write "
                       f"'decrease the {task.name} by 2{task.unit}', or a factor below 1 such as "
                       f"'{task.name} 0.5{task.unit}')", task)
        if value == 0:
            raise fail(f"a factor of 0 is not an edit, found {found!r}", task)
        if direction and value < 1:
            raise fail(f"{said if wording else repr('+')} with the factor {found!r} below 1 is ambiguous: with "
                       f"increase/decrease wording the factor says how many times larger or smaller (>= 1), e.g. "
                       f"'decrease the {task.name} by 2{task.unit}' halves it; a factor alone reads as it stands "
                       f"('{task.name} 0.5{task.unit}')", task)
        delta = value if direction >= 0 else 1.0 / value
    else:
        delta = (direction or 1) * value + 0.0  # + 0.0: no -0.0

    lo, hi = task.delta_range
    tol = 1e-12 * max(1.0, abs(lo), abs(hi))  # a factor written as its inverse may land an ulp outside
    if not lo - tol <= delta <= hi + tol:
        shown = task.amount(delta) if task.scale == "log" else f"{'+' if delta > 0 else ''}{task.amount(delta)}"
        raise fail(f"{task.name} {shown} (from {found!r}) is outside the accepted range", task)
    return NumericEdit(task.name, min(max(delta, lo), hi), task.unit)


def check_round_trip(registry: Registry, task: NumericTask) -> None:
    """The task's template, rendered at the ends, middle and identity of its range, must read back to the same
    (task, delta); a ``RegistryError`` otherwise (a template the parser cannot read, or a wrong unit)."""
    lo, hi = task.delta_range
    samples = (lo, hi, task.identity, (lo * task.identity) ** 0.5 if task.scale == "log" else lo / 2,
               (hi * task.identity) ** 0.5 if task.scale == "log" else hi / 2)
    for delta in samples:
        line = task.render(delta)
        try:
            edit = read_line(line, registry)
        except NumericParseError as e:
            raise RegistryError(f"task {task.name!r}: the template {task.template!r} renders {line!r}, which does "
                                f"not read back ({e})") from None
        if edit.task != task.name or abs(edit.delta - delta) > 1e-9 * max(1.0, abs(delta)):
            raise RegistryError(f"task {task.name!r}: the template {task.template!r} renders {line!r} for "
                                f"{format_number(delta)}, which reads back as {edit.task} {edit.delta!r}")
