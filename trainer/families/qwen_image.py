"""Qwen-Image-Edit in diffusers (``QwenImageTransformer2DModel``): the tiny test transformer from host weights
(ComfyUI's keys are diffusers' own; its 2511 marker becomes ``zero_cond_t``), the edit call in ComfyUI's
layout, and where the knobs' hooks attach (the twins of ``nodes/families/qwen_image.py``'s sites).
"""
from __future__ import annotations

import torch

from ...core.families.qwen_image import TINY, TinyQwenImage
from . import common

MARKER = "__index_timestep_zero__"
TRANSFORMER_CLASS = "QwenImageTransformer2DModel"  # how ``families.family_of`` knows a transformer of this family
# the demos' tiny Qwen-Image: hidden 64 = 2 heads x 32 (RoPE axes 8 + 12 + 12), 3 dual-stream blocks, on RGB
# pixels in 2 x 2 patches (12 channels in and out)
DEMO_TRANSFORMER = {"patch_size": 2, "in_channels": 12, "out_channels": 3, "num_layers": 3,
                    "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 64,
                    "axes_dims_rope": [8, 12, 12]}


def transformer_class():
    from diffusers import QwenImageTransformer2DModel
    return QwenImageTransformer2DModel


build_transformer, transformer_config, load_transformer = common.class_functions(transformer_class)


def tiny_transformer_from_host(sd: dict[str, torch.Tensor], tiny: TinyQwenImage = TINY):
    from diffusers import QwenImageTransformer2DModel
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=sd["img_in.weight"].shape[1], out_channels=sd["proj_out.weight"].shape[0] // 4,
        num_layers=tiny.depth, attention_head_dim=tiny.head_dim, num_attention_heads=tiny.heads,
        joint_attention_dim=tiny.context_dim, axes_dims_rope=tuple(tiny.axes), zero_cond_t=MARKER in sd)
    model.load_state_dict({k: v for k, v in sd.items() if k != MARKER}, strict=True)
    return model.float().eval()


def _packed(z: torch.Tensor) -> torch.Tensor:
    """[B, C, 1, H, W] -> [B, H/2 * W/2, 4C] (2 x 2 patches, diffusers' and ComfyUI's order)."""
    b, c, _, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def edit_velocity(transformer, x: torch.Tensor, sigma, context: torch.Tensor, references=()) -> torch.Tensor:
    """The velocity for latents ``x`` [B, 16, 1, H, W] as ComfyUI's Qwen-Image computes it (even token grids,
    references no larger than the target: where diffusers' RoPE positions equal ComfyUI's). ``sigma``: a number
    or one per row."""
    b, c, _, h, w = x.shape
    tokens = [_packed(x)] + [_packed(r.expand(b, -1, -1, -1, -1)) for r in references]
    shapes = [[(1, h // 2, w // 2)] + [(1, r.shape[-2] // 2, r.shape[-1] // 2) for r in references]] * b
    out = transformer(hidden_states=torch.cat(tokens, 1), encoder_hidden_states=context.expand(b, -1, -1),
                      timestep=common.timesteps(sigma, b, x.device), img_shapes=shapes, return_dict=False)[0]
    out = out[:, :(h // 2) * (w // 2)]
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 1, h, w)


def text_modulation_points(transformer) -> list:
    """(block index, module, None) per block: the output of its ``txt_mod`` ([B, 6 x width]) is its text
    modulation, rescaled by a forward hook."""
    return [(i, block.txt_mod, None) for i, block in enumerate(transformer.transformer_blocks)]


def editor_velocity(transformer, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor,
                    context: torch.Tensor, pooled: torch.Tensor, guidance: float) -> torch.Tensor:
    """The editor's call on [B, C, H, W] latents (one frame), the source as the one reference; Qwen-Image has
    no pooled vector and no guidance embedding."""
    return edit_velocity(transformer, noisy.unsqueeze(2), sigma, context, [source.unsqueeze(2)])[:, :, 0].float()


def text_stream_blocks(transformer) -> list:
    """Every block (all dual-stream): each takes the text as ``encoder_hidden_states``."""
    return list(transformer.transformer_blocks)


def block_with_text(args, kwargs, move, length: int | None = None):
    return common.with_text_argument(args, kwargs, move)
