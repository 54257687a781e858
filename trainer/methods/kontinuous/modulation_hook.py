"""Kontinuous offsets on a diffusers ``FluxTransformer2DModel``: the trainer-side twin of
``nodes/runtime/patches.py`` (``modulation_patch``).

A forward hook on every double block's ``norm1_context`` (AdaLayerNormZero, which returns
``(x, gate_msa, shift_mlp, scale_mlp, gate_mlp)``) adds delta shift / delta scale to the MLP
modulation of the text stream, exactly where the official transformer adds them. Hooks survive
gradient checkpointing: a checkpointed block re-runs its modules, hooks included, with the
offsets still set on the hook object (clear them only after backward).
"""
from __future__ import annotations

import torch

from ....core.kontinuous.projector import split_offsets


class ModulationOffsetHooks:
    """Install with ``ModulationOffsetHooks(transformer)``; set ``offsets`` [B, 2H] before each forward."""

    def __init__(self, transformer: torch.nn.Module):
        blocks = getattr(transformer, "transformer_blocks", None)
        if not blocks or not all(hasattr(b, "norm1_context") for b in blocks):
            raise TypeError(f"{type(transformer).__name__} has no Flux double-stream blocks with norm1_context")
        self.offsets: torch.Tensor | None = None
        self._handles = [b.norm1_context.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module, inputs, output):
        if self.offsets is None:
            return output
        x, gate_msa, shift_mlp, scale_mlp, gate_mlp = output
        # [1 or B, 2H] (the official pipeline's [B, 1, 2H] too); one row broadcasts over the batch
        rows = self.offsets.reshape(-1, self.offsets.shape[-1]).to(shift_mlp.dtype)
        dscale, dshift = split_offsets(rows)
        return x, gate_msa, shift_mlp + dshift, scale_mlp + dscale, gate_mlp

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
