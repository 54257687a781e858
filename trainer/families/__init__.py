"""Model families on the trainer side: one module per family (``flux1``: FLUX.1 Kontext, ``flux2``: FLUX.2,
``qwen_image``: Qwen-Image-Edit; diffusers).

A method builds and calls its transformer through its family's module, so that a new family (another
diffusers transformer) is a new module here, not an edit of every method. ``family(name)`` is the module of
``model.family``; ``family_of(transformer)`` the module of a built transformer (by its diffusers class).

What a family module offers the editor (``method: editor``) and the knobs' hooks, the same names in each:
``TRANSFORMER_CLASS``, ``build_transformer``, ``transformer_config``, ``load_transformer``, ``DEMO_TRANSFORMER``
(a tiny scratch config for the pixel-space demos: 2 x 2-packed RGB), ``editor_velocity`` (one edit call on
[B, C, H, W] latents with the source as reference), ``text_modulation_points``, ``text_stream_blocks`` and
``block_with_text``.
"""
from __future__ import annotations

import importlib

FAMILIES = ("flux1", "flux2", "qwen_image")


def family(name: str):
    """The trainer module of family ``name`` (a ValueError naming the families otherwise)."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is not one the trainer knows; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def family_of(transformer):
    """The family module whose diffusers class ``transformer`` is (a TypeError naming the families otherwise)."""
    cls = type(transformer).__name__
    for name in FAMILIES:
        module = family(name)
        if module.TRANSFORMER_CLASS == cls:
            return module
    raise TypeError(f"{cls} is not the transformer of a known model family ({', '.join(FAMILIES)})")


def family_problem(name: str, method: str, trains: tuple[str, ...], data) -> str | None:
    """What is wrong with ``model.family: name`` for ``method`` (which trains the families ``trains``) and its
    ``data`` section, or None: off FLUX.1, pixels and the offline text encoders only (the VAE and the ``flux``
    text encoder here are FLUX.1's)."""
    if name not in FAMILIES:
        return f"model.family must be one of {', '.join(FAMILIES)}, got {name!r}"
    if name not in trains:
        return f"model.family {name}: method {method} trains {', '.join(trains)} only"
    if name != "flux1" and (not data.pixel_space or data.text_encoder == "flux"):
        return (f"model.family {name} trains in pixel space with an offline text encoder (data.pixel_space: true, "
                f"data.text_encoder: learned or lines): the VAE and text encoders here are FLUX.1's")
    return None
