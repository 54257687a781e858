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
import os
import pickle
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


@dataclass
class KontinuousWeights:
    projector_config: ProjectorConfig
    projector_state: dict[str, torch.Tensor]
    lora_state: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers keys
    lora_alpha: float | None = None  # None: alpha = rank (scale 1), as peft does without metadata
    source: str = ""

    @property
    def lora_rank(self) -> int | None:
        for k, v in self.lora_state.items():
            if k.endswith("lora_A.weight"):
                return int(v.shape[0])
        return None

    @property
    def lora_scale(self) -> float:
        """alpha / rank, the factor peft applies to B @ A."""
        rank = self.lora_rank
        if rank is None or self.lora_alpha is None:
            return 1.0
        return self.lora_alpha / rank

    def build_projector(self, dtype: torch.dtype = torch.float32) -> SliderProjector:
        """The projector in ``dtype`` (fp32 = official inference: bf16 files are upcast)."""
        projector = SliderProjector(self.projector_config).to(dtype)
        projector.load_state_dict(self.projector_state)  # copies with a cast, like the official loader
        return projector.eval().requires_grad_(False)


# ---------------------------------------------------------------- reading

def load_kontinuous(path: str | os.PathLike) -> KontinuousWeights:
    """Read either layout; raise ``WeightsFormatError`` with a fix for anything unusable."""
    path = Path(path)
    if path.is_dir():
        return load_official_folder(path)
    if not path.exists():
        raise WeightsFormatError(f"{path} does not exist")
    if path.suffix == ".pth" and path.name == OFFICIAL_PROJECTOR:
        return load_official_folder(path.parent)
    if path.suffix != ".safetensors":
        raise WeightsFormatError(f"{path.name}: expected a Kontinuous .safetensors file or an official "
                                 f"release folder ({OFFICIAL_PROJECTOR} + {OFFICIAL_LORA})")
    return load_single_file(path)


def load_official_folder(folder: str | os.PathLike) -> KontinuousWeights:
    folder = Path(folder)
    projector_path = folder / OFFICIAL_PROJECTOR
    if not projector_path.is_file():
        raise WeightsFormatError(f"{folder} is not a Kontinuous Kontext release folder: "
                                 f"{OFFICIAL_PROJECTOR} is missing")
    state = _load_pth_tensors(projector_path)
    config = _projector_config(state, projector_path.name)
    lora_path = folder / OFFICIAL_LORA
    lora, alpha = ({}, None)
    if lora_path.is_file():
        lora, meta = _read_safetensors(lora_path)
        alpha = _alpha_from_peft_metadata(meta)
        _check_lora(lora, lora_path.name)
    return KontinuousWeights(config, state, lora, alpha, source=str(folder))


def load_single_file(path: str | os.PathLike) -> KontinuousWeights:
    path = Path(path)
    tensors, meta = _read_safetensors(path)
    info = meta.get(METADATA_KEY)
    projector_state = {k[len(PROJECTOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(PROJECTOR_PREFIX)}
    if info is None or not projector_state:
        raise WeightsFormatError(
            f"{path.name} holds no Kontinuous Kontext projector (no '{METADATA_KEY}' header or no "
            f"'{PROJECTOR_PREFIX}*' tensors). A plain LoRA belongs in ComfyUI's LoraLoader; an official "
            f"release folder can be converted with: python -m kontext_sliders.core.convert_kontinuous SRC_DIR OUT.safetensors")
    try:
        info = json.loads(info)
        if info.get("format") != FORMAT_NAME:
            raise WeightsFormatError(f"{path.name} is a '{info.get('format')}' file, not '{FORMAT_NAME}'")
        config = ProjectorConfig.from_dict(info["projector"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise WeightsFormatError(f"{path.name}: unreadable '{METADATA_KEY}' header ({e})") from None
    if config != _projector_config(projector_state, path.name):
        raise WeightsFormatError(f"{path.name}: header config {config} does not match the tensor shapes")
    lora = {k: v for k, v in tensors.items() if not k.startswith(PROJECTOR_PREFIX)}
    _check_lora(lora, path.name)
    alpha = info.get("lora_alpha")
    return KontinuousWeights(config, projector_state, lora, None if alpha is None else float(alpha), source=str(path))


def _load_pth_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]  # a class or function to call
        if unsafe:
            raise WeightsFormatError(
                f"{path.name} was refused: it is not a plain tensor state dict, loading it would run pickled "
                f"code ({unsafe[0]}). Re-save the projector with torch.save(projector.state_dict()) or use a "
                f".safetensors file.") from None
        raise WeightsFormatError(f"{path.name} is not a readable PyTorch file (unpickling failed); "
                                 f"download it again") from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise WeightsFormatError(f"{path.name} is not a readable PyTorch file ({type(e).__name__}: {e}); "
                                 f"download it again") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsFormatError(f"{path.name} must hold a dict of tensors (a state dict), found {type(obj).__name__}")
    return dict(obj)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise WeightsFormatError(f"{path.name} is not a readable safetensors file ({type(e).__name__}: {e}); "
                                 f"it may be truncated: download or export it again") from None
    return tensors, meta


def _projector_config(state: dict[str, torch.Tensor], name: str) -> ProjectorConfig:
    try:
        config = ProjectorConfig.from_state_dict(state)
    except ValueError as e:
        raise WeightsFormatError(f"{name}: {e}") from None
    want = _expected_shapes(config)  # by key, without building a 122M-parameter module
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise WeightsFormatError(f"{name}: not a strength projector of the official architecture "
                                 f"(missing {missing[:4]}, unexpected {extra[:4]}, wrong shapes {wrong[:4]})")
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


def _alpha_from_peft_metadata(meta: dict[str, str]) -> float | None:
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        alpha = json.loads(raw).get("transformer.lora_alpha")
    except json.JSONDecodeError:
        return None
    return None if alpha is None else float(alpha)


def _check_lora(lora: dict[str, torch.Tensor], name: str) -> None:
    """Every module needs its A [r, in] and B [out, r] pair, all with one rank."""
    modules = {}
    for k, v in lora.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if k.endswith(suffix):
                modules.setdefault(k[: -len(suffix)], {})[part] = v
                break
        else:
            raise WeightsFormatError(f"{name}: unexpected tensor '{k}' (expected diffusers LoRA keys "
                                     f"'transformer.<module>.lora_A.weight' / '.lora_B.weight')")
    ranks = set()
    for module, parts in modules.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise WeightsFormatError(f"{name}: LoRA module {module} lacks its "
                                     f"{'lora_B' if 'lora_A' in parts else 'lora_A'} tensor")
        a, b = parts["lora_A"], parts["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise WeightsFormatError(f"{name}: LoRA module {module} has mismatched shapes "
                                     f"A {tuple(a.shape)} / B {tuple(b.shape)}")
        ranks.add(a.shape[0])
    if len(ranks) > 1:
        raise WeightsFormatError(f"{name}: LoRA modules have different ranks {sorted(ranks)}")


# ---------------------------------------------------------------- writing

def save_single_file(weights: KontinuousWeights, path: str | os.PathLike) -> None:
    """Write our single-file layout atomically (temp file + rename)."""
    tensors = {PROJECTOR_PREFIX + k: v.contiguous() for k, v in weights.projector_state.items()}
    tensors.update({k: v.contiguous() for k, v in weights.lora_state.items()})
    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
            "projector": json.loads(weights.projector_config.to_json()),
            "lora_alpha": weights.lora_alpha, "lora_rank": weights.lora_rank}
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
