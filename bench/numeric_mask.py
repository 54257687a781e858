"""NumeriKontrol's multi-numeric mask: what one joint-attention call costs three ways, same run.

- ``unmasked``: ComfyUI's attention with no mask (one edit: the mask is not needed);
- ``full mask``: the same call with the whole [N, N] additive mask (how the override worked first: a mask
  keeps PyTorch's SDPA off its mask-free fused kernels, flash attention on CUDA);
- ``rows`` (the pack's ``numeric_mask_override``): one unmasked pass plus the numeric query rows again under
  their [edits, N] mask.

Interleaved rounds (A B C A B C ...), median per variant, ratios to ``unmasked``. Also checks that ``rows`` and
``full mask`` agree. FLUX.1's joint sequence at 1024 px with a reference image is 512 text + 2 x 4096 image
tokens, 24 heads of 128:

  python bench/numeric_mask.py                                   # CPU default: a small sequence
  python bench/numeric_mask.py --device cuda --tokens 8704 --heads 24 --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_DIR / "tests"))  # ComfyUI's location, as the tests find it (ks_fixtures)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--tokens", type=int, default=1024, help="joint sequence length N (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    parser.add_argument("--head-dim", type=int, default=128, help="per-head width (default: %(default)s)")
    parser.add_argument("--edits", type=int, default=3, help="numeric tokens, 2+ (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per variant (default: %(default)s)")
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args(argv)
    if args.edits < 2:
        parser.error("--edits must be 2 or more: one edit has no mask")

    import ks_fixtures as F
    F.import_comfyui()
    import torch
    from comfy.ldm.modules.attention import optimized_attention

    from kontext_sliders.core.numeric import multi_numeric_mask
    from kontext_sliders.nodes.runtime import numeric_mask_override

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, DTYPES[args.dtype])
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.tokens, args.head_dim, generator=g, device=device, dtype=dtype)
               for _ in range(3))
    full = multi_numeric_mask(args.edits, args.tokens - args.edits, 0, additive=True, dtype=dtype, device=device)
    rows = numeric_mask_override(args.edits)
    variants = {
        "unmasked": lambda: optimized_attention(q, k, v, args.heads, skip_reshape=True),
        "full mask": lambda: optimized_attention(q, k, v, args.heads, skip_reshape=True, mask=full),
        "rows": lambda: rows(optimized_attention, q, k, v, args.heads, skip_reshape=True),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        difference = float((variants["rows"]() - variants["full mask"]()).abs().max())
        for fn in variants.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"joint attention, N = {args.tokens}, {args.heads} heads x {args.head_dim}, {args.edits} numeric tokens, "
          f"{args.dtype} on {device} ({optimized_attention.__name__}); median of {args.rounds}, interleaved")
    for name, m in medians.items():
        print(f"  {name:>9}: {m * 1e3:9.3f} ms   x{m / medians['unmasked']:.3f}")
    print(f"max |rows - full mask| = {difference:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": str(device), "medians_s": medians,
                                               "max_abs_difference": difference}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
