"""FLUX.2 ([dev], [klein]) in diffusers (``Flux2Transformer2DModel``): the tiny test transformer from host
weights, the edit call in ComfyUI's layout, and where the knobs' hooks attach (the twins of
``nodes/families/flux2.py``'s sites). diffusers is imported inside the functions that need it.

diffusers hands every double block the shared text modulation as its ``temb_mod_txt`` argument (one
[B, 6 x width] tensor: shift, scale, gate of the attention half, then of the MLP half), where ComfyUI hands
the same numbers as a pair of ``ModulationOut``; its blocks return (text, image).
"""
from __future__ import annotations

import torch

from ...core.families.flux2 import TEXT_LENGTH, TINY, TinyFlux2
from . import common

TRANSFORMER_CLASS = "Flux2Transformer2DModel"  # how ``families.family_of`` knows a transformer of this family
# the demos' tiny FLUX.2: hidden 64 = 2 heads x 32 (four 8-wide RoPE axes), 2 double + 2 single blocks, on 2 x 2-
# packed RGB (12 channels; FLUX.2's own latents are 32 VAE channels packed 2 x 2), no guidance embedding ([klein])
DEMO_TRANSFORMER = {"patch_size": 1, "in_channels": 12, "out_channels": None, "num_layers": 2,
                    "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
                    "joint_attention_dim": 64, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
                    "axes_dims_rope": [8, 8, 8, 8], "rope_theta": 2000, "guidance_embeds": False}


def transformer_class():
    from diffusers import Flux2Transformer2DModel
    return Flux2Transformer2DModel


build_transformer, transformer_config, load_transformer = common.class_functions(transformer_class)


def tiny_transformer_from_host(bfl_sd: dict[str, torch.Tensor], tiny: TinyFlux2 = TINY):
    """diffusers' FLUX.2 transformer at ``tiny``'s size holding the host's (BFL / ComfyUI) weights, mapped by
    diffusers' own single-file converter."""
    from diffusers import Flux2Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    model = Flux2Transformer2DModel(
        patch_size=1, in_channels=bfl_sd["img_in.weight"].shape[1], out_channels=None, num_layers=tiny.depth,
        num_single_layers=tiny.depth_single, attention_head_dim=tiny.head_dim, num_attention_heads=tiny.heads,
        joint_attention_dim=tiny.context_dim, timestep_guidance_channels=256, mlp_ratio=3.0,
        axes_dims_rope=tuple(tiny.axes), rope_theta=2000, guidance_embeds=tiny.guidance)
    sd = {k.replace(".norm.query_norm.weight", ".norm.query_norm.scale").replace(".norm.key_norm.weight",
                                                                                 ".norm.key_norm.scale"): v
          for k, v in bfl_sd.items()}  # ComfyUI 0.33 renames RMSNorm scales to .weight; the converter reads .scale
    model.load_state_dict(convert_flux2_transformer_checkpoint_to_diffusers(sd), strict=True)
    return model.float().eval()


def _ids(t: int, h: int, w: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(h), torch.arange(w), torch.tensor([0])).float()


def edit_velocity(transformer, x: torch.Tensor, sigma, context: torch.Tensor, references=(),
                  guidance: float | None = None, text_length: int = TEXT_LENGTH) -> torch.Tensor:
    """The velocity for latents ``x`` [B, C, H, W] as ComfyUI's FLUX.2 computes it: the text left-padded with
    zero rows to ``text_length`` (512: ``model_base.Flux2``), references after the image with time index
    10 (i + 1). ``sigma``: a number or one per row."""
    b, c, h, w = x.shape
    if context.shape[1] < text_length:
        context = torch.nn.functional.pad(context, (0, 0, text_length - context.shape[1], 0))
    tokens = [x.flatten(2).transpose(1, 2)] + [r.expand(b, -1, -1, -1).flatten(2).transpose(1, 2) for r in references]
    ids = [_ids(0, h, w)] + [_ids(10 * (i + 1), *r.shape[-2:]) for i, r in enumerate(references)]
    txt_ids = torch.cartesian_prod(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]),
                                   torch.arange(context.shape[1])).float()
    out = transformer(hidden_states=torch.cat(tokens, 1), encoder_hidden_states=context.expand(b, -1, -1),
                      timestep=common.timesteps(sigma, b, x.device), img_ids=torch.cat(ids)[None], txt_ids=txt_ids[None],
                      guidance=None if guidance is None else torch.full((b,), float(guidance)), return_dict=False)[0]
    return out[:, :h * w].transpose(1, 2).reshape(b, c, h, w)


def text_modulation_points(transformer) -> list:
    """(block index, module, argument name) per double block: the block's ``temb_mod_txt`` argument is its text
    modulation ([B, 6 x width]), rescaled by a forward pre-hook."""
    return [(i, block, "temb_mod_txt") for i, block in enumerate(transformer.transformer_blocks)]


def editor_velocity(transformer, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor,
                    context: torch.Tensor, pooled: torch.Tensor, guidance: float) -> torch.Tensor:
    """The editor's call on [B, C, H, W] latents (2 x 2-packed here, as FLUX.2's latent format packs its VAE's),
    the source as the one reference. The text as given, not padded to 512 (the demos' line encoder has pad rows
    of its own; 512 rows would cost the tiny model many times its image's); no pooled vector."""
    g = guidance if transformer.config.guidance_embeds else None
    out = edit_velocity(transformer, common.packed(noisy), sigma, context, [common.packed(source)], g,
                        text_length=0)
    return common.unpacked(out.float())


def text_stream_blocks(transformer) -> list:
    """Every block whose forward sees the text: the double blocks, then the single blocks (text first)."""
    return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)


def block_with_text(args, kwargs, move, length: int | None = None):
    """A block's (args, kwargs) with its text replaced by ``move(text)``: a double block's
    ``encoder_hidden_states``; a single block (``encoder_hidden_states`` None) sees one joint sequence whose first
    ``length`` rows are the text."""
    text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
    if text is not None:
        return common.with_text_argument(args, kwargs, move)

    def joint(h):
        return torch.cat([move(h[:, :length]), h[:, length:]], dim=1)
    if "hidden_states" in kwargs:
        return args, dict(kwargs, hidden_states=joint(kwargs["hidden_states"]))
    return (joint(args[0]),) + tuple(args[1:]), kwargs
