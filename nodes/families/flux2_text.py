"""FLUX.2's text encoders for Kontext Multi-Instruction Encode: [klein]'s Qwen3 (``qwen3_4b`` / ``qwen3_8b``)
and [dev]'s Mistral 3 (``mistral3_24b``), as ComfyUI's CLIP runs them.

The joined encoding is CLIPTextEncode's (one tokenisation, the scheduled encode). The lines' spans come from
the templated token sequence (nodes/families/chat_text.py); the rows are the tokens' own (no row dropped).

The pad state the toward-pad sliders move toward (a row of the sequence the model sees):
* [klein]: its tokenizer right-pads with <|endoftext|> to 512, the LM encodes those rows and the model sees
  them: the first pad row after the template is the pad state (as FLUX.1's first T5 pad);
* [dev]: its tokenizer pads nothing; ComfyUI's model left-pads the conditioning with zero rows to 512, so the
  pad state is the model's own row 0, recorded as row ``n - 512`` of an ``n``-row conditioning (the runtime
  maps it to model rows through the family's ``model_text_length``);
* a prompt that leaves no pad row: the prompt encoded with one pad token appended (the LM is causal, so the
  earlier rows are the prompt's own), made when a sliders node first asks.
"""
from __future__ import annotations

import dataclasses

from ...core.families.flux2 import DISPLAY, NAME, TEXT_LENGTH
from .chat_text import line_token_spans, spans_in_rows, token_ids, with_one_pad

__all__ = ["DISPLAY", "NAME", "claims", "encode_lines"]

KEYS = ("qwen3_4b", "qwen3_8b", "mistral3_24b")


def _key(clip) -> str | None:
    return next((k for k in KEYS if getattr(getattr(clip, "tokenizer", None), k, None) is not None), None)


def claims(clip) -> bool:
    return _key(clip) is not None


def _encode(clip, tokens):
    return clip.encode_from_tokens_scheduled(tokens)


def encode_lines(clip, lines: list[str], prompt: str, **unused):
    """(conditioning, spans, padded maker or None, leave-one-out encoder) for the joined ``prompt``."""
    key = _key(clip)
    tokens = clip.tokenize(prompt)
    if len(tokens[key]) != 1:
        raise ValueError(f"the prompt was split into {len(tokens[key])} chunks by the tokenizer; shorten it")
    sequence = tokens[key][0]
    tokenizer = getattr(clip.tokenizer, key)
    pad = tokenizer.pad_token
    content = len(sequence)
    while content and sequence[content - 1][0] == pad:  # [klein]'s right padding
        content -= 1
    ids = token_ids(sequence[:content])
    suffix = clip.tokenizer.llama_template.split("{}")[1]
    decode = lambda i: tokenizer.tokenizer.decode(i, skip_special_tokens=False)  # noqa: E731
    spans = line_token_spans(decode, ids, suffix, lines)
    conditioning = _encode(clip, tokens)
    rows = conditioning[0][0].shape[1]
    if rows != len(sequence):
        raise ValueError(f"the encoded sequence has {rows} rows for {len(sequence)} tokens; unexpected text encoder")
    if content < len(sequence):
        pad_index = content  # [klein]: the first <|endoftext|> row after the template
    elif rows < TEXT_LENGTH:
        pad_index = rows - TEXT_LENGTH  # [dev]: the model's left zero row 0, before the conditioning's rows
    else:
        pad_index = None
    spans = spans_in_rows(lines, spans, len(sequence), rows, pad_index)

    def padded():
        context = _encode(clip, with_one_pad(tokens, key, pad))[0][0]
        return dataclasses.replace(spans, pad_index=content, length=content + 1), context

    return conditioning, spans, (padded if pad_index is None else None), lambda text: _encode(clip, clip.tokenize(text))
