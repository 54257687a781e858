"""Multi-instruction prompts: sub-instruction lines, their token spans, per-instruction strengths.

Pure Python / torch. The host glue tokenises; this module decides where each line's tokens are,
parses the user's strengths and holds the per-token math of the training-free knobs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def split_instructions(text: str) -> list[str]:
    """One sub-instruction per line; surrounding whitespace and blank lines dropped."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("no instructions: write one sub-instruction per line, e.g. 'make the sky stormy' and "
                         "'turn the car red' on two lines")
    return lines


def joined_prompt(lines: Sequence[str]) -> str:
    """The prompt the model sees: the lines joined with single spaces."""
    return " ".join(lines)


def prefix_prompts(lines: Sequence[str]) -> list[str]:
    """The prompts made of the first 1..K lines; line i's tokens are the difference of prefixes i and i+1."""
    return [joined_prompt(lines[: i + 1]) for i in range(len(lines))]


def leave_one_out_prompts(lines: Sequence[str]) -> list[str]:
    """For each line, the prompt without it (the empty string when it is the only line)."""
    return [joined_prompt(lines[:i] + lines[i + 1:]) for i in range(len(lines))]


def _same_token(a, b) -> bool:
    # a token is an id, or an embedding tensor (textual inversion); weights compare as floats
    if torch.is_tensor(a[0]) or torch.is_tensor(b[0]):
        return torch.is_tensor(a[0]) and torch.is_tensor(b[0]) and torch.equal(a[0], b[0]) and a[1] == b[1]
    return a[0] == b[0] and a[1] == b[1]


def spans_from_prefixes(full: Sequence, prefixes: Sequence[Sequence], lines: Sequence[str]) -> list[tuple[int, int]]:
    """Token span [start, end) of each line in ``full``.

    ``full`` and each ``prefixes[i]`` are the content tokens ((token, weight) pairs, no end / pad
    tokens) of the joined prompt and of the prompt of the first i+1 lines. The tokenizer splits at
    whitespace, so each prefix's tokens lead the full prompt's; line i owns the tokens prefix i adds.
    Anything else (a weight group spanning lines, a tokenizer that merges across the space) is an error,
    never a silently wrong span.
    """
    spans, start = [], 0
    for i, (prefix, line) in enumerate(zip(prefixes, lines)):
        end = len(prefix)
        if end > len(full) or not all(_same_token(a, b) for a, b in zip(prefix, full[:end])):
            raise ValueError(f"could not locate line {i + 1} ({line!r}) in the tokenised prompt: its tokens change "
                             f"when the following lines are appended (a weight group '(...)' spanning several "
                             f"lines?). Keep each sub-instruction's weight syntax within its line.")
        if end <= start:
            raise ValueError(f"line {i + 1} ({line!r}) tokenises to nothing; remove it or give it words")
        spans.append((start, end))
        start = end
    if start != len(full):
        raise ValueError(f"the tokenised prompt has {len(full)} content tokens but the lines account for {start}")
    return spans


@dataclass(frozen=True)
class InstructionSpans:
    """Where each sub-instruction sits in the text sequence the model receives.

    ``spans[i]`` is [start, end) in the T5 sequence; ``pad_index`` the position of the first pad
    token after the end token (None when the prompt fills the padded length); ``length`` the sequence
    length.
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


def parse_strengths(text: str, count: int, lines: Sequence[str] | None = None) -> list[float]:
    """'1, 0.5, 0' -> [1.0, 0.5, 0.0]; exactly one number per sub-instruction."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    if parts == [""]:
        parts = []
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"strengths: {p!r} is not a number; write one number per sub-instruction, "
                             f"comma-separated, e.g. '1, 0.5'") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"strengths: {p!r} is not a finite number")
        values.append(v)
    if len(values) != count:
        listed = "" if lines is None else " (" + "; ".join(repr(line) for line in lines) + ")"
        raise ValueError(f"strengths has {len(values)} value(s) but the prompt has {count} sub-instruction(s)"
                         f"{listed}; give exactly one strength per line, comma-separated")
    return values


def toward_pad_plan(spans: InstructionSpans, strengths: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (source index, weight) for h <- lerp(h[pad], h, w): w = s on instruction i's tokens.

    Tokens outside every span (and instructions at strength 1) keep index = own position and w = 1,
    for which ``torch.lerp`` returns h exactly (it computes end - (end - start) * (1 - w) for w >= 0.5).
    """
    if spans.pad_index is None:
        raise ValueError("this prompt fills the whole padded text sequence, so no pad token is there to "
                         "interpolate toward; shorten the prompt (it must leave at least one pad token)")
    index = torch.arange(spans.length)
    weight = torch.ones(spans.length)
    for (start, end), s in zip(spans.spans, strengths):
        if s != 1.0:
            index[start:end] = spans.pad_index
            weight[start:end] = s
    return index, weight


def lerp_toward_pad(txt: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """txt [B, L, D]; index [B, L] (long, the pad position per token); weight [B, L, 1] -> moved txt."""
    pad = torch.gather(txt, 1, index.unsqueeze(-1).expand(-1, -1, txt.shape[-1]))
    return torch.lerp(pad, txt, weight.to(txt.dtype))


def combine_instruction_guidance(full: torch.Tensor, without: Sequence[torch.Tensor],
                                 strengths: Sequence[float]) -> torch.Tensor:
    """v_full + sum_i (s_i - 1) (v_full - v_without_i); instructions at 1 cost nothing."""
    out = full
    for v_without, s in zip(without, strengths):
        if s != 1.0:
            out = out + (s - 1.0) * (full - v_without)
    return out
