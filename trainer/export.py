"""Export a checkpoint to the files the nodes read.

Works on the checkpoint's trainable tensors alone (no model is rebuilt, so exporting a FLUX-size run
needs no GPU): ``projector.*`` become the projector state, peft's
``transformer.<module>.lora_A.default.weight`` become diffusers LoRA keys
``transformer.<module>.lora_A.weight``; rank from the shapes, alpha from the run's config.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from ..core.kontinuous.weights import KontinuousWeights, save_official_folder, save_single_file
from ..core.kontinuous.projector import ProjectorConfig
from ..core.slideredit.weights import SliderEditWeights, save_authors_layout, save_slideredit
from .checkpoint import latest_checkpoint, load_checkpoint

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


def weights_from_trainable(trainable: dict[str, torch.Tensor], lora_alpha: float | None,
                           dtype: torch.dtype = torch.float32) -> KontinuousWeights:
    projector = {k[len("projector."):]: v.to(dtype) for k, v in trainable.items() if k.startswith("projector.")}
    if not projector:
        raise ValueError("the checkpoint holds no projector tensors (projector.*)")
    lora = lora_from_trainable(trainable, dtype)
    return KontinuousWeights(ProjectorConfig.from_state_dict(projector), projector, lora,
                             lora_alpha if lora else None)


def export_checkpoint(checkpoint: str | Path, out_file: str | Path | None = None,
                      official_dir: str | Path | None = None,
                      dtype: torch.dtype = torch.float32,
                      transformer_dir: str | Path | None = None) -> KontinuousWeights | SliderEditWeights:
    """``checkpoint``: a checkpoint folder, or a run's output folder (its newest checkpoint).

    A run that trained the transformer's own weights (``model.train_transformer``, or a scratch transformer)
    needs ``transformer_dir`` too: the trained transformer goes there as a diffusers folder
    (``<transformer_dir>/transformer``, ``editor.export_editor``), beside the slider file that runs on it.

    A NumeriKontrol run (``method: numeric``) goes to one NumeriKontrol file (``core.numeric.save_numeric_weights``:
    adapter + LoRA + the registry).

    A SliderEdit run (``method: slideredit``) goes to our single file (``core.slideredit.save_slideredit``)
    and, with ``official_dir``, the authors' layout (``save_authors_layout``: ``selective_lora.safetensors``
    for an STLoRA, ``pytorch_lora_weights.safetensors`` for a GSTLoRA)."""
    path = Path(checkpoint)
    if not (path / "trainable.safetensors").is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path} is neither a checkpoint nor a run folder with checkpoints")
        path = found
    trainable, _ = load_checkpoint(path)
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    if config.get("method") == "editor":
        from .editor import export_editor
        if not out_file:
            raise ValueError("an editor run exports to a folder: give --out DIR (its transformer goes to DIR/transformer)")
        export_editor(trainable, config, out_file)
        return None
    trained_base = any(k.startswith("transformer.") and "lora_" not in k for k in trainable)
    if config.get("method") in ("kontinuous", "numeric", None):
        if trained_base and transformer_dir is None:
            raise ValueError(f"{path}: this run trained the transformer's own weights (model.train_transformer or a "
                             "transformer from scratch); the slider file alone would run on an untrained base: give "
                             "--transformer-out DIR as well (the trained transformer, a diffusers folder)")
        if transformer_dir is not None and not trained_base:
            raise ValueError(f"{path}: this run trained no transformer weight (only the slider and its LoRA): "
                             "there is no transformer to write; drop --transformer-out")
        if transformer_dir is not None:
            from .editor import export_editor
            export_editor(trainable, config, transformer_dir)
    elif transformer_dir is not None:
        raise ValueError(f"--transformer-out is for kontinuous and numeric runs that train the transformer; this "
                         f"is a {config['method']} run")
    if config.get("method") == "numeric":
        if official_dir:
            raise ValueError("a numeric run has no official layout (there is no released code): give --out FILE only")
        from ..core.numeric import save_numeric_weights
        from .numeric import numeric_weights_from_trainable
        weights = numeric_weights_from_trainable(trainable, config, dtype)
        if out_file:
            save_numeric_weights(weights, out_file)
        return weights
    if config.get("method") == "slideredit":
        from .slideredit import weights_from_trainable as slideredit_weights
        weights, save_ours, save_official = (slideredit_weights(trainable, config, dtype), save_slideredit,
                                             save_authors_layout)
    else:
        alpha = float(config["lora"]["alpha"]) if config["lora"]["enabled"] else None
        weights, save_ours, save_official = (weights_from_trainable(trainable, alpha, dtype), save_single_file,
                                             save_official_folder)
    if out_file:
        save_ours(weights, out_file)
    if official_dir:
        save_official(weights, official_dir)
    return weights
