"""Cost of KontextMultiInstructionEncode against CLIPTextEncode of the same joined text, same run.

For K sub-instructions (default 2, 8, 32, 64) times, interleaved (AB BA ...), ComfyUI's CLIPTextEncode
on the lines joined with spaces and the pack's encode node on the lines, and reports the ratio of the
medians. Also times what per-instruction guidance adds when it first runs (the K leave-one-out
encodes, made on demand; a graph without guidance never pays them).

  python bench/encode_cost.py                      # the tests' tiny FLUX text encoders
  python bench/encode_cost.py --t5-layers 6 --t5-width 512 --json out.json

Encoders are real comfy.sd.CLIP objects (ComfyUI's FLUX tokenizers and models) with random weights:
the tokenizers are the real ones, so the tokenising cost is as in ComfyUI; the encoders are small,
which makes the node's extra work look larger than it is next to a 4.7 B-parameter T5-XXL.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_DIR / "tests"))  # the tests' tiny-encoder recipe (ks_fixtures)

WORDS = ["sky", "car", "tree", "roof", "door", "window", "dog", "street", "lamp", "bench", "cloud", "hill"]
VERBS = ["make the {} stormy", "turn the {} red", "add snow on the {}", "remove the {}", "make the {} brighter"]


def instructions(count: int) -> list[str]:
    return [VERBS[i % len(VERBS)].format(WORDS[(i * 7) % len(WORDS)]) for i in range(count)]


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", default="2,8,32,64", help="comma-separated sub-instruction counts")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per variant and count (median)")
    parser.add_argument("--t5-layers", type=int, default=None, help="T5 layers (default: the tests' tiny T5)")
    parser.add_argument("--t5-width", type=int, default=None, help="T5 d_model (default: the tests' tiny T5)")
    parser.add_argument("--json", help="write all numbers to this file")
    args = parser.parse_args(argv)

    import ks_fixtures as F
    F.import_comfyui()
    import nodes

    from kontext_sliders.nodes.instruction_encode import encode_instructions, encode_leave_one_out
    if args.t5_layers or args.t5_width:
        F.TINY_T5.update({k: v for k, v in (("num_layers", args.t5_layers), ("d_model", args.t5_width)) if v})
    clip = F.tiny_flux_clip(seed=0)
    plain = nodes.CLIPTextEncode()
    rows = []
    print(f"T5 {F.TINY_T5}, CLIP-L {F.TINY_CLIP_L}; medians of {args.rounds} calls")
    print(f"{'lines':>5} {'CLIPTextEncode':>15} {'multi-instr.':>13} {'ratio':>6} {'guidance adds':>14}")
    for count in (int(c) for c in args.lines.split(",")):
        lines = instructions(count)
        text = "\n".join(lines)
        plain.encode(clip, " ".join(lines)), encode_instructions(clip, text)  # warm-up
        a, b = [], []
        for i in range(args.rounds):  # AB BA: drift cancels
            order = [("a", lambda: plain.encode(clip, " ".join(lines))), ("b", lambda: encode_instructions(clip, text))]
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                (a if name == "a" else b).append(median_seconds(fn, 1))
        guidance = median_seconds(lambda: encode_leave_one_out(clip, lines), max(1, args.rounds // 3))
        row = dict(lines=count, clip_text_encode_s=statistics.median(a), multi_instruction_s=statistics.median(b),
                   guidance_extra_s=guidance)
        row["ratio"] = row["multi_instruction_s"] / row["clip_text_encode_s"]
        rows.append(row)
        print(f"{count:>5} {row['clip_text_encode_s'] * 1e3:>12.1f} ms {row['multi_instruction_s'] * 1e3:>10.1f} ms "
              f"{row['ratio']:>5.2f}x {guidance * 1e3:>11.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"t5": F.TINY_T5, "clip_l": F.TINY_CLIP_L, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
