"""Cost of KontextMultiInstructionEncode against the family's plain encode of the same joined text, same run.

For K sub-instructions (default 2, 8, 32, 64) times, interleaved (AB BA ...), the family's plain encode node
on the lines joined with spaces (CLIPTextEncode for FLUX.1 and FLUX.2, TextEncodeQwenImageEditPlus with one
picture for Qwen-Image-Edit) and the pack's encode node on the lines, and reports the ratio of the medians.
Also times what per-instruction guidance adds when it first runs (the K leave-one-out encodes, made on
demand; a graph without guidance never pays them) and, where the prompt has no pad row (every Qwen-Image-Edit
prompt), what the sliders add (the prompt encoded with one pad token).

  python bench/encode_cost.py                      # the tests' tiny FLUX.1 text encoders
  python bench/encode_cost.py --t5-layers 6 --t5-width 512 --json out.json
  python bench/encode_cost.py --family flux2 --variant klein --lines 2,8,32   # [klein]'s Qwen3 (ComfyUI 0.33)
  python bench/encode_cost.py --family qwen_image --lines 2,8,32

Encoders are real comfy.sd.CLIP objects (ComfyUI's FLUX tokenizers and models) with random weights:
the tokenizers are the real ones, so the tokenising cost is as in ComfyUI; the encoders are small,
which makes the node's extra work look larger than it is next to a 4.7 B-parameter T5-XXL. FLUX.2 and
Qwen-Image-Edit: the tests' tiny encoders too (tests/ks_fixtures.py: the shipped tokenizers and chat templates,
tiny LMs; Qwen-Image's vision tower tiny, its vision-token count the real one).
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
    parser.add_argument("--family", choices=["flux1", "flux2", "qwen_image"], default="flux1")
    parser.add_argument("--variant", choices=["klein", "dev"], default="klein", help="FLUX.2's text encoder")
    parser.add_argument("--lines", default="2,8,32,64", help="comma-separated sub-instruction counts")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per variant and count (median)")
    parser.add_argument("--t5-layers", type=int, default=None, help="FLUX.1: T5 layers (default: the tests' tiny T5)")
    parser.add_argument("--t5-width", type=int, default=None, help="FLUX.1: T5 d_model (default: the tests' tiny T5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on a busy CPU, "
                                                    "where small ops on several threads wait for each other)")
    parser.add_argument("--json", help="write all numbers to this file")
    args = parser.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    import ks_fixtures as F
    F.import_comfyui()

    from kontext_sliders.nodes.instruction_encode import METADATA_KEY, encode_instructions
    inputs = {}
    if args.family == "flux1":
        from kontext_sliders.nodes.families.flux1 import TINY_CLIP_L, tiny_t5_config, tiny_text_encoder
        t5 = tiny_t5_config(**{k: v for k, v in (("num_layers", args.t5_layers), ("d_model", args.t5_width)) if v})
        clip = tiny_text_encoder(seed=0, t5=t5)
        about = f"T5 {t5}, CLIP-L {TINY_CLIP_L}"
    else:
        name = f"flux2-{args.variant}" if args.family == "flux2" else "qwen-2509"
        _, clip = F.family_text_encoder(name, seed=0)
        if clip is None:
            print(f"this ComfyUI cannot build the tests' tiny {name} text encoder (0.8: no [klein]; [dev]'s "
                  f"tokenizer fails with transformers 5); use ComfyUI 0.33", file=sys.stderr)
            return 2
        if args.family == "qwen_image":  # one 1024² picture, as an edit has (resized to 384² for the vision tower)
            inputs["image1"] = torch.rand(1, 1024, 1024, 3, generator=torch.Generator().manual_seed(0))
        about = f"the tests' tiny {name} text encoder"
    plain_name = "TextEncodeQwenImageEditPlus" if args.family == "qwen_image" else "CLIPTextEncode"

    def plain(text):
        return F.plain_family_encode(args.family, clip, text, inputs.get("image1"))

    def ours(text):
        return encode_instructions(clip, text, **inputs)

    def entry(text):
        return ours(text)[0][1][METADATA_KEY]

    rows = []
    print(f"{about}; {torch.get_num_threads()} threads; medians of {args.rounds} calls")
    print(f"{'lines':>5} {plain_name:>27} {'multi-instr.':>13} {'ratio':>6} {'guidance adds':>14} {'sliders add':>12}")
    for count in (int(c) for c in args.lines.split(",")):
        lines = instructions(count)
        text = "\n".join(lines)
        plain(" ".join(lines)), ours(text)  # warm-up
        a, b = [], []
        for i in range(args.rounds):  # AB BA: drift cancels
            order = [("a", lambda: plain(" ".join(lines))), ("b", lambda: ours(text))]
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                (a if name == "a" else b).append(median_seconds(fn, 1))
        # made on first use (Deferred): time only that, on fresh encodes
        entries = [entry(text) for _ in range(max(1, args.rounds // 3))]
        guidance = statistics.median(median_seconds(e.leave_one_out.get, 1) for e in entries)
        sliders = statistics.median(median_seconds(e.padded.get, 1) for e in entries)
        row = dict(lines=count, plain_encode_s=statistics.median(a), multi_instruction_s=statistics.median(b),
                   guidance_extra_s=guidance, sliders_extra_s=sliders)
        row["ratio"] = row["multi_instruction_s"] / row["plain_encode_s"]
        rows.append(row)
        print(f"{count:>5} {row['plain_encode_s'] * 1e3:>24.1f} ms {row['multi_instruction_s'] * 1e3:>10.1f} ms "
              f"{row['ratio']:>5.2f}x {guidance * 1e3:>11.1f} ms {sliders * 1e3:>9.1f} ms")
    if args.json:
        meta = {"encoder": about}
        Path(args.json).write_text(json.dumps(dict(meta, family=args.family, plain_node=plain_name, rows=rows,
                                                   threads=torch.get_num_threads()),
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
