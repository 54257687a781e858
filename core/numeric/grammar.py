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
* the TASK: one of its names as whole words (``exposure``, ``colour temperature``). A line that names no task
  is read by its structure: the ATTRIBUTE phrase is every word before the number other than filler words,
  edit verbs (``EDIT_VERBS``: make, rotate, shift, ...) and direction words, plus the words right after the
  number and unit up to the first filler word. A word left there names an attribute, which must be a task or
  an alias: ``increase the crispness by 1 px`` is refused, not read as blur. Words for the picture itself
  (``OBJECTS``: image, photo, colours, it, ...) name no attribute. Then the task comes from a direction word
  with a fixed meaning (a word only one task has: ``brighter``, ``warmer``, ``sharpen``; ``darken the image
  by 1 EV``, ``make the colours warmer by 500K``), else, in a line that names nothing else, from a unit that
  belongs to exactly one task (``+1.5 EV``, ``rotate by 30°``); ``rotate the image by 30°`` is refused (the
  picture, but no attribute of it). A fixed-meaning word of another task than the one named or found by the
  unit is refused (``1 stop warmer``).
* the DIRECTION: the task's increase words (increase, raise, ..., ``cooler`` for temperature) or decrease
  words, or the number's sign; both present is refused as ambiguous in either direction (``increase ... by
  -1`` and ``decrease ... by -1`` alike). Neither: positive.
* factor tasks (scale ``log``, unit ``x``): with increase/decrease wording the number says how many times
  larger or smaller, so it must be >= 1 (``decrease the contrast by 2x`` = factor 0.5); without wording the
  number is the factor itself (``contrast x0.5``). A negative factor is an error.

One edit per line: a line with two complete edits (``exposure +1 EV and hue +20°``) is refused, and the message
shows it as the two lines to write; splitting silently would guess where one edit ends.

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
_DIGIT = re.compile(r"\d")
_WORDS = re.compile(r"[^\W\d_]+")
FILLER = frozenset("a an and at but by for from in of on or overall please so the then to while with".split())
# Verbs that say "edit" without saying what or which way; in the attribute phrase they name nothing.
EDIT_VERBS = frozenset("adjust apply bump change dial give make move push rotate rotated set shift turn".split())
# Words for the picture itself: the object of a fixed-meaning direction word ("darken the image"), no attribute.
OBJECTS = frozenset("colors colours everything image it photo photograph picture scene shot this tones".split())
_SPLIT = re.compile(r"\s*(?:;|,|\band\b|\bthen\b)\s*")
MAX_LINE = 4000  # characters: an instruction line is a sentence; longer text is refused before any matching
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
    """``text`` with the (non-overlapping) spans turned into spaces: one pass, linear in the text's length."""
    parts, at = [], 0
    for a, b in sorted(spans):
        parts += [text[at:a], " " * (b - a)]
        at = b
    return "".join(parts) + text[at:]


def _stray(text: str) -> str | None:
    """The first space-free run holding a digit (what is left of a number the grammar did not read); linear."""
    digit = _DIGIT.search(text)
    if digit is None:
        return None
    start, end = digit.start(), digit.end()
    while start and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


def fixed_direction_words(registry: Registry) -> dict[str, str]:
    """Direction words with a fixed meaning: an increase or decrease word of exactly one task -> that task."""
    owners: dict[str, set[str]] = {}
    for task in registry.tasks:
        for word in task.increase + task.decrease:
            owners.setdefault(word.casefold(), set()).add(task.name)
    return {w: next(iter(t)) for w, t in owners.items() if len(t) == 1}


def _attribute_phrase(lower: str, number: re.Match, unit_end: int, directions: set[str]) -> tuple[list[str], list[str]]:
    """(attribute words, picture words) of a line that names no task: the words before the number and those
    right after the number and unit up to the first filler word, less fillers, edit verbs and direction words."""
    after = []
    for word in _WORDS.findall(lower[unit_end:]):
        if word in FILLER:
            break
        after.append(word)
    words = [w for w in _WORDS.findall(lower[:number.start()]) + after
             if w not in FILLER and w not in EDIT_VERBS and w not in directions]
    return [w for w in words if w not in OBJECTS], [w for w in words if w in OBJECTS]


def _two_edits(text: str, registry: Registry) -> list[str] | None:
    """The line cut at a separator (``;``, ``,``, and, then) into pieces that each read as one edit, or None."""
    pieces = [p for p in _SPLIT.split(text) if p.strip()]
    for cut in range(1, len(pieces)):
        halves = [" ".join(pieces[:cut]), " ".join(pieces[cut:])]
        try:
            for half in halves:
                read_line(half, registry)
        except NumericParseError:
            continue
        return halves
    return None


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
    if len(text) > MAX_LINE:
        raise NumericParseError(f"the line is {len(text)} characters long; an instruction line is at most "
                                f"{MAX_LINE} (one edit per line, e.g. 'increase the exposure by 1.5 EV')")
    numbers = list(NUMBER_RE.finditer(text))
    stray = _stray(_blank(text, [m.span() for m in numbers]))
    if stray:
        raise fail(f"{stray!r} is not a number this parser reads (write numbers like 1.5, -30, +800, "
                   f"1,000, 2/3, ½ or 1 1/2, with a decimal point)")
    if not numbers:
        raise fail("found no number (write it in digits, e.g. 'increase the exposure by 1.5 EV')")
    if len(numbers) > 1:
        listed = ", ".join(m.group() for m in numbers[:8]) + (", ..." if len(numbers) > 8 else "")
        halves = _two_edits(text, registry) if len(numbers) == 2 else None
        split = f"; it holds two edits: write them on two lines, {halves[0]!r} and {halves[1]!r}" if halves else \
            "; write one edit per line"
        raise fail(f"found {len(numbers)} numbers ({listed}){split}")
    number = numbers[0]
    try:
        value = number_value(number)
    except ZeroDivisionError:
        raise fail(f"{number['num']!r} divides by zero") from None
    sign = _SIGNS.get(number["sign"] or "", 0)
    lower = text.casefold()

    known_units = {u for t in registry.tasks for u in t.spellings}
    name_words = {p.split()[0].casefold() for t in registry.tasks for p in t.all_names}
    directions = {w.casefold() for t in registry.tasks for w in t.increase + t.decrease}  # "2 brighter": no unit
    unit, spans = "", [number.span()]
    after = _UNIT_AFTER.match(lower, number.end())
    if after:
        word = after.group(2)
        if not after.group(1) or word in known_units or word not in FILLER | name_words | directions:
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
    fixed_words = fixed_direction_words(registry)
    fixed = {w: fixed_words[w] for w in _WORDS.findall(_blank(lower, spans + name_spans)) if w in fixed_words}
    if not tasks:
        attributes, objects = _attribute_phrase(lower, number, spans[-1][1], directions)
        if attributes:
            raise fail(f"names no task (found {found!r}): {' '.join(attributes)!r} is not a task or an alias of "
                       f"one")
        if fixed:
            tasks = [registry.task(next(iter(fixed.values())))]
        elif objects:
            raise fail(f"names {objects[0]!r} but no attribute of it to change (found {found!r}): name the task; "
                       f"a unit alone names it only in a line that names nothing else (e.g. '+1.5 EV')")
        elif len(owners) == 1:
            tasks = owners
        elif owners:
            raise fail(f"names no task, and the unit {unit!r} of {found!r} fits {', '.join(t.name for t in owners)}: "
                       f"name the task")
        else:
            raise fail(f"names no task (found {found!r})")
    task = tasks[0]
    others = sorted({w for w, t in fixed.items() if t != task.name})
    if others:
        raise fail(f"{others[0]!r} is a direction word of {fixed[others[0]]}, but the line edits {task.name}"
                   + (f" (the unit {unit!r} is {task.name}'s)" if unit and task in owners else ""), task)
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
