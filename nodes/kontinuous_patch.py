"""Kontinuous Kontext offsets on the text-stream MLP modulation of every double block.

The offsets ride the pack runtime (nodes/runtime.py): the APPLY_MODEL wrapper picks each row's offset
from the precomputed table (``cond_or_uncond`` decides positive/negative rows), the
``txt_mod.forward`` patch adds it to mod2's shift and scale. Stacked Apply nodes sum.
"""
from __future__ import annotations

from .knobs import KontinuousKnob
from .runtime import flux_double_blocks, flux_hidden_size, installed_runtime, patched_clone

__all__ = ["KontinuousKnob", "apply_kontinuous_offsets", "flux_double_blocks", "flux_hidden_size"]


def apply_kontinuous_offsets(patcher, source: KontinuousKnob):
    """A clone of ``patcher`` with ``source``'s offsets added (on top of earlier Kontinuous patches)."""
    flux_double_blocks(patcher)
    hidden = flux_hidden_size(patcher)
    if source.table.shape[-1] != 2 * hidden:
        raise ValueError(f"offsets of width {source.table.shape[-1]} need a model of hidden size "
                         f"{source.table.shape[-1] // 2}, this model has {hidden}")
    return patched_clone(patcher, knobs=installed_runtime(patcher).knobs + (source,))
