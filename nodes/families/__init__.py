"""The model-family seam of the ComfyUI side: what the runtime and the nodes need to know about a MODEL.

The runtime (nodes/runtime/) and the method nodes never name a transformer's classes or attribute paths;
they ask ``family_of(model)`` for a ``HostFamily`` adapter and work with what it yields:

* text-modulation sites (``ModulationSite``): a module whose ``forward`` makes the text stream's modulation,
  the object-patch path of that forward, the double-stream blocks its output serves, and the family's
  functions to scale (modulation knob) and offset (Kontinuous) that output;
* text-stream block sites (``TextStreamSite``): a block whose ``forward`` sees the text tokens, its
  object-patch path, and the family's functions to read and replace the text tokens in its arguments
  (the per-instruction sliders move them toward the pad token's state);
* per-model facts: hidden size, double-stream block count, text-encoder width, the pooled-vector kwarg
  of the model call (or None), the sizes a trained adapter must fit, and where an adapter's Linear sits.

Site functions are plain module-level functions of the family module (no state): the runtime's patch
closures call them, and torch.compile inlines them without guarding on a per-clone object.

A family module (``adapt(patcher, diffusion_model)`` -> adapter, None, or ``UnsupportedVariant``) is listed
in ``FAMILIES`` below; ``family_of`` asks each in turn.
"""
from __future__ import annotations

from . import any_model, flux1, flux2, flux2_text, qwen_image, qwen_text
from .base import HostFamily, ModulationSite, TextStreamSite, UnsupportedVariant

__all__ = ["FAMILIES", "HostFamily", "display_of", "flux2_text", "qwen_text", "ModulationSite", "TextStreamSite", "UnsupportedVariant", "family_of", "family_or_any",
           "trained_family"]

FAMILIES = (flux1, flux2, qwen_image)


def display_of(name: str) -> str:
    """A family's display name from its NAME (what a conditioning's metadata records)."""
    return next((f.DISPLAY for f in FAMILIES if f.NAME == name), name)


def family_of(patcher) -> HostFamily:
    """The family adapter of a MODEL (a ModelPatcher), or a TypeError naming the model and the supported families."""
    diffusion_model = patcher.get_model_object("diffusion_model")
    refused = None
    for family in FAMILIES:
        try:
            adapter = family.adapt(patcher, diffusion_model)
        except UnsupportedVariant as e:  # another family may still claim it
            refused = refused or e
            continue
        if adapter is not None:
            return adapter
    if refused is not None:
        raise refused
    raise TypeError(f"this node needs a {' or '.join(f.DISPLAY for f in FAMILIES)} model; this MODEL is "
                    f"{type(diffusion_model).__module__}.{type(diffusion_model).__name__}")


def family_or_any(patcher):
    """``family_of(patcher)``, or for a model of no family this pack knows, the ``any_model`` adapter: what
    the runtime installs every knob with (a knob that needs a family asked ``family_of`` first)."""
    try:
        return family_of(patcher)
    except TypeError:
        return any_model.AnyModel(patcher, patcher.get_model_object("diffusion_model"))


def trained_family(patcher, node: str, trained_on=flux1) -> HostFamily:
    """``family_of(patcher)`` for a node whose weights were trained on one family (``trained_on``'s module);
    another family's model is refused naming both, and what works on it instead."""
    adapter = family_of(patcher)
    if adapter.name != trained_on.NAME:
        raise TypeError(f"{node} applies weights trained on {trained_on.DISPLAY}, but this MODEL is {adapter.display}. "
                        f"Load a {trained_on.DISPLAY} model for it; on {adapter.display} the training-free knobs work "
                        f"(Kontext Modulation Strength, Instruction Sliders, Instruction Guidance, Sweep Sampler)")
    return adapter
