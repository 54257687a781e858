"""KontextMultiInstructionEncode: the family's plain encode of the joined lines, plus where each line's tokens are.

Each family's text module under nodes/families/ finds the spans and makes the encodings (flux1_text: CLIP-L +
T5, CLIPTextEncode; flux2_text: the chat template, CLIPTextEncode; qwen_text: TextEncodeQwenImageEditPlus or
TextEncodeQwenImageEdit (``qwen_encode``) with the node's optional images and VAE); this module is the glue: the metadata, the deferred encodings, the node.
Cost: one tokenisation and one encode of the prompt, as the plain node, plus (FLUX.1) a T5 tokenisation of
each line alone. Encodings that only some knobs need (the prompt without each line for per-instruction
guidance; the prompt plus one pad token for sliders where the sequence has no pad row: long FLUX.1 / [klein]
prompts, every Qwen-Image prompt) are made the first time such a knob asks, while its node runs, and kept:
a graph without guidance never pays for them.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import comfy.model_management
import torch
from comfy_api.latest import io

from ..core.families.flux1 import NAME as FLUX1
from ..core.instructions import MAX_INSTRUCTIONS, InstructionSpans, joined_prompt, leave_one_out_prompts, split_instructions
from .families import display_of, flux1_text, flux2_text, qwen_text
# the FLUX.1 text pieces other modules and tests use from here
from .families.flux1_text import T5_KEY, encode, encode_with_one_pad, instruction_spans, t5_content  # noqa: F401

CATEGORY = "Kontext Sliders"
METADATA_KEY = "kontext_sliders_instructions"
TEXT_FAMILIES = (flux1_text, flux2_text, qwen_text)  # each: claims(clip), encode_lines(...) (nodes/families/)


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
    family: str = FLUX1  # the family of the text encoder (core family NAME): knobs refuse another family's model
    # (context, pooled) of the empty prompt, encoded as the prompt was (Qwen-Image-Edit: with the same images):
    # the neutral prompt of the model-agnostic knobs (nodes/model_agnostic.py); made when one first asks
    empty: Deferred = Deferred.ready(None)

    @property
    def without(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return self.leave_one_out.get()

    def with_context(self, context: torch.Tensor) -> "InstructionConditioning":
        """The same prompt's metadata for an entry whose token states were changed in place (the rows and
        spans stay; Kontext Conditioning Strength)."""
        return dataclasses.replace(self, context=context)

    def slider_target(self) -> tuple[InstructionSpans, torch.Tensor | None]:
        """(spans with a pad position, replacement context or None) for the toward-pad sliders."""
        padded = self.padded.get()
        return padded if padded is not None else (self.spans, None)


def encode_leave_one_out(clip, lines: list[str], encode_text=None) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(context, pooled) of the prompt without each line (``encode_text``: the family's encode, default
    CLIPTextEncode's); Cancel is honoured between encodes."""
    return encode_prompts(clip, leave_one_out_prompts(lines), encode_text)


def encode_prompts(clip, prompts, encode_text=None) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(context, pooled) of each prompt, encoded as ``encode_text`` (default CLIPTextEncode's) encodes."""
    out = []
    for prompt in prompts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        c = (encode_text or (lambda text: encode(clip, text)))(prompt)[0]
        out.append((c[0], c[1].get("pooled_output")))
    return tuple(out)


def _with_metadata(conditioning, make_entry) -> list:
    out = []
    for c, extra in conditioning:
        extra = dict(extra)
        extra[METADATA_KEY] = make_entry(c)
        out.append([c, extra])
    return out


def _family_encode(text_family, clip, lines: list[str], prompt: str, inputs: dict):
    """The encoder family's conditioning with the metadata (its text module does the work)."""
    conditioning, spans, make_padded, encode_text = text_family.encode_lines(clip, lines, prompt, **inputs)
    padded = Deferred.ready(None) if make_padded is None else Deferred(make_padded)
    leave_one_out = Deferred(lambda: encode_leave_one_out(clip, lines, encode_text))
    empty = Deferred(lambda: encode_prompts(clip, [""], encode_text)[0])
    return spans, _with_metadata(conditioning, lambda c: InstructionConditioning(
        spans, c, leave_one_out, padded, text_family.NAME, empty))


def encode_instructions(clip, instructions: str, vae=None, image1=None, image2=None, image3=None,
                        qwen_encode: str = qwen_text.PLUS):
    if clip is None:
        raise RuntimeError("clip input is invalid: None (connect a FLUX.1, FLUX.2 or Qwen-Image text encoder)")
    lines = split_instructions(instructions)
    prompt = joined_prompt(lines)
    images = dict(vae=vae, image1=image1, image2=image2, image3=image3)
    text_family = next((f for f in TEXT_FAMILIES if f.claims(clip)), None)
    if text_family is not qwen_text and any(v is not None for v in images.values()):
        raise ValueError("vae / image1..3 are for Qwen-Image-Edit text encoders (as in TextEncodeQwenImageEditPlus); "
                         "this is another family's text encoder")
    if text_family is None:
        raise ValueError("KontextMultiInstructionEncode needs a FLUX.1 (clip_l + t5xxl, DualCLIPLoader type "
                         "'flux'), FLUX.2 (CLIPLoader type 'flux2') or Qwen-Image (CLIPLoader type 'qwen_image') "
                         "text encoder")
    qwen = {**images, "qwen_encode": qwen_encode}
    spans, out = _family_encode(text_family, clip, lines, prompt, qwen if text_family is qwen_text else {})
    logging.info("Kontext multi-instruction: %s", "; ".join(f"{line!r} -> rows {s}:{e}"
                                                            for line, (s, e) in zip(lines, spans.spans)))
    return out


def instruction_entries(conditioning, family=None) -> list[InstructionConditioning]:
    """The multi-instruction metadata of every entry that has it; a clear error when none does, or (with
    ``family``, the model's adapter) when its text encoder is another family's."""
    found = [c[1][METADATA_KEY] for c in conditioning if METADATA_KEY in c[1]]
    if not found:
        raise ValueError("this conditioning carries no sub-instruction spans: encode the prompt with "
                         "KontextMultiInstructionEncode (one sub-instruction per line) and connect its output "
                         "(ReferenceLatent / FluxGuidance / ConditioningCombine in between are fine)")
    lines = found[0].spans.lines
    if any(f.spans.lines != lines for f in found[1:]):
        raise ValueError("the conditioning combines different multi-instruction prompts; per-instruction "
                         "strengths need one prompt. Connect a single KontextMultiInstructionEncode output.")
    if family is not None and found[0].family != family.name:
        encoder = display_of(found[0].family)
        raise ValueError(f"this conditioning was encoded by a {encoder} text encoder but the MODEL is "
                         f"{family.display}: its text rows would not be what the model reads. Encode the prompt "
                         f"with the {family.display} text encoder (or load a {encoder} model)")
    return found


class KontextMultiInstructionEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextMultiInstructionEncode",
            display_name="Kontext Multi-Instruction Encode",
            category=CATEGORY,
            description="Encodes an edit made of several sub-instructions (one per line) exactly as the model's plain "
                        "encode node encodes the lines joined with spaces (CLIPTextEncode for FLUX.1 / FLUX.2, "
                        "TextEncodeQwenImageEditPlus or, by qwen_encode, TextEncodeQwenImageEdit for "
                        "Qwen-Image-Edit), and records each line's token span for the per-instruction slider and "
                        "guidance nodes.",
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("instructions", multiline=True, default="make the sky stormy\nturn the car red",
                                tooltip=f"one sub-instruction per line (only a line break, Enter, separates "
                                        f"them), at most {MAX_INSTRUCTIONS}; blank lines are ignored; prompt "
                                        f"weights like (red:1.2) work within a line (FLUX.1; FLUX.2's and "
                                        f"Qwen's encoders read them as text, as their plain encode does)"),
                io.Vae.Input("vae", optional=True, tooltip="Qwen-Image-Edit only: as TextEncodeQwenImageEditPlus's "
                                                           "vae (the images become reference latents)"),
                io.Image.Input("image1", optional=True, tooltip="Qwen-Image-Edit only: as "
                                                                "TextEncodeQwenImageEditPlus's image1"),
                io.Image.Input("image2", optional=True, tooltip="Qwen-Image-Edit only"),
                io.Image.Input("image3", optional=True, tooltip="Qwen-Image-Edit only"),
                io.Combo.Input("qwen_encode", options=list(qwen_text.NODES), default=qwen_text.PLUS, optional=True,
                               tooltip="Qwen-Image-Edit only: the plain encode node whose encoding this one "
                                       "reproduces: TextEncodeQwenImageEditPlus (2509 / 2511, image1..3) or "
                                       "TextEncodeQwenImageEdit (the original Qwen-Image-Edit, image1)"),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, instructions, vae=None, image1=None, image2=None, image3=None,
                qwen_encode=qwen_text.PLUS) -> io.NodeOutput:
        return io.NodeOutput(encode_instructions(clip, instructions, vae, image1, image2, image3, qwen_encode))
