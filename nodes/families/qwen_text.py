"""Qwen-Image-Edit's text encoder (Qwen2.5-VL, ``qwen25_7b``) for Kontext Multi-Instruction Encode.

The joined encoding is TextEncodeQwenImageEditPlus's (2509 / 2511; the default) or TextEncodeQwenImageEdit's (the
original Qwen-Image-Edit: the tokenizer's own template, one image at 1024² for the vision tower too) with the same
images and VAE (the node itself runs it, so its reference latents come along). For the spans the prompt is
tokenised as that node tokenises it (its template, "Picture i: <image>" in front for Plus, the images resized as
it resizes them); ComfyUI's encoder drops the
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

__all__ = ["DISPLAY", "NAME", "NODES", "claims", "encode_lines"]

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


PLUS, ORIGINAL = "TextEncodeQwenImageEditPlus", "TextEncodeQwenImageEdit"
NODES = (PLUS, ORIGINAL)  # the plain encode nodes whose encoding the joined lines reproduce
ORIGINAL_AREA = 1024 * 1024  # TextEncodeQwenImageEdit's resize, for the vision tower and the reference alike


def claims(clip) -> bool:
    return getattr(getattr(clip, "tokenizer", None), KEY, None) is not None


def _plain(clip, text, vae, images, node: str = PLUS):
    """What the plain encode node ``node`` gives for ``text`` (its result; the original node takes image1)."""
    from comfy_extras import nodes_qwen
    out = (nodes_qwen.TextEncodeQwenImageEditPlus.execute(clip, text, vae, *images) if node == PLUS
           else nodes_qwen.TextEncodeQwenImageEdit.execute(clip, text, vae, images[0]))
    return out.args[0] if hasattr(out, "args") else out[0]


def _resized(image, area: int):
    import comfy.utils
    samples = image.movedim(-1, 1)
    scale = math.sqrt(area / (samples.shape[3] * samples.shape[2]))
    return comfy.utils.common_upscale(samples, round(samples.shape[3] * scale), round(samples.shape[2] * scale),
                                      "area", "disabled").movedim(1, -1)


def _tokens(clip, prompt: str, images, node: str = PLUS):
    """The tokens the plain node ``node`` makes for ``prompt`` and ``images`` (image1..3, None = absent)."""
    if node == ORIGINAL:  # the tokenizer's own template; with an image, its image template
        return clip.tokenize(prompt, images=[] if images[0] is None else [_resized(images[0], ORIGINAL_AREA)[..., :3]])
    vision, image_prompt = [], ""
    for i, image in enumerate(images):
        if image is None:
            continue
        vision.append(_resized(image, VISION_AREA))
        image_prompt += f"Picture {i + 1}: <|vision_start|><|image_pad|><|vision_end|>"
    return clip.tokenize(image_prompt + prompt, images=vision, llama_template=EDIT_PLUS_TEMPLATE)


def encode_lines(clip, lines: list[str], prompt: str, vae=None, image1=None, image2=None, image3=None,
                 qwen_encode: str = PLUS):
    """(conditioning, spans, padded maker, leave-one-out encoder) for the joined ``prompt``, as the plain node
    ``qwen_encode`` (one of ``NODES``) encodes it."""
    if qwen_encode not in NODES:
        raise ValueError(f"qwen_encode must be one of {', '.join(NODES)}, got {qwen_encode!r}")
    if qwen_encode == ORIGINAL and (image2 is not None or image3 is not None):
        raise ValueError(f"{ORIGINAL} takes one image: connect image1 only, or choose {PLUS} (image1..3)")
    images = (image1, image2, image3)
    tokens = _tokens(clip, prompt, images, qwen_encode)
    sequence = tokens[KEY][0]
    tokenizer = clip.tokenizer.__getattribute__(KEY)
    decode = lambda i: tokenizer.tokenizer.decode(i, skip_special_tokens=False)  # noqa: E731
    spans = line_token_spans(decode, token_ids(sequence, IMAGE_PAD), EDIT_PLUS_TEMPLATE.split("{}")[1], lines)
    conditioning = _plain(clip, prompt, vae, images, qwen_encode)
    rows = conditioning[0][0].shape[1]
    spans = spans_in_rows(lines, spans, len(sequence), rows, None)

    def padded():
        context = clip.encode_from_tokens_scheduled(with_one_pad(tokens, KEY, PAD))[0][0]
        if context.shape[1] != rows + 1:
            raise ValueError("could not append a pad token to this Qwen-Image prompt")
        return dataclasses.replace(spans, pad_index=rows, length=rows + 1), context

    return conditioning, spans, padded, lambda text: _plain(clip, text, None, images, qwen_encode)
