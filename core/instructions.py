"""Multi-instruction prompts: sub-instruction lines, their token spans, per-instruction strengths.

Pure Python / torch. The host glue tokenises; this module decides where each line's tokens are,
parses the user's strengths and holds the per-token math of the training-free knobs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch


# The most sub-instructions one prompt may have. Each line is a slider the user sets by hand; guidance
# adds one batch row per line at every step, and the encode cost grows with the count (docs/results.md: measured
# cost at 2 / 8 / 32 / 64 lines). 64 leaves twice the room anyone sets by hand.
MAX_INSTRUCTIONS = 64

# Only a newline ends a sub-instruction. str.splitlines() would also split at \v, \f, \x1c-\x1e, \x85,
# U+2028 and U+2029, invisible in the text box, turning one visible line into two sliders.
_LINE_BREAK = re.compile(r"\r?\n")


def split_instructions(text: str) -> list[str]:
    """One sub-instruction per line (\\n or \\r\\n); surrounding whitespace and blank lines dropped."""
    lines = [line.strip() for line in _LINE_BREAK.split(text)]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("no instructions: write one sub-instruction per line, e.g. 'make the sky stormy' and "
                         "'turn the car red' on two lines")
    if len(lines) > MAX_INSTRUCTIONS:
        raise ValueError(f"{len(lines)} sub-instructions: at most {MAX_INSTRUCTIONS} are accepted (one slider each); "
                         f"merge lines that you do not need to set separately")
    return lines


def joined_prompt(lines: Sequence[str]) -> str:
    """The prompt the model sees: the lines joined with single spaces."""
    return " ".join(lines)


def leave_one_out_prompts(lines: Sequence[str]) -> list[str]:
    """For each line, the prompt without it (the empty string when it is the only line)."""
    return [joined_prompt(lines[:i] + lines[i + 1:]) for i in range(len(lines))]


def _same_token(a, b) -> bool:
    # a token is an id, or an embedding tensor (textual inversion); weights compare as floats
    if torch.is_tensor(a[0]) or torch.is_tensor(b[0]):
        return torch.is_tensor(a[0]) and torch.is_tensor(b[0]) and torch.equal(a[0], b[0]) and a[1] == b[1]
    return a[0] == b[0] and a[1] == b[1]


def spans_from_lines(full: Sequence, per_line: Sequence[Sequence], lines: Sequence[str]) -> list[tuple[int, int]]:
    """Token span [start, end) of each line in ``full``.

    ``full`` holds the content tokens ((token, weight) pairs, no end / pad tokens) of the joined prompt,
    ``per_line[i]`` those of line i tokenised alone. ComfyUI's tokenizer never merges tokens across the
    joining space (T5's pieces stop at whitespace), so the lines' tokens, laid end to end, are the full
    prompt's: line i owns the next ``len(per_line[i])`` tokens. Anything else (a weight group spanning
    lines) is an error, never a silently wrong span. One pass: cost linear in the prompt's length.
    """
    spans, start = [], 0
    for i, (tokens, line) in enumerate(zip(per_line, lines)):
        if not tokens:
            raise ValueError(f"line {i + 1} ({line!r}) tokenises to nothing; remove it or give it words")
        end = start + len(tokens)
        if end > len(full) or not all(_same_token(a, b) for a, b in zip(tokens, full[start:end])):
            raise ValueError(f"could not locate line {i + 1} ({line!r}) in the tokenised prompt: it tokenises "
                             f"differently alone than within the whole prompt (a weight group '(...)' spanning "
                             f"several lines?). Keep each sub-instruction's weight syntax within its line.")
        spans.append((start, end))
        start = end
    if start != len(full):
        raise ValueError(f"the tokenised prompt has {len(full)} content tokens but the lines account for {start}; "
                         f"keep each sub-instruction's weight syntax within its line")
    return spans


@dataclass(frozen=True)
class InstructionSpans:
    """Where each sub-instruction sits in the text sequence the model receives.

    ``spans[i]`` is [start, end) in the encoded sequence (conditioning rows); ``pad_index`` the row of the
    pad state (FLUX.1: the first pad token after the end token), None when the prompt leaves none; it may
    be negative: a row the model puts before the conditioning's (FLUX.2 [dev]'s left zero rows); ``length``
    the sequence length.
    """
    lines: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    pad_index: int | None
    length: int

    def __post_init__(self):
        if len(self.lines) != len(self.spans):
            raise ValueError("one span per line")
        for start, end in self.spans:
            if not 0 <= start < end <= self.length:
                raise ValueError(f"span {start}:{end} outside a sequence of {self.length}")
        if self.pad_index is not None and any(s <= self.pad_index < e for s, e in self.spans):
            raise ValueError("the pad position lies inside an instruction")

    def in_model_rows(self, total: int, offset: int) -> "InstructionSpans":
        """The spans in the text sequence the model's blocks see: ``total`` rows, the conditioning's first at
        ``offset`` (a family's ``model_text_length``)."""
        if (total, offset) == (self.length, 0) and (self.pad_index is None or self.pad_index >= 0):
            return self
        pad = None if self.pad_index is None else self.pad_index + offset
        if pad is not None and not 0 <= pad < total:
            pad = None  # the pad row the encoder recorded is not in this model's sequence
        return InstructionSpans(self.lines, tuple((s + offset, e + offset) for s, e in self.spans), pad, total)


# Accepted per-instruction strengths unless a knob says otherwise (the training-free knobs' range).
STRENGTH_RANGE = (-1.0, 3.0)

# a plain decimal number: no '1_0' (Python's float() reads 10), no 'nan' / 'inf', no hex
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only


def parse_number(text: str) -> float | None:
    """A strictly written decimal number, or None."""
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def parse_number_list(text: str, what: str, hint: str) -> tuple[list[str], list[float]]:
    """'1, 0.5; 2' -> (the parts as written, [1.0, 0.5, 2.0]): commas or semicolons, strict numbers.

    ``what`` starts the error message, ``hint`` ends it (what to write instead).
    """
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    parts = [] if parts == [""] else parts
    values = []
    for p in parts:
        v = parse_number(p)
        if v is None:
            raise ValueError(f"{what}: {p!r} is not a number; {hint}")
        values.append(v)
    return parts, values


def parse_strengths(text: str, count: int, lines: Sequence[str] | None = None,
                    accepted: tuple[float, float] = STRENGTH_RANGE, knob: str = "strengths") -> list[float]:
    """'1, 0.5, 0' -> [1.0, 0.5, 0.0]; exactly one number per sub-instruction, each within ``accepted``."""
    parts, values = parse_number_list(text, knob, "write one plain decimal number per sub-instruction, "
                                                  "comma-separated, e.g. '1, 0.5'")
    if len(values) != count:
        listed = "" if lines is None else " (" + "; ".join(repr(line) for line in lines) + ")"
        raise ValueError(f"{knob}: {len(values)} value(s) given but the prompt has {count} sub-instruction(s)"
                         f"{listed}; give exactly one strength per line, comma-separated")
    low, high = accepted
    for i, v in enumerate(values):
        if not low <= v <= high:
            line = f" ({lines[i]!r})" if lines is not None else ""
            raise ValueError(f"{knob}: {parts[i]} for line {i + 1}{line} is outside the accepted range "
                             f"{low:g} ... {high:g} (1 = as written, 0 = suppressed); use a value in that range")
    return values
