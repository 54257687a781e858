"""``method: numeric``: train NumeriKontrol (numbers with units as edit strengths) on trajectory folders.

Data: trajectory folders whose frames carry their physical ``value`` (``synth cat``), each trajectory's ``task``
a task of the registry (``numeric.registry``; default: the `synth cat` tasks). A row is a source frame and a
target frame drawn from ONE trajectory, both uniformly among its frames (so the source may be mid-trajectory,
the delta may go either way, and source = target gives the no-change delta). Its delta is computed from the two
frames' values by the registry's convention (``NumericTask.delta_between``: a signed difference, or a factor
target / source for ``scale: log`` tasks), rounded to 6 significant digits (float noise such as
0.30000000000000004 never reaches the text); the adapter gets that delta and the text is the task's template
filled in with it (``NumericTask.render``, which ``parse_line`` reads back to the same delta).

Before training every frame (image latent) and every instruction a row can need (the finite set over all frame
pairs of all trajectories) is encoded once into the feature cache, as one-line prompts
(``features.cached_lines``): ``data.text_encoder: flux`` = FLUX's T5 + pooled CLIP-L of ``model.pretrained``;
``learned`` (offline) = ``LineTextEncoder``, fixed vectors seeded from the instruction's text, nothing trained.
Trajectories without a registry task, without every frame's value, or with a factor task's value <= 0 are
skipped and counted.

One step, per row: x_sigma = (1 - sigma) target + sigma eps; the model's velocity from (x_sigma, the source
frame's latent, the instruction's T5 tokens with the numeric token in front); loss = MSE against eps - target
in fp32. Trainable: the adapter (task embeddings included) and the LoRA; the transformer is frozen
(``model.train_transformer``: the adapter and every transformer weight, no LoRA, pretrained or from scratch; the
numeric file then holds the adapter alone and the transformer goes out as a diffusers folder, ``export
--transformer-out``). Which
trajectory and frames, sigma and noise are a pure function of (seed, step, row), so resume is exact.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ....core.numeric import (AdapterConfig, NumericAdapter, NumericTask, NumericWeights, Registry,
                              save_numeric_weights)
from ...engine.codecs import make_codecs, text_encoder_for
from ...engine.config import TrainConfig, require_trajectories
from ...engine.export import check_transformer_out, export_editor, lora_from_trainable
from ...engine.features import CachedDataset, FeatureCache, cache_trajectories, cached_lines, to_pil
from ...engine.flow_matching import TRAIN_SIGMAS, flow_matching, seeded_noise
from ...engine.loop import Method
from ...engine.registry import register_method
from ...engine.sampling import euler
from ...engine.validation import grid
from ...families.flux1 import build_transformer
from .model import NumericModel, add_numeric_lora

log = logging.getLogger("kontext_sliders.trainer")


@dataclass
class NumericTrajectory:
    id: str
    task: str  # a registry task name
    frames: tuple[str, ...]  # image cache keys
    values: tuple[float, ...]  # each frame's value, in the task's unit


@dataclass
class NumericDataset:
    trajectories: list[NumericTrajectory]
    text_keys: dict[str, str]  # instruction -> text cache key
    skipped: Counter = field(default_factory=Counter)


@dataclass
class NumericRow:
    trajectory: int
    source: int  # frame index
    target: int  # frame index
    sigma: float
    noise_seed: int
    # a no-change pair (source = target) worded "decrease ... by 0" rather than "increase ... by 0": half of them,
    # so that both wordings are anchored at no change and small deltas of either sign sit between trained ones
    decrease_wording: bool = False
    # a row of ``numeric.replay_edits`` (its sample index) instead of a trajectory's pair: no numeric token
    replay: int | None = None


def pair_delta(task: NumericTask, source_value: float, target_value: float) -> float:
    """The delta taking the source frame to the target frame, in the task's unit, to 6 significant digits."""
    return float(f"{task.delta_between(source_value, target_value):.6g}")


def encoder_text(config: TrainConfig, line: str) -> str:
    """What the text encoder reads of an instruction line: the line itself for FLUX's T5 (which reads the
    number), or, for the offline per-line encoder (``learned`` or ``lines``), the line with its number replaced
    by ``#``: that encoder's vectors are seeded from the text (a hash, blind to what a number means), so with
    the number in it every value would get unrelated text vectors and an unseen value untrained ones; the
    numeric token says how much."""
    if config.data.text_encoder == "flux":
        return line
    from ....core.numeric.parser import NUMBER_RE
    return NUMBER_RE.sub("#", line)


def numeric_rows_for_step(seed: int, step: int, global_batch: int, frame_counts: list[int]) -> list[NumericRow]:
    """The global batch of step ``step``: a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = []
    for i in range(global_batch):
        t = int(torch.randint(len(frame_counts), (1,), generator=g))
        source, target = (int(v) for v in torch.randint(frame_counts[t], (2,), generator=g))
        sigma = float(TRAIN_SIGMAS[int(torch.randint(1000, (1,), generator=g))])
        decrease = source == target and bool(torch.randint(2, (1,), generator=g))
        rows.append(NumericRow(t, source, target, sigma, seed * 1_000_003 + step * 4096 + i, decrease))
    return rows


def replay_rows(rows: list[NumericRow], seed: int, step: int, fraction: float, samples: int) -> list[NumericRow]:
    """``rows`` with about ``fraction`` of them swapped for replayed edits (each keeps its sigma and noise),
    from a stream of its own: the trajectory rows that stay are the ones a run without replay draws."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 2 + 1)
    out = []
    for row in rows:
        swap = bool(torch.rand((), generator=g) < fraction)
        pick = int(torch.randint(samples, (1,), generator=g))
        out.append(NumericRow(-1, 0, 0, row.sigma, row.noise_seed, replay=pick) if swap else row)
    return out


def numeric_trajectories(cached: CachedDataset, registry: Registry) -> tuple[list[NumericTrajectory], Counter]:
    """The cached trajectories numeric training can use; the others counted by reason."""
    out, skipped = [], Counter()
    for t in cached.trajectories:
        if t.task not in registry.names:
            skipped["trajectory whose task is not in the numeric registry"] += 1
        elif any(v is None for v in t.values):
            skipped["trajectory without frame values"] += 1
        elif registry.task(t.task).scale == "log" and any(v <= 0 for v in t.values):
            skipped["trajectory with values <= 0 for a factor task"] += 1
        else:
            out.append(NumericTrajectory(t.id, t.task, tuple(k for k, _ in t.frames), tuple(t.values)))
    return out, skipped


def adapter_config(config: TrainConfig, out_dim: int) -> AdapterConfig:
    nc = config.numeric
    return AdapterConfig(frequencies=nc.frequencies, encoder_width=nc.encoder_width, embed_width=nc.embed_width,
                         decoder_width=nc.decoder_width, out_dim=out_dim)


class NumericMethod(Method):
    """The NumeriKontrol side of ``engine.loop.train`` (the interface: ``engine.loop.Method``)."""

    def prepare(self, cache: FeatureCache, device: torch.device, progress: bool) -> None:
        config = self.config
        self.cache, self.registry = cache, config.numeric.task_registry()
        self.codec, _ = make_codecs(config, device, text=False)
        cached = cache_trajectories(config.data.trajectories, cache, self.codec, None, progress=progress)
        self.replay = self._cache_replay(cache, device, progress)
        self.codec.release()
        trajectories, skipped = numeric_trajectories(cached, self.registry)
        for key, count in skipped.items():
            log.warning("skipped %d: %s", count, key)
        if not trajectories:
            raise ValueError(f"no usable trajectories for numeric training in {config.data.trajectories} "
                             f"(skipped: {dict(cached.skipped + skipped)})")
        deltas = {(t.task, pair_delta(self.registry.task(t.task), a, b))
                  for t in trajectories for a in t.values for b in t.values}
        outside = sorted({task for task, d in deltas if not self._in_range(task, d)})
        if outside:
            log.warning("deltas outside the registry's range for %s: the adapter's coordinate goes past +-1 there",
                        ", ".join(outside))
        text_encoder = text_encoder_for(config, device, config.numeric.max_edits)
        instructions = sorted({self.registry.task(task).render(d) for task, d in deltas}
                              | {self.registry.task(task).render(d, decrease=True) for task, d in deltas
                                 if self.registry.task(task).direction(d) == 0})
        keys = {text: cached_lines([encoder_text(config, text)], cache, text_encoder) for text in instructions}
        text_encoder.release()
        self.dataset = NumericDataset(trajectories, keys, cached.skipped + skipped)
        log.info("%d trajectories, %d instructions; skipped: %s", len(trajectories), len(keys),
                 dict(self.dataset.skipped) or "none")

    def _cache_replay(self, cache: FeatureCache, device: torch.device, progress: bool):
        """The replayed edits (``numeric.replay_edits``), their texts as the base editor read them; None if off."""
        nc = self.config.numeric
        if nc.replay_fraction <= 0:
            return None
        from ...engine.edit_cache import cache_edits
        text_encoder = text_encoder_for(self.config, device, nc.max_edits)
        replay = cache_edits(list(nc.replay_edits), cache, self.codec, text_encoder, None, "", nc.max_edits, progress,
                             targets=True)
        text_encoder.release()
        if not replay.samples:
            raise ValueError(f"numeric.replay_edits: no usable edits with targets in {nc.replay_edits} "
                             f"(skipped: {dict(replay.skipped)})")
        log.info("replaying %d edits in %.0f %% of the rows", len(replay.samples), 100 * nc.replay_fraction)
        return replay

    def _in_range(self, task: str, delta: float) -> bool:
        lo, hi = self.registry.task(task).delta_range
        return lo - 1e-9 <= delta <= hi + 1e-9

    def build_model(self) -> NumericModel:
        nc = self.config.numeric
        transformer = build_transformer(self.config)  # frozen: the method adds its own LoRA ...
        if not self.config.model.train_transformer:  # ... unless every weight trains
            add_numeric_lora(transformer, nc.rank, nc.alpha, nc.targets, nc.init)
        adapter = NumericAdapter(self.registry, adapter_config(self.config, transformer.config.joint_attention_dim))
        return NumericModel(transformer, adapter, nc.guidance)

    def rows(self, seed: int, step: int, global_batch: int) -> list[NumericRow]:
        rows = numeric_rows_for_step(seed, step, global_batch, [len(t.frames) for t in self.dataset.trajectories])
        if self.replay is None:
            return rows
        return replay_rows(rows, seed, step, self.config.numeric.replay_fraction, len(self.replay.samples))

    def edit(self, trajectory: NumericTrajectory, source: int, target: int,
             decrease_wording: bool = False) -> tuple[int, float, str]:
        """(task id, delta, instruction) of the pair of frames; ``decrease_wording``: a no change pair's line
        says "decrease"."""
        task = self.registry.task(trajectory.task)
        delta = pair_delta(task, trajectory.values[source], trajectory.values[target])
        decrease = decrease_wording and task.direction(delta) == 0
        return self.registry.task_id(task.name), delta, task.render(delta, decrease)

    def _image(self, key: str) -> torch.Tensor:
        return self.cache.get("image", key)["latent"]

    def _row(self, row: NumericRow) -> tuple[str, str, str, list]:
        """(source key, target key, text key, edits) of a row."""
        if row.replay is not None:
            sample = self.replay.samples[row.replay]
            return sample.source, sample.target, sample.full, []
        t = self.dataset.trajectories[row.trajectory]
        task_id, delta, instruction = self.edit(t, row.source, row.target, row.decrease_wording)
        return t.frames[row.source], t.frames[row.target], self.dataset.text_keys[instruction], [(task_id, delta)]

    def load(self, rows: list[NumericRow], device: torch.device) -> dict:
        parts = [self._row(r) for r in rows]
        texts = [self.cache.get("text", key) for _, _, key, _ in parts]
        target = torch.stack([self._image(key) for _, key, _, _ in parts])
        batch = {"source": torch.stack([self._image(key) for key, _, _, _ in parts]),
                 "target": target, "noise": seeded_noise(target.shape[1:], [r.noise_seed for r in rows]),
                 "sigma": torch.tensor([r.sigma for r in rows]),
                 "context": torch.stack([t["context"] for t in texts]),
                 "pooled": torch.stack([t["pooled"] for t in texts])}
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["edits"] = [edits for _, _, _, edits in parts]
        return batch

    def loss(self, model, batch: dict) -> torch.Tensor:
        return flow_matching(batch, lambda noisy: model(noisy, batch["source"], batch["sigma"], batch["context"],
                                                        batch["pooled"], batch["edits"],
                                                        plain_rows=self.replay is not None))

    @torch.no_grad()
    def validate(self, model: NumericModel, prefix: Path) -> dict:
        """For the first ``run.validation_pairs`` trajectories: frame 0 as the source, edited by the delta to each
        frame of the trajectory (Euler, ``run.sample_steps``, noise seeded by ``run.seed``), beside the true
        frames. ``<prefix>/numeric.png`` (per trajectory a row of renders, then a row of ground truth, each
        starting with the source), ``captions.txt`` and ``metrics.json`` (PSNR of each render against its frame,
        images in [0, 1])."""
        run = self.config.run
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        prefix.mkdir(parents=True, exist_ok=True)
        rows, captions, metrics = [], [], {}
        for traj in self.dataset.trajectories[: max(run.validation_pairs, 1)]:
            source = self._image(traj.frames[0]).to(device).unsqueeze(0)
            renders, truths, psnrs, lines = [], [], [], []
            for k in range(len(traj.frames)):
                task_id, delta, instruction = self.edit(traj, 0, k)
                text = self.cache.get("text", self.dataset.text_keys[instruction])
                context, pooled = text["context"].unsqueeze(0).to(device), text["pooled"].unsqueeze(0).to(device)
                noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(run.seed)).to(device)
                renders.append(euler(lambda x, sigma: model(x, source, sigma, context, pooled, [[(task_id, delta)]]),
                                     noise, run.sample_steps))
                truths.append(self._image(traj.frames[k]).to(device).unsqueeze(0))
                lines.append(instruction)
            made = self.codec.decode(torch.cat([source] + renders))
            true = self.codec.decode(torch.cat([source] + truths))
            for a, b in zip(made[1:], true[1:]):
                mse = float((((a.float() - b.float()) / 2) ** 2).mean())
                psnrs.append(10 * math.log10(1 / mse) if mse > 0 else float("inf"))
            rows += [[to_pil(im) for im in made], [to_pil(im) for im in true]]
            metrics[traj.id] = {"instructions": lines, "psnr_db": psnrs}
            captions.append(f"{traj.id}: renders then ground truth, source first; "
                            + "; ".join(f"{line!r} {p:.2f} dB" for line, p in zip(lines, psnrs)))
        self.codec.release()
        grid(rows).save(prefix / "numeric.png")
        (prefix / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (prefix / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        model.train(was_training)
        return metrics


def numeric_weights_from_trainable(trainable: dict[str, torch.Tensor], config: dict,
                                   dtype: torch.dtype = torch.float32) -> NumericWeights:
    """A checkpoint's ``adapter.*`` and peft LoRA tensors as the NumeriKontrol file's contents (no model rebuilt)."""
    adapter = {k[len("adapter."):]: v.to(dtype) for k, v in trainable.items() if k.startswith("adapter.")}
    if not adapter:
        raise ValueError("the checkpoint holds no numeric adapter tensors (adapter.*)")
    nc = config["numeric"]
    last = max(int(k.split(".")[1]) for k in adapter if k.startswith("decoder.") and k.endswith(".weight"))
    sizes = AdapterConfig(frequencies=int(nc["frequencies"]), encoder_width=int(nc["encoder_width"]),
                          embed_width=int(nc["embed_width"]), decoder_width=int(nc["decoder_width"]),
                          out_dim=int(adapter[f"decoder.{last}.weight"].shape[0]))
    lora = lora_from_trainable(trainable, dtype)
    rank = next((int(v.shape[0]) for k, v in lora.items() if k.endswith("lora_A.weight")), None)
    alpha = (float(nc["alpha"]) if nc.get("alpha") is not None else float(rank)) if lora else None
    return NumericWeights(Registry.from_json(nc["registry"]), sizes, adapter, lora, alpha, "checkpoint")


def export_run(path: Path, trainable: dict[str, torch.Tensor], config: dict, out_file, official_dir,
               dtype: torch.dtype, transformer_dir) -> NumericWeights:
    """One NumeriKontrol file (``core.numeric.save_numeric_weights``: adapter + LoRA + the registry)."""
    if check_transformer_out(path, trainable, transformer_dir):
        export_editor(trainable, config, transformer_dir)
    if official_dir:
        raise ValueError("a numeric run has no official layout (there is no released code): give --out FILE only")
    weights = numeric_weights_from_trainable(trainable, config, dtype)
    if out_file:
        save_numeric_weights(weights, out_file)
    return weights


def check_config(config: TrainConfig) -> None:
    if config.numeric.registry is None:  # the registry travels with the run
        config.numeric.registry = config.numeric.task_registry().to_json()


register_method("numeric", NumericMethod, export_run, require_trajectories, check_config)
