"""KontextMultiInstructionEncode: CLIPTextEncode of the joined lines, plus where each line's tokens are.

The spans come from ComfyUI's own tokenizer (prompt weights, embeddings and unicode behave as in
CLIPTextEncode). The leave-one-out encodings for per-instruction guidance are made here, once,
while the text encoder is loaded.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..core.instructions import (InstructionSpans, joined_prompt, leave_one_out_prompts, prefix_prompts,
                                 spans_from_prefixes, split_instructions)

CATEGORY = "Kontext Sliders"
METADATA_KEY = "kontext_sliders_instructions"
T5_KEY = "t5xxl"


@dataclass(frozen=True)
class InstructionConditioning:
    """Travels in the conditioning dict under METADATA_KEY (dict copies keep it: ReferenceLatent, FluxGuidance)."""
    spans: InstructionSpans
    context: torch.Tensor  # the full prompt's T5 sequence [1, L, D]: identifies the sampler rows it belongs to
    without: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per line: (context, pooled) of the prompt without it
    # Only for prompts that fill the padded length (>= 256 T5 tokens): the same prompt encoded with one
    # pad token after the end token (ComfyUI's tokenizer asked for one more position), and its spans.
    padded: tuple[InstructionSpans, torch.Tensor] | None = None

    def slider_target(self) -> tuple[InstructionSpans, torch.Tensor | None]:
        """(spans with a pad position, replacement context or None) for the toward-pad sliders."""
        return self.padded if self.padded is not None else (self.spans, None)


def _t5_tokenizer(clip):
    t5 = getattr(getattr(clip, "tokenizer", None), T5_KEY, None)
    if t5 is None:
        raise ValueError("KontextMultiInstructionEncode needs a FLUX text encoder (clip_l + t5xxl, e.g. "
                         "DualCLIPLoader type 'flux'): token spans are positions in the T5 sequence")
    return t5


def t5_content(clip, text: str) -> tuple[list, list]:
    """(content tokens as (token, weight) pairs, whole T5 sequence as (token, weight, word id))."""
    batches = clip.tokenize(text, return_word_ids=True)[T5_KEY]
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


def instruction_spans(clip, lines: list[str]) -> InstructionSpans:
    t5 = _t5_tokenizer(clip)
    full, sequence = t5_content(clip, joined_prompt(lines))
    prefixes = [t5_content(clip, p)[0] for p in prefix_prompts(lines)]
    spans = spans_from_prefixes(full, prefixes, lines)
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


def encode_instructions(clip, instructions: str):
    if clip is None:
        raise RuntimeError("clip input is invalid: None (connect a FLUX text encoder)")
    lines = split_instructions(instructions)
    spans = instruction_spans(clip, lines)
    conditioning = encode(clip, joined_prompt(lines))
    if conditioning[0][0].shape[1] != spans.length:
        raise ValueError(f"the encoded sequence has {conditioning[0][0].shape[1]} tokens but the T5 tokenizer "
                         f"made {spans.length}; this text encoder is not a FLUX clip_l + t5xxl pair")
    without = []
    for prompt in leave_one_out_prompts(lines):
        c = encode(clip, prompt)[0]
        without.append((c[0], c[1].get("pooled_output")))
    padded = None if spans.pad_index is not None else encode_with_one_pad(clip, joined_prompt(lines), spans)
    out = []
    for c, extra in conditioning:
        extra = dict(extra)
        extra[METADATA_KEY] = InstructionConditioning(spans, c, tuple(without), padded)
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
                                tooltip="one sub-instruction per line; blank lines are ignored; prompt weights "
                                        "like (red:1.2) work within a line"),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, instructions) -> io.NodeOutput:
        return io.NodeOutput(encode_instructions(clip, instructions))
