"""Per-item step noise, so that a batched sweep frame equals its single run for every sampler.

Ancestral and SDE samplers draw fresh noise at every step from a generator seeded with the seed, for
the whole batch at once: in a batch of N, item k would get different noise than a run of that item
alone. Here each item gets its own noise sampler, made exactly as the sampler makes it for a batch
of one (``default_noise_sampler`` or ``BrownianTreeNoiseSampler`` on that item's slice), and the
batch's step noise is their concatenation. Samplers without step noise are returned unchanged.
"""
from __future__ import annotations

import inspect

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers
import torch

# k-diffusion samplers whose default step noise is a Brownian tree (the rest use default_noise_sampler);
# the *_gpu variants build the tree on the latent's device
_BROWNIAN = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}


def _brownian(name: str) -> tuple[bool, bool]:
    base = name[:-4] if name.endswith("_gpu") else name
    return base in _BROWNIAN, not name.endswith("_gpu")


def per_item_noise_sampler(name: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int):
    brownian, cpu = _brownian(name)
    if brownian:
        positive = sigmas[sigmas > 0]
        sigma_min, sigma_max = positive.min(), sigmas.max()
        items = [k_sampling.BrownianTreeNoiseSampler(x[k:k + 1], sigma_min, sigma_max, seed=seed, cpu=cpu)
                 for k in range(x.shape[0])]
    else:
        items = [k_sampling.default_noise_sampler(x[k:k + 1], seed=seed) for k in range(x.shape[0])]
    return lambda sigma, sigma_next: torch.cat([item(sigma, sigma_next) for item in items], dim=0)


def sweep_sampler_object(name: str):
    """ComfyUI's sampler object for ``name``, with per-item step noise where the sampler draws any."""
    sampler = comfy.samplers.sampler_object(name)
    function = getattr(sampler, "sampler_function", None)
    if function is None or "noise_sampler" not in inspect.signature(function).parameters:
        return sampler  # no step noise (euler, heun, dpmpp_2m, uni_pc, ...): nothing to align
    if sampler.extra_options.get("noise_sampler") is not None:
        return sampler

    def with_item_noise(model, x, sigmas, extra_args=None, **kwargs):
        seed = (extra_args or {}).get("seed")
        if seed is not None and x.shape[0] > 1 and kwargs.get("noise_sampler") is None:
            kwargs["noise_sampler"] = per_item_noise_sampler(name, x, sigmas, seed)
        return function(model, x, sigmas, extra_args=extra_args, **kwargs)

    return comfy.samplers.KSAMPLER(with_item_noise, sampler.extra_options, sampler.inpaint_options)
