"""Flow matching, the objective of every method that learns velocities of edits (kontinuous, editor, numeric).

``TRAIN_SIGMAS``: the sigmas a step's rows draw from; ``seeded_noise``: each row's noise from its own seed, so
that a step's rows are a pure function of (seed, step) and a resumed run computes the very same steps.
"""
from __future__ import annotations

import torch

TRAIN_SIGMAS = torch.linspace(1.0, 0.001, 1000)  # the scheduler's 1000 training sigmas, as the official trainer


def seeded_noise(shape, seeds: list[int]) -> torch.Tensor:
    """[len(seeds), *shape]: row i's noise drawn from its own generator seeded ``seeds[i]``."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def flow_matching(batch: dict, velocity) -> torch.Tensor:
    """x_sigma = (1 - sigma) x + sigma eps (x = ``batch["target"]``); target eps - x; MSE over all latent elements
    in fp32. ``velocity(noisy)`` is the model's prediction for the batch's rows."""
    x, eps, sigma = batch["target"], batch["noise"], batch["sigma"]
    s = sigma.view(-1, 1, 1, 1)
    pred = velocity((1 - s) * x + s * eps)
    return torch.mean((pred.float() - (eps - x).float()) ** 2)
