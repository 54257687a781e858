"""Euler sampling of the flow-matching editor (validation sweeps, the demo, tests)."""
from __future__ import annotations

import torch


@torch.no_grad()
def sample_edit(model, source: torch.Tensor, strength: torch.Tensor, steps: int, generator: torch.Generator,
                context=None, pooled=None, instructions=None) -> torch.Tensor:
    """Latents of the edited image: x(1) = noise, x(sigma') = x(sigma) + (sigma' - sigma) v, sigma 1 -> 0."""
    noise = torch.randn(source.shape, generator=generator).to(source.device)
    x = noise
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=source.device)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        v = model(x, source, strength, s.expand(source.shape[0]), context=context, pooled=pooled,
                  instructions=instructions)
        x = x + (s_next - s) * v
    return x
