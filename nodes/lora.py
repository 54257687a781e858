"""Apply a diffusers-format Flux LoRA through ComfyUI's own LoRA machinery."""
from __future__ import annotations

import comfy.lora
import comfy.lora_convert
import comfy.utils
import torch


def add_diffusers_lora(patcher, lora_state: dict[str, torch.Tensor], lora_alpha: float | None,
                       strength: float, name: str) -> None:
    """Add weight patches to ``patcher`` (a clone) so that W' = W + strength * alpha/r * B @ A.

    ComfyUI maps ``transformer.<diffusers module>`` keys onto its fused Flux weights itself, but
    only honours alpha through ``<module>.alpha`` tensors; the peft alpha from the file header is
    turned into those so that alpha != rank is applied at the strength peft would use.
    """
    if strength == 0 or not lora_state:
        return  # no patches at all: strength 0 is bit-for-bit the unpatched model
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    sd = dict(lora_state)
    if lora_alpha is not None:
        for k, v in lora_state.items():
            if k.endswith(".lora_A.weight"):
                sd[k[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(float(lora_alpha))
    sd = comfy.lora_convert.convert_lora(sd)
    _check_targets(patcher, sd, key_map, name)
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    applied = patcher.add_patches(patches, strength)
    if len(applied) != len(patches):
        raise ValueError(f"{name}: ComfyUI applied {len(applied)} of {len(patches)} LoRA patches")


def _check_targets(patcher, sd, key_map, name: str) -> None:
    """Every LoRA module must exist in this model with matching shapes (else: clear error, no patch)."""
    missing, wrong = [], []
    for k, a in sd.items():
        if not k.endswith(".lora_A.weight"):
            continue
        module = k[: -len(".lora_A.weight")]
        target = key_map.get(module)
        if target is None:
            missing.append(module)
            continue
        b = sd[module + ".lora_B.weight"]
        weight_key, rows = (target[0], target[1][2]) if isinstance(target, tuple) else (target, None)
        # the parameter itself, not model.state_dict(): quantised layers (ComfyUI-GGUF) save a fake
        # state dict of raw storage shapes (a Q8_0 32x32 weight is 32x34 bytes); the parameter's
        # .shape is the logical one
        weight = comfy.utils.get_attr(patcher.model, weight_key)
        out_rows = rows if rows is not None else weight.shape[0]
        if b.shape[0] != out_rows or a.shape[1] != weight.shape[1]:
            wrong.append(f"{module}: LoRA {b.shape[0]}x{a.shape[1]} vs model {out_rows}x{weight.shape[1]}")
    if missing:
        raise ValueError(f"{name}: the LoRA targets {len(missing)} modules this model does not have "
                         f"(e.g. {missing[:3]}); it was trained for another architecture")
    if wrong:
        raise ValueError(f"{name}: LoRA shapes do not fit this model ({wrong[0]}{' ...' if len(wrong) > 1 else ''}); "
                         f"the weights were trained for another hidden size")
