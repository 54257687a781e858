"""NumeriKontrol's attention mask, as an ``optimized_attention_override`` (set per regrouped forward)."""
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

