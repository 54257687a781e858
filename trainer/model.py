"""The trained model: FLUX.1 Kontext transformer (+ peft LoRA) + strength projector, diffusers side.

One forward = one Kontext transformer call as FluxKontextPipeline makes it (noisy target tokens
first, clean source tokens after them, ids (0, y, x) / (1, y, x), text ids zero) with the
projector's offsets on the text-stream MLP modulation of every double block (the hooks of
``modulation_hook.py``, the twin of the nodes' ComfyUI patch). What it trains is what the nodes run.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.kontinuous.projector import ProjectorConfig, SliderProjector
from .config import TrainConfig
from .modulation_hook import ModulationOffsetHooks


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


class LearnedTextEncoder(nn.Module):
    """One learned (T5-like sequence, pooled vector) per instruction: the demo's offline text encoder."""

    def __init__(self, instructions: list[str], tokens: int, context_dim: int, pooled_dim: int):
        super().__init__()
        self.instructions = list(instructions)
        self.index = {text: i for i, text in enumerate(self.instructions)}
        self.context = nn.Parameter(torch.randn(len(instructions), tokens, context_dim) * 0.5)
        self.pooled = nn.Parameter(torch.randn(len(instructions), pooled_dim) * 0.5)

    def forward(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in instructions if t not in self.index]
        if missing:
            raise KeyError(f"instruction(s) not seen in training: {missing[:3]}")
        idx = torch.tensor([self.index[t] for t in instructions], device=self.context.device)
        return self.context[idx], self.pooled[idx]


def projector_config(config: TrainConfig, transformer) -> ProjectorConfig:
    tc = transformer.config
    hidden = tc.num_attention_heads * tc.attention_head_dim
    p = config.projector
    return ProjectorConfig(out_dim=2 * hidden, width=p.width or 2 * hidden, n_layers=p.n_layers,
                           strength_embed_dim=p.strength_embed_dim,
                           clip_dim=tc.pooled_projection_dim if p.use_clip else 0)


class KontextSliderModel(nn.Module):
    """velocity = transformer(noisy target | clean source, text) with offsets = projector(strength, pooled)."""

    def __init__(self, transformer, projector: SliderProjector, text_encoder: LearnedTextEncoder | None = None,
                 slider_dropout: float = 0.0, guidance: float = 1.0):
        super().__init__()
        self.transformer = transformer
        self.projector = projector
        self.text_encoder = text_encoder
        self.slider_dropout = slider_dropout
        self.guidance = guidance
        self.hooks = ModulationOffsetHooks(transformer)

    def offsets(self, strength: torch.Tensor, pooled: torch.Tensor | None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        offsets = self.projector(strength, pooled if self.projector.config.uses_clip else None)
        if keep is not None:  # slider-condition dropout: a dropped row gets no offsets (a multiply keeps DDP's graph)
            offsets = offsets * keep.to(offsets.dtype).unsqueeze(-1)
        return offsets

    def text(self, instructions: list[str] | None, context: torch.Tensor | None, pooled: torch.Tensor | None):
        """(context, pooled): given, or from the learned text encoder (inside forward, so DDP sees its use)."""
        if context is None:
            if self.text_encoder is None:
                raise ValueError("no text features given and this model has no learned text encoder")
            return self.text_encoder(instructions)
        return context, pooled

    def forward(self, noisy: torch.Tensor, source: torch.Tensor, strength: torch.Tensor, sigma: torch.Tensor,
                context: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
                instructions: list[str] | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        context, pooled = self.text(instructions, context, pooled)
        # kept set until the next forward: gradient checkpointing re-runs the hooked modules in backward
        self.hooks.offsets = self.offsets(strength, pooled, keep)
        return kontext_velocity(self.transformer, noisy, source, sigma, context, pooled, self.guidance)


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


def build_transformer(config: TrainConfig, dtype: torch.dtype = torch.float32):
    """The FLUX transformer: pretrained (frozen, LoRA added) or from scratch (everything trainable).

    ``model.train_transformer``: every weight trains, pretrained too (a full fine-tune). SliderEdit
    (``method: slideredit``) keeps the base frozen either way (it is its own teacher) and adds no peft LoRA: its
    adapter is ``slideredit_model.SliderEditAdapter``. NumeriKontrol (``method: numeric``) adds its own LoRA to a
    frozen transformer (trainer/numeric.py), none when every weight trains.
    """
    from diffusers import FluxTransformer2DModel
    m = config.model
    if (m.pretrained is None) == (m.scratch is None):
        raise ValueError("set exactly one of model.pretrained (a FLUX.1 Kontext diffusers folder or hub id) "
                         "and model.scratch (a FluxTransformer2DModel config for a model trained from scratch)")
    if m.pretrained is not None:
        transformer = FluxTransformer2DModel.from_pretrained(m.pretrained, subfolder="transformer", torch_dtype=dtype)
    else:
        transformer = FluxTransformer2DModel(**m.scratch)
    peft_lora = config.method in ("kontinuous", "editor")  # SliderEdit and NumeriKontrol bring their own
    if not (m.train_transformer or (m.scratch is not None and peft_lora)):
        transformer.requires_grad_(False)
    # a scratch editor trains every weight; a scratch Kontinuous run keeps its LoRA as configured (as before)
    if peft_lora and config.lora.enabled and (m.pretrained is not None or config.method == "kontinuous"):
        from peft import LoraConfig
        transformer.add_adapter(LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha,
                                           init_lora_weights=config.lora.init, target_modules=list(config.lora.targets)))
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()  # trainable tensors in fp32; autocast runs the maths in bf16
    if m.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


def build_model(config: TrainConfig, instructions: list[str] | None = None, dtype: torch.dtype = torch.float32):
    transformer = build_transformer(config, dtype)
    projector = SliderProjector(projector_config(config, transformer))
    text_encoder = None
    if config.data.text_encoder == "learned":
        tc = transformer.config
        text_encoder = LearnedTextEncoder(instructions or [], config.data.learned_text_tokens,
                                          tc.joint_attention_dim, tc.pooled_projection_dim)
    return KontextSliderModel(transformer, projector, text_encoder, config.projector.slider_dropout,
                              config.model.guidance)


def trainable_state(model: KontextSliderModel) -> dict[str, torch.Tensor]:
    """Every trainable tensor by name (what a checkpoint stores and a resume restores)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
