"""FLUX.2 ([dev], [klein]) in ComfyUI (``comfy.ldm.flux.model.Flux`` with ``global_modulation``): detection,
sites, facts.

The text modulation is one module for all double blocks (``double_stream_modulation_txt``); its
(attention, MLP) pair reaches every double block as ``vec[1]`` of the block's ``vec`` argument. So a knob
over a block range rescales that pair where each block of the range receives it (a modulation site of the
"argument" kind on ``double_blocks.N.forward``): patching the shared module would scale every block at once.
Text tokens: the double block's ``txt`` argument and the first ``n_txt`` of a single block's joint sequence,
as in FLUX.1 (the same site functions). No pooled vector.
"""
from __future__ import annotations

import comfy.ldm.flux.model
import torch

from ...core.families.flux1 import seeded_
from ...core.families.flux2 import DISPLAY, NAME, TEXT_LENGTH, TINY, TinyFlux2
from .base import PREFIX, ModulationSite, UnsupportedVariant, argument, detected_tiny_model, with_argument
from .flux1 import Flux1, modulation_reference, modulation_rescaled

__all__ = ["DISPLAY", "NAME", "Flux2", "adapt", "is_flux2"]


# ---------------------------------------------------------------- site functions (plain, stateless: see base)

def double_block_modulation(args, kwargs):
    """The text stream's (attention, MLP) modulation pair among a double block's arguments."""
    return argument(args, kwargs, "vec", 2)[1]


def double_block_with_modulation(args, kwargs, txt_mods):
    img_mods = argument(args, kwargs, "vec", 2)[0]
    return with_argument(args, kwargs, "vec", 2, (img_mods, txt_mods))


# ---------------------------------------------------------------- the adapter

class Flux2(Flux1):
    """A FLUX.2 MODEL seen through the family interface (nodes/families/base.py): FLUX.1's text-stream sites
    and facts, the shared modulation's sites, no pooled vector, no trained adapter."""
    name = NAME
    display = DISPLAY
    pooled_key = None

    @staticmethod
    def model_text_length(length: int) -> tuple[int, int]:
        """(rows the model's text sequence has, where the conditioning's first row sits in it) for a
        conditioning of ``length`` rows: ComfyUI's FLUX.2 model left-pads the text with zero rows to 512."""
        total = max(length, TEXT_LENGTH)
        return total, total - length

    def modulation_sites(self) -> list[ModulationSite]:
        return [ModulationSite(f"{PREFIX}.double_blocks.{i}.forward", block, (i,), modulation_reference,
                               modulation_rescaled, None, read=double_block_modulation,
                               write=double_block_with_modulation)
                for i, block in enumerate(self.double_blocks)]

    def adapter_sizes(self):
        raise UnsupportedVariant(f"no trained adapter of this pack fits {DISPLAY} yet")


def is_flux2(diffusion_model) -> bool:
    return (isinstance(diffusion_model, comfy.ldm.flux.model.Flux)
            and getattr(diffusion_model.params, "global_modulation", False)
            and hasattr(diffusion_model, "double_stream_modulation_txt"))


def adapt(patcher, diffusion_model) -> Flux2 | None:
    """The adapter when ``diffusion_model`` is a FLUX.2 transformer; None for other models."""
    if not is_flux2(diffusion_model):
        return None
    return Flux2(patcher, diffusion_model, list(diffusion_model.double_blocks))


# ---------------------------------------------------------------- tiny models for tests (ComfyUI's own classes)

def tiny_state_dict(seed: int = 0, tiny: TinyFlux2 = TINY) -> dict[str, torch.Tensor]:
    """Seeded FLUX.2 weights in BFL / ComfyUI names, made by the host's own Flux class in its FLUX.2 setting
    (the detection's constants), so in the host's own layout."""
    import comfy.ops
    model = comfy.ldm.flux.model.Flux(
        image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=tiny.context_dim,
        hidden_size=tiny.hidden, mlp_ratio=3.0, num_heads=tiny.heads, depth=tiny.depth,
        depth_single_blocks=tiny.depth_single, axes_dim=list(tiny.axes), theta=2000, qkv_bias=False,
        guidance_embed=tiny.guidance, global_modulation=True, mlp_silu_act=True, ops_bias=False,
        default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3], patch_size=1,
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    return {k: v.clone() for k, v in seeded_(model, seed).state_dict().items()}


def tiny_overrides(tiny: TinyFlux2 = TINY) -> dict:
    """What a tiny model changes in ComfyUI's detected config: heads and RoPE axes (ComfyUI 0.8 fixes 48 heads,
    0.33 128-wide heads)."""
    return dict(num_heads=tiny.heads, axes_dim=list(tiny.axes))


def tiny_model(bfl_sd: dict[str, torch.Tensor], tiny: TinyFlux2 = TINY, dtype=torch.float32, manual_cast=None):
    """A real ModelPatcher around ComfyUI's FLUX.2 (model_base.Flux2 via detection and supported_models), CPU,
    with ``tiny_overrides`` set after detection."""
    return detected_tiny_model(bfl_sd, "flux2", tiny_overrides(tiny), dtype, manual_cast)


# FLUX.2's text encoders at a tiny size, ComfyUI's own classes with the LM's sizes overridden through model_options.
# [klein]: KleinTokenizer (the shipped Qwen tokenizer, its chat template, right padding to 512) and klein_te
# (Qwen3 4B, layers 9/18/27 stacked per token; 28 layers because layer 27 must be an intermediate one).
# [dev]: Flux2Tokenizer (Mistral's tekken format, its system prompt, no padding) over a byte-level vocabulary
# with Mistral's real special-token ids (the real tekken.json travels inside the text encoder's weights), and
# flux2_te's pruned Mistral 3 (30 layers, layers 10/20/30).
_MISTRAL_SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 11: "<pad>", 17: "[SYSTEM_PROMPT]",
                    18: "[/SYSTEM_PROMPT]"}
_TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                   r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_tekken() -> torch.Tensor:
    """A tekken tokenizer blob (as stored in the text encoder's safetensors: uint8) whose vocabulary is the 256
    bytes after Mistral's 1000 special tokens."""
    import base64
    import json
    tekken = {"config": {"pattern": _TEKKEN_PATTERN, "num_vocab_tokens": 256, "default_vocab_size": 1256,
                         "default_num_special_tokens": 1000, "version": "v7"},
              "vocab": [{"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode(), "token_str": None}
                        for b in range(256)],
              "special_tokens": [{"rank": i, "token_str": _MISTRAL_SPECIAL.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                                 for i in range(1000)]}
    return torch.frombuffer(bytearray(json.dumps(tekken).encode()), dtype=torch.uint8)


def tiny_text_encoder(seed: int = 0, tiny: TinyFlux2 = TINY, variant: str = "klein"):
    """A real comfy.sd.CLIP for [klein] or [dev] whose rows are ``tiny.context_dim`` wide; None where this
    ComfyUI cannot build it (0.8: no [klein] encoder; its [dev] tokenizer fails with transformers 5)."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux as flux
    from .chat_text import seeded_language_model_
    lm = dict(hidden_size=tiny.context_dim // 3, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)
    options = {"dtype": torch.float32, "load_device": torch.device("cpu"), "offload_device": torch.device("cpu")}
    if variant == "klein":
        if not hasattr(flux, "KleinTokenizer"):
            return None
        target = comfy.supported_models_base.ClipTarget(flux.KleinTokenizer, flux.klein_te(model_type="qwen3_4b"))
        clip = comfy.sd.CLIP(target, model_options={"qwen3_4b_model_config": dict(lm, num_hidden_layers=28), **options})
    else:
        target = comfy.supported_models_base.ClipTarget(flux.Flux2Tokenizer, flux.flux2_te(pruned=True))
        try:
            clip = comfy.sd.CLIP(target, tokenizer_data={"tekken_model": _byte_tekken()},
                                 model_options={"mistral3_24b_model_config": lm, **options})
        except TypeError:  # 0.8: MistralConverter's arguments changed in transformers 5
            return None
    seeded_language_model_(clip.cond_stage_model, seed)
    return clip
