"""``method: kontinuous``: Kontinuous Kontext, flow matching on trajectory frames with the strength projector
(+ LoRA) on a frozen Kontext (``model.py``).

A step's rows (which trajectory, which frame, sigma, slider dropout, noise seed) are a pure function of
(seed, step, row): see ``engine/loop.py``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ...engine.codecs import make_codecs
from ...engine.config import require_trajectories
from ...engine.features import CachedDataset, FeatureCache, cache_trajectories
from ...engine.flow_matching import TRAIN_SIGMAS, flow_matching, seeded_noise
from ...engine.loop import Method
from ...engine.registry import register_method
from ...engine.validation import render_validation
from .export import export_run
from .model import PEFT_LORA_RULE, KontextSliderModel, build_model

log = logging.getLogger("kontext_sliders.trainer")


@dataclass
class Row:
    trajectory: int
    frame: int
    sigma: float
    keep: bool
    noise_seed: int


def rows_for_step(seed: int, step: int, global_batch: int, dataset: CachedDataset, slider_dropout: float) -> list[Row]:
    """The global batch of step ``step`` (0-based): a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = []
    for i in range(global_batch):
        t = int(torch.randint(len(dataset.trajectories), (1,), generator=g))
        f = int(torch.randint(len(dataset.trajectories[t].frames), (1,), generator=g))
        sigma = float(TRAIN_SIGMAS[int(torch.randint(1000, (1,), generator=g))])
        keep = bool(torch.rand((), generator=g) >= slider_dropout)
        rows.append(Row(t, f, sigma, keep, seed * 1_000_003 + step * 4096 + i))
    return rows


class Batches:
    """Reads a step's rows from the feature cache."""

    def __init__(self, dataset: CachedDataset, cache: FeatureCache, learned_text: bool):
        self.dataset, self.cache, self.learned_text = dataset, cache, learned_text

    def load(self, rows: list[Row], device: torch.device) -> dict:
        trajs = [self.dataset.trajectories[r.trajectory] for r in rows]
        source = torch.stack([self.cache.get("image", t.source)["latent"] for t in trajs])
        target = torch.stack([self.cache.get("image", t.frames[r.frame][0])["latent"] for t, r in zip(trajs, rows)])
        noise = seeded_noise(target.shape[1:], [r.noise_seed for r in rows])
        batch = {
            "source": source.to(device), "target": target.to(device), "noise": noise.to(device),
            "strength": torch.tensor([t.frames[r.frame][1] for t, r in zip(trajs, rows)], device=device),
            "sigma": torch.tensor([r.sigma for r in rows], device=device),
            "keep": torch.tensor([r.keep for r in rows], device=device),
            "instructions": [t.instruction for t in trajs],
        }
        if not self.learned_text:
            texts = [self.cache.get("text", self.dataset.text_keys[t.instruction]) for t in trajs]
            batch["context"] = torch.stack([x["context"] for x in texts]).to(device)
            batch["pooled"] = torch.stack([x["pooled"] for x in texts]).to(device)
        return batch


def flow_matching_loss(model, batch: dict) -> torch.Tensor:
    """``flow_matching`` of a Kontinuous model at the rows' strengths."""
    return flow_matching(batch, lambda noisy: model(
        noisy, batch["source"], batch["strength"], batch["sigma"], context=batch.get("context"),
        pooled=batch.get("pooled"), instructions=batch["instructions"], keep=batch["keep"]))


class KontinuousMethod(Method):
    """``method: kontinuous``: flow matching on trajectory frames, strength projector (+ LoRA)."""

    def prepare(self, cache: FeatureCache, device: torch.device, progress: bool) -> None:
        config = self.config
        self.cache = cache
        self.codec, text_encoder = make_codecs(config, device)
        self.dataset = cache_trajectories(config.data.trajectories, cache, self.codec, text_encoder,
                                          progress=progress)
        if text_encoder is not None:
            text_encoder.release()  # the transformer trains without the text encoders in memory
        self.codec.release()
        if not self.dataset.trajectories:
            raise ValueError(f"no usable trajectories in {config.data.trajectories} "
                             f"(skipped: {dict(self.dataset.skipped)})")
        log.info("%d trajectories, %d instructions; skipped: %s", len(self.dataset.trajectories),
                 len(self.dataset.instructions), dict(self.dataset.skipped) or "none")
        self.batches = Batches(self.dataset, cache, config.data.text_encoder == "learned")

    def build_model(self) -> KontextSliderModel:
        return build_model(self.config, self.dataset.instructions)

    def rows(self, seed: int, step: int, global_batch: int) -> list[Row]:
        return rows_for_step(seed, step, global_batch, self.dataset, self.config.projector.slider_dropout)

    def load(self, rows: list[Row], device: torch.device) -> dict:
        return self.batches.load(rows, device)

    def loss(self, model, batch: dict) -> torch.Tensor:
        return flow_matching_loss(model, batch)

    def validate(self, model, prefix: Path) -> None:
        render_validation(model, self.dataset, self.cache, self.codec, self.config, prefix)


register_method("kontinuous", KontinuousMethod, export_run, require_trajectories, peft_lora=PEFT_LORA_RULE)
