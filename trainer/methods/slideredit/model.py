"""SliderEdit on a diffusers transformer: the trainer-side twin of the nodes' SliderEdit patch.

``SliderEditAdapter`` holds one trainable pair A [r, in] / B [out, r] per adapted Linear and adds
``(x Aᵀ Bᵀ) · (alpha / rank) · scale`` to the Linear's output through a forward hook (no module is
replaced; the maths is ``core.fused_lora.add_lora_delta``, shared with the ComfyUI side). ``scales``
is set before each forward and kept until the next one, so gradient checkpointing, which re-runs the
hooked Linears in backward, sees the same scale:

* ``None``: the adapter is off; every output is the base's, bit for bit.
* ``[B]``: one factor per batch row, on every token (GSTLoRA, or any variant at a single strength).
* ``[B, L_text]``: one factor per text token (STLoRA; only text-stream Linears, whose input is
  ``[B, L_text, D]``). 0 on a token leaves its outputs exactly the base's.

The factor is the authors' slider alpha (1 - strength): 1 suppresses what the adapter was trained to
suppress, 0 is the base. ``core.slideredit.stlora_token_scales`` builds a per-token row from spans.

Init as the authors: STLoRA A kaiming-uniform (a = √5), B zeros (their SelectiveLoRALinear); GSTLoRA
A gaussian (std 1 / rank), B zeros (peft's ``init_lora_weights="gaussian"``, their GSTLoRA trainer).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ....core.slideredit.weights import GSTLORA_TARGETS, STLORA_TARGETS, SliderEditWeights
from ....core.fused_lora import add_lora_delta
from ...families.flux1 import (ADAPTABLE, TEXT_STREAM, check_targets, kontext_velocity,  # noqa: F401 (check_targets: re-exported)
                                linear_suffix)

INITS = ("authors", "kaiming", "gaussian")


def default_targets(variant: str) -> tuple[str, ...]:
    return STLORA_TARGETS if variant == "stlora" else GSTLORA_TARGETS


def _key(path: str) -> str:
    return path.replace(".", "/")  # a module name may not hold dots


class LoRAPair(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))


class SliderEditAdapter(nn.Module):
    """``SliderEditAdapter(transformer, "stlora", rank=16)``; set ``scales`` before each forward."""

    def __init__(self, transformer: nn.Module, variant: str, rank: int = 16, alpha: float | None = None,
                 targets: Sequence[str] | None = None, init: str = "authors"):
        super().__init__()
        targets = tuple(default_targets(variant) if targets is None else targets)
        check_targets(variant, targets)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.variant, self.rank, self.alpha, self.targets = variant, int(rank), alpha, targets
        self.factor = 1.0 if alpha is None else float(alpha) / self.rank
        self.scales: torch.Tensor | None = None
        self.pairs = nn.ModuleDict()
        self._handles = []
        self._paths: dict[nn.Module, str] = {}
        for path, module in transformer.named_modules():
            if not (linear_suffix(path) in targets and isinstance(module, nn.Linear)):
                continue
            pair = LoRAPair(module.in_features, module.out_features, self.rank)
            if (init == "authors" and variant == "stlora") or init == "kaiming":
                nn.init.kaiming_uniform_(pair.A, a=math.sqrt(5))
            else:
                nn.init.normal_(pair.A, std=1.0 / self.rank)
            self.pairs[_key(path)] = pair
            self._paths[module] = path
            self._handles.append(module.register_forward_hook(self._hook))
        if not self.pairs:
            raise ValueError(f"no Linear of this transformer matches the {variant} targets {', '.join(targets)}")

    # ---------------------------------------------------------------- the forward
    def _hook(self, module: nn.Module, inputs, output):
        scales = self.scales
        if scales is None:
            return output
        x = inputs[0]
        path = self._paths[module]
        if scales.dim() == 1:
            factor = scales.view(-1, 1, 1)
        else:
            if linear_suffix(path) not in TEXT_STREAM or x.shape[1] != scales.shape[1]:
                raise ValueError(f"per-token scales [B, {scales.shape[1]}] reach only text-stream Linears with "
                                 f"{scales.shape[1]} tokens; {path} sees {tuple(x.shape)}")
            factor = scales.unsqueeze(-1)
        if factor.shape[0] != x.shape[0]:
            raise ValueError(f"scales for {factor.shape[0]} rows, but the batch has {x.shape[0]}")
        pair = self.pairs[_key(path)]
        return add_lora_delta(output, x, pair.A, pair.B, (0, output.shape[-1]), factor.float() * self.factor)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---------------------------------------------------------------- to and from the weights files
    def to_weights(self, base_model: str = "", context_in_dim: int | None = None) -> SliderEditWeights:
        modules = {path: (self.pairs[_key(path)].A.detach().float().cpu().clone(),
                          self.pairs[_key(path)].B.detach().float().cpu().clone())
                   for path in sorted(self._paths.values())}
        return SliderEditWeights(self.variant, modules, self.alpha, base_model, context_in_dim)

    def load_weights(self, weights: SliderEditWeights) -> None:
        """Copy a file's tensors in; its modules must be exactly this adapter's, with the same shapes."""
        mine, theirs = set(self._paths.values()), set(weights.modules)
        if mine != theirs:
            raise ValueError(f"the weights adapt other modules than this adapter: missing "
                             f"{sorted(mine - theirs)[:3]}, unexpected {sorted(theirs - mine)[:3]}")
        with torch.no_grad():
            for path, (a, b) in weights.modules.items():
                pair = self.pairs[_key(path)]
                if a.shape != pair.A.shape or b.shape != pair.B.shape:
                    raise ValueError(f"{path}: the weights are {tuple(b.shape)} x {tuple(a.shape)}, this model "
                                     f"needs {tuple(pair.B.shape)} x {tuple(pair.A.shape)}")
                pair.A.copy_(a)
                pair.B.copy_(b)

    @classmethod
    def from_weights(cls, transformer: nn.Module, weights: SliderEditWeights) -> "SliderEditAdapter":
        """The adapter a loaded file describes (variant, rank, alpha, targets), on ``transformer``."""
        adapter = cls(transformer, weights.variant, weights.rank, weights.alpha, weights.targets)
        adapter.load_weights(weights)
        return adapter


class SliderEditModel(nn.Module):
    """velocity = Kontext transformer(noisy target | clean source, text), with the adapter at ``scales``."""

    def __init__(self, transformer: nn.Module, adapter: SliderEditAdapter, guidance: float = 3.5):
        super().__init__()
        self.transformer = transformer
        self.adapter = adapter
        self.guidance = guidance

    def forward(self, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                pooled: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        # kept set until the next forward: gradient checkpointing re-runs the hooked Linears in backward
        self.adapter.scales = scales
        return kontext_velocity(self.transformer, noisy, source, sigma, context, pooled, self.guidance)
