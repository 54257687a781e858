"""Euler sampling of the flow-matching editor (validation sweeps, the demo, tests)."""
from __future__ import annotations

from typing import Callable

import torch


@torch.no_grad()
def euler(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
          steps: int) -> torch.Tensor:
    """x(1) = noise, x(sigma') = x(sigma) + (sigma' - sigma) velocity(x, sigma [B]), sigma 1 -> 0."""
    x = noise
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * velocity(x, s.expand(noise.shape[0]))
    return x


@torch.no_grad()
def sample_edit(model, source: torch.Tensor, strength: torch.Tensor, steps: int, generator: torch.Generator,
                context=None, pooled=None, instructions=None) -> torch.Tensor:
    """Latents of the edited image (a Kontinuous model at ``strength``)."""
    noise = torch.randn(source.shape, generator=generator).to(source.device)
    return euler(lambda x, sigma: model(x, source, strength, sigma, context=context, pooled=pooled,
                                        instructions=instructions), noise, steps)
