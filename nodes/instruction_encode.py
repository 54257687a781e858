"""KontextMultiInstructionEncode: CLIPTextEncode of the joined lines, plus where each line's tokens are.

The spans come from ComfyUI's own tokenizer (prompt weights, embeddings and unicode behave as in
CLIPTextEncode). Cost: one tokenisation and one encode of the prompt, as CLIPTextEncode, plus a T5
tokenisation of each line alone. Encodings that only some knobs need (the prompt without each line
for per-instruction guidance; the prompt plus one pad for sliders on very long prompts) are made the
first time such a knob asks, while its node runs, and kept: a graph without guidance never pays for them.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import comfy.model_management
import torch
from comfy_api.latest import io

from ..core.instructions import (MAX_INSTRUCTIONS, InstructionSpans, joined_prompt, leave_one_out_prompts,
                                 spans_from_lines, split_instructions)

CATEGORY = "Kontext Sliders"
METADATA_KEY = "kontext_sliders_instructions"
T5_KEY = "t5xxl"


class Deferred:
    """A value made on first use and kept; the maker (and the text encoder it holds) is dropped then."""

    def __init__(self, make: Callable[[], object] | None = None, value=None):
        self._make, self._value = make, value

    @classmethod
    def ready(cls, value) -> "Deferred":
        return cls(None, value)

    def get(self):
        if self._make is not None:
            self._value, self._make = self._make(), None
        return self._value


@dataclass(frozen=True)
class InstructionConditioning:
    """Travels in the conditioning dict under METADATA_KEY (dict copies keep it: ReferenceLatent, FluxGuidance)."""
    spans: InstructionSpans
    context: torch.Tensor  # the full prompt's T5 sequence [1, L, D]: identifies the sampler rows it belongs to
    # per line: (context, pooled) of the prompt without it; made when a guidance node first asks
    leave_one_out: Deferred
    # Only for prompts that fill the padded length (>= 256 T5 tokens), else a ready None: the same prompt
    # encoded with one pad token after the end token (ComfyUI's tokenizer asked for one more position),
    # and its spans; made when a sliders node first asks.
    padded: Deferred = Deferred.ready(None)

    @property
    def without(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return self.leave_one_out.get()

    def slider_target(self) -> tuple[InstructionSpans, torch.Tensor | None]:
        """(spans with a pad position, replacement context or None) for the toward-pad sliders."""
        padded = self.padded.get()
        return padded if padded is not None else (self.spans, None)


def _t5_tokenizer(clip):
    t5 = getattr(getattr(clip, "tokenizer", None), T5_KEY, None)
    if t5 is None:
        raise ValueError("KontextMultiInstructionEncode needs a FLUX text encoder (clip_l + t5xxl, e.g. "
                         "DualCLIPLoader type 'flux'): token spans are positions in the T5 sequence")
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


def encode_leave_one_out(clip, lines: list[str]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(context, pooled) of the prompt without each line; Cancel is honoured between encodes."""
    out = []
    for prompt in leave_one_out_prompts(lines):
        comfy.model_management.throw_exception_if_processing_interrupted()
        c = encode(clip, prompt)[0]
        out.append((c[0], c[1].get("pooled_output")))
    return tuple(out)


def encode_instructions(clip, instructions: str):
    if clip is None:
        raise RuntimeError("clip input is invalid: None (connect a FLUX text encoder)")
    lines = split_instructions(instructions)
    prompt = joined_prompt(lines)
    tokens = clip.tokenize(prompt, return_word_ids=True)  # one tokenisation serves the spans and the encode
    if T5_KEY not in tokens:
        _t5_tokenizer(clip)  # raises the FLUX-encoder message
    if len(tokens[T5_KEY]) != 1:
        _content(tokens[T5_KEY], clip)  # raises the too-long message
    spans = instruction_spans(clip, lines, tokens[T5_KEY][0])
    comfy.model_management.throw_exception_if_processing_interrupted()
    conditioning = clip.encode_from_tokens_scheduled(_without_word_ids(tokens))
    if conditioning[0][0].shape[1] != spans.length:
        raise ValueError(f"the encoded sequence has {conditioning[0][0].shape[1]} tokens but the T5 tokenizer "
                         f"made {spans.length}; this text encoder is not a FLUX clip_l + t5xxl pair")
    leave_one_out = Deferred(lambda: encode_leave_one_out(clip, lines))
    padded = (Deferred.ready(None) if spans.pad_index is not None
              else Deferred(lambda: encode_with_one_pad(clip, prompt, spans)))
    out = []
    for c, extra in conditioning:
        extra = dict(extra)
        extra[METADATA_KEY] = InstructionConditioning(spans, c, leave_one_out, padded)
        out.append([c, extra])
    logging.info("Kontext multi-instruction: %s", "; ".join(f"{line!r} -> tokens {s}:{e}"
                                                            for line, (s, e) in zip(lines, spans.spans)))
    return out


def instruction_entries(conditioning) -> list[InstructionConditioning]:
    """The multi-instruction metadata of every entry that has it; a clear error when none does."""
    found = [c[1][METADATA_KEY] for c in conditioning if METADATA_KEY in c[1]]
    if not found:
        raise ValueError("this conditioning carries no sub-instruction spans: encode the prompt with "
                         "KontextMultiInstructionEncode (one sub-instruction per line) and connect its output "
                         "(ReferenceLatent / FluxGuidance / ConditioningCombine in between are fine)")
    lines = found[0].spans.lines
    if any(f.spans.lines != lines for f in found[1:]):
        raise ValueError("the conditioning combines different multi-instruction prompts; per-instruction "
                         "strengths need one prompt. Connect a single KontextMultiInstructionEncode output.")
    return found


class KontextMultiInstructionEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextMultiInstructionEncode",
            display_name="Kontext Multi-Instruction Encode",
            category=CATEGORY,
            description="Encodes an edit made of several sub-instructions (one per line) exactly as CLIPTextEncode "
                        "encodes the lines joined with spaces, and records each line's token span for the "
                        "per-instruction slider and guidance nodes.",
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("instructions", multiline=True, default="make the sky stormy\nturn the car red",
                                tooltip=f"one sub-instruction per line (only a line break, Enter, separates "
                                        f"them), at most {MAX_INSTRUCTIONS}; blank lines are ignored; prompt "
                                        f"weights like (red:1.2) work within a line"),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, instructions) -> io.NodeOutput:
        return io.NodeOutput(encode_instructions(clip, instructions))
