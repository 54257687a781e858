"""A Kontinuous run's export: ``projector.*`` become the projector state, peft's LoRA keys diffusers' (alpha from
the run's config), written as our single file and, with ``official_dir``, the official layout."""
from __future__ import annotations

from pathlib import Path

import torch

from ....core.kontinuous.projector import ProjectorConfig
from ....core.kontinuous.weights import KontinuousWeights, load_kontinuous, save_official_folder, save_single_file
from ...engine.config import TrainConfig, config_from_dict
from ...engine.export import check_transformer_out, export_editor, lora_from_trainable, trainable_from_lora
from .model import build_model


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


def kontinuous_on_base(config: TrainConfig, weights_file: Path, transformer_dir: Path | None = None) -> torch.nn.Module:
    """The exported Kontinuous file (projector + LoRA, the loader's format) on the base editor of
    ``config.model.pretrained``, or on ``transformer_dir`` (the run's own fine-tuned transformer, ``export
    --transformer-out``): the trainer's model with the file's tensors in place of its trainable ones."""
    weights = load_kontinuous(weights_file)
    if transformer_dir is not None:
        d = config.to_dict()
        d["model"].update(pretrained=str(transformer_dir), train_transformer=False)
        d["lora"]["enabled"] = False
        d["optim"]["transformer_lr"] = None  # an evaluated model: nothing trains
        config = config_from_dict(d)
    model = build_model(config)
    lora = trainable_from_lora(weights.lora_state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    if set(lora) != trainable:
        raise ValueError(f"{weights_file}: LoRA modules differ from the run's ({len(lora)} vs {len(trainable)})")
    model.load_state_dict(lora, strict=False)
    model.projector.load_state_dict(weights.projector_state)
    return model.requires_grad_(False).eval()
