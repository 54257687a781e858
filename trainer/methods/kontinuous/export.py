"""A Kontinuous run's export: ``projector.*`` become the projector state, peft's LoRA keys diffusers' (alpha from
the run's config), written as our single file and, with ``official_dir``, the official layout."""
from __future__ import annotations

from pathlib import Path

import torch

from ....core.kontinuous.projector import ProjectorConfig
from ....core.kontinuous.weights import KontinuousWeights, save_official_folder, save_single_file
from ...engine.export import check_transformer_out, export_editor, lora_from_trainable


def weights_from_trainable(trainable: dict[str, torch.Tensor], lora_alpha: float | None,
                           dtype: torch.dtype = torch.float32) -> KontinuousWeights:
    projector = {k[len("projector."):]: v.to(dtype) for k, v in trainable.items() if k.startswith("projector.")}
    if not projector:
        raise ValueError("the checkpoint holds no projector tensors (projector.*)")
    lora = lora_from_trainable(trainable, dtype)
    return KontinuousWeights(ProjectorConfig.from_state_dict(projector), projector, lora,
                             lora_alpha if lora else None)


def export_run(path: Path, trainable: dict[str, torch.Tensor], config: dict, out_file, official_dir,
               dtype: torch.dtype, transformer_dir) -> KontinuousWeights:
    if check_transformer_out(path, trainable, transformer_dir):
        export_editor(trainable, config, transformer_dir)
    alpha = float(config["lora"]["alpha"]) if config["lora"]["enabled"] else None
    weights = weights_from_trainable(trainable, alpha, dtype)
    if out_file:
        save_single_file(weights, out_file)
    if official_dir:
        save_official_folder(weights, official_dir)
    return weights
