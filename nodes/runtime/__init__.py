"""The pack's one runtime patch on a ModelPatcher clone; every knob node adds to it.

* knobs.py: the knob records a runtime carries (one per slider node) and the per-latent sweep protocol;
* wrapper.py: ``PackRuntime``, the record and its APPLY_MODEL wrapper (the per-call decisions);
* jobs.py: a call split into chunks of rows with their own text, run as few forwards as possible;
* adapter_rows.py: the factors of the LoRAs run in the forward, per row or text token of a call;
* slot.py: ``CallSlot``, what the object patches read during a wrapped call;
* patches.py: the object patches, written against the model family's sites (nodes/families/);
* attention.py: NumeriKontrol's attention mask override;
* install.py: ``patched_clone`` / ``installed_runtime``: the runtime (re)installed on a clone;
* sweep.py: which knob a sweep varies, and the clone with one value per latent.
"""
from __future__ import annotations

from .attention import numeric_mask_override
from .install import ATTACHMENT_KEY, PATCH_MODULES, WRAPPER_KEY, installed_runtime, patched_clone
from .knobs import (CONDITIONING_STRENGTH_KEY, ConditioningKnob, ConditioningStrengthRecord, InstructionKnob,
                    KontinuousKnob, ModulationKnob, NumericKnob, PromptEntry, SliderEditKnob, VelocityKnob,
                    items_for_chunk)
from .patches import lora_linear_patch, memory_with_extra_rows, modulation_patch, text_stream_patch
from .slot import CallSlot
from .sweep import KNOB_CHOICES, SLIDER_NODES, sweep_model, sweep_target, swept_clone
from .jobs import take_rows
from .wrapper import PackRuntime

__all__ = ["ATTACHMENT_KEY", "CONDITIONING_STRENGTH_KEY", "CallSlot", "ConditioningKnob", "ConditioningStrengthRecord", "InstructionKnob", "KNOB_CHOICES", "KontinuousKnob", "ModulationKnob",
           "NumericKnob", "PATCH_MODULES", "PackRuntime", "PromptEntry", "SLIDER_NODES", "SliderEditKnob",
           "WRAPPER_KEY", "installed_runtime", "items_for_chunk", "lora_linear_patch", "memory_with_extra_rows",
           "modulation_patch", "numeric_mask_override", "patched_clone", "sweep_model", "sweep_target", "swept_clone", "take_rows",
           "text_stream_patch", "VelocityKnob"]
