"""Shared pieces of every weight file the pack reads and writes (no method's format in here).

The pack's JSON header key, the one error type, safe readers (``.pth`` only with ``weights_only=True``,
safetensors with a clear error for a truncated file), finiteness and LoRA-shape checks, and the peft
config diffusers stores beside a LoRA.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open

METADATA_KEY = "kontext_sliders"


class WeightsFormatError(ValueError):
    """A weight file that cannot be used; the message says what was found and what to do."""


class LoraInfo:
    """``lora_rank`` and ``lora_scale`` of a weights object with ``lora_state`` (diffusers keys) and ``lora_alpha``."""
    lora_state: dict[str, torch.Tensor]
    lora_alpha: float | None

    @property
    def lora_rank(self) -> int | None:
        return lora_rank_of(self.lora_state)

    @property
    def lora_scale(self) -> float:
        """alpha / rank, the factor peft applies to B @ A."""
        rank = self.lora_rank
        if rank is None or self.lora_alpha is None:
            return 1.0
        return self.lora_alpha / rank


def header_error(name: str, what: str) -> WeightsFormatError:
    return WeightsFormatError(f"{name}: the '{METADATA_KEY}' header {what}; the file was edited or is "
                              f"damaged: export or convert it again")


def read_header(raw: str, name: str, format_name: str, what: str) -> dict:
    """Our JSON header as a dict, of the expected format (``what`` names it in the error for another)."""
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise header_error(name, f"is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(info, dict):
        raise header_error(name, f"is a JSON {type(info).__name__}, expected an object")
    if info.get("format") != format_name:
        raise WeightsFormatError(f"{name} is a '{info.get('format')}' file, not {what}; load it with "
                                 f"the node made for that format")
    return info


def load_pth_tensors(path: Path, what: str = "the strength projector's state dict",
                      resave: str = "torch.save(projector.state_dict())") -> dict[str, torch.Tensor]:
    """A ``.pth`` / ``.pt`` tensor dict, read with ``weights_only=True`` only: a pickle that would run code is refused."""
    if path.stat().st_size == 0:
        raise WeightsFormatError(f"{path.name} is empty (0 bytes); expected {what}. "
                                 f"The download or copy was interrupted: download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]  # a class or function to call
        if unsafe:
            raise WeightsFormatError(
                f"{path.name} was refused: it is not a plain tensor state dict, loading it would run pickled "
                f"code ({unsafe[0]}). Re-save it with {resave} or use a .safetensors file.") from None
        raise WeightsFormatError(f"{path.name} is not a readable PyTorch file (unpickling failed); expected "
                                 f"{what}: download it again") from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise WeightsFormatError(f"{path.name} is not a readable PyTorch file ({type(e).__name__}: {e}); expected "
                                 f"{what}: download it again") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsFormatError(f"{path.name} must hold a dict of tensors (a state dict), found {type(obj).__name__}; "
                                 f"re-save it with {resave}")
    return dict(obj)


def header_format(path: Path) -> str | None:
    """The ``format`` named in a .safetensors file's Kontext Sliders header (reads the header only), else None."""
    if path.suffix != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            info = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    except Exception:  # unreadable: listed, and the loader explains
        return None
    return info.get("format") if isinstance(info, dict) else None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.stat().st_size == 0:
        raise WeightsFormatError(f"{path.name} is empty (0 bytes); expected a safetensors file. The download or "
                                 f"copy was interrupted: download or export it again")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise WeightsFormatError(f"{path.name} is not a readable safetensors file ({type(e).__name__}: {e}); "
                                 f"it may be truncated: download or export it again") from None
    return tensors, meta


def check_finite(tensors: dict[str, torch.Tensor], name: str) -> None:
    """NaN / inf weights would give all-NaN images with a success status: refuse them at load, once."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsFormatError(f"{name}: tensor '{key}' holds {bad} NaN or infinite value(s) of {t.numel()}; "
                                     f"the weights are damaged (a diverged training run or a broken conversion): "
                                     f"use another checkpoint or export again")


def lora_rank_of(lora: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[0]) for k, v in lora.items() if k.endswith("lora_A.weight")), None)


MAX_LORA_SCALE = 1024.0  # alpha / rank; peft setups use 0.5 ... 32, far above is a damaged header


def check_alpha(alpha: float | None, rank: int | None, name: str) -> None:
    if alpha is None:
        return
    scale = alpha / rank if rank else alpha
    if not math.isfinite(alpha) or alpha <= 0 or scale > MAX_LORA_SCALE:
        raise WeightsFormatError(f"{name}: lora_alpha = {alpha!r} (scale alpha / rank = {scale!r}); expected a "
                                 f"positive number with alpha / rank <= {MAX_LORA_SCALE:g} (usually alpha = rank). "
                                 f"The header is damaged: export or convert the weights again")


def alpha_from_peft_metadata(meta: dict[str, str], name: str) -> float | None:
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsFormatError(f"{name}: its 'lora_adapter_metadata' header is not valid JSON ({e.msg}); "
                                 f"expected diffusers' peft config: download or export the LoRA again") from None
    alpha = info.get("transformer.lora_alpha") if isinstance(info, dict) else None
    if not isinstance(info, dict) or (alpha is not None and (isinstance(alpha, bool)
                                                            or not isinstance(alpha, (int, float)))):
        raise WeightsFormatError(f"{name}: its 'lora_adapter_metadata' header has transformer.lora_alpha = "
                                 f"{alpha!r} (in a JSON {type(info).__name__}); expected a number in a JSON "
                                 f"object: download or export the LoRA again")
    return None if alpha is None else float(alpha)


def lora_modules(tensors: dict[str, torch.Tensor], name: str,
                 prefix: str = "transformer.") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``<prefix><module>.lora_A.weight`` / ``.lora_B.weight`` -> {module: (A [r, in], B [out, r])}, checked:
    every module has both halves, shapes chain, one rank for all, floating point."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = re.match(rf"^{re.escape(prefix)}(?P<module>.+)\.(?P<half>lora_[AB])\.weight$", key)
        if m is None:
            raise WeightsFormatError(f"{name}: unexpected tensor '{key}' (expected LoRA keys "
                                     f"'{prefix}<module>.lora_A.weight' / '.lora_B.weight')")
        parts.setdefault(m["module"], {})[m["half"]] = value
    modules, ranks = {}, set()
    for module, pair in sorted(parts.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise WeightsFormatError(f"{name}: LoRA module {module} lacks its "
                                     f"{'lora_B' if 'lora_A' in pair else 'lora_A'} tensor")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise WeightsFormatError(f"{name}: LoRA module {module} has mismatched shapes "
                                     f"A {tuple(a.shape)} / B {tuple(b.shape)}")
        if not a.is_floating_point() or not b.is_floating_point():
            raise WeightsFormatError(f"{name}: LoRA module {module} is not floating point ({a.dtype})")
        ranks.add(int(a.shape[0]))
        modules[module] = (a, b)
    if len(ranks) > 1:
        raise WeightsFormatError(f"{name}: LoRA modules have different ranks {sorted(ranks)}")
    return modules


def check_lora(lora: dict[str, torch.Tensor], name: str) -> None:
    """Every module needs its A [r, in] and B [out, r] pair, all with one rank."""
    lora_modules(lora, name, "")


def peft_metadata(weights: LoraInfo) -> str:
    """The peft config diffusers stores beside a LoRA (enough for ``load_lora_weights`` to rebuild it)."""
    rank = weights.lora_rank
    modules = sorted({k[len("transformer."):-len(".lora_A.weight")] for k in weights.lora_state
                      if k.endswith(".lora_A.weight")})
    return json.dumps({"transformer.r": rank,
                       "transformer.lora_alpha": weights.lora_alpha if weights.lora_alpha is not None else rank,
                       "transformer.target_modules": modules, "transformer.lora_dropout": 0.0,
                       "transformer.bias": "none", "transformer.use_dora": False,
                       # diffusers 0.34-0.39 (the official scripts' range) read these two unconditionally
                       "transformer.rank_pattern": {}, "transformer.alpha_pattern": {}}, sort_keys=True)
