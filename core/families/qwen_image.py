"""Qwen-Image / Qwen-Image-Edit (2509, 2511): the family's layout facts (pure torch; no host imports).

60 dual-stream blocks, each with its own text modulation (``transformer_blocks.N.txt_mod``: SiLU + Linear to
6 x width, read as (shift, scale, gate) of the attention half, then of the MLP half): the closest to FLUX.1
Kontext. No single-stream blocks, no pooled vector; the text goes through ``txt_norm`` and ``txt_in``;
references are appended after the image tokens; 2511 checkpoints run references at timestep 0 (ComfyUI's
``__index_timestep_zero__`` marker, diffusers' ``zero_cond_t``). ComfyUI's state-dict keys are diffusers' own.
"""
from __future__ import annotations

from dataclasses import dataclass

NAME = "qwen_image"
DISPLAY = "Qwen-Image-Edit"
HIDDEN_SIZE = 3072  # 24 heads x 128
BLOCKS = 60
CONTEXT_IN_DIM = 3584  # Qwen2.5-VL 7B hidden size
LATENT_CHANNELS = 16  # Wan 2.1 VAE; 2 x 2 patches -> 64 model channels


@dataclass(frozen=True)
class TinyQwenImage:
    """A Qwen-Image transformer small enough for CPU tests; both sides build it from these numbers. The head
    width is the sum of the RoPE axes (real: 16 + 56 + 56 = 128), each axis even."""
    hidden: int = 64
    heads: int = 2
    depth: int = 3
    context_dim: int = 32
    axes: tuple[int, int, int] = (4, 14, 14)
    zero_cond_t: bool = False  # True: a 2511 checkpoint (references at timestep 0)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINY = TinyQwenImage()
