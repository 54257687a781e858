"""The trained model: FLUX.1 Kontext transformer (+ peft LoRA) + strength projector, diffusers side.

One forward = one Kontext transformer call (``families.flux1.kontext_velocity``) as FluxKontextPipeline makes it (noisy target tokens
first, clean source tokens after them, ids (0, y, x) / (1, y, x), text ids zero) with the
projector's offsets on the text-stream MLP modulation of every double block (the hooks of
``modulation_hook.py``, the twin of the nodes' ComfyUI patch). What it trains is what the nodes run.
"""
from __future__ import annotations

import torch
from torch import nn

from ....core.kontinuous.projector import ProjectorConfig, SliderProjector
from ...engine.config import TrainConfig
from ...families.flux1 import build_transformer, kontext_velocity
from .modulation_hook import ModulationOffsetHooks

# diffusers' peft LoRA as configured, on a scratch base too (which then trains every weight)
PEFT_LORA_RULE = "always"


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


def build_model(config: TrainConfig, instructions: list[str] | None = None, dtype: torch.dtype = torch.float32):
    transformer = build_transformer(config, dtype, peft_lora=PEFT_LORA_RULE)
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
