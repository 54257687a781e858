"""Installing the runtime on a ModelPatcher clone (the input model is never touched).

On the clone: one APPLY_MODEL wrapper (``PackRuntime.wrapper``) and object patches reading its slot, at
the sites the model's family yields (nodes/families/): the text-modulation sites (Kontinuous offsets,
modulation multiplier), the text-stream block sites (instruction sliders) and the Linears of SliderEdit
adapters. Each patch runs the class's own forward (never another clone's patch), so nothing stacks
across queue items. Outside a wrapped call the slot is empty: plain forwards.

Stacked nodes accumulate knob records in one immutable ``PackRuntime`` (kept as a ModelPatcher
attachment), so a second node re-installs every patch against one fresh slot instead of layering a
second machinery.
"""
from __future__ import annotations

import comfy.patcher_extension

from ..families import family_or_any
from . import patches
from .patches import block_patch, lora_linear_patch, memory_with_extra_rows, modulation_patch
from .wrapper import PackRuntime

ATTACHMENT_KEY = "kontext_sliders.runtime"
WRAPPER_KEY = "kontext_sliders.runtime"
# where the object patches are made: an earlier runtime's patches are recognised by their ``__module__``
PATCH_MODULES = frozenset({patches.__name__})


def installed_runtime(patcher) -> PackRuntime:
    return patcher.get_attachment(ATTACHMENT_KEY) or PackRuntime()


def patched_clone(patcher, **changes):
    """A clone of ``patcher`` whose runtime is the installed one with ``changes``; every patch re-installed.

    Neutral knobs are recorded (a sweep can still find them) but install nothing: a model whose knobs
    are all neutral computes exactly what the input model computes.
    """
    family = family_or_any(patcher)
    model = patcher.clone()
    runtime = installed_runtime(patcher).with_(pooled_key=family.pooled_key, text_length=family.model_text_length,
                                               **changes)
    model.set_attachments(ATTACHMENT_KEY, runtime)
    for key in [k for k, v in model.object_patches.items() if getattr(v, "__module__", None) in PATCH_MODULES]:
        del model.object_patches[key]  # the clone's dict: an earlier runtime's patches go (others' stay)
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    if not (runtime.offset_sources or runtime.multipliers or runtime.plans_jobs or runtime.slideredit):
        return model
    # per block path, the sites whose patch changes that block's arguments: one patch for both knobs
    block_sites: dict[str, list] = {}
    if runtime.offset_sources or runtime.multipliers:
        for site in family.modulation_sites():
            if site.read is None:
                model.add_object_patch(site.path, modulation_patch(site, runtime.slot))
            else:
                block_sites.setdefault(site.path, [site.module, None, None])[2] = site
    if runtime.sliders:
        for site in family.text_stream_sites():
            block_sites.setdefault(site.path, [site.module, None, None])[1] = site
    for path, (block, text_site, modulation_site) in block_sites.items():
        model.add_object_patch(path, block_patch(block, runtime.slot, text_site, modulation_site))
    adapters: dict[str, list] = {}  # keyed by the knob's place (PackRuntime.key), as the call's factors are
    for knob in runtime.slideredit:
        for lora in knob.loras:
            adapters.setdefault(lora.module, []).append((runtime.key(knob), lora))
    for knob in runtime.forward_loras:
        for lora in knob.forward_lora:
            adapters.setdefault(lora.module, []).append((runtime.key(knob), lora))
    for path, entries in adapters.items():
        patch_path, module = family.linear_site(path)
        model.add_object_patch(patch_path, lora_linear_patch(module, tuple(entries), runtime.slot))
    extra_rows = sum(knob.extra_rows() for knob in runtime.guidance) + len(runtime.velocity)
    if extra_rows:
        model.add_object_patch("memory_required", memory_with_extra_rows(patcher.model, 1 + extra_rows))
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, runtime.wrapper)
    return model
