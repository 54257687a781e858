"""The FLUX.1 family on the trainer side: the diffusers classes and how a Kontext call is made with them.

Every method gets its transformer here (``build_transformer``) and runs it through ``kontext_velocity``; no
method names a diffusers FLUX class itself. Also the FLUX.1 facts methods check their settings against (which
Linear suffixes sit in the text stream, which a low-rank adapter may target) and ``DEMO_TRANSFORMER``, the tiny
FLUX.1 transformer of the offline demos and tests. diffusers is imported inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ...core.families.flux1 import DIFFUSERS_MODULE, TINY, bfl_to_diffusers, seeded_
from ...core.instructions import joined_prompt
from ...core.slideredit.lora import first_token_span
from ...core.slideredit.weights import GSTLORA_TARGETS, STLORA_TARGETS, VARIANTS
from ..data.images import load_rgb
from . import common

# hidden 64 = 2 heads x 32 (RoPE axes 8 + 12 + 12 = 32), 2 double + 2 single blocks; pixels packed 2x2
DEMO_TRANSFORMER = {"patch_size": 1, "in_channels": 12, "out_channels": 12, "num_layers": 2,
                    "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
                    "joint_attention_dim": 64, "pooled_projection_dim": 64, "guidance_embeds": False,
                    "axes_dims_rope": [8, 12, 12]}

# Linears of the text stream (double blocks): their input is the [B, L_text, D] text sequence
TEXT_STREAM = frozenset(STLORA_TARGETS)
# every suffix a SliderEdit adapter may target (the core's weight mapping knows these)
ADAPTABLE = frozenset(GSTLORA_TARGETS) | {"proj_mlp", "proj_out"}


def check_targets(variant: str, targets: Sequence[str]) -> None:
    """A ValueError naming the bad suffix: STLoRA adapts text-stream Linears only."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    allowed = TEXT_STREAM if variant == "stlora" else ADAPTABLE
    bad = [t for t in targets if t not in allowed]
    if bad or not targets:
        raise ValueError(f"{variant} cannot target {', '.join(map(repr, bad)) or 'nothing'}; allowed: "
                         f"{', '.join(sorted(allowed))}")


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] (diffusers' and ComfyUI's 2x2 patch order)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, index: int, device=None) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h // 2, device=device), torch.arange(w // 2, device=device), indexing="ij")
    return torch.stack([torch.full_like(ys, index), ys, xs], dim=-1).reshape(-1, 3).float()


def kontext_velocity(transformer, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor,
                     context: torch.Tensor, pooled: torch.Tensor, guidance: float,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One Kontext transformer call as FluxKontextPipeline makes it; the velocity of the noisy target [B, C, H, W].

    Target tokens first, then the clean source's; ids (0, y, x) / (1, y, x); text ids zero; the guidance
    embedding (when the model has one) at ``guidance``; fp32 out. ``attention_mask`` (optional, boolean, True =
    may attend, [B or 1, 1, S, S] over the joint sequence [text; target; source]) goes to every block's
    attention through ``joint_attention_kwargs``; None passes no kwargs at all (the plain call).
    """
    b, _, h, w = noisy.shape
    dtype = next(transformer.parameters()).dtype
    tokens = torch.cat([pack(noisy), pack(source)], dim=1).to(dtype)
    ids = torch.cat([image_ids(h, w, 0, noisy.device), image_ids(*source.shape[-2:], 1, noisy.device)])
    g = torch.full((b,), guidance, device=noisy.device) if transformer.config.guidance_embeds else None
    out = transformer(hidden_states=tokens, encoder_hidden_states=context.to(dtype),
                      pooled_projections=pooled.to(dtype), timestep=sigma.to(dtype),
                      img_ids=ids, txt_ids=torch.zeros(context.shape[1], 3, device=noisy.device),
                      guidance=g, return_dict=False,
                      joint_attention_kwargs=None if attention_mask is None else {"attention_mask": attention_mask})[0]
    return unpack(out[:, : (h // 2) * (w // 2)].float(), h, w)


def editor_velocity(transformer, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor,
                    context: torch.Tensor, pooled: torch.Tensor, guidance: float) -> torch.Tensor:
    """The editor's call, the same in every family module: FLUX.1's is ``kontext_velocity``."""
    return kontext_velocity(transformer, noisy, source, sigma, context, pooled, guidance)


PEFT_LORA = common.PEFT_LORA
TRANSFORMER_CLASS = "FluxTransformer2DModel"  # how ``families.family_of`` knows a transformer of this family


def transformer_class():
    from diffusers import FluxTransformer2DModel
    return FluxTransformer2DModel


build_transformer, transformer_config, load_transformer = common.class_functions(transformer_class)


# ---------------------------------------------------------------- the FLUX.1 VAE and text encoders

class FluxVaeCodec:
    """FLUX's VAE: latent = (mode(E(x)) - shift) * scale, as the official trainer computes it."""

    def __init__(self, pretrained: str, resolution: int, device: torch.device, dtype: torch.dtype):
        self.pretrained, self.resolution, self.device, self.dtype = pretrained, resolution, device, dtype
        self.id = f"flux-vae:{pretrained}:{resolution}"
        self.channels = 16
        self._vae = None

    @property
    def vae(self):
        if self._vae is None:
            from diffusers import AutoencoderKL
            self._vae = AutoencoderKL.from_pretrained(self.pretrained, subfolder="vae", torch_dtype=self.dtype)
            self._vae.to(self.device).eval().requires_grad_(False)
        return self._vae

    @torch.no_grad()
    def encode(self, path: Path) -> torch.Tensor:
        x = load_rgb(path, self.resolution).unsqueeze(0).to(self.device, self.dtype)
        z = self.vae.encode(x).latent_dist.mode()
        return ((z - self.vae.config.shift_factor) * self.vae.config.scaling_factor)[0].float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(z).sample.float().clamp(-1, 1).cpu()

    def release(self):
        self._vae = None


class FluxTextEncoder:
    """CLIP-L pooled + T5 sequence (512 tokens) exactly as diffusers' FluxKontextPipeline.encode_prompt."""

    def __init__(self, pretrained: str, device: torch.device, dtype: torch.dtype):
        self.pretrained, self.device, self.dtype = pretrained, device, dtype
        self.id = f"flux-text:{pretrained}"
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusers import FluxKontextPipeline
            self._pipe = FluxKontextPipeline.from_pretrained(self.pretrained, transformer=None, vae=None,
                                                             torch_dtype=self.dtype).to(self.device)
        return self._pipe

    @torch.no_grad()
    def encode(self, text: str) -> dict[str, torch.Tensor]:
        context, pooled, _ = self.pipe.encode_prompt(prompt=text, prompt_2=None, device=self.device,
                                                     max_sequence_length=512)
        return {"context": context[0].float().cpu(), "pooled": pooled[0].float().cpu()}

    def encode_lines(self, lines: Sequence[str]) -> dict[str, torch.Tensor]:
        """``encode`` of the joined prompt + ``spans`` [K, 2]: each line's T5 tokens in it, found as the
        SliderEdit authors find them (the line's T5 ids without the closing </s>, first occurrence)."""
        prompt = joined_prompt(lines)
        ids = self.pipe.tokenizer_2(prompt).input_ids
        spans = []
        for line in lines:
            span = first_token_span(ids, self.pipe.tokenizer_2(line).input_ids[:-1])
            if span is None or span[1] > 512:
                raise ValueError(f"sub-instruction {line!r} is not found in the first 512 T5 tokens of {prompt!r}")
            spans.append(span)
        return {**self.encode(prompt), "spans": torch.tensor(spans, dtype=torch.int64).reshape(-1, 2)}

    def release(self):
        self._pipe = None


# ---------------------------------------------------------------- where the methods' hooks attach

def text_modulation_modules(transformer) -> list:
    """Each double block's text-stream modulation (``norm1_context``: AdaLayerNormZero), in block order: where
    Kontinuous offsets go (the trainer-side twin of the nodes' modulation sites)."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not blocks or not all(hasattr(b, "norm1_context") for b in blocks):
        raise TypeError(f"{type(transformer).__name__} has no Flux double-stream blocks with norm1_context")
    return [b.norm1_context for b in blocks]


def text_modulation_points(transformer) -> list:
    """(block index, module, None) per double block: the output of ``norm1_context.linear`` ([B, 6 x width]) is
    its text modulation (the modulation knob's diffusers hook rescales it)."""
    return [(i, module.linear, None) for i, module in enumerate(text_modulation_modules(transformer))]


def text_modulation_dtype(output) -> torch.dtype:
    return output[2].dtype


def offset_text_modulation(output, dscale: torch.Tensor, dshift: torch.Tensor):
    """A text modulation's output ``(x, gate_msa, shift_mlp, scale_mlp, gate_mlp)`` with the offsets added to
    its MLP half's shift and scale, exactly where the official transformer adds them."""
    x, gate_msa, shift_mlp, scale_mlp, gate_mlp = output
    return x, gate_msa, shift_mlp + dshift, scale_mlp + dscale, gate_mlp


def text_stream_blocks(transformer) -> list:
    """Every block whose forward takes the text sequence (double, then single blocks)."""
    blocks = list(getattr(transformer, "transformer_blocks", [])) + list(
        getattr(transformer, "single_transformer_blocks", []))
    if not blocks:
        raise TypeError(f"{type(transformer).__name__} has no Flux transformer blocks")
    return blocks


def block_with_text(args, kwargs, move, length: int | None = None):
    """A text-stream block's (args, kwargs) with its text sequence replaced by ``move(text)``: diffusers hands
    both kinds of block the text as ``encoder_hidden_states`` (positionally under gradient checkpointing).
    ``length`` (the text's row count) is for families whose single blocks see one joint sequence."""
    return common.with_text_argument(args, kwargs, move)


def linear_suffix(module_path: str) -> str | None:
    """The block-relative suffix (``attn.add_q_proj`` ...) of a transformer block's module path, else None."""
    m = DIFFUSERS_MODULE.match(module_path)
    return m["suffix"] if m else None


# ---------------------------------------------------------------- tiny models for tests (diffusers' class)

def tiny_transformer(seed: int, tiny=None, pooled_dim: int | None = None):
    """diffusers' FluxTransformer2DModel at ``core.families.flux1.TINY``'s size, with seeded weights (the same
    numbers ``nodes/families/flux1.py`` builds ComfyUI's Flux from)."""
    from diffusers import FluxTransformer2DModel
    t = tiny or TINY
    model = FluxTransformer2DModel(patch_size=1, in_channels=4 * t.latent_channels, num_layers=t.depth,
                                   num_single_layers=t.depth_single, attention_head_dim=t.hidden // t.heads,
                                   num_attention_heads=t.heads, joint_attention_dim=t.context_dim,
                                   pooled_projection_dim=pooled_dim or t.pooled_dim, guidance_embeds=True,
                                   axes_dims_rope=t.axes)
    return seeded_(model, seed)


def tiny_transformer_from_host(bfl_sd: dict[str, torch.Tensor], tiny=None):
    """The tiny diffusers transformer holding the same weights as a host (BFL / ComfyUI names) state dict."""
    model = tiny_transformer(0, tiny, pooled_dim=bfl_sd["vector_in.in_layer.weight"].shape[1])
    model.load_state_dict(bfl_to_diffusers(bfl_sd), strict=True)
    return model.eval()
