"""Caches the host keeps across model calls, and what the runtime does about them.

ComfyUI 0.33's ``FluxKVCache`` (an ``attn1_patch`` object with a ``cache`` dict and ``cleanup()``) stores each
block's reference-token K/V on the first call of a sampling run and reuses it for every later call, keyed on
the block alone: not on the sigma, the rows, the prompt or any patch. The reference tokens attend to the text
tokens, so every knob of the pack changes what is cached, and the runtime's regrouped forwards (leave-one-out
rows, toward-pad jobs, numeric tokens) would read K/V made for other rows. So while a knob acts, each forward
starts from an empty cache: the same result as without the cache node, whichever side of the knob nodes it
sits on. Neutral knobs install nothing, and the cache then works as the host made it.
"""
from __future__ import annotations


def reference_caches(transformer_options: dict) -> tuple:
    """The cross-call attention caches among the call's patches (duck-typed: ``cache`` dict and ``cleanup``)."""
    patches = (transformer_options or {}).get("patches", {}) or {}
    return tuple(p for p in patches.get("attn1_patch", ())
                 if isinstance(getattr(p, "cache", None), dict) and callable(getattr(p, "cleanup", None)))


def emptied(caches: tuple) -> None:
    for cache in caches:
        cache.cleanup()
