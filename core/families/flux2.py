"""FLUX.2 ([dev], [klein]): the family's layout facts (pure torch; no host imports).

What sets FLUX.2 apart for the knobs: the double blocks have no modulation of their own. The model computes
the text stream's modulation once per call (``double_stream_modulation_txt``: (attention, MLP) halves of
shift, scale, gate) and hands the same pair to every double block, so a knob over a block range rescales it
where a block receives it, not in the shared module. No pooled text vector; text tokens first in the joint
sequence; 128-channel latents (patch size 1); references appended after the image tokens. [dev] has a
guidance embedding, [klein] none. diffusers' own converter maps the state dict
(``convert_flux2_transformer_checkpoint_to_diffusers``), so no key map lives here.
"""
from __future__ import annotations

from dataclasses import dataclass

NAME = "flux2"
DISPLAY = "FLUX.2"


@dataclass(frozen=True)
class Flux2Size:
    """A released FLUX.2 transformer's size (diffusers' defaults for [dev]; the [klein] configs)."""
    hidden: int
    double_blocks: int
    single_blocks: int
    context_dim: int  # three text-encoder layers stacked per token


SIZES = {
    "dev": Flux2Size(6144, 8, 48, 15360),  # Mistral-3 Small 24B, layers 10/20/30
    "klein-4b": Flux2Size(3072, 5, 20, 7680),  # Qwen3 4B, layers 9/18/27
    "klein-9b": Flux2Size(4096, 8, 24, 12288),  # Qwen3 8B
}
LATENT_CHANNELS = 128
# [dev]'s text encoder output is left-padded with zero rows to this length by ComfyUI's model (and the
# [klein] tokenizer pads to it): the text sequence a FLUX.2 block sees is never shorter
TEXT_LENGTH = 512


@dataclass(frozen=True)
class TinyFlux2:
    """A FLUX.2 small enough for CPU tests; both sides (ComfyUI through its detection, diffusers) build it from
    these numbers. Real FLUX.2 heads are 128 wide on four 32-wide RoPE axes; here 2 x 32 on four 8-wide."""
    hidden: int = 64
    heads: int = 2
    depth: int = 3
    depth_single: int = 2
    context_dim: int = 48
    axes: tuple[int, int, int, int] = (8, 8, 8, 8)
    guidance: bool = False  # True: [dev]'s guidance embedding

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINY = TinyFlux2()
