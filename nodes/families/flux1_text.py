"""FLUX.1's text encoders (CLIP-L + T5, ``t5xxl``) for Kontext Multi-Instruction Encode.

The joined encoding is CLIPTextEncode's. The spans come from ComfyUI's own tokenizer (prompt weights,
embeddings and unicode behave as in CLIPTextEncode): positions in the T5 sequence, found by tokenising each
line alone with the T5 tokenizer (core/instructions.py: spans_from_lines). Pad state for the toward-pad
sliders: the first T5 pad token after the end token (ComfyUI pads every prompt to 256 tokens); a prompt that
fills them is encoded with one pad more (ComfyUI's own padding, one position longer) when a sliders node asks.
"""
from __future__ import annotations

import dataclasses

import comfy.model_management

from ...core.families.flux1 import DISPLAY, NAME
from ...core.instructions import InstructionSpans, joined_prompt, spans_from_lines

__all__ = ["DISPLAY", "NAME", "T5_KEY", "claims", "encode", "encode_lines", "instruction_spans", "t5_content"]

T5_KEY = "t5xxl"


def claims(clip) -> bool:
    return getattr(getattr(clip, "tokenizer", None), T5_KEY, None) is not None


def _t5_tokenizer(clip):
    t5 = getattr(getattr(clip, "tokenizer", None), T5_KEY, None)
    if t5 is None:
        raise ValueError("KontextMultiInstructionEncode needs a FLUX.1 (clip_l + t5xxl, DualCLIPLoader type "
                         "'flux'), FLUX.2 (CLIPLoader type 'flux2') or Qwen-Image (CLIPLoader type 'qwen_image') "
                         "text encoder")
    return t5


def _t5_batches(clip, text: str) -> list:
    """Only the T5 tokenizer, with the options clip.tokenize would pass it (no CLIP-L pass per line)."""
    options = dict(getattr(clip, "tokenizer_options", None) or {})
    kwargs = {"tokenizer_options": options} if options else {}
    return _t5_tokenizer(clip).tokenize_with_weights(text, True, **kwargs)


def _content(batches: list, clip) -> tuple[list, list]:
    """(content tokens as (token, weight) pairs, whole T5 sequence as (token, weight, word id))."""
    if len(batches) != 1:
        t5 = _t5_tokenizer(clip)
        raise ValueError(f"the prompt is longer than the T5 tokenizer's {t5.max_length} tokens and was split "
                         f"into {len(batches)} chunks, so token positions would not match the sequence the "
                         f"model sees; shorten the instructions")
    sequence = batches[0]
    content = [(t, w) for t, w, word in sequence if word > 0]
    if any(word == 0 for _, _, word in sequence[: len(content)]):
        raise ValueError("unexpected T5 tokenisation: content tokens are not contiguous")
    return content, sequence


def t5_content(clip, text: str) -> tuple[list, list]:
    return _content(clip.tokenize(text, return_word_ids=True)[T5_KEY], clip)


def _without_word_ids(tokens: dict) -> dict:
    # what clip.tokenize(text) returns without return_word_ids (tokenize_with_weights drops them so)
    return {k: [[(t, w) for t, w, _ in batch] for batch in v] for k, v in tokens.items()}


def instruction_spans(clip, lines: list[str], sequence: list | None = None) -> InstructionSpans:
    """Spans from the full prompt's T5 sequence (tokenised here unless given) and each line alone."""
    t5 = _t5_tokenizer(clip)
    full, sequence = (t5_content(clip, joined_prompt(lines)) if sequence is None
                      else _content([sequence], clip))
    per_line = []
    for line in lines:
        comfy.model_management.throw_exception_if_processing_interrupted()
        per_line.append(_content(_t5_batches(clip, line), clip)[0])
    spans = spans_from_lines(full, per_line, lines)
    # the first pad after the end token; ComfyUI's Flux T5 tokenizer pads every prompt to 256 tokens
    pad_index = next((i for i in range(len(full) + 1, len(sequence))
                      if sequence[i][2] == 0 and sequence[i][0] == t5.pad_token), None)
    return InstructionSpans(tuple(lines), tuple(spans), pad_index, len(sequence))


def encode(clip, text: str, **tokenize_options):
    """Exactly CLIPTextEncode: tokenize, then the scheduled encode."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text, **tokenize_options))


def encode_with_one_pad(clip, text: str, spans: InstructionSpans):
    """The prompt with one pad token after its end token: ComfyUI's own padding, one position longer."""
    options = {"tokenizer_options": {f"{T5_KEY}_min_length": spans.length + 1}}
    sequence = clip.tokenize(text, return_word_ids=True, **options)[T5_KEY][0]
    t5 = _t5_tokenizer(clip)
    if len(sequence) != spans.length + 1 or sequence[-1][0] != t5.pad_token:
        raise ValueError("could not obtain a pad token from the T5 tokenizer for this long prompt")
    context = encode(clip, text, **options)[0][0]
    return dataclasses.replace(spans, pad_index=spans.length, length=spans.length + 1), context


def encode_lines(clip, lines: list[str], prompt: str, **unused):
    """(conditioning, spans, padded maker or None, leave-one-out encoder) for the joined ``prompt``."""
    tokens = clip.tokenize(prompt, return_word_ids=True)  # one tokenisation serves the spans and the encode
    if T5_KEY not in tokens:
        _t5_tokenizer(clip)  # raises the which-encoder message
    if len(tokens[T5_KEY]) != 1:
        _content(tokens[T5_KEY], clip)  # raises the too-long message
    spans = instruction_spans(clip, lines, tokens[T5_KEY][0])
    comfy.model_management.throw_exception_if_processing_interrupted()
    conditioning = clip.encode_from_tokens_scheduled(_without_word_ids(tokens))
    if conditioning[0][0].shape[1] != spans.length:
        raise ValueError(f"the encoded sequence has {conditioning[0][0].shape[1]} tokens but the T5 tokenizer "
                         f"made {spans.length}; this text encoder is not a FLUX clip_l + t5xxl pair")
    padded = None if spans.pad_index is not None else (lambda: encode_with_one_pad(clip, prompt, spans))
    return conditioning, spans, padded, lambda text: encode(clip, text)
