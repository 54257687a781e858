"""The NumeriKontrol grammar's structure rules and its properties: which task a line names (never a unit's
guess over a named attribute), two edits on one line, and random lines (canonical round trip, no crash, no
hang on long lines). Phrasing tables: tests/core/test_numeric_core.py."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontext_sliders.core.numeric import grammar
from kontext_sliders.core.numeric.defaults import DEFAULT_REGISTRY
from kontext_sliders.core.numeric.grammar import VULGAR, fixed_direction_words
from kontext_sliders.core.numeric.parser import NumericEdit, NumericParseError, parse_line
from kontext_sliders.core.numeric.tasks import format_number

REG = DEFAULT_REGISTRY
DOCS = Path(__file__).resolve().parents[2] / "docs" / "numerikontrol.md"

# ---------------------------------------------------------------- a named attribute is a task, or the line fails

ATTRIBUTE_NOT_A_TASK = [  # the unit belongs to one task, but the line names another attribute
    ("increase the crispness by 1 px", "'crispness' is not a task"),
    ("raise the brightness by 1 EV", "'brightness' is not a task"),
    ("rotate the colour wheel by 30°", "'colour wheel' is not a task"),
    ("increase the warmth by 500 K", "'warmth' is not a task"),
    ("Crispness: +1 px", "'crispness' is not a task"),
    ("+1 px crispness", "'crispness' is not a task"),
    ("rotate the image by 30°", "names 'image' but no attribute of it"),  # the picture, not its hue
    ("increase the photo by 1 EV", "names 'photo' but no attribute of it"),
]


@pytest.mark.parametrize("line,message", ATTRIBUTE_NOT_A_TASK)
def test_a_unit_never_overrides_a_named_attribute(line, message):
    with pytest.raises(NumericParseError) as info:
        parse_line(line)
    assert message in str(info.value) and f"accepted: {REG.describe()}" in str(info.value)


NO_ATTRIBUTE = [  # lines that name no attribute: a fixed-meaning direction word, else the unit, names the task
    ("1 stop brighter", "exposure", 1.0),
    ("make it 1 stop brighter", "exposure", 1.0),
    ("2 brighter", "exposure", 2.0),  # the fixed word alone: no unit needed
    ("darken the photo by ⅓ EV", "exposure", -1 / 3),
    ("warmer by 500 K", "temperature", -500.0),
    ("make the colours cooler by 1,000 kelvin", "temperature", 1000.0),
    ("sharpen the image by 1 px", "blur", -1.0),
    ("denoise by 0.05", "noise", -0.05),
    ("rotate by 30°", "hue", 30.0),
    ("-15 degrees", "hue", -15.0),
    ("+1 EV for the sky", "exposure", 1.0),  # words after a filler are a region, not the attribute
]


@pytest.mark.parametrize("line,task,delta", NO_ATTRIBUTE)
def test_a_line_without_an_attribute_takes_its_task_from_fixed_words_or_the_unit(line, task, delta):
    assert parse_line(line) == NumericEdit(task, pytest.approx(delta, rel=1e-12), REG.task(task).unit)


@pytest.mark.parametrize("line,word,task", [("1 stop warmer", "stop", "temperature"),
                                            ("make the exposure warmer by 1 EV", "'warmer' is a direction word of temperature",
                                             "exposure"),
                                            ("brighten the hue by 20°", "'brighten' is a direction word of exposure", "hue")])
def test_a_fixed_word_of_another_task_is_refused(line, word, task):
    with pytest.raises(NumericParseError) as info:
        parse_line(line)
    assert word in str(info.value) and str(info.value).endswith(REG.task(task).describe())


def test_fixed_direction_words_are_documented():
    fixed = fixed_direction_words(REG)
    assert set(fixed) == {"brighten", "brighter", "darken", "darker", "cooler", "warmer", "sharpen", "sharper",
                          "denoise"}
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Grammar"):text.index("## Checking lines")]
    for word, task in fixed.items():
        assert re.search(rf"`{word}`[^|\n]*\({task}\)|{task}[^.\n]*`{word}`", section), (word, task)


def test_a_custom_registry_names_its_own_attributes():
    """The structure rule reads the registry: an alias of a custom task is an attribute it accepts."""
    from kontext_sliders.core.numeric.registry import Registry
    reg = Registry.from_json({"format": "numerikontrol-registry", "version": 1, "tasks": [
        {"name": "rotation", "unit": "deg", "units": ["deg", "°"], "delta_range": [-90, 90],
         "template": "{verb} the object by {amount} deg", "names": ["object"], "increase": ["increase"],
         "decrease": ["decrease"]}]})
    assert parse_line("rotate the object by 30°", reg).task == "rotation"
    with pytest.raises(NumericParseError, match="'wheel' is not a task"):
        parse_line("rotate the wheel by 30°", reg)


# ---------------------------------------------------------------- two edits on one line: refused, shown split

@pytest.mark.parametrize("line,first,second", [
    ("exposure +1 EV and hue +20°", "exposure +1 EV", "hue +20°"),
    ("increase the exposure by 1.5 EV; decrease the contrast by 2x", "increase the exposure by 1.5 EV",
     "decrease the contrast by 2x"),
    ("saturation -30%, then blur +2 px", "saturation -30%", "blur +2 px"),
])
def test_two_edits_on_one_line_are_refused_with_the_two_lines(line, first, second):
    with pytest.raises(NumericParseError) as info:
        parse_line(line)
    assert f"write them on two lines, {first!r} and {second!r}" in str(info.value)
    parse_line(first), parse_line(second)  # what the message suggests reads


def test_two_numbers_that_are_not_two_edits_get_the_plain_refusal():
    with pytest.raises(NumericParseError) as info:
        parse_line("exposure 1 EV 2 EV")
    assert "found 2 numbers" in str(info.value) and "two lines" not in str(info.value)


# ---------------------------------------------------------------- properties

def _number_text(value: float, style: str) -> str:
    """``value`` (>= 0) written the way ``style`` says, when that writing is exact; else the decimal."""
    whole, frac = divmod(value, 1)
    for den in (2, 3, 4, 8):
        num = round(frac * den)
        if abs(frac * den - num) < 1e-12 and 0 < num < den:
            vulgar = next((k for k, v in VULGAR.items() if v == num / den), None)
            if style == "fraction" and not whole:
                return f"{num}/{den}"
            if style == "mixed" and whole:
                return f"{int(whole)} {num}/{den}"
            if style == "vulgar" and vulgar:
                return f"{int(whole) or ''}{vulgar}"
    return format_number(value)


@st.composite
def accepted_lines(draw):
    """Lines in many phrasings, with the (task, delta) they were written for."""
    task = draw(st.sampled_from(REG.tasks))
    lo, hi = task.delta_range
    if task.scale == "log":
        delta = draw(st.sampled_from([0.5, 2 / 3, 0.75, 0.8, 1.0, 1.25, 1.5, 2.0]))
    else:
        k = draw(st.integers(-24, 24))
        delta = lo * -k / 24 if k < 0 else hi * k / 24
        delta = float(format_number(round(delta, 6)))
    name = draw(st.sampled_from(task.all_names))
    unit = draw(st.sampled_from(["", *task.units]))
    style = draw(st.sampled_from(["decimal", "fraction", "mixed", "vulgar"]))
    up = task.direction(delta) >= 0
    worded = draw(st.booleans())
    if task.scale == "log":
        if not worded or not unit:  # the factor itself ("contrast 0.5x"); a factor always has a unit here
            return f"{name} {format_number(delta)}{unit or task.unit}", task.name, delta
        amount = _number_text(delta if up else 1 / delta, style)
    else:
        amount = _number_text(abs(delta), style)
    if worded:
        verb = (task.increase if up else task.decrease)[draw(st.integers(0, 1))]
        space = draw(st.sampled_from([" ", ""])) if unit and unit not in "°×" else ""
        return f"{verb} the {name} by {amount}{' ' if unit and not space and unit not in '°×' else space}{unit}", \
            task.name, delta
    sign = "-" if delta < 0 else draw(st.sampled_from(["+", ""]))
    sep = draw(st.sampled_from([" ", ": ", " "]))
    return f"{name}{sep}{sign}{amount} {unit}".strip(), task.name, delta


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accepted_lines())
def test_accepted_lines_and_their_canonical_form_read_back(case):
    line, task, delta = case
    edit = parse_line(line)
    assert edit.task == task and edit.delta == pytest.approx(delta, rel=1e-9, abs=1e-12), line
    canonical = REG.task(edit.task).canonical(edit.delta)
    assert parse_line(canonical) == edit, (line, canonical)  # exactly: the same float


_ALPHABET = st.sampled_from(list("0123456789 ,./+-−x×%°½⅓⅔¼abcdeEVKpxstoprghuwn:;\t") + ["exposure", "hue", "by",
                                                                                       "increase", "and", " 1/2"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_ALPHABET, max_size=60).map("".join)))
def test_no_line_crashes_the_parser(line):
    try:
        edit = parse_line(line)
    except NumericParseError as e:
        assert str(e)  # a message, never an internal error
        return
    assert parse_line(REG.task(edit.task).canonical(edit.delta)) == edit


def _hang_guard(seconds: int):
    """Turn a parser that never returns into a failure instead of a stuck suite (a hang, not a speed check)."""
    def alarm(*_):
        raise AssertionError(f"the parser did not return within {seconds} s: it hangs on this input")
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)


LONG = ["a" * 10_000, "1" * 10_000, "1 " * 5_000, "½" * 10_000, "1/" * 5_000, "1," * 5_000, "x1" * 5_000,
        "exposure " * 1_200, "increase the exposure by " * 400 + "1 EV", "-" * 10_000 + "1"]


@pytest.mark.parametrize("i", range(len(LONG)))
def test_long_lines_are_refused_without_hanging(i, monkeypatch):
    line = LONG[i]
    with pytest.raises(NumericParseError, match="at most 4000"):
        parse_line(line)  # over the cap: refused before any matching
    # and the grammar itself stays linear on lines of that length (the cap lifted)
    monkeypatch.setattr(grammar, "MAX_LINE", 20_000)
    _hang_guard(60)
    try:
        parse_line(line)  # some of these read (the last phrase before the number names the task)
    except NumericParseError as e:
        assert str(e)
    finally:
        signal.alarm(0)
