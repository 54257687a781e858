"""Training-free instruction sliders on a diffusers ``FluxTransformer2DModel``: the trainer-side twin of
the nodes' ``KontextInstructionSliders`` (used by the demo to compare it with the trained sliders).

Before every double-stream and single-stream block, the text tokens of each sub-instruction move toward
the pad token's hidden state, ``h <- pad + s (h - pad)`` (``core.instructions.lerp_toward_pad``; exact at
s = 1). diffusers hands both kinds of block the text sequence as ``encoder_hidden_states`` (the single
blocks join it to the image tokens inside), which is where ComfyUI's patch moves it too.
"""
from __future__ import annotations

import torch

from ....core.instructions import InstructionSpans
from ....core.knobs.toward_pad import lerp_toward_pad, toward_pad_plan


class TowardPadHooks:
    """Install with ``TowardPadHooks(transformer)``; ``set(spans, rows)`` before a forward, ``clear()`` after."""

    def __init__(self, transformer: torch.nn.Module):
        blocks = list(getattr(transformer, "transformer_blocks", [])) + list(
            getattr(transformer, "single_transformer_blocks", []))
        if not blocks:
            raise TypeError(f"{type(transformer).__name__} has no Flux transformer blocks")
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
        if "encoder_hidden_states" in kwargs:
            kwargs = dict(kwargs, encoder_hidden_states=moved(kwargs["encoder_hidden_states"]))
        else:  # gradient checkpointing passes the block's arguments positionally
            args = (args[0], moved(args[1])) + tuple(args[2:])
        return args, kwargs

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
