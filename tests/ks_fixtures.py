"""Shared test helpers: tiny Flux models (ComfyUI and diffusers), tiny weights, locating ComfyUI.

Imported by bare name (pytest puts tests/ on sys.path); keep ComfyUI imports inside functions so
that the suite without ComfyUI never touches them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kontext_sliders.core.families.flux1 import TINY, seeded_  # noqa: F401  (F.seeded_: the tests' import)
from kontext_sliders.core.kontinuous.weights import KontinuousWeights
from kontext_sliders.nodes import comfy_location
from kontext_sliders.core.kontinuous.projector import ProjectorConfig, SliderProjector

PACK_DIR = Path(__file__).resolve().parents[1]

# The parity-test size (core.families.flux1.TINY: 3 double + 2 single blocks, 2 heads x 16, T5 width 32,
# pooled CLIP-L 768); both sides build their tiny models from it in their family modules.
HIDDEN, HEADS, DEPTH, DEPTH_SINGLE = TINY.hidden, TINY.heads, TINY.depth, TINY.depth_single
CONTEXT_DIM, POOLED_DIM, AXES, LATENT_CHANNELS = TINY.context_dim, TINY.pooled_dim, TINY.axes, TINY.latent_channels

# The official LoRA targets (peft suffix match; attn.to_q/k/v also hit the single blocks).
LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")


# ---------------------------------------------------------------- locating ComfyUI

def find_comfyui() -> Path | None:
    """COMFYUI_PATH, else the custom_nodes grandparent, else ~/comfy/ComfyUI (as the README says).

    A COMFYUI_PATH that is not ComfyUI raises (conftest turns it into a usage error for the whole run).
    """
    return comfy_location.find_comfyui(PACK_DIR)


SKIP_NO_COMFY = ("ComfyUI not found (set COMFYUI_PATH, or put ComfyUI at ~/comfy/ComfyUI): "
                 "ComfyUI tests skipped")


def import_comfyui():
    """Make ComfyUI importable in this process (CPU), the way main.py prepares it. Idempotent."""
    root = find_comfyui()
    if root is None:
        pytest.skip(SKIP_NO_COMFY)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import utils.extra_config  # noqa: F401  must come first: else `utils` resolves to comfy/utils.py
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401
    return root


# ---------------------------------------------------------------- tiny weights

def tiny_projector_weights(seed: int = 0, lora_rank: int = 4, lora_alpha: float | None = 8.0,
                           dtype=torch.float32, hidden: int = HIDDEN, with_lora: bool = True,
                           clip_dim: int = POOLED_DIM) -> KontinuousWeights:
    """Projector for hidden size ``hidden`` + a diffusers-format LoRA on the official targets."""
    config = ProjectorConfig(out_dim=2 * hidden, width=2 * hidden, clip_dim=clip_dim)
    projector = seeded_(SliderProjector(config), seed, std=0.15)
    lora = tiny_lora_state(seed + 1, lora_rank, hidden) if with_lora else {}
    return KontinuousWeights(config, {k: v.to(dtype) for k, v in projector.state_dict().items()},
                             {k: v.to(dtype) for k, v in lora.items()}, lora_alpha)


def lora_module_shapes(hidden: int = HIDDEN) -> dict[str, tuple[int, int]]:
    """diffusers module path -> (out, in) for every Linear the official LoRA adapts."""
    mlp = 4 * hidden
    shapes = {}
    for i in range(DEPTH):
        b = f"transformer_blocks.{i}"
        for m in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out"):
            shapes[f"{b}.{m}"] = (hidden, hidden)
        for ff in ("ff", "ff_context"):
            shapes[f"{b}.{ff}.net.0.proj"] = (mlp, hidden)
            shapes[f"{b}.{ff}.net.2"] = (hidden, mlp)
    for i in range(DEPTH_SINGLE):
        for m in ("attn.to_q", "attn.to_k", "attn.to_v"):
            shapes[f"single_transformer_blocks.{i}.{m}"] = (hidden, hidden)
    return shapes


def tiny_lora_state(seed: int, rank: int = 4, hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, (out_f, in_f) in lora_module_shapes(hidden).items():
        sd[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * 0.1
        sd[f"transformer.{module}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
    return sd


def slideredit_state(variant: str = "stlora", rank: int = 4, seed: int = 5, hidden: int = HIDDEN,
                     std: float = 0.3) -> dict[str, torch.Tensor]:
    """A SliderEdit adapter in the authors' layout (``<diffusers module path>.lora_A.weight`` / ``.lora_B.weight``)
    on the tiny model: STLoRA on the six text-stream suffixes of the double blocks, GSTLoRA on the 12 usual
    suffixes (``attn.to_q/k/v`` also in the single blocks)."""
    from collections import OrderedDict

    from kontext_sliders.core.slideredit.weights import GSTLORA_TARGETS, STLORA_TARGETS
    g = torch.Generator().manual_seed(seed)
    mlp = 4 * hidden
    blocks = [(f"transformer_blocks.{i}", STLORA_TARGETS if variant == "stlora" else GSTLORA_TARGETS)
              for i in range(DEPTH)]
    if variant == "gstlora":
        blocks += [(f"single_transformer_blocks.{i}", ("attn.to_q", "attn.to_k", "attn.to_v"))
                   for i in range(DEPTH_SINGLE)]
    sd = OrderedDict()
    for block, suffixes in blocks:
        for suffix in suffixes:
            out, inp = ((mlp, hidden) if suffix.endswith("net.0.proj") else
                        (hidden, mlp) if suffix.endswith("net.2") else (hidden, hidden))
            sd[f"{block}.{suffix}.lora_A.weight"] = torch.randn(rank, inp, generator=g) * std
            sd[f"{block}.{suffix}.lora_B.weight"] = torch.randn(out, rank, generator=g) * std
    return sd


def slideredit_weights(variant: str = "stlora", **kwargs):
    """The same adapter as ``core.slideredit.SliderEditWeights`` (what the loader returns)."""
    from kontext_sliders.core.slideredit.weights import SliderEditWeights
    sd = slideredit_state(variant, **kwargs)
    modules = {k[:-len(".lora_A.weight")]: (v, sd[k.replace("lora_A", "lora_B")])
               for k, v in sd.items() if k.endswith(".lora_A.weight")}
    return SliderEditWeights(variant, modules, source=f"tiny-{variant}")


def numeric_weights(seed: int = 0, out_dim: int = CONTEXT_DIM, hidden: int = HIDDEN, rank: int = 4,
                    registry=None):
    """A NumeriKontrol weight file's content at the tiny size: seeded adapter + a LoRA on Q/K/V of both streams."""
    from kontext_sliders.core.numeric import DEFAULT_REGISTRY, AdapterConfig, NumericAdapter
    from kontext_sliders.core.numeric.weights import NumericWeights
    registry = registry or DEFAULT_REGISTRY
    config = AdapterConfig(encoder_width=16, embed_width=16, decoder_width=16, out_dim=out_dim)
    adapter = seeded_(NumericAdapter(registry, config), seed, std=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    lora = {}
    for module in [f"transformer_blocks.{i}.attn.{m}" for i in range(DEPTH)
                   for m in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")] + [
            f"single_transformer_blocks.{i}.attn.{m}" for i in range(DEPTH_SINGLE) for m in ("to_q", "to_k", "to_v")]:
        lora[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, hidden, generator=g) * 0.2
        lora[f"transformer.{module}.lora_B.weight"] = torch.randn(hidden, rank, generator=g) * 0.2
    return NumericWeights(registry, config, {k: v.clone() for k, v in adapter.state_dict().items()}, lora, 8.0,
                          source="tiny")


# ---------------------------------------------------------------- ComfyUI tiny Flux

def comfy_unet_config(hidden: int = HIDDEN, pooled_dim: int = POOLED_DIM) -> dict:
    from kontext_sliders.nodes.families.flux1 import tiny_unet_config
    return tiny_unet_config(hidden=hidden, pooled_dim=pooled_dim)


def tiny_bfl_state_dict(seed: int = 0, hidden: int = HIDDEN, pooled_dim: int = POOLED_DIM) -> dict[str, torch.Tensor]:
    """Seeded FLUX weights in the host's own BFL / ComfyUI layout (nodes/families/flux1.py)."""
    from kontext_sliders.nodes.families.flux1 import tiny_state_dict
    return tiny_state_dict(seed, hidden=hidden, pooled_dim=pooled_dim)


def comfy_patcher(bfl_sd: dict[str, torch.Tensor], dtype=torch.float32, manual_cast=None, **unet_overrides):
    """A real ModelPatcher around ComfyUI's Flux, through ComfyUI's detection (nodes/families/flux1.py)."""
    from kontext_sliders.nodes.families.flux1 import tiny_model
    return tiny_model(bfl_sd, dtype=dtype, manual_cast=manual_cast, **unet_overrides)


TINY_CLIP_L_POOLED = 64  # nodes/families/flux1.py's tiny CLIP-L width


def tiny_flux_clip(seed: int = 0):
    """A real comfy.sd.CLIP with seeded tiny FLUX text encoders (nodes/families/flux1.py)."""
    from kontext_sliders.nodes.families.flux1 import tiny_text_encoder
    return tiny_text_encoder(seed)


def process_latent_out(patcher, latent: torch.Tensor) -> torch.Tensor:
    """ReferenceLatent entries are in VAE space; ComfyUI maps them in with process_latent_in."""
    return patcher.model.process_latent_out(latent)


def conditioning(context: torch.Tensor, pooled: torch.Tensor, reference: torch.Tensor | None, patcher,
                 guidance: float = 3.5):
    extra = {"pooled_output": pooled, "guidance": guidance}
    if reference is not None:
        extra["reference_latents"] = [process_latent_out(patcher, reference)]
    return [[context, extra]]


def comfy_predict(patcher, positive, x: torch.Tensor, sigma: float, negative=None, cfg: float = 1.0):
    """Run one model evaluation through ComfyUI's sampling path (CFGGuider, conds, wrappers, model
    loading) on model-space input ``x`` at ``sigma``; return (velocity, {cond/uncond velocities})."""
    import comfy.samplers
    rows = {}

    def record(args):
        rows["cond"] = args["cond_denoised"]
        rows["uncond"] = args["uncond_denoised"]
        return args["denoised"]

    observed = patcher.clone()
    observed.set_model_sampler_post_cfg_function(record)
    guider = comfy.samplers.CFGGuider(observed)
    guider.set_conds(positive, negative if negative is not None else [])
    guider.set_cfg(cfg)
    out = {}

    def sampler_fn(model, x_ignored, sigmas, extra_args=None, callback=None, disable=None):
        out["denoised"] = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        return x_ignored

    sigmas = torch.tensor([sigma, 0.0])
    zeros = torch.zeros_like(x)
    guider.sample(zeros, zeros, comfy.samplers.KSAMPLER(sampler_fn), sigmas, seed=0, disable_pbar=True)
    velocity = lambda d: None if d is None else (x - d) / sigma  # noqa: E731
    return velocity(out["denoised"]), {k: velocity(v) for k, v in rows.items()}


def instruction_env(prompt: str) -> dict:
    """The tiny Flux + tiny FLUX CLIP with ``prompt`` encoded by KontextMultiInstructionEncode and made an
    edit (ReferenceLatent + FluxGuidance values); ``edit`` does the same to any conditioning."""
    import_comfyui()
    import node_helpers

    from kontext_sliders.nodes.instruction_encode import encode_instructions
    clip = tiny_flux_clip(seed=3)
    bfl_sd = tiny_bfl_state_dict(seed=0, pooled_dim=TINY_CLIP_L_POOLED)
    patcher = comfy_patcher(bfl_sd)
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(1, 16, 8, 8, generator=g)

    def edit(conditioning):
        return node_helpers.conditioning_set_values(conditioning, {
            "reference_latents": [process_latent_out(patcher, reference)], "guidance": 3.5})

    conditioning = encode_instructions(clip, prompt)
    return dict(clip=clip, bfl_sd=bfl_sd, patcher=patcher, conditioning=conditioning, edit=edit,
                positive=edit(conditioning), x=torch.randn(2, 16, 8, 8, generator=g))


# ---------------------------------------------------------------- diffusers tiny Flux

def diffusers_seeded(seed: int, pooled_dim: int = POOLED_DIM):
    """diffusers' FluxTransformer2DModel at the tiny size with seeded weights (trainer/families/flux1.py)."""
    from kontext_sliders.trainer.families.flux1 import tiny_transformer
    return tiny_transformer(seed, pooled_dim=pooled_dim)


def diffusers_tiny(bfl_sd: dict[str, torch.Tensor]):
    """The tiny diffusers model holding the same weights as ``bfl_sd`` (BFL / ComfyUI names)."""
    from kontext_sliders.trainer.families.flux1 import tiny_transformer_from_host
    return tiny_transformer_from_host(bfl_sd)


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C], diffusers' (and ComfyUI's) 2x2 patch order."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def latent_ids(h: int, w: int, index: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    return torch.stack([torch.full_like(ys, index), ys, xs], dim=-1).reshape(-1, 3).float()


def diffusers_velocity(model, x, reference, context, pooled, sigma: float, guidance: float = 3.5):
    """One Kontext transformer call the way FluxKontextPipeline makes it (target tokens first)."""
    b, _, h, w = x.shape
    tokens = torch.cat([pack_latents(x), pack_latents(reference.expand(b, -1, -1, -1))], dim=1)
    ids = torch.cat([latent_ids(h, w, 0), latent_ids(*reference.shape[-2:], 1)], dim=0)
    out = model(hidden_states=tokens, encoder_hidden_states=context.expand(b, -1, -1),
                pooled_projections=pooled.expand(b, -1), timestep=torch.full((b,), sigma),
                img_ids=ids, txt_ids=torch.zeros(context.shape[1], 3), guidance=torch.full((b,), guidance),
                return_dict=False)[0]
    return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)


# ---------------------------------------------------------------- FLUX.2 / Qwen-Image-Edit tiny models

# family variant -> (family module name, tiny-config changes)
FAMILY_VARIANTS = {
    "flux2-klein": ("flux2", {}),
    "flux2-dev": ("flux2", {"guidance": True}),
    "qwen-2509": ("qwen_image", {}),
    "qwen-2511": ("qwen_image", {"zero_cond_t": True}),
}


def family_variant(name: str):
    """(the family's ComfyUI-side module, its module name, the variant's tiny config)."""
    import dataclasses
    import importlib
    module_name, changes = FAMILY_VARIANTS[name]
    module = importlib.import_module(f"kontext_sliders.nodes.families.{module_name}")
    return module, module_name, dataclasses.replace(module.TINY, **changes)


# latent shape per family (batch left out): FLUX.2 128 channels at patch size 1; Qwen-Image the Wan 2.1
# latent format, a frame axis of 1
FAMILY_LATENT_SHAPE = {"flux2": (128, 8, 8), "qwen_image": (16, 1, 8, 8)}

# A tiny family checkpoint names in its safetensors metadata the config values that ComfyUI's detection takes
# from the full-size model (heads, widths, RoPE axes); install_tiny_detection applies them. ComfyUI passes the
# file's metadata to detect_unet_config, so UNETLoader reads the file as it reads a real one.
TINY_OVERRIDES_KEY = "kontext_sliders_test.tiny_overrides"


def save_family_unet(name: str, path: Path, seed: int = 0) -> None:
    """The variant's seeded tiny transformer as a diffusion-model file in the family's real key layout."""
    import json

    from safetensors.torch import save_file
    family, _, tiny = family_variant(name)
    sd = family.tiny_state_dict(seed, tiny)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={TINY_OVERRIDES_KEY: json.dumps(family.tiny_overrides(tiny))})


def install_tiny_detection() -> None:
    """Wrap ComfyUI's detect_unet_config so that a file saved by save_family_unet gets its tiny sizes; any other
    file is detected as before. Idempotent; the test nodes install it in the process that loads them."""
    import json

    import comfy.model_detection
    detect = comfy.model_detection.detect_unet_config
    if getattr(detect, "kontext_sliders_tiny", False):
        return

    def detect_unet_config(state_dict, key_prefix, metadata=None):
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is not None and metadata and TINY_OVERRIDES_KEY in metadata:
            config.update(json.loads(metadata[TINY_OVERRIDES_KEY]))
        return config

    detect_unet_config.kontext_sliders_tiny = True
    comfy.model_detection.detect_unet_config = detect_unet_config


def family_text_encoder(name: str, seed: int = 3):
    """(the family's ComfyUI-side module, its tiny real text encoder or None where this ComfyUI cannot build it)
    for a FAMILY_VARIANTS name: the shipped tokenizer and chat template, a tiny LM (nodes/families/)."""
    family, module_name, _ = family_variant(name)
    variant = {"variant": name.split("-")[1]} if module_name == "flux2" else {}
    return family, family.tiny_text_encoder(seed=seed, **variant)


def plain_family_encode(family_name: str, clip, text: str, image1=None):
    """The family's plain encode node on ``text``: CLIPTextEncode (FLUX.1, FLUX.2), TextEncodeQwenImageEditPlus
    with ``image1`` and no VAE (Qwen-Image-Edit)."""
    if family_name != "qwen_image":
        import nodes
        return nodes.CLIPTextEncode().encode(clip, text)[0]
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus
    out = TextEncodeQwenImageEditPlus.execute(clip, text, None, image1)
    return out.args[0] if hasattr(out, "args") else out[0]


# ---------------------------------------------------------------- a model of no family this pack knows

SD15_CONTEXT_DIM = 24


def tiny_sd15_patcher(seed: int = 0):
    """A tiny SD1.5 UNet (ComfyUI's own SD15 config and UNetModel, seeded weights) in a ModelPatcher on the CPU:
    the model the model-agnostic knobs are tested on besides the Flux and Qwen families."""
    import comfy.model_patcher
    import comfy.supported_models
    config = comfy.supported_models.SD15({
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
        "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
        "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": SD15_CONTEXT_DIM, "num_heads": 2, "num_head_channels": -1, "adm_in_channels": None,
        "use_temporal_attention": False, "use_temporal_resblock": False, "legacy": False,
        "use_spatial_transformer": True, "dtype": torch.float32})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
