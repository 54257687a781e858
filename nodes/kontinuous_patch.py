"""Runtime patch: Kontinuous offsets on the text-stream MLP modulation of every double block.

Two pieces, both installed on a ModelPatcher clone (the input model is never touched):

* an APPLY_MODEL wrapper, which sees the batch layout of each model call
  (``cond_or_uncond``), picks each row's offset out of the precomputed table and puts the
  result in a slot for the duration of that call. It runs outside ``diffusion_model``, so
  under torch.compile (TorchCompileModel compiles ``diffusion_model``) these Python decisions
  are never traced: the compiled graph only reads the slot's tensor, which dynamo guards
  normally (TorchCompileModel drops every guard on ``transformer_options``);
* an object patch on ``double_blocks.i.txt_mod.forward`` for every block, which runs the
  block's own ``Modulation.forward`` (the class method, never a previously patched forward,
  so offsets cannot stack across queue items) and adds the slot's offsets to mod2's shift and
  scale. Outside a wrapped call the slot is empty and the forward is unchanged.

Stacking several Apply nodes sums their offsets (one runtime holding several sources).
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.ldm.flux.layers
import comfy.ldm.flux.model
import comfy.patcher_extension
import torch

from ..core.offsets import offsets_for_rows
from ..core.projector import split_offsets

ATTACHMENT_KEY = "kontext_sliders.kontinuous"
WRAPPER_KEY = "kontext_sliders.kontinuous"


@dataclass(frozen=True)
class OffsetSource:
    table: torch.Tensor  # [N strengths, 2H] fp32 on the CPU
    negative: str  # core.offsets.NEGATIVE_MODES


class _OffsetSlot:
    """Per-call offsets shared by the wrapper and the block patches of one clone."""

    def __init__(self):
        self.rows: torch.Tensor | None = None  # [B, 2H] fp32 for the call in flight
        self._cast: dict = {}

    def get(self, dtype: torch.dtype, device: torch.device):
        """(delta scale, delta shift) as [B, 1, H] in the modulation's dtype; cast once per call."""
        key = (dtype, device)
        if key not in self._cast:
            rows = self.rows.to(device=device, dtype=dtype).unsqueeze(1)
            self._cast[key] = split_offsets(rows)
        return self._cast[key]

    def set(self, rows: torch.Tensor | None):
        self.rows = rows
        self._cast = {}


def txt_modulation_offset(module: torch.nn.Module, slot: _OffsetSlot):
    """Replacement for ``double_blocks.i.txt_mod.forward``.

    A plain function (a closure), not a callable object: torch.compile guards a patched ``forward``
    that is a function on its code object only, but any other callable on its identity, so with
    ComfyUI's TorchCompileModel every Apply (every new strength) would recompile the whole model, and
    after ``torch._dynamo.config.recompile_limit`` (8) of them Flux.forward silently runs uncompiled.
    """

    def txt_mod_forward(vec):
        # the class's forward, never the instance attribute: that may be another clone's patch
        mod1, mod2 = type(module).forward(module, vec)
        if slot.rows is None:
            return mod1, mod2
        dscale, dshift = slot.get(mod2.shift.dtype, mod2.shift.device)
        return mod1, comfy.ldm.flux.layers.ModulationOut(shift=mod2.shift + dshift, scale=mod2.scale + dscale,
                                                         gate=mod2.gate)

    return txt_mod_forward


class KontinuousRuntime:
    def __init__(self, sources: tuple[OffsetSource, ...]):
        self.sources = sources
        self.slot = _OffsetSlot()
        self._tables: dict = {}  # device -> tables on that device: one upload, not one per step

    def rows_for_call(self, batch_size: int, transformer_options: dict, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = [s.table.to(device) for s in self.sources]
        cond_or_uncond = transformer_options.get("cond_or_uncond")
        total = None
        for source, table in zip(self.sources, self._tables[device]):
            rows = offsets_for_rows(table, batch_size, cond_or_uncond, source.negative)
            total = rows if total is None else total + rows
        return total

    def wrapper(self, executor, x, *args, **kwargs):
        # BaseModel._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
        transformer_options = args[4] if len(args) > 4 else kwargs.get("transformer_options", {})
        previous = self.slot.rows
        self.slot.set(self.rows_for_call(x.shape[0], transformer_options, x.device))
        try:
            return executor(x, *args, **kwargs)
        finally:
            self.slot.set(previous)


def flux_double_blocks(patcher) -> list:
    """The double-stream blocks of a Flux model, or a clear error for anything else."""
    diffusion_model = patcher.get_model_object("diffusion_model")
    if not isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        raise TypeError(f"Kontinuous Kontext needs a FLUX.1 (Kontext) model; this MODEL is "
                        f"{type(diffusion_model).__module__}.{type(diffusion_model).__name__}")
    blocks = list(diffusion_model.double_blocks)
    if not blocks or not all(getattr(b, "modulation", False) for b in blocks):
        raise TypeError("this Flux variant has no per-block text modulation (global modulation, e.g. FLUX.2 / "
                        "Chroma); Kontinuous Kontext offsets need FLUX.1's per-block txt_mod")
    return blocks


def flux_hidden_size(patcher) -> int:
    return patcher.get_model_object("diffusion_model").hidden_size


def apply_kontinuous_offsets(patcher, source: OffsetSource):
    """A clone of ``patcher`` with ``source``'s offsets added (on top of earlier Kontinuous patches)."""
    blocks = flux_double_blocks(patcher)
    hidden = flux_hidden_size(patcher)
    if source.table.shape[-1] != 2 * hidden:
        raise ValueError(f"offsets of width {source.table.shape[-1]} need a model of hidden size "
                         f"{source.table.shape[-1] // 2}, this model has {hidden}")
    model = patcher.clone()
    previous = model.get_attachment(ATTACHMENT_KEY)
    runtime = KontinuousRuntime((previous.sources if previous else ()) + (source,))
    model.set_attachments(ATTACHMENT_KEY, runtime)
    for i, block in enumerate(blocks):
        model.add_object_patch(f"diffusion_model.double_blocks.{i}.txt_mod.forward",
                               txt_modulation_offset(block.txt_mod, runtime.slot))
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, runtime.wrapper)
    return model
