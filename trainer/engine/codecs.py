"""The image codec and text encoder a run reads its data with (``data.pixel_space``, ``data.text_encoder``)."""
from __future__ import annotations

import torch

from ..families import family
from ..families.flux1 import FluxTextEncoder, FluxVaeCodec
from .config import TEXT_ENCODERS, TrainConfig
from .features import LineTextEncoder, PixelCodec


def make_codecs(config: TrainConfig, device: torch.device, text: bool = True):
    """(image codec, FLUX text encoder or None); ``text=False``: the caller makes its own text encoder."""
    d = config.data
    if d.text_encoder not in TEXT_ENCODERS:
        raise ValueError(f"data.text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {d.text_encoder!r}")
    if d.pixel_space:
        codec = PixelCodec(d.resolution, d.pixel_chroma_scale)
    else:
        codec = FluxVaeCodec(config.model.pretrained, d.resolution, device, torch.bfloat16)
    encoder = None
    if text and d.text_encoder == "flux":
        encoder = FluxTextEncoder(config.model.pretrained, device, torch.bfloat16)
    elif text and d.text_encoder == "lines":
        encoder = text_encoder_for(config, device)
    return codec, encoder


def text_encoder_for(config: TrainConfig, device: torch.device, max_lines: int | None = None):
    """FLUX's CLIP-L + T5 (``flux``), or the per-line offline encoder (``learned``, ``lines``), sized for the
    transformer, with room for ``max_lines`` lines (default ``slideredit.max_lines``)."""
    if config.data.text_encoder == "flux":
        return FluxTextEncoder(config.model.pretrained, device, torch.bfloat16)
    tc = family(config.model.family).transformer_config(config)
    return LineTextEncoder(config.data.learned_text_tokens, max_lines or config.slideredit.max_lines,
                           tc.get("joint_attention_dim", 4096), tc.get("pooled_projection_dim", 768),
                           config.data.lines_pooled)
