"""NumeriKontrol on a diffusers ``FluxTransformer2DModel``: numeric tokens in front of the T5 tokens, a LoRA on
the attention Q/K/V. The trainer-side twin of the nodes' NumeriKontrol patch; its exact semantics:

* **Tokens.** Per row, edits ``[(task_id, delta), ...]`` (m >= 1, deltas in the task's unit as the registry
  defines them: a signed difference, or a factor for ``scale: log`` tasks). ``NumericAdapter(task_ids, deltas)``
  gives one token z_i per edit, in the T5 width (``joint_attention_dim``). They are concatenated in front of
  the T5 sequence, in the edits' order: ``[z_1 ... z_m, t_1 ... t_L]``, and that whole sequence goes through
  ``context_embedder`` (the text input projection, BFL's ``txt_in``) like the T5 tokens alone would.
* **Ids.** Text ids stay zero for all m + L tokens (``txt_ids`` = zeros [m + L, 3]); image ids as Kontext:
  (0, y, x) for the noisy target, (1, y, x) for the clean source.
* **Mask.** m = 1: none at all (the plain transformer call, no ``joint_attention_kwargs``). m >= 2: the
  multi-numeric mask (``core.numeric.multi_numeric_mask``): over the joint sequence [numeric; text; target;
  source] (diffusers' order: text first, then image), numeric token i may not attend to numeric token j != i;
  every other pair is open. Boolean, True = may attend, shape [1, 1, S, S] (broadcast over rows and heads),
  passed as ``joint_attention_kwargs={"attention_mask": mask}`` to every double and single block, i.e. to
  ``scaled_dot_product_attention``'s ``attn_mask``. With the mask, and text ids all zero, the velocity does not
  depend on the order of a row's edits (up to float rounding).
* **Rows with different m** in one batch: grouped by m, one transformer call per group, outputs put back in
  row order (no padding, so each row is computed exactly as it would be alone in a batch of its m).
* **LoRA.** peft ``LoraConfig(r=rank, lora_alpha=alpha (default rank), target_modules=targets)`` on the
  transformer; the default targets are the paper's "all W_Q, W_K and W_V" (its Eq. 3-4: the Q/K/V of the text
  tokens, which the numeric tokens join, and of the noise/context tokens): ``attn.to_q/k/v`` (image stream of
  the double blocks and, by peft's suffix match, the joint Q/K/V of every single block) and
  ``attn.add_q_proj/add_k_proj/add_v_proj`` (text stream of the double blocks). The update is
  ``(alpha / rank) · B A x``, added to the Linear's output, on every token.
* **Dtypes.** The adapter and the LoRA are fp32 parameters; the tokens are cast to the T5 context's dtype, and
  both to the transformer's dtype with the rest of the inputs (``kontext_velocity``); velocity out in fp32.

``NumericModel(transformer, adapter, guidance)``; ``NumericModel.from_weights(transformer, weights)`` builds
adapter + LoRA from a NumeriKontrol weight file (``core.numeric.load_numeric_weights``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ....core.numeric import NumericAdapter, NumericWeights, multi_numeric_mask
from ...families.flux1 import kontext_velocity

# the paper's "all W_Q, W_K and W_V": both streams of the double blocks, the single blocks' by suffix match
DEFAULT_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")

Edits = Sequence[Sequence[tuple[int, float]]]  # per row: (task id, delta) pairs, m >= 1


def add_numeric_lora(transformer: nn.Module, rank: int = 128, alpha: float | None = None,
                     targets: Sequence[str] | None = None, init: str | bool = "gaussian") -> nn.Module:
    """A peft LoRA (adapter name ``default``) on ``targets`` (suffixes or full module paths), trainable, fp32."""
    from peft import LoraConfig
    transformer.add_adapter(LoraConfig(r=int(rank), lora_alpha=float(rank if alpha is None else alpha),
                                       init_lora_weights=init, target_modules=list(targets or DEFAULT_TARGETS)))
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # trainable tensors in fp32; autocast runs the maths in bf16
            p.requires_grad_(True)
    return transformer


def image_token_count(noisy: torch.Tensor, source: torch.Tensor) -> int:
    """Packed tokens of the noisy target plus the clean source (2 x 2 patches)."""
    return (noisy.shape[-2] // 2) * (noisy.shape[-1] // 2) + (source.shape[-2] // 2) * (source.shape[-1] // 2)


def numeric_attention_mask(numeric: int, text: int, image: int,
                           device: torch.device | str | None = None) -> torch.Tensor | None:
    """None for one numeric token (no mask at all); else the boolean multi-numeric mask as [1, 1, S, S]."""
    if numeric <= 1:
        return None
    s = numeric + text + image
    return multi_numeric_mask(numeric, text, image, device=device).view(1, 1, s, s)


class NumericModel(nn.Module):
    """velocity = Kontext transformer(noisy target | clean source, [numeric tokens; T5 tokens]) (+ its LoRA)."""

    def __init__(self, transformer: nn.Module, adapter: NumericAdapter, guidance: float = 1.0):
        super().__init__()
        width = transformer.config.joint_attention_dim
        if adapter.config.out_dim != width:
            raise ValueError(f"the numeric adapter makes {adapter.config.out_dim}-wide tokens, but this transformer's "
                             f"text input (context_embedder) takes {width}")
        self.transformer, self.adapter, self.guidance = transformer, adapter, guidance

    @classmethod
    def from_weights(cls, transformer: nn.Module, weights: NumericWeights, guidance: float = 1.0) -> "NumericModel":
        """The model a weight file describes, on ``transformer`` (a plain ``FluxTransformer2DModel``): its adapter
        (fp32), its LoRA added with peft on exactly the file's modules at the file's rank and alpha. Frozen, eval."""
        adapter = weights.build_adapter()
        modules = weights.lora_modules()
        if modules:
            add_numeric_lora(transformer, weights.lora_rank, weights.lora_alpha, targets=sorted(modules), init=False)
            with torch.no_grad():
                for path, (a, b) in modules.items():
                    module = transformer.get_submodule(path)
                    module.lora_A["default"].weight.copy_(a)
                    module.lora_B["default"].weight.copy_(b)
        return cls(transformer, adapter, guidance).requires_grad_(False).eval()

    def tokens(self, edits: Edits, device: torch.device) -> torch.Tensor:
        """[rows, m, T5 width]: the adapter's tokens of rows with m edits each (m = 0: none)."""
        m = len(edits[0])
        if m == 0:
            return torch.zeros(len(edits), 0, self.adapter.config.out_dim, device=device)
        ids = torch.tensor([t for row in edits for t, _ in row], dtype=torch.long, device=device)
        deltas = torch.tensor([float(d) for row in edits for _, d in row], dtype=torch.float64, device=device)
        return self.adapter(ids, deltas).view(len(edits), m, -1)

    def velocity(self, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 pooled: torch.Tensor, tokens: torch.Tensor, mask: bool = True) -> torch.Tensor:
        """Rows that all have ``tokens.shape[1]`` numeric tokens; ``mask=False`` drops the multi-numeric mask
        (for tests: what the mask changes)."""
        m = tokens.shape[1]
        text = torch.cat([tokens.to(context.dtype), context], dim=1)
        attention = (numeric_attention_mask(m, context.shape[1], image_token_count(noisy, source), noisy.device)
                     if mask else None)
        return kontext_velocity(self.transformer, noisy, source, sigma, text, pooled, self.guidance, attention)

    def forward(self, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                pooled: torch.Tensor, edits: Edits, plain_rows: bool = False) -> torch.Tensor:
        """``edits[b]``: row b's (task id, delta) pairs. Returns the velocity [B, C, H, W] in fp32.
        ``plain_rows``: a row may have no edit, and is then the transformer alone (a replayed base row)."""
        if len(edits) != noisy.shape[0]:
            raise ValueError(f"edits for {len(edits)} rows, but the batch has {noisy.shape[0]}")
        groups: dict[int, list[int]] = {}
        for row, row_edits in enumerate(edits):
            if len(row_edits) < 1 and not plain_rows:
                raise ValueError(f"row {row} has no numeric edit; each row needs at least one (task id, delta)")
            groups.setdefault(len(row_edits), []).append(row)
        if len(groups) == 1:
            return self.velocity(noisy, source, sigma, context, pooled, self.tokens(edits, noisy.device))
        order, outs = [], []
        for rows in groups.values():
            i = torch.tensor(rows, device=noisy.device)
            outs.append(self.velocity(noisy[i], source[i], sigma[i], context[i], pooled[i],
                                      self.tokens([edits[r] for r in rows], noisy.device)))
            order += rows
        return torch.cat(outs)[torch.argsort(torch.tensor(order, device=noisy.device))]
