"""Validation renders: a strength sweep for fixed (source, instruction) pairs as a grid PNG and a GIF."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .features import to_pil
from .sampling import sample_edit


def sweep(model, source: torch.Tensor, instruction: str, strengths: list[float], steps: int, seed: int,
          context=None, pooled=None) -> torch.Tensor:
    """Latents [N, C, H, W] of one source edited at each strength, the same noise for every strength."""
    text = {"instructions": [instruction]} if context is None else {"context": context, "pooled": pooled}
    out = [sample_edit(model, source.unsqueeze(0), torch.tensor([s], device=source.device), steps,
                       torch.Generator().manual_seed(seed), **text) for s in strengths]
    return torch.cat(out)


def grid(rows: list[list[Image.Image]]) -> Image.Image:
    w, h = rows[0][0].size
    canvas = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            canvas.paste(im, (c * w, r * h))
    return canvas


def save_gif(frames: list[Image.Image], path: Path, ms: int = 200) -> None:
    """Forward then back (a ping-pong loop reads as a slider being dragged)."""
    seq = frames + frames[-2:0:-1]
    seq[0].save(path, save_all=True, append_images=seq[1:], duration=ms, loop=0)


@torch.no_grad()
def render_validation(model, dataset, cache, codec, config, prefix: Path) -> tuple[Path, Path]:
    run = config.run
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for traj in dataset.trajectories[: max(run.validation_pairs, 1)]:
        source = cache.get("image", traj.source)["latent"].to(device)
        text = {}
        if model.text_encoder is None:
            t = cache.get("text", dataset.text_keys[traj.instruction])
            text = {"context": t["context"].unsqueeze(0).to(device), "pooled": t["pooled"].unsqueeze(0).to(device)}
        latents = sweep(model, source, traj.instruction, list(run.validation_strengths), run.sample_steps,
                        run.seed, **text)
        images = codec.decode(latents)
        rows.append([to_pil(codec.decode(source.unsqueeze(0))[0])] + [to_pil(im) for im in images])
    codec.release()
    model.train(was_training)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    png, gif = prefix.with_suffix(".png"), prefix.with_suffix(".gif")
    grid(rows).save(png)
    save_gif([grid([[row[c]] for row in rows]) for c in range(1, len(rows[0]))], gif)
    return png, gif
