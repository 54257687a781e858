"""Line spans in a prompt that a chat-template text encoder tokenizes as one string (FLUX.2's Qwen3 / Mistral,
Qwen-Image's Qwen2.5-VL): shared by those families' text modules.

These tokenizers format the template around the prompt first and run a byte-level BPE over the whole string
(no per-word split, no weights), so a line's tokens are found by character offsets: each token covers the
characters its decoding adds. The lines are joined with single spaces; BPE attaches that space to the next
word, so a token never straddles two lines (checked: an error, never a silently wrong span).
"""
from __future__ import annotations

import comfy.model_management

from ...core.instructions import InstructionSpans, joined_prompt


def token_ids(sequence: list, image_id: int | None = None) -> list[int]:
    """The ids of a tokenized batch ((token, weight) pairs); an embedded image entry counts as ``image_id``."""
    return [t if isinstance(t, int) else image_id for t, *_ in sequence]


def _character_ends(decode, ids: list[int]) -> list[int]:
    """Character end of each token in ``text = decode(ids)``. Decoding token by token is exact unless a piece
    splits a character (then the joined pieces differ from the whole): cumulative decodes then, slower, each
    counting only what agrees with ``text`` (a split character decodes to replacement characters until its
    last byte's token: that token ends it)."""
    text = decode(ids)
    pieces = [decode([i]) for i in ids]
    ends, total = [], 0
    if "".join(pieces) == text:
        for p in pieces:
            total += len(p)
            ends.append(total)
        return ends
    for k in range(len(ids)):
        comfy.model_management.throw_exception_if_processing_interrupted()
        prefix = decode(ids[:k + 1])
        end = len(prefix)
        if not text.startswith(prefix):
            end = next((i for i, (a, b) in enumerate(zip(prefix, text)) if a != b), min(end, len(text)))
        ends.append(max(end, ends[-1] if ends else 0))
    return ends


def line_token_spans(decode, ids: list[int], template_suffix: str, lines: list[str]) -> list[tuple[int, int]]:
    """Token span [start, end) of each line in ``ids`` (a templated prompt's content tokens, the template's
    ``template_suffix`` after the prompt): located from the end of the decoded text."""
    text = decode(ids)
    prompt = joined_prompt(lines)
    end = len(text) - len(template_suffix)
    start = end - len(prompt)
    if start < 0 or text[start:end] != prompt or not text.endswith(template_suffix):
        raise ValueError("could not find the prompt in the tokenizer's templated text; this text encoder's "
                         "template is not the one this node knows")
    ends = _character_ends(decode, ids)
    starts = [0] + ends[:-1]
    spans, position = [], start
    for i, line in enumerate(lines):
        a, b = position, position + len(line)
        tokens = [k for k in range(len(ids)) if starts[k] < b and ends[k] > a]
        if not tokens:
            raise ValueError(f"line {i + 1} ({line!r}) tokenises to nothing; remove it or give it words")
        if spans and tokens[0] < spans[-1][1]:
            raise ValueError(f"line {i} and line {i + 1} share a token in the tokenised prompt; end line {i} "
                             f"with a letter or a full stop")
        spans.append((tokens[0], tokens[-1] + 1))
        position = b + 1
    return spans


def spans_in_rows(lines: list[str], spans: list[tuple[int, int]], tokens: int, rows: int,
                  pad_index: int | None) -> InstructionSpans:
    """Token spans -> conditioning rows. Counted from the end: every line sits after the tokens an encoder
    drops (Qwen's system prompt) or expands (an image token -> its vision rows), and nothing after the
    prompt is dropped, so a token ``k`` of ``tokens`` is row ``rows - (tokens - k)``."""
    shift = rows - tokens
    if any(s + shift < 0 for s, _ in spans):
        raise ValueError("the encoded sequence is shorter than the prompt's tokens; unexpected text encoder")
    return InstructionSpans(tuple(lines), tuple((s + shift, e + shift) for s, e in spans), pad_index, rows)


def with_one_pad(tokens: dict, key: str, pad_id: int) -> dict:
    """The tokenized prompt with one pad token appended after its template (its last content token): the
    encoders are causal language models, so every earlier row is the prompt's own."""
    batch = [p for p in tokens[key][0]]
    while batch and batch[-1][0] == pad_id:  # right padding first off ([klein] pads to 512)
        batch.pop()
    return {**tokens, key: [batch + [(pad_id, 1.0)]]}


def seeded_language_model_(module, seed: int):
    """Seeded weights for a tiny test LM (tests only): matrices ~ 1/sqrt(fan-in), embeddings ~ 1, norm scales
    around 1, other vectors small; deep tiny LMs stay finite and token-dependent."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise if "embed" in name else noise / p.shape[1] ** 0.5)
            else:
                p.copy_(1.0 + 0.1 * noise if ("norm" in name or "ln_" in name) else 0.1 * noise)
    return module.requires_grad_(False)
