"""Kontinuous Kontext weight files.

Two layouts are read:

* the official release folder: ``slider_projector.pth`` (a plain tensor dict, read with
  ``torch.load(weights_only=True)`` only) + ``pytorch_lora_weights.safetensors`` (diffusers
  LoRA keys, peft config in the header under ``lora_adapter_metadata``);
* our single file ``*.safetensors``: projector tensors under ``slider_projector.``, the LoRA
  tensors under their diffusers names (so the file is also a valid diffusers LoRA), and a JSON
  config in the header under ``kontext_sliders``.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .projector import ProjectorConfig, SliderProjector

OFFICIAL_PROJECTOR = "slider_projector.pth"
OFFICIAL_LORA = "pytorch_lora_weights.safetensors"
PROJECTOR_PREFIX = "slider_projector."
METADATA_KEY = "kontext_sliders"
FORMAT_NAME = "kontinuous-kontext"
FORMAT_VERSION = 1


class WeightsFormatError(ValueError):
    """A weight file that cannot be used; the message says what was found and what to do."""


class LoraInfo:
    """``lora_rank`` and ``lora_scale`` of a weights object with ``lora_state`` (diffusers keys) and ``lora_alpha``."""
    lora_state: dict[str, torch.Tensor]
    lora_alpha: float | None

    @property
    def lora_rank(self) -> int | None:
        return _rank(self.lora_state)

    @property
    def lora_scale(self) -> float:
        """alpha / rank, the factor peft applies to B @ A."""
        rank = self.lora_rank
        if rank is None or self.lora_alpha is None:
            return 1.0
        return self.lora_alpha / rank


@dataclass
class KontinuousWeights(LoraInfo):
    projector_config: ProjectorConfig
    projector_state: dict[str, torch.Tensor]
    lora_state: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers keys
    lora_alpha: float | None = None  # None: alpha = rank (scale 1), as peft does without metadata
    source: str = ""

    def build_projector(self, dtype: torch.dtype = torch.float32) -> SliderProjector:
        """The projector in ``dtype`` (fp32 = official inference: bf16 files are upcast)."""
        projector = SliderProjector(self.projector_config).to(dtype)
        projector.load_state_dict(self.projector_state)  # copies with a cast, like the official loader
        return projector.eval().requires_grad_(False)


# ---------------------------------------------------------------- reading

def load_kontinuous(path: str | os.PathLike) -> KontinuousWeights:
    """Read either layout; raise ``WeightsFormatError`` with a fix for anything unusable.

    Every failure, whatever its cause (a malformed header, an empty file, NaN weights), surfaces as a
    ``WeightsFormatError`` naming the file, what was found, what was expected and what to do.
    """
    path = Path(path)
    if path.is_dir():
        return load_official_folder(path)
    if not path.exists():
        raise WeightsFormatError(f"{path} does not exist; put the .safetensors file or the official release "
                                 f"folder into models/kontext_sliders/")
    if path.suffix == ".pth" and path.name == OFFICIAL_PROJECTOR:
        return load_official_folder(path.parent)
    if path.suffix != ".safetensors":
        raise WeightsFormatError(f"{path.name}: expected a Kontinuous .safetensors file or an official "
                                 f"release folder ({OFFICIAL_PROJECTOR} + {OFFICIAL_LORA})")
    return load_single_file(path)


def load_official_folder(folder: str | os.PathLike) -> KontinuousWeights:
    """The release folder: both files are required (the release always ships both)."""
    folder = Path(folder)
    missing = [name for name in (OFFICIAL_PROJECTOR, OFFICIAL_LORA) if not (folder / name).is_file()]
    if missing:
        raise WeightsFormatError(
            f"{folder} is not a complete Kontinuous Kontext release folder: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (the release ships {OFFICIAL_PROJECTOR} and "
            f"{OFFICIAL_LORA} together); download the missing file into that folder")
    projector_path = folder / OFFICIAL_PROJECTOR
    state = _load_pth_tensors(projector_path)
    config = _projector_config(state, projector_path.name)
    _check_finite(state, projector_path.name)
    lora_path = folder / OFFICIAL_LORA
    lora, meta = _read_safetensors(lora_path)
    alpha = _alpha_from_peft_metadata(meta, lora_path.name)
    _check_lora(lora, lora_path.name)
    if not lora:
        raise WeightsFormatError(f"{lora_path.name} holds no tensors; expected the release's LoRA. Download it again.")
    _check_finite(lora, lora_path.name)
    _check_alpha(alpha, _rank(lora), lora_path.name)
    return KontinuousWeights(config, state, lora, alpha, source=str(folder))


def load_single_file(path: str | os.PathLike) -> KontinuousWeights:
    path = Path(path)
    tensors, meta = _read_safetensors(path)
    raw = meta.get(METADATA_KEY)
    projector_state = {k[len(PROJECTOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(PROJECTOR_PREFIX)}
    if raw is None or not projector_state:
        raise WeightsFormatError(
            f"{path.name} holds no Kontinuous Kontext projector (no '{METADATA_KEY}' header or no "
            f"'{PROJECTOR_PREFIX}*' tensors). A plain LoRA belongs in ComfyUI's LoraLoader; an official "
            f"release folder can be converted with: python -m kontext_sliders.core.convert_kontinuous SRC_DIR OUT.safetensors")
    header = _parse_header(raw, path.name)
    if header.config != _projector_config(projector_state, path.name):
        raise WeightsFormatError(f"{path.name}: header config {header.config} does not match the tensor shapes; "
                                 f"the file was edited or is damaged: export or convert it again")
    _check_finite(projector_state, path.name)
    lora = {k: v for k, v in tensors.items() if not k.startswith(PROJECTOR_PREFIX)}
    _check_lora(lora, path.name)
    if not lora and not header.projector_only:
        raise WeightsFormatError(f"{path.name} holds a projector but no LoRA tensors, and its header does not say "
                                 f"it is projector-only ('projector_only': true); it may be damaged: export or "
                                 f"convert it again")
    _check_finite(lora, path.name)
    _check_alpha(header.lora_alpha, _rank(lora), path.name)
    return KontinuousWeights(projector_config=header.config, projector_state=projector_state, lora_state=lora,
                             lora_alpha=header.lora_alpha, source=str(path))


@dataclass(frozen=True)
class _Header:
    config: ProjectorConfig
    lora_alpha: float | None
    projector_only: bool


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


def _parse_header(raw: str, name: str) -> _Header:
    """Our JSON header, checked field by field: a damaged header names the field, never a Python internal."""
    def bad(what: str) -> WeightsFormatError:
        return header_error(name, what)
    info = read_header(raw, name, FORMAT_NAME, f"'{FORMAT_NAME}'")
    projector = info.get("projector")
    if not isinstance(projector, dict):
        raise bad(f"has projector = {projector!r}, expected an object of integer sizes")
    sizes = {}
    for key in ProjectorConfig.__dataclass_fields__:
        if key in projector:
            value = projector[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(f"has projector.{key} = {value!r}, expected an integer")
            sizes[key] = value
    try:
        config = ProjectorConfig(**sizes)
    except (TypeError, ValueError) as e:
        raise bad(f"describes an impossible projector ({e})") from None
    alpha = info.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        raise bad(f"has lora_alpha = {alpha!r}, expected a number or null")
    projector_only = info.get("projector_only", False)
    if not isinstance(projector_only, bool):
        raise bad(f"has projector_only = {projector_only!r}, expected true or false")
    return _Header(config, None if alpha is None else float(alpha), projector_only)


def _load_pth_tensors(path: Path, what: str = "the strength projector's state dict",
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


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def _check_finite(tensors: dict[str, torch.Tensor], name: str) -> None:
    """NaN / inf weights would give all-NaN images with a success status: refuse them at load, once."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsFormatError(f"{name}: tensor '{key}' holds {bad} NaN or infinite value(s) of {t.numel()}; "
                                     f"the weights are damaged (a diverged training run or a broken conversion): "
                                     f"use another checkpoint or export again")


def _rank(lora: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[0]) for k, v in lora.items() if k.endswith("lora_A.weight")), None)


MAX_LORA_SCALE = 1024.0  # alpha / rank; peft setups use 0.5 ... 32, far above is a damaged header


def _check_alpha(alpha: float | None, rank: int | None, name: str) -> None:
    if alpha is None:
        return
    scale = alpha / rank if rank else alpha
    if not math.isfinite(alpha) or alpha <= 0 or scale > MAX_LORA_SCALE:
        raise WeightsFormatError(f"{name}: lora_alpha = {alpha!r} (scale alpha / rank = {scale!r}); expected a "
                                 f"positive number with alpha / rank <= {MAX_LORA_SCALE:g} (usually alpha = rank). "
                                 f"The header is damaged: export or convert the weights again")


def _projector_config(state: dict[str, torch.Tensor], name: str) -> ProjectorConfig:
    try:
        config = ProjectorConfig.from_state_dict(state)
    except (ValueError, IndexError) as e:  # IndexError: a tensor of the wrong rank
        why = str(e) or "a tensor has the wrong number of dimensions"
        raise WeightsFormatError(f"{name}: not a strength-projector state dict ({why}); use the release's "
                                 f"{OFFICIAL_PROJECTOR} or a file exported by kontext-sliders") from None
    want = _expected_shapes(config)  # by key, without building a 122M-parameter module
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise WeightsFormatError(f"{name}: not a strength projector of the official architecture "
                                 f"(missing {missing[:4]}, unexpected {extra[:4]}, wrong shapes {wrong[:4]}); use the release's "
                                 f"{OFFICIAL_PROJECTOR} or a file exported by kontext-sliders")
    return config


def _expected_shapes(config: ProjectorConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"pe_extender.weight": (config.strength_embed_dim, config.pe_dim),
              "pe_extender.bias": (config.strength_embed_dim,)}
    in_dim = config.strength_embed_dim + config.clip_dim
    for i in range(config.n_layers):
        out = config.out_dim if i == config.n_layers - 1 else config.width
        shapes[f"projector.{2 * i}.weight"] = (out, in_dim)
        shapes[f"projector.{2 * i}.bias"] = (out,)
        in_dim = out
    return shapes


def _alpha_from_peft_metadata(meta: dict[str, str], name: str) -> float | None:
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


def _check_lora(lora: dict[str, torch.Tensor], name: str) -> None:
    """Every module needs its A [r, in] and B [out, r] pair, all with one rank."""
    lora_modules(lora, name, "")


# ---------------------------------------------------------------- writing

def save_single_file(weights: KontinuousWeights, path: str | os.PathLike) -> None:
    """Write our single-file layout atomically (temp file + rename)."""
    tensors = {PROJECTOR_PREFIX + k: v.contiguous() for k, v in weights.projector_state.items()}
    tensors.update({k: v.contiguous() for k, v in weights.lora_state.items()})
    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
            "projector": json.loads(weights.projector_config.to_json()),
            "lora_alpha": weights.lora_alpha, "lora_rank": weights.lora_rank,
            "projector_only": not weights.lora_state}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(info, sort_keys=True)}
    if weights.lora_state:
        metadata["lora_adapter_metadata"] = _peft_metadata(weights)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_official_folder(weights: KontinuousWeights, folder: str | os.PathLike) -> None:
    """Write the official layout (projector .pth + diffusers LoRA), e.g. for the official scripts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in weights.projector_state.items()}
    atomic_write(folder / OFFICIAL_PROJECTOR, lambda tmp: torch.save(state, tmp))
    if weights.lora_state:
        meta = {"format": "pt", "lora_adapter_metadata": _peft_metadata(weights)}
        lora = {k: v.contiguous() for k, v in weights.lora_state.items()}
        atomic_write(folder / OFFICIAL_LORA, lambda tmp: save_file(lora, tmp, metadata=meta))


def _peft_metadata(weights: KontinuousWeights) -> str:
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
