"""Qwen-Image-Edit in ComfyUI (``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``): detection,
sites, facts.

Each of the dual-stream blocks owns its text modulation: ``transformer_blocks.N.txt_mod`` returns one
[B, 6 x width] tensor, (shift, scale, gate) of the attention half then of the MLP half; under 2511's
zero-timestep references only the image modulation doubles, the text one stays [B, 6 x width]. The text
tokens are a block's ``encoder_hidden_states``; blocks return (text, image). No pooled vector.
"""
from __future__ import annotations

import comfy.ldm.qwen_image.model
import torch

from ...core.families.flux1 import seeded_
from ...core.families.qwen_image import DISPLAY, NAME, TINY, TinyQwenImage
from .base import PREFIX, AdapterBase, argument, with_argument, ModulationSite, TextStreamSite, UnsupportedVariant, detected_tiny_model

__all__ = ["DISPLAY", "NAME", "QwenImage", "adapt"]


# ---------------------------------------------------------------- site functions (plain, stateless: see base)

def modulation_reference(out):
    return out


def modulation_rescaled(out, attention, mlp):
    """Multiply the shift and scale of the attention half (first 3 of 6 chunks) and of the MLP half."""
    if attention is None and mlp is None:
        return out
    shift1, scale1, gate1, shift2, scale2, gate2 = out.chunk(6, dim=-1)
    if attention is not None:
        attention = attention.reshape(-1, 1)
        shift1, scale1 = shift1 * attention, scale1 * attention
    if mlp is not None:
        mlp = mlp.reshape(-1, 1)
        shift2, scale2 = shift2 * mlp, scale2 * mlp
    return torch.cat([shift1, scale1, gate1, shift2, scale2, gate2], dim=-1)


def block_text(args, kwargs, n_txt):
    return argument(args, kwargs, "encoder_hidden_states", 1)


def block_with_text(args, kwargs, txt, n_txt):
    return with_argument(args, kwargs, "encoder_hidden_states", 1, txt)


# ---------------------------------------------------------------- the adapter

class QwenImage(AdapterBase):
    """A Qwen-Image(-Edit) MODEL seen through the family interface (nodes/families/base.py)."""
    name = NAME
    display = DISPLAY
    pooled_key = None

    @property
    def hidden_size(self) -> int:
        return int(self.diffusion_model.inner_dim)

    def modulation_sites(self) -> list[ModulationSite]:
        return [ModulationSite(f"{PREFIX}.transformer_blocks.{i}.txt_mod.forward", block.txt_mod, (i,),
                               modulation_reference, modulation_rescaled, None)
                for i, block in enumerate(self.double_blocks)]

    def text_stream_sites(self) -> list[TextStreamSite]:
        return [TextStreamSite(f"{PREFIX}.transformer_blocks.{i}.forward", block, block_text, block_with_text)
                for i, block in enumerate(self.double_blocks)]

    def adapter_sizes(self):
        raise UnsupportedVariant(f"no trained adapter of this pack fits {DISPLAY} yet")


def adapt(patcher, diffusion_model) -> QwenImage | None:
    """The adapter when ``diffusion_model`` is a Qwen-Image transformer; None for other models."""
    if not isinstance(diffusion_model, comfy.ldm.qwen_image.model.QwenImageTransformer2DModel):
        return None
    if not all(hasattr(b, "txt_mod") for b in diffusion_model.transformer_blocks):
        raise UnsupportedVariant("this Qwen-Image variant has no per-block text modulation (txt_mod)")
    return QwenImage(patcher, diffusion_model, list(diffusion_model.transformer_blocks))


# ---------------------------------------------------------------- tiny models for tests (ComfyUI's own classes)

def tiny_overrides(tiny: TinyQwenImage = TINY) -> dict:
    """What a tiny model changes in ComfyUI's detected config (widths taken from the full-size model)."""
    return dict(num_layers=tiny.depth, num_attention_heads=tiny.heads, attention_head_dim=tiny.head_dim,
                joint_attention_dim=tiny.context_dim, axes_dims_rope=tuple(tiny.axes))


def tiny_state_dict(seed: int = 0, tiny: TinyQwenImage = TINY) -> dict[str, torch.Tensor]:
    """Seeded Qwen-Image weights made by the host's own class, so in the host's layout (with 2511's
    ``__index_timestep_zero__`` marker when ``tiny.zero_cond_t``)."""
    import comfy.ops
    model = comfy.ldm.qwen_image.model.QwenImageTransformer2DModel(
        in_channels=64, out_channels=16, patch_size=2, **tiny_overrides(tiny),
        default_ref_method="index_timestep_zero" if tiny.zero_cond_t else "index",
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    return {k: v.clone() for k, v in seeded_(model, seed).state_dict().items()}


def tiny_model(sd: dict[str, torch.Tensor], tiny: TinyQwenImage = TINY, dtype=torch.float32, manual_cast=None):
    """A real ModelPatcher around ComfyUI's Qwen-Image (model_base.QwenImage via detection), on the CPU.

    ComfyUI's detection reads the block count, the input channels and the 2511 marker from the weights and
    takes widths from the real model; the tiny widths are set after detection."""
    return detected_tiny_model(sd, "qwen_image", tiny_overrides(tiny), dtype, manual_cast)


def tiny_text_encoder(seed: int = 0, tiny: TinyQwenImage = TINY):
    """A real comfy.sd.CLIP for Qwen-Image (QwenImageTokenizer with the shipped tokenizer, QwenImageTEModel)
    whose rows are ``tiny.context_dim`` wide, with a tiny vision tower.

    The LM's sizes go through model_options; 4 KV heads (x the class's 128-wide heads) as ComfyUI's detection
    expects. The vision tower's widths are hard-coded in ComfyUI, so its class is swapped for a narrow one
    while the CLIP is built (patch 14, merge 2, window 112: the vision-token counts are the real ones)."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.qwen_image
    import comfy.text_encoders.qwen_vl as qwen_vl
    from .chat_text import seeded_language_model_
    base = qwen_vl.Qwen2VLVisionTransformer

    class TinyVision(base):
        def __init__(self, hidden_size=1280, output_hidden_size=3584, **kwargs):
            super().__init__(hidden_size=32, output_hidden_size=output_hidden_size, intermediate_size=64,
                             num_heads=2, num_layers=2, **kwargs)

    lm = dict(hidden_size=tiny.context_dim, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4)
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.qwen_image.QwenImageTokenizer,
                                                    comfy.text_encoders.qwen_image.te())
    qwen_vl.Qwen2VLVisionTransformer = TinyVision
    try:
        clip = comfy.sd.CLIP(target, model_options={"qwen25_7b_model_config": lm, "dtype": torch.float32,
                                                    "load_device": torch.device("cpu"),
                                                    "offload_device": torch.device("cpu")})
    finally:
        qwen_vl.Qwen2VLVisionTransformer = base
    seeded_language_model_(clip.cond_stage_model, seed)
    return clip
