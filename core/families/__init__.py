"""Model families: one module per family holds every layout fact and key map that is specific to it.

A family module (pure torch, no host imports) provides at least ``NAME``, ``DISPLAY`` and the full-size facts
the methods check weights against; ``flux1`` (FLUX.1 / FLUX.1 Kontext) adds its state-dict key maps and where
each diffusers Linear sits in the host's fused Linears. The host side of the seam (ComfyUI detection and block
access) is ``nodes/families``; the trainer's (diffusers classes, tiny models) is ``trainer/families``.
"""
from __future__ import annotations

from . import flux1

FAMILIES = {flux1.NAME: flux1}


def family(name: str):
    """The family module registered under ``name``; a clear error naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
