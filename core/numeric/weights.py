"""NumeriKontrol weight files: the header layout (what the parser and the nodes read before any tensor).

Format: one ``.safetensors`` file.

* metadata ``kontext_sliders`` (the pack's key, ``core.weights_io.METADATA_KEY``): a JSON object
  ``{"format": "numerikontrol", "version": 1, "registry": <Registry.to_json()>, "adapter": <AdapterConfig>}``;
  the registry is the one the weights were trained with: its order gives the task ids.
  With a LoRA the object also holds ``"lora": {"rank": r, "alpha": a}`` (the update is (a / r) · B A), and
  the file carries diffusers' peft header ``lora_adapter_metadata`` too.
* tensors: the adapter's state dict under ``numeric_adapter.`` (``NumericAdapter`` keys); the LoRA, when the
  trainer writes one, under diffusers' LoRA names ``transformer.<module>.lora_A.weight`` [r, in] /
  ``.lora_B.weight`` [out, r] (``<module>`` a ``FluxTransformer2DModel`` path, e.g.
  ``transformer_blocks.0.attn.add_q_proj``; ``trainer/numeric_model.py`` says where the tokens and LoRA act).

``read_numeric_header`` reads the header only (safetensors maps tensors lazily and none is touched);
``load_numeric_weights`` reads and checks the whole file, ``save_numeric_weights`` writes one.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..weights_io import (METADATA_KEY, LoraInfo, WeightsFormatError, check_alpha as _check_alpha,
                          check_finite as _check_finite, peft_metadata as _peft_metadata,
                          read_safetensors as _read_safetensors, lora_rank_of as _rank, header_error, lora_modules,
                          read_header)
from .adapter import AdapterConfig, NumericAdapter
from .registry import Registry, RegistryError

FORMAT_NAME = "numerikontrol"
FORMAT_VERSION = 1
ADAPTER_PREFIX = "numeric_adapter."


@dataclass(frozen=True)
class NumericHeader:
    registry: Registry
    adapter: AdapterConfig
    lora_rank: int | None = None  # None: no LoRA in the file
    lora_alpha: float | None = None


def numeric_metadata(registry: Registry, adapter: AdapterConfig, lora_rank: int | None = None,
                     lora_alpha: float | None = None) -> dict[str, str]:
    """The safetensors metadata for a numeric weight file (pass to ``save_file(..., metadata=...)``);
    ``lora_rank`` (and ``lora_alpha``, default the rank) when the file holds a LoRA."""
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "registry": registry.to_json(),
              "adapter": adapter.to_json()}
    if lora_rank is not None:
        header["lora"] = {"rank": int(lora_rank), "alpha": float(lora_rank if lora_alpha is None else lora_alpha)}
    return {"format": "pt", METADATA_KEY: json.dumps(header, sort_keys=True)}


def read_numeric_header(path: str | os.PathLike) -> NumericHeader:
    """The registry and adapter sizes of a numeric weight file; ``WeightsFormatError`` (one line, naming the file)
    for a missing, unreadable or damaged file, or a file of another format."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFormatError(f"{path} does not exist or is not a file; expected a NumeriKontrol .safetensors")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception as e:  # truncated, random bytes, empty
        raise WeightsFormatError(f"{path.name} is not a readable safetensors file ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())}); download or export it again") from None
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise WeightsFormatError(f"{path.name} has no '{METADATA_KEY}' header, so no task registry: it is not a "
                                 f"NumeriKontrol weight file")
    info = read_header(raw, path.name, FORMAT_NAME, "a NumeriKontrol weight file")
    if info.get("version") != FORMAT_VERSION:
        raise header_error(path.name, f"has version {info.get('version')!r}, this code reads {FORMAT_VERSION}")
    try:
        registry = Registry.from_json(info.get("registry"))
    except RegistryError as e:
        raise header_error(path.name, f"holds an unusable task registry ({e})") from None
    try:
        adapter = AdapterConfig.from_json(info.get("adapter"))
    except (TypeError, ValueError) as e:
        raise header_error(path.name, f"holds an unusable adapter config ({e})") from None
    lora = info.get("lora")
    if lora is None:
        return NumericHeader(registry, adapter)
    rank, alpha = (lora.get("rank"), lora.get("alpha")) if isinstance(lora, dict) else (None, None)
    if (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 or isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))):
        raise header_error(path.name, f"has lora = {lora!r}, expected {{\"rank\": a positive integer, "
                                      f"\"alpha\": a number}}")
    return NumericHeader(registry, adapter, rank, float(alpha))


@dataclass
class NumericWeights(LoraInfo):
    """A whole NumeriKontrol weight file: the registry, the adapter (config + state), the LoRA (diffusers keys)."""
    registry: Registry
    adapter_config: AdapterConfig
    adapter_state: dict[str, torch.Tensor]  # NumericAdapter keys (no prefix)
    lora_state: dict[str, torch.Tensor] = field(default_factory=dict)  # transformer.<module>.lora_A/B.weight
    lora_alpha: float | None = None  # None: alpha = rank (scale 1)
    source: str = ""

    def lora_modules(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{diffusers module path: (A [r, in], B [out, r])}."""
        return lora_modules(self.lora_state, self.source or "the weights")

    def build_adapter(self, dtype: torch.dtype = torch.float32) -> NumericAdapter:
        adapter = NumericAdapter(self.registry, self.adapter_config).to(dtype)
        adapter.load_state_dict(self.adapter_state)
        return adapter

    def describe(self) -> str:
        c = self.adapter_config
        lora = (f" + LoRA rank {self.lora_rank} (scale {self.lora_scale:g}) on {len(self.lora_state) // 2} modules"
                if self.lora_state else "")
        return (f"NumeriKontrol adapter ({len(self.registry.tasks)} tasks: {', '.join(self.registry.names)}; "
                f"{c.features} -> {c.encoder_width} -> {c.embed_width} -> {c.decoder_width} -> {c.out_dim}){lora}")


def save_numeric_weights(weights: NumericWeights, path: str | os.PathLike) -> None:
    """Write one NumeriKontrol weight file atomically (the layout in this module's docstring)."""
    tensors = {ADAPTER_PREFIX + k: v.contiguous() for k, v in weights.adapter_state.items()}
    tensors.update({k: v.contiguous() for k, v in weights.lora_state.items()})
    metadata = numeric_metadata(weights.registry, weights.adapter_config, weights.lora_rank, weights.lora_alpha)
    if weights.lora_state:
        metadata["lora_adapter_metadata"] = _peft_metadata(weights)
    from safetensors.torch import save_file
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_numeric_weights(path: str | os.PathLike) -> NumericWeights:
    """A NumeriKontrol weight file, checked: header (``read_numeric_header``), the adapter's tensors exactly those
    of its config and registry (names and shapes), the LoRA complete pairs of one rank agreeing with the header,
    every value finite. ``WeightsFormatError`` (one line, naming the file) for anything else."""
    path = Path(path)
    header = read_numeric_header(path)
    tensors, _ = _read_safetensors(path)
    name = path.name
    state = {k[len(ADAPTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
    lora = {k: v for k, v in tensors.items() if not k.startswith(ADAPTER_PREFIX)}
    if not state:
        raise WeightsFormatError(f"{name} holds no numeric adapter tensors ('{ADAPTER_PREFIX}*'); it may be "
                                 f"damaged: export it again")
    want = {k: tuple(v.shape) for k, v in NumericAdapter(header.registry, header.adapter).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        wrong = [f"{k} {have[k]} (header: {want[k]})" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
        raise WeightsFormatError(f"{name}: the adapter's tensors do not match its header's sizes and "
                                 f"{len(header.registry.tasks)}-task registry (missing {missing[:3]}, unexpected "
                                 f"{extra[:3]}, wrong shapes {wrong[:3]}); the file was edited or is damaged: "
                                 f"export it again")
    lora_modules(lora, name)  # complete A/B pairs of one rank, diffusers names
    rank = _rank(lora)
    if rank != header.lora_rank:
        raise WeightsFormatError(f"{name}: the header says LoRA rank {header.lora_rank}, the tensors have "
                                 f"{'no LoRA' if rank is None else f'rank {rank}'}; the file was edited or is "
                                 f"damaged: export it again")
    _check_finite(state, name)
    _check_finite(lora, name)
    _check_alpha(header.lora_alpha, rank, name)
    return NumericWeights(header.registry, header.adapter, state, lora, header.lora_alpha, str(path))
