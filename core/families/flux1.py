"""FLUX.1 / FLUX.1 Kontext: the family's layout facts and key maps (pure torch; no host imports).

What is FLUX.1-specific lives here and nowhere else in ``core``: the transformer's two state-dict
layouts (diffusers <-> BFL / ComfyUI), where each diffusers Linear sits inside BFL's fused Linears
(SliderEdit's adapters land there), the sizes a model offers an adapter, and the full-size facts.

State dicts: diffusers keeps q, k, v (and the single blocks' MLP input) as separate Linears; BFL fuses them
row-wise (``qkv``, ``linear1``). The final AdaLN emits (scale, shift) in diffusers and
(shift, scale) in BFL, so its rows swap halves. Everything else is a rename.

The q/k RMSNorms' parameter has two BFL-side names (``NORM_PARAMS``): ``...query_norm.scale`` as in BFL's
checkpoints and in ComfyUI's own RMSNorm up to 0.8.x, and ``...query_norm.weight`` in ComfyUI 0.33's Flux
(``torch.nn.RMSNorm``; its ``supported_models.Flux.process_unet_state_dict`` renames a checkpoint's
``_norm.scale`` keys at load). ``bfl_to_diffusers`` reads either; ``diffusers_to_bfl`` writes the one it
is asked for (``norm_param``), by default ``scale``: the checkpoint layout that every ComfyUI version loads.
Code that fills a ComfyUI Flux module directly (``load_state_dict``, no load-time rename) passes the host's
own name, ``norm_param_of(module.state_dict())``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..fused_lora import merge_parts

NAME = "flux1"
DISPLAY = "FLUX.1 (Kontext)"
# Full-size FLUX.1 [dev] / Kontext [dev]: width, MLP width, blocks, T5-XXL width, pooled CLIP-L width.
HIDDEN_SIZE = 3072
MLP_HIDDEN = 12288
DOUBLE_BLOCKS = 19
SINGLE_BLOCKS = 38
CONTEXT_IN_DIM = 4096
POOLED_DIM = 768

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
# RMSNorms: the BFL name is completed with "." + one of NORM_PARAMS (see the module docstring)
NORM_PARAMS = ("scale", "weight")
_DOUBLE_NORMS = [
    ("img_attn.norm.query_norm", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm", "attn.norm_added_k.weight"),
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
    ("norm.query_norm", "attn.norm_q.weight"),
    ("norm.key_norm", "attn.norm_k.weight"),
]
_SINGLE_FUSED = ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
_FINAL_ADALN = ("final_layer.adaLN_modulation.1", "norm_out.linear")


def _block_count(keys, prefix: str) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def norm_param_of(bfl_keys) -> str | None:
    """Which of ``NORM_PARAMS`` a BFL / ComfyUI Flux state dict (or its keys) names its RMSNorms with; None
    when it has no RMSNorm. Raises on a mix of both."""
    found = {k.rsplit(".", 1)[1] for k in bfl_keys if re.search(r"\.(query|key)_norm\.(scale|weight)$", k)}
    if len(found) > 1:
        raise ValueError("a Flux state dict names its RMSNorms both '.scale' and '.weight'")
    return found.pop() if found else None


def _renames(n_double: int, n_single: int, norm_param: str = "scale"):
    """Yield (bfl_name, diffusers_name) for every renamed tensor (weights and biases); the RMSNorms' BFL
    names end in ``norm_param``."""
    if norm_param not in NORM_PARAMS:
        raise ValueError(f"norm_param must be one of {NORM_PARAMS}, not {norm_param!r}")
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
            yield f"double_blocks.{i}.{bfl}.{norm_param}", f"transformer_blocks.{i}.{dif}"
    for i in range(n_single):
        for bfl, dif in _SINGLE:
            yield from both(f"single_blocks.{i}.{bfl}", f"single_transformer_blocks.{i}.{dif}")
        for bfl, dif in _SINGLE_NORMS:
            yield f"single_blocks.{i}.{bfl}.{norm_param}", f"single_transformer_blocks.{i}.{dif}"


def _fused(n_double: int, n_single: int):
    """Yield (bfl_prefix, [diffusers_prefixes]) for every row-fused Linear."""
    for i in range(n_double):
        for bfl, parts in _DOUBLE_FUSED:
            yield f"double_blocks.{i}.{bfl}", [f"transformer_blocks.{i}.{p}" for p in parts]
    bfl, parts = _SINGLE_FUSED
    for i in range(n_single):
        yield f"single_blocks.{i}.{bfl}", [f"single_transformer_blocks.{i}.{p}" for p in parts]


def diffusers_to_bfl(sd: dict[str, torch.Tensor], norm_param: str = "scale") -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict in BFL / ComfyUI key names, the RMSNorms named
    ``...norm.<norm_param>``: ``scale`` (default; BFL's checkpoints, which every ComfyUI loads) or ``weight``
    (the parameter name of ComfyUI 0.33's Flux module itself)."""
    n_double = _block_count(sd, "transformer_blocks")
    n_single = _block_count(sd, "single_transformer_blocks")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl, dif in _renames(n_double, n_single, norm_param):
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
    """A BFL / ComfyUI Flux state dict (no ``diffusion_model.`` prefix) in diffusers key names; its RMSNorms
    may be named either way (``NORM_PARAMS``), not both."""
    n_double = _block_count(sd, "double_blocks")
    n_single = _block_count(sd, "single_blocks")
    hidden = sd["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl, dif in _renames(n_double, n_single, norm_param_of(sd) or "scale"):
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


# ---------------------------------------------------------------- where diffusers Linears sit in BFL's

# diffusers module suffix -> (ComfyUI module suffix, part index within a row-fused Linear or None, stream)
DOUBLE_LINEARS = {
    "attn.to_q": ("img_attn.qkv", 0, "img"), "attn.to_k": ("img_attn.qkv", 1, "img"),
    "attn.to_v": ("img_attn.qkv", 2, "img"), "attn.to_out.0": ("img_attn.proj", None, "img"),
    "ff.net.0.proj": ("img_mlp.0", None, "img"), "ff.net.2": ("img_mlp.2", None, "img"),
    "attn.add_q_proj": ("txt_attn.qkv", 0, "txt"), "attn.add_k_proj": ("txt_attn.qkv", 1, "txt"),
    "attn.add_v_proj": ("txt_attn.qkv", 2, "txt"), "attn.to_add_out": ("txt_attn.proj", None, "txt"),
    "ff_context.net.0.proj": ("txt_mlp.0", None, "txt"), "ff_context.net.2": ("txt_mlp.2", None, "txt"),
}
SINGLE_LINEARS = {
    "attn.to_q": ("linear1", 0, "joint"), "attn.to_k": ("linear1", 1, "joint"), "attn.to_v": ("linear1", 2, "joint"),
    "proj_mlp": ("linear1", 3, "joint"), "proj_out": ("linear2", None, "joint"),
}
DIFFUSERS_MODULE = re.compile(r"^(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\.(?P<suffix>.+)$")


@dataclass(frozen=True)
class FluxSizes:
    """What a model offers the adapter: checked before anything is patched."""
    hidden_size: int
    mlp_hidden: int
    double_blocks: int
    single_blocks: int
    context_in_dim: int


def linear_of(module: str) -> tuple[str, int, tuple]:
    """A diffusers transformer Linear's place in BFL's layout: ("double_blocks" | "single_blocks", block index,
    (BFL module suffix, part within a row-fused Linear or None, stream)); ValueError for any other module."""
    m = DIFFUSERS_MODULE.match(module)
    table = DOUBLE_LINEARS if m and m["kind"] == "transformer_blocks" else SINGLE_LINEARS
    if m is None or m["suffix"] not in table:
        raise ValueError(f"module '{module}' is not a FLUX.1 transformer Linear (expected "
                         f"transformer_blocks.N.<{'|'.join(DOUBLE_LINEARS)}> or "
                         f"single_transformer_blocks.N.<{'|'.join(SINGLE_LINEARS)}>)")
    kind = "double_blocks" if table is DOUBLE_LINEARS else "single_blocks"
    return kind, int(m["index"]), table[m["suffix"]]


def fuse_lora_modules(modules: dict, scale: float, hidden_size: int) -> list:
    """A diffusers-keyed LoRA (``{module: (A [r, in], B [out, r])}``, factor ``scale`` = alpha / rank) as
    updates of BFL / ComfyUI Linears (``core.fused_lora.FusedLoRA``; fused qkv / linear1 by row slices).
    A module that is not a transformer Linear of this family is refused, naming it."""
    grouped: dict[str, list] = {}
    streams: dict[str, str] = {}
    for module, (a, b) in sorted(modules.items()):
        kind, index, (target, part, stream) = linear_of(module)
        path = f"{kind}.{index}.{target}"
        start = 0 if part is None else part * hidden_size
        grouped.setdefault(path, []).append((start, start + b.shape[0], a.float(), b.float() * scale))
        streams[path] = stream
    return [merge_parts(path, parts, streams[path]) for path, parts in grouped.items()]


def lora_shape(suffix: str, double: bool, sizes: FluxSizes) -> tuple[int, int]:
    """(out, in) of the diffusers Linear ``suffix`` in a double (or single) block of a model of ``sizes``."""
    h, mlp = sizes.hidden_size, sizes.mlp_hidden
    if suffix in ("ff.net.0.proj", "ff_context.net.0.proj", "proj_mlp"):
        return mlp, h
    if suffix in ("ff.net.2", "ff_context.net.2"):
        return h, mlp
    if suffix == "proj_out":
        return h, h + mlp
    return h, h


# ---------------------------------------------------------------- tiny models for tests and parity checks

@dataclass(frozen=True)
class TinyFlux:
    """A FLUX.1 small enough for CPU tests (the parity-test size: 3 double + 2 single blocks, 2 heads x 16,
    T5 width 32, pooled CLIP-L 768); both sides build it from these numbers (``nodes/families/flux1.py``
    through ComfyUI's classes, ``trainer/families/flux1.py`` through diffusers')."""
    hidden: int = 32
    heads: int = 2
    depth: int = 3
    depth_single: int = 2
    context_dim: int = 32
    pooled_dim: int = POOLED_DIM
    axes: tuple[int, int, int] = (4, 6, 6)
    latent_channels: int = 16


TINY = TinyFlux()
# parameters that scale a normalised value: seeded around 1, not 0 (both layouts' and both RMSNorm names)
_NORM_SCALES = ("scale", "norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight",
                "query_norm.weight", "key_norm.weight")


def seeded_(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (norm scales around 1) so nothing is trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
            p.copy_((1.0 + noise) if name.endswith(_NORM_SCALES) else noise)
    return module
