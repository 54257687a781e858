"""Attention overrides the runtime sets per regrouped forward (``optimized_attention_override``): NumeriKontrol's
mask, and an appended pad row hidden from every query."""
from __future__ import annotations

import torch


def numeric_mask_override(numeric: int, previous=None):
    """An ``optimized_attention_override`` applying NumeriKontrol's multi-numeric mask: over the joint sequence
    (text first, the ``numeric`` tokens at its front), numeric token i may not attend to numeric token j != i;
    all else is open. Another override already in place runs for both calls below.

    Only the ``numeric`` query rows are masked, so the sequence is attended once with no mask (ComfyUI's fastest
    kernel: a mask rules out flash attention) and those few rows once more with their [numeric, N] mask: the
    same result as the full [N, N] mask at O(numeric x N) extra cost."""

    built: dict = {}  # one mask per (length, dtype, device): not rebuilt in every attention call of every block

    def attention(func, q, k, v, heads, *args, mask=None, **kwargs):
        attend = func if previous is None else (lambda *a, **kw: previous(func, *a, **kw))
        out = attend(q, k, v, heads, *args, mask=mask, **kwargs)
        query_dim = 2 if kwargs.get("skip_reshape") else 1
        n = q.shape[query_dim]
        key = (n, q.dtype, q.device)
        if key not in built:
            # built out of place (no in-place writes into views): torch.compile can trace it
            i, j = torch.arange(numeric, device=q.device), torch.arange(n, device=q.device)
            pair = (j[None, :] < numeric) & (i[:, None] != j[None, :])
            built[key] = torch.zeros(numeric, n, dtype=q.dtype, device=q.device).masked_fill(pair, float("-inf"))
        rows_mask = built[key]
        if mask is not None:  # another mask over the whole sequence: its rows of the numeric queries
            rows_mask = rows_mask + (mask.narrow(-2, 0, numeric) if mask.shape[-2] == n else mask)
        rows = attend(q.narrow(query_dim, 0, numeric), k, v, heads, *args, mask=rows_mask, **kwargs)
        out_dim = 2 if kwargs.get("skip_output_reshape") else 1
        return torch.cat((rows, out.narrow(out_dim, numeric, out.shape[out_dim] - numeric)), dim=out_dim)

    return attention



def hidden_key_override(row: int, previous=None):
    """An ``optimized_attention_override`` that drops key / value ``row`` of the joint sequence (text first) for
    every query: the pad row the sliders append to a prompt that has none (Qwen-Image-Edit; FLUX.1 / [klein]
    prompts that fill the padded length) is their target state, not text the model reads. With it hidden, the
    rows at strength 1 see exactly the prompt the plain model sees, so a slider leaves 1 smoothly and a
    sweep's frame at 1 is the single run at 1."""

    def attention(func, q, k, v, heads, *args, **kwargs):
        attend = func if previous is None else (lambda *a, **kw: previous(func, *a, **kw))
        # the mask comes by keyword (Flux) or as the fifth positional argument (Qwen-Image)
        mask, args = (args[0], args[1:]) if args else (kwargs.pop("mask", None), ())
        dim = 2 if kwargs.get("skip_reshape") else 1
        n = k.shape[dim]

        def kept(t, d):
            return torch.cat((t.narrow(d, 0, row), t.narrow(d, row + 1, t.shape[d] - row - 1)), dim=d)

        if mask is not None and mask.shape[-1] == n:
            mask = kept(mask, mask.ndim - 1)
        return attend(q, kept(k, dim), kept(v, dim), heads, mask, *args, **kwargs)

    return attention
