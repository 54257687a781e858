"""Export a checkpoint to the files the nodes read: the shared part; each method's part is its registered
``export`` (``registry.py``), e.g. ``methods/kontinuous/export.py``.

Works on the checkpoint's trainable tensors alone (no model is rebuilt, so exporting a FLUX-size run
needs no GPU), except for a trained transformer (``export_editor``). peft's
``transformer.<module>.lora_A.default.weight`` become diffusers LoRA keys
``transformer.<module>.lora_A.weight``; rank from the shapes, alpha from the run's config.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from ..families import family
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import config_from_dict
from .registry import method_for

LORA_KEY = re.compile(r"^transformer\.(?P<module>.+)\.(?P<half>lora_[AB])\.(?:[^.]+\.)?weight$")


def lora_from_trainable(trainable: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict:
    """peft's ``transformer.<module>.lora_A.default.weight`` -> diffusers' ``transformer.<module>.lora_A.weight``."""
    lora = {}
    for key, value in trainable.items():
        m = LORA_KEY.match(key)
        if m:
            lora[f"transformer.{m['module']}.{m['half']}.weight"] = value.to(dtype)
    return lora


def trainable_from_lora(lora: dict[str, torch.Tensor], adapter: str = "default") -> dict[str, torch.Tensor]:
    """The inverse of ``lora_from_trainable``: diffusers' LoRA keys -> peft's (adapter ``adapter``)."""
    out = {}
    for key, value in lora.items():
        m = LORA_KEY.match(key)
        if m:
            out[f"transformer.{m['module']}.{m['half']}.{adapter}.weight"] = value
    return out


def export_editor(trainable: dict[str, torch.Tensor], config, out_dir: str | Path) -> Path:
    """The trained transformer as a diffusers folder ``<out_dir>/transformer`` (a LoRA merged into it)."""
    config = config_from_dict(config) if isinstance(config, dict) else config
    transformer = family(config.model.family).build_transformer(config, peft_lora=method_for(config.method).peft_lora)
    prefix = "transformer."
    state = {k[len(prefix):]: v for k, v in trainable.items() if k.startswith(prefix)}
    missing = {n for n, p in transformer.named_parameters() if p.requires_grad} - set(state)
    if missing:
        raise ValueError(f"the checkpoint lacks trainable tensors of the editor: {sorted(missing)[:3]}")
    transformer.load_state_dict(state, strict=False)
    if config.lora.enabled and config.model.pretrained is not None:
        transformer.fuse_lora()
        transformer.unload_lora()
    folder = Path(out_dir) / "transformer"
    transformer.save_pretrained(str(folder))
    return folder


def check_transformer_out(path: Path, trainable: dict[str, torch.Tensor], transformer_dir) -> bool:
    """For a method whose run may train the transformer's own weights (kontinuous, numeric): ``transformer_dir``
    is needed exactly when it did (a ValueError naming the fix otherwise). True: write the transformer."""
    trained_base = any(k.startswith("transformer.") and "lora_" not in k for k in trainable)
    if trained_base and transformer_dir is None:
        raise ValueError(f"{path}: this run trained the transformer's own weights (model.train_transformer or a "
                         "transformer from scratch); the slider file alone would run on an untrained base: give "
                         "--transformer-out DIR as well (the trained transformer, a diffusers folder)")
    if transformer_dir is not None and not trained_base:
        raise ValueError(f"{path}: this run trained no transformer weight (only the slider and its LoRA): "
                         "there is no transformer to write; drop --transformer-out")
    return transformer_dir is not None


def refuse_transformer_out(config: dict, transformer_dir) -> None:
    """For a method that keeps its base frozen: ``--transformer-out`` has nothing to write."""
    if transformer_dir is not None:
        raise ValueError(f"--transformer-out is for kontinuous and numeric runs that train the transformer; this "
                         f"is a {config['method']} run")


def export_checkpoint(checkpoint: str | Path, out_file: str | Path | None = None,
                      official_dir: str | Path | None = None,
                      dtype: torch.dtype = torch.float32,
                      transformer_dir: str | Path | None = None):
    """``checkpoint``: a checkpoint folder, or a run's output folder (its newest checkpoint).

    What is written depends on the run's method (its registered ``export``): a Kontinuous run
    (``methods/kontinuous/export.py``) goes to our single file and, with ``official_dir``, the official layout; a
    SliderEdit run (``method: slideredit``) to our single file (``core.slideredit.save_slideredit``) and, with
    ``official_dir``, the authors' layout (``selective_lora.safetensors`` for an STLoRA,
    ``pytorch_lora_weights.safetensors`` for a GSTLoRA); a NumeriKontrol run (``method: numeric``) to one
    NumeriKontrol file (``core.numeric.save_numeric_weights``: adapter + LoRA + the registry); an editor run to a
    diffusers folder (``<out_file>/transformer``; returns None).

    A run that trained the transformer's own weights (``model.train_transformer``, or a scratch transformer)
    needs ``transformer_dir`` too: the trained transformer goes there as a diffusers folder
    (``<transformer_dir>/transformer``, ``export_editor``), beside the slider file that runs on it."""
    path = Path(checkpoint)
    if not (path / "trainable.safetensors").is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path} is neither a checkpoint nor a run folder with checkpoints")
        path = found
    trainable, _ = load_checkpoint(path)
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    export = method_for(config.get("method") or "kontinuous").export
    return export(path, trainable, config, out_file, official_dir, dtype, transformer_dir)
