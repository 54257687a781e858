"""The per-call slot: what the block patches of one clone read during a wrapped model call.

The APPLY_MODEL wrapper (nodes/runtime/wrapper.py) fills it before each forward and empties it after;
outside a wrapped call it is empty and every patch runs the plain forward. It hands the patches tensors,
never Python floats (see nodes/runtime/patches.py), cast once per call per dtype and device.
"""
from __future__ import annotations

import torch

from ...core.kontinuous.projector import split_offsets


class CallSlot:
    """What the block patches of one clone read during a wrapped call."""

    def __init__(self):
        self.offsets: torch.Tensor | None = None  # [B, 2H] fp32
        self.multipliers: dict | None = None  # double block -> (attention [B] | None, mlp [B] | None) fp32
        self.pad_index: torch.Tensor | None = None  # [B, L] long: the position each token moves toward
        self.pad_weight: torch.Tensor | None = None  # [B, L, 1] fp32: 1 = untouched
        # SliderEdit knob -> its LoRA factor per text token [B, L] (STLoRA) or per row [B, 1] (GSTLoRA), fp32
        self.lora_scales: dict | None = None
        self._cast: dict = {}

    def set(self, offsets=None, pad_index=None, pad_weight=None, multipliers=None, lora_scales=None):
        self.offsets, self.pad_index, self.pad_weight, self.multipliers = offsets, pad_index, pad_weight, multipliers
        self.lora_scales = lora_scales
        self._cast = {}

    def state(self):
        return self.offsets, self.pad_index, self.pad_weight, self.multipliers, self.lora_scales

    def offset_terms(self, dtype: torch.dtype, device: torch.device):
        """(delta scale, delta shift) as [B, 1, H] in the modulation's dtype; cast once per call."""
        key = ("offsets", dtype, device)
        if key not in self._cast:
            self._cast[key] = split_offsets(self.offsets.to(device=device, dtype=dtype).unsqueeze(1))
        return self._cast[key]

    def block_multipliers(self, index: int, dtype: torch.dtype, device: torch.device):
        """(attention, mlp) multipliers of double block ``index`` as [B, 1, 1] (or None), cast once per call."""
        key = ("multipliers", index, dtype, device)
        if key not in self._cast:
            pair = (self.multipliers or {}).get(index, (None, None))
            self._cast[key] = tuple(None if m is None else m.to(device=device, dtype=dtype).view(-1, 1, 1)
                                    for m in pair)
        return self._cast[key]

    def lora_scale(self, key: int, dtype: torch.dtype, device: torch.device):
        """SliderEdit knob ``key``'s factors as [B, L, 1] / [B, 1, 1], or None when it adds nothing this call."""
        cache_key = ("lora", key, dtype, device)
        if cache_key not in self._cast:
            rows = self.lora_scales.get(key)
            self._cast[cache_key] = None if rows is None else rows.to(device=device, dtype=dtype).unsqueeze(-1)
        return self._cast[cache_key]

    def pad_plan(self, dtype: torch.dtype, device: torch.device):
        key = ("pad", dtype, device)
        if key not in self._cast:
            self._cast[key] = (self.pad_index.to(device), self.pad_weight.to(device=device, dtype=dtype))
        return self._cast[key]

