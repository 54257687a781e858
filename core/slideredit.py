"""SliderEdit: one slider per sub-instruction from one shared low-rank adapter. Math and weight formats.

Two variants (paper: SliderEdit, CVPR 2026; facts in the project's shelf, ``slideredit.md``):

* STLoRA (selective-token LoRA): a LoRA on the six text-stream Linears of every double block whose
  update reaches only the tokens of a chosen sub-instruction, each instruction scaled by its own
  alpha. Every other token (end token, pads, other prompts, image tokens) sees the base weights.
* GSTLoRA: an ordinary LoRA on the 12 usual Flux targets (both streams, single blocks included),
  one alpha for all tokens.

Strength convention: the user's strength s (1 = as written, 0 = suppressed, > 1 = exaggerated) is the
authors' slider alpha = 1 - s (alpha 0 = the base model, 1 = the instruction suppressed): the adapter
was trained to cancel the instruction at alpha 1, so 1 - s of that cancellation is applied.

Formats read:
* ours: one ``.safetensors`` with diffusers LoRA keys (``transformer.<module>.lora_A.weight``) and a
  JSON header under ``kontext_sliders`` (format ``slideredit``: variant, rank, alpha, targets, base model
  and sizes it was trained for);
* the authors' STLoRA checkpoint ``selective_lora.pt`` (a pickle of ``<module>.lora_A.weight`` /
  ``.lora_B.weight``, read with ``weights_only=True`` only), or the same keys as ``.safetensors``;
* a GSTLoRA as a diffusers Flux LoRA (``pytorch_lora_weights.safetensors``), in a folder or alone.

Pure torch: no ComfyUI, no diffusers.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from .atomic import atomic_write
from .formats import (METADATA_KEY, WeightsFormatError, _alpha_from_peft_metadata, _check_alpha, _check_finite,
                      _load_pth_tensors, _read_safetensors, header_error, lora_modules, read_header)

FORMAT_NAME = "slideredit"
FORMAT_VERSION = 1
VARIANTS = ("stlora", "gstlora")
AUTHORS_STLORA = "selective_lora.pt"
AUTHORS_STLORA_SAFETENSORS = "selective_lora.safetensors"  # the authors' keys, written by our exporter
AUTHORS_GSTLORA = "pytorch_lora_weights.safetensors"

# The authors' targets per variant (diffusers module suffixes).
STLORA_TARGETS = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                  "ff_context.net.0.proj", "ff_context.net.2")
GSTLORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                   "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                   "ff_context.net.2")
STRENGTH_RANGE = (-1.0, 3.0)  # alpha -2 ... 2: the authors validate alpha in -1.5 ... 1.5

# diffusers module suffix -> (ComfyUI module suffix, part index within a row-fused Linear or None, stream)
_DOUBLE_MAP = {
    "attn.to_q": ("img_attn.qkv", 0, "img"), "attn.to_k": ("img_attn.qkv", 1, "img"),
    "attn.to_v": ("img_attn.qkv", 2, "img"), "attn.to_out.0": ("img_attn.proj", None, "img"),
    "ff.net.0.proj": ("img_mlp.0", None, "img"), "ff.net.2": ("img_mlp.2", None, "img"),
    "attn.add_q_proj": ("txt_attn.qkv", 0, "txt"), "attn.add_k_proj": ("txt_attn.qkv", 1, "txt"),
    "attn.add_v_proj": ("txt_attn.qkv", 2, "txt"), "attn.to_add_out": ("txt_attn.proj", None, "txt"),
    "ff_context.net.0.proj": ("txt_mlp.0", None, "txt"), "ff_context.net.2": ("txt_mlp.2", None, "txt"),
}
_SINGLE_MAP = {
    "attn.to_q": ("linear1", 0, "joint"), "attn.to_k": ("linear1", 1, "joint"), "attn.to_v": ("linear1", 2, "joint"),
    "proj_mlp": ("linear1", 3, "joint"), "proj_out": ("linear2", None, "joint"),
}
_MODULE = re.compile(r"^(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\.(?P<suffix>.+)$")


def alpha_from_strength(strength: float) -> float:
    """The authors' slider alpha for a user strength: 1 - s."""
    return 1.0 - float(strength)


# ---------------------------------------------------------------- the weights

@dataclass
class SliderEditWeights:
    variant: str  # "stlora" | "gstlora"
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]  # diffusers module path -> (A [r, in], B [out, r])
    alpha: float | None = None  # None: alpha = rank (scale 1), as the authors train
    base_model: str = ""  # what it was trained for (informative)
    context_in_dim: int | None = None  # T5 width of the base it was trained for, when known
    source: str = ""

    @property
    def rank(self) -> int:
        return int(next(iter(self.modules.values()))[0].shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank: the factor on B @ A at slider alpha 1."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(sorted({_MODULE.match(m)["suffix"] for m in self.modules}))

    @property
    def hidden_size(self) -> int:
        """The model width: the input width of any attention projection it adapts."""
        for module, (a, _) in self.modules.items():
            if _MODULE.match(module)["suffix"] in ("attn.add_q_proj", "attn.to_q", "attn.add_k_proj", "attn.to_k",
                                                   "attn.add_v_proj", "attn.to_v", "attn.to_add_out",
                                                   "attn.to_out.0", "ff.net.0.proj", "ff_context.net.0.proj",
                                                   "proj_mlp"):
                return int(a.shape[1])
        raise WeightsFormatError(f"{self.source}: no module reveals the model width")

    def describe(self) -> str:
        return (f"SliderEdit {self.variant.upper()} rank {self.rank} on {len(self.modules)} modules "
                f"(hidden size {self.hidden_size}; targets {', '.join(self.targets)})")


def _modules_from_keys(tensors: dict[str, torch.Tensor], name: str, prefix: str) -> dict:
    modules = lora_modules(tensors, name, prefix)
    if not modules:
        raise WeightsFormatError(f"{name} holds no LoRA tensors; expected a SliderEdit adapter")
    return modules


def _check_modules(modules: dict, variant: str, name: str) -> None:
    """Every module is a Flux Linear this variant adapts."""
    for module in modules:
        m = _MODULE.match(module)
        table = _DOUBLE_MAP if m and m["kind"] == "transformer_blocks" else _SINGLE_MAP
        if m is None or m["suffix"] not in table:
            raise WeightsFormatError(f"{name}: module '{module}' is not a FLUX.1 transformer Linear a SliderEdit "
                                     f"adapter can target (expected transformer_blocks.N.<{'|'.join(_DOUBLE_MAP)}> "
                                     f"or single_transformer_blocks.N.<{'|'.join(_SINGLE_MAP)}>)")
        if variant == "stlora" and (m["kind"] != "transformer_blocks" or _DOUBLE_MAP[m["suffix"]][2] != "txt"):
            raise WeightsFormatError(f"{name}: an STLoRA adapts only the text stream of the double blocks "
                                     f"({', '.join(STLORA_TARGETS)}), but this file has '{module}'. A LoRA on "
                                     f"image or single-block modules is a GSTLoRA: save it as one")


def _finish(modules: dict, variant: str, name: str, alpha: float | None, **info) -> SliderEditWeights:
    _check_modules(modules, variant, name)
    _check_finite({f"{k}.lora_{h}": t for k, (a, b) in modules.items() for h, t in (("A", a), ("B", b))}, name)
    rank = int(next(iter(modules.values()))[0].shape[0])
    _check_alpha(alpha, rank, name)
    return SliderEditWeights(variant, modules, alpha, source=name, **info)


def _parse_header(raw: str, name: str) -> dict:
    def bad(what: str) -> WeightsFormatError:
        return header_error(name, what)
    info = read_header(raw, name, FORMAT_NAME, "a SliderEdit adapter")
    if info.get("variant") not in VARIANTS:
        raise bad(f"has variant = {info.get('variant')!r}, expected one of {list(VARIANTS)}")
    for key in ("alpha",):
        v = info.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"has {key} = {v!r}, expected a number or null")
    for key in ("context_in_dim", "hidden_size", "rank"):
        v = info.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise bad(f"has {key} = {v!r}, expected a positive integer")
    if not isinstance(info.get("base_model", ""), str):
        raise bad(f"has base_model = {info.get('base_model')!r}, expected text")
    return info


def load_slideredit(path: str | os.PathLike) -> SliderEditWeights:
    """Read any of the three layouts; every failure is a ``WeightsFormatError`` naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        for candidate in (AUTHORS_STLORA, AUTHORS_STLORA_SAFETENSORS, AUTHORS_GSTLORA):
            if (path / candidate).is_file():
                return load_slideredit(path / candidate)
        raise WeightsFormatError(f"{path} holds no SliderEdit adapter: expected {AUTHORS_STLORA} (the authors' "
                                 f"STLoRA), {AUTHORS_STLORA_SAFETENSORS} or {AUTHORS_GSTLORA} (a GSTLoRA) in it, "
                                 f"or pick a single .safetensors file")
    if not path.exists():
        raise WeightsFormatError(f"{path} does not exist; put SliderEdit weights into models/kontext_sliders/")
    if path.suffix in (".pt", ".pth"):
        state = _load_pth_tensors(path, "the authors' STLoRA state dict (<module>.lora_A.weight / .lora_B.weight)",
                                  "torch.save({name: tensor, ...}) of the LoRA tensors")
        return _finish(_modules_from_keys(state, path.name, ""), "stlora", path.name, None)
    if path.suffix != ".safetensors":
        raise WeightsFormatError(f"{path.name}: expected a SliderEdit .safetensors file, the authors' "
                                 f"{AUTHORS_STLORA}, or a folder holding one")
    tensors, meta = _read_safetensors(path)
    raw = meta.get(METADATA_KEY)
    if raw is not None:
        info = _parse_header(raw, path.name)
        weights = _finish(_modules_from_keys(tensors, path.name, "transformer."), info["variant"], path.name,
                          None if info.get("alpha") is None else float(info["alpha"]),
                          base_model=info.get("base_model", ""), context_in_dim=info.get("context_in_dim"))
        if info.get("rank") not in (None, weights.rank) or info.get("hidden_size") not in (None, weights.hidden_size):
            raise WeightsFormatError(f"{path.name}: header says rank {info.get('rank')} / hidden size "
                                     f"{info.get('hidden_size')} but the tensors have {weights.rank} / "
                                     f"{weights.hidden_size}; the file is damaged: export or convert it again")
        return weights
    if tensors and all(k.startswith("transformer.") for k in tensors):  # a diffusers LoRA: GSTLoRA
        return _finish(_modules_from_keys(tensors, path.name, "transformer."), "gstlora", path.name,
                       _alpha_from_peft_metadata(meta, path.name))
    # the authors' STLoRA keys (no "transformer." prefix) saved as safetensors
    return _finish(_modules_from_keys(tensors, path.name, ""), "stlora", path.name, None)


# ---------------------------------------------------------------- writing

def _header(weights: SliderEditWeights) -> dict:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "variant": weights.variant, "rank": weights.rank,
            "alpha": weights.alpha, "targets": list(weights.targets), "hidden_size": weights.hidden_size,
            "context_in_dim": weights.context_in_dim, "base_model": weights.base_model}


def _diffusers_tensors(weights: SliderEditWeights, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for module, (a, b) in sorted(weights.modules.items()):
        out[f"{prefix}{module}.lora_A.weight"] = a.contiguous()
        out[f"{prefix}{module}.lora_B.weight"] = b.contiguous()
    return out


def save_slideredit(weights: SliderEditWeights, path: str | os.PathLike) -> None:
    """Our single file (atomic): diffusers LoRA keys + the JSON header."""
    tensors = _diffusers_tensors(weights, "transformer.")
    metadata = {"format": "pt", METADATA_KEY: json.dumps(_header(weights), sort_keys=True),
                "lora_adapter_metadata": json.dumps({"transformer.r": weights.rank,
                                                     "transformer.lora_alpha": weights.alpha or weights.rank,
                                                     "transformer.target_modules": list(weights.targets)})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_authors_layout(weights: SliderEditWeights, folder: str | os.PathLike) -> Path:
    """The authors' layout as safetensors: STLoRA keys ``<module>.lora_A.weight`` in ``selective_lora.safetensors``
    (load with ``safetensors.torch.load_file`` then ``load_state_dict(strict=False)``), GSTLoRA as a diffusers LoRA."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights.variant == "stlora":
        if weights.alpha is not None and abs(weights.scale - 1.0) > 1e-6:
            raise ValueError(f"the authors' STLoRA layout has no alpha (their scale is 1); this adapter's "
                             f"alpha / rank is {weights.scale:g}: export it in our format instead")
        target = folder / AUTHORS_STLORA_SAFETENSORS
        atomic_write(target, lambda tmp: save_file(_diffusers_tensors(weights, ""), tmp))
    else:
        target = folder / AUTHORS_GSTLORA
        meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
            {"transformer.r": weights.rank, "transformer.lora_alpha": weights.alpha or weights.rank,
             "transformer.target_modules": list(weights.targets), "transformer.lora_dropout": 0.0,
             "transformer.bias": "none", "transformer.use_dora": False, "transformer.rank_pattern": {},
             "transformer.alpha_pattern": {}}, sort_keys=True)}
        atomic_write(target, lambda tmp: save_file(_diffusers_tensors(weights, "transformer."), tmp, metadata=meta))
    return target


# ---------------------------------------------------------------- onto a FLUX.1 model (BFL / ComfyUI names)

@dataclass(frozen=True)
class FluxSizes:
    """What a model offers the adapter: checked before anything is patched."""
    hidden_size: int
    mlp_hidden: int
    double_blocks: int
    single_blocks: int
    context_in_dim: int


def check_fits(weights: SliderEditWeights, sizes: FluxSizes) -> None:
    """A clear error when the adapter was trained for another model (width, depth, text width)."""
    name = Path(weights.source).name or "these SliderEdit weights"
    if weights.hidden_size != sizes.hidden_size:
        raise ValueError(f"{name} was trained for hidden size {weights.hidden_size}, this model has "
                         f"{sizes.hidden_size}; use weights trained for this model (FLUX.1 Kontext: 3072)")
    if weights.context_in_dim is not None and weights.context_in_dim != sizes.context_in_dim:
        raise ValueError(f"{name} was trained for a text encoder of width {weights.context_in_dim}, this model "
                         f"reads {sizes.context_in_dim}; use weights trained for this model")
    for module, (a, b) in weights.modules.items():
        m = _MODULE.match(module)
        index = int(m["index"])
        double = m["kind"] == "transformer_blocks"
        count = sizes.double_blocks if double else sizes.single_blocks
        if index >= count:
            raise ValueError(f"{name} adapts {module}, but this model has {count} "
                             f"{'double' if double else 'single'}-stream blocks; the weights are for a deeper model")
        out, inp = _expected_shape(m["suffix"], double, sizes)
        if (b.shape[0], a.shape[1]) != (out, inp):
            raise ValueError(f"{name}: {module} is {b.shape[0]}x{a.shape[1]} but this model's is {out}x{inp}; "
                             f"the weights were trained for another model size")


def _expected_shape(suffix: str, double: bool, sizes: FluxSizes) -> tuple[int, int]:
    h, mlp = sizes.hidden_size, sizes.mlp_hidden
    if suffix in ("ff.net.0.proj", "ff_context.net.0.proj", "proj_mlp"):
        return mlp, h
    if suffix in ("ff.net.2", "ff_context.net.2"):
        return h, mlp
    if suffix == "proj_out":
        return h, h + mlp
    return h, h


@dataclass
class FusedLoRA:
    """One BFL Linear's low-rank update: its parts merged block-diagonally (q, k, v share the input).

    ``delta(x) = (x @ A.T) @ B.T`` covers output rows ``rows[0]:rows[1]`` of the Linear; the
    weights' alpha / rank is folded into ``B``.
    """
    module: str  # BFL path, e.g. "double_blocks.3.txt_attn.qkv"
    rows: tuple[int, int]
    A: torch.Tensor  # [R, in]
    B: torch.Tensor  # [rows[1] - rows[0], R]
    stream: str  # "txt" | "img" | "joint"
    _cast: dict = field(default_factory=dict, repr=False, compare=False)

    def on(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cast:
            self._cast[key] = (self.A.to(device=device, dtype=dtype), self.B.to(device=device, dtype=dtype))
        return self._cast[key]


def fused_loras(weights: SliderEditWeights, sizes: FluxSizes) -> list[FusedLoRA]:
    """The adapter as updates of BFL / ComfyUI Linears (fused qkv / linear1 by row slices)."""
    check_fits(weights, sizes)
    h = sizes.hidden_size
    grouped: dict[str, list] = {}
    for module, (a, b) in sorted(weights.modules.items()):
        m = _MODULE.match(module)
        double = m["kind"] == "transformer_blocks"
        target, part, stream = (_DOUBLE_MAP if double else _SINGLE_MAP)[m["suffix"]]
        path = f"{'double_blocks' if double else 'single_blocks'}.{m['index']}.{target}"
        start = 0 if part is None else part * h
        grouped.setdefault(path, []).append((start, start + b.shape[0], a.float(), b.float() * weights.scale, stream))
    out = []
    for path, parts in grouped.items():
        parts.sort(key=lambda p: p[0])
        lo, hi = parts[0][0], parts[-1][1]
        rank_total = sum(p[2].shape[0] for p in parts)
        A = torch.cat([p[2] for p in parts])
        B = torch.zeros(hi - lo, rank_total)
        r = 0
        for start, end, a, b, _ in parts:
            B[start - lo:end - lo, r:r + a.shape[0]] = b
            r += a.shape[0]
        out.append(FusedLoRA(path, (lo, hi), A, B, parts[0][4]))
    return out


def add_lora_delta(out: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rows: tuple[int, int],
                   scale: torch.Tensor) -> torch.Tensor:
    """out + scale * (x A^T B^T) on output rows ``rows``; every other output element is ``out``'s, exactly.

    ``scale`` broadcasts over [B, L, 1]: per token ([B, L, 1]) or per row ([B, 1, 1]).
    """
    delta = torch.matmul(torch.matmul(x.to(A.dtype), A.t()), B.t()) * scale.to(A.dtype)
    delta = delta.to(out.dtype)
    lo, hi = rows
    if lo == 0 and hi == out.shape[-1]:
        return out + delta
    return torch.cat([out[..., :lo], out[..., lo:hi] + delta, out[..., hi:]], dim=-1)


# ---------------------------------------------------------------- the per-token slider scale

def stlora_token_scales(spans: Sequence[tuple[int, int]], strengths: Sequence[float], length: int) -> torch.Tensor:
    """[length] fp32: the LoRA factor of each text token, as the authors' pipeline builds it.

    A token inside sub-instruction i's span gets alpha_i = 1 - s_i (overlapping spans multiply); every
    other token (end token, pads, words between instructions) gets 0: base weights only. Kept in fp32
    (the authors' pipeline builds it in bf16: a 6.5e-4 difference on a tiny model).
    """
    if len(spans) != len(strengths):
        raise ValueError(f"{len(strengths)} strengths for {len(spans)} sub-instructions")
    mask = torch.zeros(length, dtype=torch.bool)
    scale = torch.ones(length, dtype=torch.float32)
    for (start, end), s in zip(spans, strengths):
        if not 0 <= start < end <= length:
            raise ValueError(f"span {start}:{end} outside a text sequence of {length} tokens")
        mask[start:end] = True
        scale[start:end] *= alpha_from_strength(s)
    return scale * mask


def check_strength(value: float, what: str) -> float:
    low, high = STRENGTH_RANGE
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{what}: {value!r} is outside the accepted range {low:g} ... {high:g} "
                         f"(1 = as written, 0 = suppressed, >1 = exaggerated)")
    return float(value)


def first_token_span(prompt_ids: Sequence[int], line_ids: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the first occurrence of ``line_ids`` in ``prompt_ids``, or None (also for empty ``line_ids``).

    How the authors locate a sub-instruction: ``line_ids`` are its T5 ids without the closing ``</s>``.
    """
    n = len(line_ids)
    if n == 0:
        return None
    line = list(line_ids)
    for start in range(len(prompt_ids) - n + 1):
        if list(prompt_ids[start:start + n]) == line:
            return start, start + n
    return None
