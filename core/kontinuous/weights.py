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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..weights_io import (METADATA_KEY, LoraInfo, WeightsFormatError, alpha_from_peft_metadata, check_alpha,  # noqa: F401
                          check_finite, check_lora, header_error, load_pth_tensors, lora_rank_of, peft_metadata,
                          read_header, read_safetensors)
from .projector import ProjectorConfig, SliderProjector

OFFICIAL_PROJECTOR = "slider_projector.pth"
OFFICIAL_LORA = "pytorch_lora_weights.safetensors"
PROJECTOR_PREFIX = "slider_projector."
FORMAT_NAME = "kontinuous-kontext"
FORMAT_VERSION = 1


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
    state = load_pth_tensors(projector_path)
    config = _projector_config(state, projector_path.name)
    check_finite(state, projector_path.name)
    lora_path = folder / OFFICIAL_LORA
    lora, meta = read_safetensors(lora_path)
    alpha = alpha_from_peft_metadata(meta, lora_path.name)
    check_lora(lora, lora_path.name)
    if not lora:
        raise WeightsFormatError(f"{lora_path.name} holds no tensors; expected the release's LoRA. Download it again.")
    check_finite(lora, lora_path.name)
    check_alpha(alpha, lora_rank_of(lora), lora_path.name)
    return KontinuousWeights(config, state, lora, alpha, source=str(folder))


def load_single_file(path: str | os.PathLike) -> KontinuousWeights:
    path = Path(path)
    tensors, meta = read_safetensors(path)
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
    check_finite(projector_state, path.name)
    lora = {k: v for k, v in tensors.items() if not k.startswith(PROJECTOR_PREFIX)}
    check_lora(lora, path.name)
    if not lora and not header.projector_only:
        raise WeightsFormatError(f"{path.name} holds a projector but no LoRA tensors, and its header does not say "
                                 f"it is projector-only ('projector_only': true); it may be damaged: export or "
                                 f"convert it again")
    check_finite(lora, path.name)
    check_alpha(header.lora_alpha, lora_rank_of(lora), path.name)
    return KontinuousWeights(projector_config=header.config, projector_state=projector_state, lora_state=lora,
                             lora_alpha=header.lora_alpha, source=str(path))


@dataclass(frozen=True)
class _Header:
    config: ProjectorConfig
    lora_alpha: float | None
    projector_only: bool


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
        metadata["lora_adapter_metadata"] = peft_metadata(weights)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_official_folder(weights: KontinuousWeights, folder: str | os.PathLike) -> None:
    """Write the official layout (projector .pth + diffusers LoRA), e.g. for the official scripts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in weights.projector_state.items()}
    atomic_write(folder / OFFICIAL_PROJECTOR, lambda tmp: torch.save(state, tmp))
    if weights.lora_state:
        meta = {"format": "pt", "lora_adapter_metadata": peft_metadata(weights)}
        lora = {k: v.contiguous() for k, v in weights.lora_state.items()}
        atomic_write(folder / OFFICIAL_LORA, lambda tmp: save_file(lora, tmp, metadata=meta))
