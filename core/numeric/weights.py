"""NumeriKontrol weight files: the header layout (what the parser and the nodes read before any tensor).

Format: one ``.safetensors`` file.

* metadata ``kontext_sliders`` (the pack's key, ``core.formats.METADATA_KEY``): a JSON object
  ``{"format": "numerikontrol", "version": 1, "registry": <Registry.to_json()>, "adapter": <AdapterConfig>}``;
  the registry is the one the weights were trained with: its order gives the task ids.
* tensors: the adapter's state dict under ``numeric_adapter.`` (``NumericAdapter`` keys); the LoRA, when the
  trainer writes one, under its diffusers names (defined with the trainer).

``read_numeric_header`` reads the header only (safetensors maps tensors lazily and none is touched).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..formats import METADATA_KEY, WeightsFormatError, header_error, read_header
from .adapter import AdapterConfig
from .registry import Registry, RegistryError

FORMAT_NAME = "numerikontrol"
FORMAT_VERSION = 1
ADAPTER_PREFIX = "numeric_adapter."


@dataclass(frozen=True)
class NumericHeader:
    registry: Registry
    adapter: AdapterConfig


def numeric_metadata(registry: Registry, adapter: AdapterConfig) -> dict[str, str]:
    """The safetensors metadata for a numeric weight file (pass to ``save_file(..., metadata=...)``)."""
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "registry": registry.to_json(),
              "adapter": adapter.to_json()}
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
    return NumericHeader(registry, adapter)
