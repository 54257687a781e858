"""What the demos' reports share: tiles of tiny images, matplotlib figures saved to files, the loss plot."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .features import to_pil

TILE = 128  # images are tiny (16 px): shown enlarged, nearest neighbour, so the pixels stay honest


def _pil(image: torch.Tensor, size: int = TILE) -> Image.Image:
    """[3, H, W] in [0, 1] -> PIL, enlarged."""
    return to_pil(image * 2 - 1).resize((size, size), Image.NEAREST)


def _figure(rows: int, cols: int, size: tuple[float, float]):
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout(rect=(0, 0, 1, 0.98) if fig._suptitle is not None else None)  # keep the title clear
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_loss(losses: list[float], path: Path) -> None:
    plt, fig, axes = _figure(1, 1, (6, 3))
    ax = axes[0][0]
    ax.plot(range(1, len(losses) + 1), losses, lw=0.5, alpha=0.4, label="step")
    window = max(len(losses) // 50, 1)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    ax.plot(range(1, len(losses) + 1), smooth, lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("flow-matching loss"), ax.legend()
    _save(plt, fig, path)
