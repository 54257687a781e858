"""Image files <-> tensors: RGB in [-1, 1], [3, H, W], square-resized as the trainers read them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_rgb(path: Path, resolution: int) -> torch.Tensor:
    """[3, R, R] in [-1, 1]; resized to exactly R x R (bicubic), as the official dataset loader does."""
    with Image.open(path) as im:
        im = im.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        array = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> PIL."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
