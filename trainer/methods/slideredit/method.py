"""``method: slideredit``: train a SliderEdit adapter (STLoRA / GSTLoRA) by partial prompt steering.

Data: (source image, sub-instruction lines) samples, no target images (``data/edits.py``). Before
training, every source image and every prompt a step can need is encoded once into the feature cache:
the full prompt (with each line's token span), for PPS every prompt made of a proper subset of the
lines (the kept ones, the empty prompt included), for SPPS the neutral prompt.

One step, per row (as the authors' trainer; facts in the shelf's ``slideredit.md``):
  x_sigma = (1 - sigma) * source latent + sigma * noise      (there is no edited target)
  teacher = base, adapter off, on the kept lines' prompt      (PPS; SPPS: the neutral prompt), no grad
  student = base + adapter at scale 1 on the full prompt: STLoRA on the suppressed lines' tokens only
            (SPPS: every line's tokens), GSTLoRA on all tokens
  loss    = mean over rows of the per-row mean of (student - teacher)^2 over the noisy target's latent.
Which lines a row suppresses (1 ... K of them, uniformly, then which: the authors' draw), its sigma and
noise are a pure function of (seed, step, row), so resume is exact.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ....core.instructions import joined_prompt
from ....core.slideredit.weights import SliderEditWeights, save_authors_layout, save_slideredit
from ....core.slideredit.lora import stlora_token_scales
from ...engine.codecs import make_codecs, text_encoder_for
from ...engine.config import ConfigError, require_samples
from ...engine.export import refuse_transformer_out
from ...engine.edit_cache import cache_edits
from ...engine.features import FeatureCache, to_pil
from ...engine.flow_matching import TRAIN_SIGMAS, seeded_noise
from ...engine.loop import Method
from ...engine.registry import register_method
from ...engine.sampling import euler
from ...engine.validation import grid
from ...families.flux1 import build_transformer
from .model import SliderEditAdapter, SliderEditModel

log = logging.getLogger("kontext_sliders.trainer")


@dataclass
class EditRow:
    sample: int
    suppressed: tuple[int, ...]  # line indices the adapter learns to cancel in this row
    sigma: float
    noise_seed: int


def edit_rows_for_step(seed: int, step: int, global_batch: int, line_counts: list[int], loss: str) -> list[EditRow]:
    """The global batch of step ``step``: a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = []
    for i in range(global_batch):
        sample = int(torch.randint(len(line_counts), (1,), generator=g))
        k = line_counts[sample]
        if loss == "pps":  # how many (1 ... K), then which: the authors' draw
            n = 1 + int(torch.randint(k, (1,), generator=g))
            suppressed = tuple(sorted(torch.randperm(k, generator=g)[:n].tolist()))
        else:
            suppressed = tuple(range(k))
        sigma = float(TRAIN_SIGMAS[int(torch.randint(1000, (1,), generator=g))])
        rows.append(EditRow(sample, suppressed, sigma, seed * 1_000_003 + step * 4096 + i))
    return rows


def pps_loss(model, batch: dict, batch_teacher: bool = True) -> torch.Tensor:
    """Mean over rows of the per-row mean of (student - teacher)^2 on the noisy target's latent."""
    x, eps, sigma = batch["source"], batch["noise"], batch["sigma"]
    s = sigma.view(-1, 1, 1, 1)
    noisy = (1 - s) * x + s * eps
    if batch_teacher:  # one forward of [teacher rows; student rows]; the teacher half detached
        b = x.shape[0]
        both = model(torch.cat([noisy, noisy]), torch.cat([x, x]), torch.cat([sigma, sigma]),
                     torch.cat([batch["teacher_context"], batch["context"]]),
                     torch.cat([batch["teacher_pooled"], batch["pooled"]]),
                     torch.cat([torch.zeros_like(batch["scales"]), batch["scales"]]))
        teacher, student = both[:b].detach(), both[b:]
    else:
        with torch.no_grad():
            teacher = model(noisy, x, sigma, batch["teacher_context"], batch["teacher_pooled"], None)
        student = model(noisy, x, sigma, batch["context"], batch["pooled"], batch["scales"])
    per_row = ((student.float() - teacher.float()) ** 2).flatten(1).mean(1)
    return per_row.mean()


class SliderEditMethod(Method):
    """The SliderEdit side of ``engine.loop.train`` (the interface: ``engine.loop.Method``)."""

    def prepare(self, cache: FeatureCache, device: torch.device, progress: bool) -> None:
        config, sc = self.config, self.config.slideredit
        self.cache = cache
        self.codec, _ = make_codecs(config, device, text=False)
        text_encoder = text_encoder_for(config, device)
        roots = list(config.data.edits) + list(config.data.trajectories)
        self.dataset = cache_edits(roots, cache, self.codec, text_encoder, sc.loss, sc.neutral_prompt,
                                   sc.max_lines, progress)
        text_encoder.release()
        self.codec.release()
        if not self.dataset.samples:
            raise ValueError(f"no usable samples in {roots} (skipped: {dict(self.dataset.skipped)})")
        log.info("%d samples (%d sub-instructions); skipped: %s", len(self.dataset.samples),
                 sum(len(s.lines) for s in self.dataset.samples), dict(self.dataset.skipped) or "none")

    def build_model(self) -> SliderEditModel:
        sc = self.config.slideredit
        transformer = build_transformer(self.config)
        return SliderEditModel(transformer, SliderEditAdapter(transformer, sc.variant, sc.rank, sc.alpha, sc.targets,
                                                              sc.init), sc.guidance)

    def rows(self, seed: int, step: int, global_batch: int) -> list[EditRow]:
        return edit_rows_for_step(seed, step, global_batch, [len(s.lines) for s in self.dataset.samples],
                                  self.config.slideredit.loss)

    def _text(self, key: str) -> dict:
        return self.cache.get("text", key)

    def load(self, rows: list[EditRow], device: torch.device) -> dict:
        sc = self.config.slideredit
        samples = [self.dataset.samples[r.sample] for r in rows]
        source = torch.stack([self.cache.get("image", s.source)["latent"] for s in samples])
        noise = seeded_noise(source.shape[1:], [r.noise_seed for r in rows])
        full = [self._text(s.full) for s in samples]
        teacher = [self._text(s.kept[tuple(i for i in range(len(s.lines)) if i not in r.suppressed)])
                   if sc.loss == "pps" else self._text(self.dataset.neutral) for s, r in zip(samples, rows)]
        if sc.variant == "stlora":  # alpha 1 (strength 0) on the suppressed lines' tokens, 0 elsewhere
            scales = torch.stack([stlora_token_scales([tuple(f["spans"][i].tolist()) for i in r.suppressed],
                                                      [0.0] * len(r.suppressed), f["context"].shape[0])
                                  for f, r in zip(full, rows)])
        else:
            scales = torch.ones(len(rows))
        batch = {"source": source, "noise": noise, "sigma": torch.tensor([r.sigma for r in rows]),
                 "context": torch.stack([f["context"] for f in full]),
                 "pooled": torch.stack([f["pooled"] for f in full]),
                 "teacher_context": torch.stack([t["context"] for t in teacher]),
                 "teacher_pooled": torch.stack([t["pooled"] for t in teacher]), "scales": scales}
        return {k: v.to(device) for k, v in batch.items()}

    def loss(self, model, batch: dict) -> torch.Tensor:
        return pps_loss(model, batch, self.config.slideredit.batch_teacher)

    @torch.no_grad()
    def validate(self, model: SliderEditModel, prefix: Path) -> list[Path]:
        """Per sub-instruction of the first ``run.validation_pairs`` samples: a strip [source, the edit at each
        of ``run.validation_strengths`` with that line there and every other at 1] (GSTLoRA: one strip per
        sample, the whole prompt at each strength). Written as ``<prefix>/sample<j>-line<i>.png`` plus
        ``captions.txt``."""
        run = self.config.run
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        prefix.mkdir(parents=True, exist_ok=True)
        written, captions = [], []
        for j, sample in enumerate(self.dataset.samples[: max(run.validation_pairs, 1)]):
            source = self.cache.get("image", sample.source)["latent"].to(device).unsqueeze(0)
            f = self._text(sample.full)
            context, pooled = f["context"].unsqueeze(0).to(device), f["pooled"].unsqueeze(0).to(device)
            spans = [tuple(s) for s in f["spans"].tolist()]
            sliders = range(len(sample.lines)) if self.config.slideredit.variant == "stlora" else [None]
            for i in sliders:
                renders = []
                for strength in run.validation_strengths:
                    if i is None:
                        scales = torch.tensor([1.0 - strength], device=device)
                    else:
                        scales = stlora_token_scales(spans, [strength if k == i else 1.0 for k in range(len(spans))],
                                                     context.shape[1]).unsqueeze(0).to(device)
                    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(run.seed)).to(device)
                    renders.append(euler(lambda x, sigma: model(x, source, sigma, context, pooled, scales), noise,
                                         run.sample_steps))
                images = self.codec.decode(torch.cat([source] + renders))
                path = prefix / f"sample{j}-{'prompt' if i is None else f'line{i + 1}'}.png"
                grid([[to_pil(im) for im in images]]).save(path)
                written.append(path)
                what = joined_prompt(sample.lines) if i is None else sample.lines[i]
                captions.append(f"{path.name}: source, then {what!r} at strengths "
                                f"{', '.join(f'{s:g}' for s in run.validation_strengths)}")
        self.codec.release()
        (prefix / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        model.train(was_training)
        return written


LORA_PARAM = "adapter.pairs."


def weights_from_trainable(trainable: dict[str, torch.Tensor], config: dict,
                           dtype: torch.dtype = torch.float32) -> SliderEditWeights:
    """A checkpoint's ``adapter.pairs.<module>.A / .B`` tensors as SliderEditWeights (no model rebuilt)."""
    pairs: dict[str, dict] = {}
    for name, value in trainable.items():
        if name.startswith(LORA_PARAM):
            key, half = name[len(LORA_PARAM):].rsplit(".", 1)
            pairs.setdefault(key, {})[half] = value.to(dtype)
    if not pairs:
        raise ValueError("the checkpoint holds no SliderEdit adapter tensors (adapter.pairs.*)")
    modules = {key.replace("/", "."): (p["A"], p["B"]) for key, p in pairs.items()}  # the inverse of _key
    sc, model = config["slideredit"], config["model"]
    context_in_dim = None
    if model.get("scratch") is not None:
        context_in_dim = int(model["scratch"].get("joint_attention_dim", 4096))
    alpha = None if sc.get("alpha") is None else float(sc["alpha"])
    return SliderEditWeights(sc["variant"], modules, alpha, model.get("pretrained") or "scratch", context_in_dim)


def export_run(path: Path, trainable: dict[str, torch.Tensor], config: dict, out_file, official_dir,
               dtype: torch.dtype, transformer_dir) -> SliderEditWeights:
    """Our single file (``core.slideredit.save_slideredit``) and, with ``official_dir``, the authors' layout
    (``save_authors_layout``: ``selective_lora.safetensors`` for an STLoRA, ``pytorch_lora_weights.safetensors``
    for a GSTLoRA)."""
    refuse_transformer_out(config, transformer_dir)
    weights = weights_from_trainable(trainable, config, dtype)
    if out_file:
        save_slideredit(weights, out_file)
    if official_dir:
        save_authors_layout(weights, official_dir)
    return weights


def check_config(config) -> None:
    if config.model.train_transformer:
        raise ConfigError("model.train_transformer: a SliderEdit run keeps its base frozen (the base on the full "
                          "prompt is its teacher); set it to false")


register_method("slideredit", SliderEditMethod, export_run, require_samples, check_config)
