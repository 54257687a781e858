"""Kontinuous offsets on a diffusers transformer: the trainer-side twin of ``nodes/runtime/patches.py``
(``modulation_patch``).

A forward hook on every double block's text-stream modulation (the family's ``text_modulation_modules``;
FLUX.1: ``norm1_context``) adds delta shift / delta scale to the MLP modulation of the text stream,
exactly where the official transformer adds them. Hooks survive
gradient checkpointing: a checkpointed block re-runs its modules, hooks included, with the
offsets still set on the hook object (clear them only after backward).
"""
from __future__ import annotations

import torch

from ....core.kontinuous.projector import split_offsets
from ...families.flux1 import offset_text_modulation, text_modulation_dtype, text_modulation_modules


class ModulationOffsetHooks:
    """Install with ``ModulationOffsetHooks(transformer)``; set ``offsets`` [B, 2H] before each forward."""

    def __init__(self, transformer: torch.nn.Module):
        modules = text_modulation_modules(transformer)
        self.offsets: torch.Tensor | None = None
        self._handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        if self.offsets is None:
            return output
        # [1 or B, 2H] (the official pipeline's [B, 1, 2H] too); one row broadcasts over the batch
        rows = self.offsets.reshape(-1, self.offsets.shape[-1]).to(text_modulation_dtype(output))
        dscale, dshift = split_offsets(rows)
        return offset_text_modulation(output, dscale, dshift)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
