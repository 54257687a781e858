"""Any other model ComfyUI loads (SD1.x, SDXL, SD3, Wan, ...): the family the model-agnostic knobs need.

Kontext Edit Velocity and a Kontext Conditioning Strength sweep change only what a model call receives
(rows of the batch, the text sequence), never a block: no sites, no sizes. The model call's pooled input is
left as the sampler made it (SDXL's ``y`` mixes the pooled vector with size embeddings; only families this
pack knows say which input is a plain pooled vector), so a neutral row differs from its edit row by its text.
"""
from __future__ import annotations

from .base import UnsupportedVariant

NAME = "any"


class AnyModel:
    name = NAME
    pooled_key = None

    def __init__(self, patcher, diffusion_model):
        self.patcher, self.diffusion_model = patcher, diffusion_model
        self.display = f"{type(diffusion_model).__module__}.{type(diffusion_model).__name__}"

    @staticmethod
    def model_text_length(length: int) -> tuple[int, int]:
        return length, 0

    def _none(self, what: str):
        raise UnsupportedVariant(f"{what} needs a FLUX.1 Kontext, FLUX.2 or Qwen-Image-Edit model; this MODEL is "
                                 f"{self.display}. Kontext Edit Velocity and Kontext Conditioning Strength work on it")

    def modulation_sites(self):
        self._none("a modulation knob")

    def text_stream_sites(self):
        self._none("a per-instruction knob")

    def linear_site(self, module_path: str):
        self._none("a trained adapter")
