"""Training-free instruction sliders on a diffusers transformer: the trainer-side twin of
the nodes' ``KontextInstructionSliders`` (used by the demo to compare it with the trained sliders).

Before every double-stream and single-stream block, the text tokens of each sub-instruction move toward
the pad token's hidden state, ``h <- pad + s (h - pad)`` (``core.knobs.toward_pad.lerp_toward_pad``; exact
at s = 1). Which blocks see the text and where it is in their arguments is the family's
(``text_stream_blocks``, ``block_with_text`` of ``families.family_of(transformer)``: FLUX.1, FLUX.2,
Qwen-Image-Edit); ComfyUI's patch moves it at the same places.
"""
from __future__ import annotations

import torch

from ....core.instructions import InstructionSpans
from ....core.knobs.toward_pad import lerp_toward_pad, toward_pad_plan
from ...families import family_of


class TowardPadHooks:
    """Install with ``TowardPadHooks(transformer)``; ``set(spans, rows)`` before a forward, ``clear()`` after."""

    def __init__(self, transformer: torch.nn.Module):
        fam = family_of(transformer)
        blocks, self._with_text = fam.text_stream_blocks(transformer), fam.block_with_text
        self.plan: tuple[torch.Tensor, torch.Tensor] | None = None  # (index [B, L] long, weight [B, L, 1])
        self._handles = [b.register_forward_pre_hook(self._pre, with_kwargs=True) for b in blocks]

    def set(self, spans: InstructionSpans, rows: list[tuple[float, ...]]) -> None:
        """One strength per sub-instruction for each batch row."""
        plans = [toward_pad_plan(spans, row) for row in rows]
        self.plan = torch.stack([p[0] for p in plans]), torch.stack([p[1] for p in plans]).unsqueeze(-1)

    def clear(self) -> None:
        self.plan = None

    def _pre(self, module, args, kwargs):
        if self.plan is None:
            return None
        index, weight = self.plan

        def moved(txt):
            return lerp_toward_pad(txt, index.to(txt.device), weight.to(txt.device))
        return self._with_text(args, kwargs, moved, index.shape[1])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
