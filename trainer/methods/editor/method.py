"""``method: editor``: a plain instruction editor, flow matching on (source, sub-instruction lines, target).

What SliderEdit needs under it: a Kontext editor. With real weights that is FLUX.1 Kontext itself; the
offline demos have none, so they train a tiny one from scratch on exact edits (``edits.json`` entries with a
``"target"``; the empty prompt's target is the source). Text as the SliderEdit run will see it (the same
``slideredit.max_lines`` / ``data.learned_text_tokens`` give the same per-line tokens), so the editor's
prompts are the ones the sliders are trained on. Export writes the transformer as a diffusers folder
(``<out>/transformer``, ``engine.export.export_editor``), usable as ``model.pretrained`` of a SliderEdit run.
Any ``model.family`` (FLUX.1, FLUX.2, Qwen-Image-Edit): the family module builds the transformer and makes the
edit call (``editor_velocity``, the source as reference); the knobs demo trains one of each.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ...engine.codecs import make_codecs, text_encoder_for
from ...engine.config import ConfigError, require_samples
from ...engine.export import export_editor
from ...engine.edit_cache import cache_edits
from ...engine.features import FeatureCache, to_pil
from ...engine.flow_matching import TRAIN_SIGMAS, flow_matching, seeded_noise
from ...engine.loop import Method
from ...engine.registry import register_method
from ...engine.sampling import euler
from ...engine.validation import grid
from ...families import FAMILIES, family

log = logging.getLogger("kontext_sliders.trainer")

# diffusers' peft LoRA on a pretrained base only; a scratch editor trains every weight
PEFT_LORA_RULE = "pretrained"


class KontextEditorModel(torch.nn.Module):
    """velocity = Kontext transformer(noisy target | clean source, text), through its family's edit call."""

    def __init__(self, transformer: torch.nn.Module, guidance: float = 3.5, family_name: str = "flux1"):
        super().__init__()
        self.transformer, self.guidance = transformer, guidance
        self.velocity = family(family_name).editor_velocity

    def forward(self, noisy, source, sigma, context, pooled):
        return self.velocity(self.transformer, noisy, source, sigma, context, pooled, self.guidance)


@dataclass
class EditorRow:
    sample: int
    sigma: float
    noise_seed: int


def editor_rows_for_step(seed: int, step: int, global_batch: int, samples: int) -> list[EditorRow]:
    """The global batch of step ``step``: a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = []
    for i in range(global_batch):
        sample = int(torch.randint(samples, (1,), generator=g))
        sigma = float(TRAIN_SIGMAS[int(torch.randint(1000, (1,), generator=g))])
        rows.append(EditorRow(sample, sigma, seed * 1_000_003 + step * 4096 + i))
    return rows


class EditorMethod(Method):
    """The editor side of ``engine.loop.train`` (the interface: ``engine.loop.Method``)."""

    def prepare(self, cache: FeatureCache, device: torch.device, progress: bool) -> None:
        config = self.config
        self.cache = cache
        self.codec, _ = make_codecs(config, device, text=False)
        text_encoder = text_encoder_for(config, device)
        self.dataset = cache_edits(list(config.data.edits), cache, self.codec, text_encoder, None, "",
                                   config.slideredit.max_lines, progress, targets=True)
        text_encoder.release()
        self.codec.release()
        if not self.dataset.samples:
            raise ValueError(f"no usable edits with targets in {config.data.edits} "
                             f"(skipped: {dict(self.dataset.skipped)})")
        log.info("%d edits with targets; skipped: %s", len(self.dataset.samples), dict(self.dataset.skipped) or "none")

    def build_model(self) -> KontextEditorModel:
        fam = self.config.model.family
        transformer = family(fam).build_transformer(self.config, peft_lora=PEFT_LORA_RULE)
        return KontextEditorModel(transformer, self.config.slideredit.guidance, fam)

    def rows(self, seed: int, step: int, global_batch: int) -> list[EditorRow]:
        return editor_rows_for_step(seed, step, global_batch, len(self.dataset.samples))

    def load(self, rows: list[EditorRow], device: torch.device) -> dict:
        samples = [self.dataset.samples[r.sample] for r in rows]
        image = lambda key: self.cache.get("image", key)["latent"]  # noqa: E731
        texts = [self.cache.get("text", s.full) for s in samples]
        target = torch.stack([image(s.target) for s in samples])
        batch = {"source": torch.stack([image(s.source) for s in samples]), "target": target,
                 "noise": seeded_noise(target.shape[1:], [r.noise_seed for r in rows]),
                 "sigma": torch.tensor([r.sigma for r in rows]),
                 "context": torch.stack([t["context"] for t in texts]),
                 "pooled": torch.stack([t["pooled"] for t in texts])}
        return {k: v.to(device) for k, v in batch.items()}

    def loss(self, model, batch: dict) -> torch.Tensor:
        """x_sigma = (1 - sigma) target + sigma eps; velocity target eps - target; MSE in fp32."""
        return flow_matching(batch, lambda noisy: model(noisy, batch["source"], batch["sigma"], batch["context"],
                                                        batch["pooled"]))

    @torch.no_grad()
    def validate(self, model: KontextEditorModel, prefix: Path) -> list[Path]:
        """A strip [source, edit, target] per edit of the first ``run.validation_pairs`` samples."""
        run = self.config.run
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        prefix.mkdir(parents=True, exist_ok=True)
        rows, captions = [], []
        for sample in self.dataset.samples[: max(run.validation_pairs, 1)]:
            source = self.cache.get("image", sample.source)["latent"].to(device).unsqueeze(0)
            text = self.cache.get("text", sample.full)
            noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(run.seed)).to(device)
            edit = euler(lambda x, sigma: model(x, source, sigma, text["context"].unsqueeze(0).to(device),
                                                text["pooled"].unsqueeze(0).to(device)), noise, run.sample_steps)
            target = self.cache.get("image", sample.target)["latent"].to(device).unsqueeze(0)
            rows.append([to_pil(im) for im in self.codec.decode(torch.cat([source, edit, target]))])
            captions.append(f"{sample.id}: {' / '.join(sample.lines) or '(empty prompt)'}")
        self.codec.release()
        path = prefix / "edits.png"
        grid(rows).save(path)
        (prefix / "captions.txt").write_text("rows: source, edit, target\n" + "\n".join(captions) + "\n",
                                             encoding="utf-8")
        model.train(was_training)
        return [path]


def export_run(path: Path, trainable: dict[str, torch.Tensor], config: dict, out_file, official_dir, dtype,
               transformer_dir) -> None:
    """An editor run exports to a folder: its transformer goes to ``<out_file>/transformer``."""
    if not out_file:
        raise ValueError("an editor run exports to a folder: give --out DIR (its transformer goes to DIR/transformer)")
    export_editor(trainable, config, out_file)
    return None


def check_data(config) -> None:
    if not config.data.edits:
        raise ConfigError("data.edits is empty: list folders of edits with targets (edits.json entries with "
                          "\"target\": the ground-truth image) to train the editor on")
    require_samples(config)


register_method("editor", EditorMethod, export_run, check_data, peft_lora=PEFT_LORA_RULE, families=FAMILIES)
