"""The object patches the runtime installs on a clone; every one reads the clone's ``CallSlot``.

Written against the family interface (nodes/families/): a patch gets a site (the module, and the
family's functions for its output or its arguments), never a model's class or attribute path.

Properties every patch keeps (tests/test_torch_compile.py and test_comfy_knob_composition.py guard them):

* a plain function, not a callable object: torch.compile guards a patched ``forward`` that is a function
  on its code object, any other callable on its identity (a recompile per new strength);
* it runs ``type(module).forward(module, ...)``, never the instance attribute: that may be another
  clone's patch, and patches must not stack across queue items;
* settings come from the slot as tensors, never as Python floats: dynamo lifts tensors as graph inputs
  but bakes floats in as constants (a recompile for every new multiplier).

``patched_clone`` (nodes/runtime/install.py) recognises an earlier runtime's patches by their
``__module__`` being this module: every patch closure lives here.
"""
from __future__ import annotations

import torch

from ...core.knobs.toward_pad import lerp_toward_pad
from ...core.fused_lora import add_lora_delta
from ..families import ModulationSite, TextStreamSite
from .slot import CallSlot


def _modulated(out, index: int, site: ModulationSite, slot: CallSlot):
    """A text modulation with the slot's multipliers (block ``index``) and Kontinuous offsets applied."""
    if slot.multipliers is not None:
        ref = site.reference(out)
        attention, mlp = slot.block_multipliers(index, ref.dtype, ref.device)
        out = site.rescale(out, attention, mlp)
    if slot.offsets is None or site.offset is None:
        return out
    ref = site.reference(out)
    dscale, dshift = slot.offset_terms(ref.dtype, ref.device)
    return site.offset(out, dscale, dshift)


def modulation_patch(site: ModulationSite, slot: CallSlot):
    """Replacement for a text-modulation module's ``forward``: per-row multipliers on shift/scale, then offsets."""
    module, index = site.module, site.blocks[0]

    def modulation_forward(vec):
        # the class's forward, never the instance attribute: that may be another clone's patch
        out = type(module).forward(module, vec)
        if slot.multipliers is None and slot.offsets is None:
            return out
        return _modulated(out, index, site, slot)

    return modulation_forward


def block_patch(block: torch.nn.Module, slot: CallSlot, text_site: TextStreamSite | None = None,
                modulation_site: ModulationSite | None = None):
    """Replacement for a block's ``forward`` that changes its arguments first: the modulation it receives
    (a modulation site of the argument kind: FLUX.2) and / or its text tokens moved toward the pad state
    (a text-stream site). One patch per block path, so both knobs compose on one block."""
    index = modulation_site.blocks[0] if modulation_site is not None else -1

    def text_block_forward(*args, **kwargs):
        if modulation_site is not None and (slot.multipliers is not None or slot.offsets is not None):
            mods = _modulated(modulation_site.read(args, kwargs), index, modulation_site, slot)
            args, kwargs = modulation_site.write(args, kwargs, mods)
        if text_site is not None and slot.pad_index is not None:
            n_txt = slot.pad_index.shape[1]
            txt = text_site.text(args, kwargs, n_txt)
            args, kwargs = text_site.with_text(args, kwargs, lerp_toward_pad(txt, *slot.pad_plan(txt.dtype, txt.device)),
                                               n_txt)
        return type(block).forward(block, *args, **kwargs)

    return text_block_forward


def text_stream_patch(site: TextStreamSite, slot: CallSlot):
    """Replacement for a text-stream block's ``forward``: its text tokens move toward the pad state first."""
    return block_patch(site.module, slot, text_site=site)


def lora_linear_patch(module: torch.nn.Module, adapters: tuple, slot: CallSlot):
    """Replacement for a Linear's ``forward``: the Linear as ComfyUI runs it (its own dtype casting,
    offloading, fp8 / GGUF weights, weight patches), plus each SliderEdit update scaled per token or per
    row. A token whose factor is 0 gets exactly the base output."""

    def lora_forward(x, *args, **kwargs):
        out = type(module).forward(module, x, *args, **kwargs)
        if slot.lora_scales is None:
            return out
        for key, lora in adapters:
            scale = slot.lora_scale(key, x.dtype, x.device)
            if scale is None:
                continue
            if scale.shape[1] not in (1, x.shape[1]):
                raise RuntimeError(f"SliderEdit: {lora.module} received {x.shape[1]} text tokens but the slider "
                                   f"scales cover {scale.shape[1]}; another node changed the text sequence length")
            a, b = lora.on(x.device, x.dtype)
            out = add_lora_delta(out, x, a, b, lora.rows, scale)
        return out

    return lora_forward


def memory_with_extra_rows(base_model, factor: int):
    """``BaseModel.memory_required`` for a batch ``factor`` times larger: per-instruction guidance adds
    leave-one-out rows inside the call, and ComfyUI sizes its cond batches (and model loading) by this."""

    def memory_required(input_shape, *args, **kwargs):
        shape = (input_shape[0] * factor,) + tuple(input_shape[1:])
        return type(base_model).memory_required(base_model, shape, *args, **kwargs)

    return memory_required
