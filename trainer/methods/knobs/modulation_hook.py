"""Kontext Modulation Strength on a diffusers transformer: the twin of the nodes' modulation patch.

Every family's text modulation is, in diffusers, one [B, 6 x width] tensor: (shift, scale, gate) of the
attention half, then of the MLP half. The knob multiplies the shift and scale of the chosen halves in the
chosen blocks; the family module says where each block's tensor is (``text_modulation_points``: a module's
output, or a named argument of a block).
"""
from __future__ import annotations

import torch


def rescaled_modulation(mod: torch.Tensor, multiplier: float, attention: bool, mlp: bool) -> torch.Tensor:
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
    if attention:
        shift1, scale1 = shift1 * multiplier, scale1 * multiplier
    if mlp:
        shift2, scale2 = shift2 * multiplier, scale2 * multiplier
    return torch.cat([shift1, scale1, gate1, shift2, scale2, gate2], dim=-1)


class ModulationScaleHooks:
    """Hooks on ``points`` (a family's ``text_modulation_points(transformer)``) for blocks in ``blocks``."""

    def __init__(self, points, multiplier: float, blocks, attention: bool = False, mlp: bool = True):
        def scale(mod):
            return rescaled_modulation(mod, multiplier, attention, mlp)

        self.handles = []
        for index, module, argument in points:
            if index not in blocks:
                continue
            if argument is None:
                self.handles.append(module.register_forward_hook(lambda m, args, out: scale(out)))
            else:
                def pre(m, args, kwargs, name=argument):
                    return args, dict(kwargs, **{name: scale(kwargs[name])})
                self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
