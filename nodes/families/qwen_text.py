"""Qwen-Image-Edit's text encoder (Qwen2.5-VL, ``qwen25_7b``) for Kontext Multi-Instruction Encode.

The joined encoding is TextEncodeQwenImageEditPlus's with the same images and VAE (the node itself runs it,
so its reference latents come along). For the spans the prompt is tokenised as that node tokenises it (its
template, "Picture i: <image>" in front, the images resized as it resizes them); ComfyUI's encoder drops the
system prompt's rows and expands each image token into its vision rows, all before the prompt, so the lines'
rows are counted from the end (nodes/families/chat_text.py).

Pad state for the toward-pad sliders: the encoder pads nothing, so there is no pad row. The pad state is the
prompt encoded with one pad token (<|endoftext|>, 151643) appended after the template; the LM is causal, so
every earlier row is the prompt's own, and the model then sees one row more. Made when a sliders node first asks.
Leave-one-out prompts are encoded by the same node with the same images (no VAE: only the text is used).
"""
from __future__ import annotations

import dataclasses
import math

from ...core.families.qwen_image import DISPLAY, NAME
from .chat_text import line_token_spans, spans_in_rows, token_ids, with_one_pad

__all__ = ["DISPLAY", "NAME", "claims", "encode_lines"]

KEY = "qwen25_7b"
PAD = 151643  # <|endoftext|>
IMAGE_PAD = 151655  # <|image_pad|>: ComfyUI replaces it by the image's vision rows
VISION_AREA = 384 * 384  # TextEncodeQwenImageEditPlus's resize for the vision tower
# TextEncodeQwenImageEditPlus's template (comfy_extras/nodes_qwen.py, the same in ComfyUI 0.8 and 0.33)
EDIT_PLUS_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")


def claims(clip) -> bool:
    return getattr(getattr(clip, "tokenizer", None), KEY, None) is not None


def _edit_plus(clip, text, vae, images):
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus
    out = TextEncodeQwenImageEditPlus.execute(clip, text, vae, *images)
    return out.args[0] if hasattr(out, "args") else out[0]


def _tokens(clip, prompt: str, images):
    """The tokens TextEncodeQwenImageEditPlus makes for ``prompt`` and ``images`` (image1..3, None = absent)."""
    import comfy.utils
    vision, image_prompt = [], ""
    for i, image in enumerate(images):
        if image is None:
            continue
        samples = image.movedim(-1, 1)
        scale = math.sqrt(VISION_AREA / (samples.shape[3] * samples.shape[2]))
        s = comfy.utils.common_upscale(samples, round(samples.shape[3] * scale), round(samples.shape[2] * scale),
                                       "area", "disabled")
        vision.append(s.movedim(1, -1))
        image_prompt += f"Picture {i + 1}: <|vision_start|><|image_pad|><|vision_end|>"
    return clip.tokenize(image_prompt + prompt, images=vision, llama_template=EDIT_PLUS_TEMPLATE)


def encode_lines(clip, lines: list[str], prompt: str, vae=None, image1=None, image2=None, image3=None):
    """(conditioning, spans, padded maker, leave-one-out encoder) for the joined ``prompt``."""
    images = (image1, image2, image3)
    tokens = _tokens(clip, prompt, images)
    sequence = tokens[KEY][0]
    tokenizer = clip.tokenizer.__getattribute__(KEY)
    decode = lambda i: tokenizer.tokenizer.decode(i, skip_special_tokens=False)  # noqa: E731
    spans = line_token_spans(decode, token_ids(sequence, IMAGE_PAD), EDIT_PLUS_TEMPLATE.split("{}")[1], lines)
    conditioning = _edit_plus(clip, prompt, vae, images)
    rows = conditioning[0][0].shape[1]
    spans = spans_in_rows(lines, spans, len(sequence), rows, None)

    def padded():
        context = clip.encode_from_tokens_scheduled(with_one_pad(tokens, KEY, PAD))[0][0]
        if context.shape[1] != rows + 1:
            raise ValueError("could not append a pad token to this Qwen-Image prompt")
        return dataclasses.replace(spans, pad_index=rows, length=rows + 1), context

    return conditioning, spans, padded, lambda text: _edit_plus(clip, text, None, images)
