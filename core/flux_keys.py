"""FLUX transformer state dicts: diffusers layout <-> BFL / ComfyUI layout.

diffusers keeps q, k, v (and the single blocks' MLP input) as separate Linears; BFL fuses them
row-wise (``qkv``, ``linear1``). The final AdaLN emits (scale, shift) in diffusers and
(shift, scale) in BFL, so its rows swap halves. Everything else is a rename.
"""
from __future__ import annotations

import re

import torch

# (BFL suffix, diffusers suffix) for plain renames; ".weight"/".bias" are appended per tensor.
_TOP = [
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
]
_DOUBLE = [
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
]
_DOUBLE_NORMS = [
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
]
_DOUBLE_FUSED = [
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
]
_SINGLE = [
    ("linear2", "proj_out"),
    ("modulation.lin", "norm.linear"),
]
_SINGLE_NORMS = [
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
]
_SINGLE_FUSED = ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
_FINAL_ADALN = ("final_layer.adaLN_modulation.1", "norm_out.linear")


def _block_count(keys, prefix: str) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _renames(n_double: int, n_single: int):
    """Yield (bfl_name, diffusers_name) for every renamed tensor (weights and biases)."""
    def both(bfl, dif):
        if bfl.endswith(".scale") or dif.endswith(".weight"):
            yield bfl, dif
        else:
            for p in ("weight", "bias"):
                yield f"{bfl}.{p}", f"{dif}.{p}"
    for bfl, dif in _TOP:
        yield from both(bfl, dif)
    for i in range(n_double):
        for bfl, dif in _DOUBLE:
            yield from both(f"double_blocks.{i}.{bfl}", f"transformer_blocks.{i}.{dif}")
        for bfl, dif in _DOUBLE_NORMS:
            yield f"double_blocks.{i}.{bfl}", f"transformer_blocks.{i}.{dif}"
    for i in range(n_single):
        for bfl, dif in _SINGLE:
            yield from both(f"single_blocks.{i}.{bfl}", f"single_transformer_blocks.{i}.{dif}")
        for bfl, dif in _SINGLE_NORMS:
            yield f"single_blocks.{i}.{bfl}", f"single_transformer_blocks.{i}.{dif}"


def _fused(n_double: int, n_single: int):
    """Yield (bfl_prefix, [diffusers_prefixes]) for every row-fused Linear."""
    for i in range(n_double):
        for bfl, parts in _DOUBLE_FUSED:
            yield f"double_blocks.{i}.{bfl}", [f"transformer_blocks.{i}.{p}" for p in parts]
    bfl, parts = _SINGLE_FUSED
    for i in range(n_single):
        yield f"single_blocks.{i}.{bfl}", [f"single_transformer_blocks.{i}.{p}" for p in parts]


def diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict in BFL / ComfyUI key names."""
    n_double = _block_count(sd, "transformer_blocks")
    n_single = _block_count(sd, "single_transformer_blocks")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl, dif in _renames(n_double, n_single):
        if dif in sd:
            out[bfl] = sd[dif]
            used.add(dif)
    for bfl, parts in _fused(n_double, n_single):
        for p in ("weight", "bias"):
            names = [f"{d}.{p}" for d in parts]
            if all(n in sd for n in names):
                out[f"{bfl}.{p}"] = torch.cat([sd[n] for n in names], dim=0)
                used.update(names)
    for p in ("weight", "bias"):
        dif = f"{_FINAL_ADALN[1]}.{p}"
        if dif in sd:
            out[f"{_FINAL_ADALN[0]}.{p}"] = _swap_halves(sd[dif])
            used.add(dif)
    _check_all_used(sd, used, "diffusers")
    return out


def bfl_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL / ComfyUI Flux state dict (no ``diffusion_model.`` prefix) in diffusers key names."""
    n_double = _block_count(sd, "double_blocks")
    n_single = _block_count(sd, "single_blocks")
    hidden = sd["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl, dif in _renames(n_double, n_single):
        if bfl in sd:
            out[dif] = sd[bfl]
            used.add(bfl)
    for bfl, parts in _fused(n_double, n_single):
        for p in ("weight", "bias"):
            name = f"{bfl}.{p}"
            if name not in sd:
                continue
            t = sd[name]
            sizes = [hidden] * len(parts)
            sizes[-1] = t.shape[0] - hidden * (len(parts) - 1)  # the MLP part of linear1 is wider
            for d, piece in zip(parts, torch.split(t, sizes, dim=0)):
                out[f"{d}.{p}"] = piece
            used.add(name)
    for p in ("weight", "bias"):
        bfl = f"{_FINAL_ADALN[0]}.{p}"
        if bfl in sd:
            out[f"{_FINAL_ADALN[1]}.{p}"] = _swap_halves(sd[bfl])
            used.add(bfl)
    _check_all_used(sd, used, "BFL")
    return out


def _check_all_used(sd, used, layout):
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f"{len(left)} {layout} Flux keys have no counterpart, e.g. {left[:4]}; "
                         "is this a FLUX.1 transformer state dict?")
