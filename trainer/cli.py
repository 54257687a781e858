"""``python -m kontext_sliders.trainer`` / ``kontext-sliders``: synth, train, export, demo."""
from __future__ import annotations

import argparse
import logging
import sys

import torch


def _train(args) -> int:
    from .config import load_config
    from .loop import train
    config = load_config(args.config, args.set)
    result = train(config, resume=args.resume)
    if not result.is_main:
        return 0
    print(f"trained {result.steps} steps into {result.output_dir}: last loss {result.last_loss:.5f}, "
          f"{result.seconds_per_step:.3f} s/step, peak memory {result.peak_memory_bytes / 2**30:.2f} GiB"
          + (f", skipped {result.skipped}" if result.skipped else ""))
    return 0


def _export(args) -> int:
    from .export import export_checkpoint
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    weights = export_checkpoint(args.checkpoint, args.out, args.official_dir, dtype)
    print(f"exported projector {weights.projector_config} + LoRA ({len(weights.lora_state) // 2} modules) to "
          + ", ".join(str(p) for p in (args.out, args.official_dir) if p))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kontext-sliders", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="make or filter training trajectories")
    synth_sub = synth.add_subparsers(dest="synth_command", required=True)
    from .data import cat, official
    cat.add_cat_arguments(synth_sub.add_parser("cat", help="ground-truth low-level edits (kornia) on photos"))
    official.add_filter_arguments(synth_sub.add_parser("filter", help="read + filter the official dataset"))

    train = sub.add_parser("train", help="train a Kontinuous Kontext slider")
    train.add_argument("--config", help="a .yaml or .toml run config (every field and default: trainer/config.py)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set run.max_steps=100 (repeatable)")
    train.add_argument("--resume", help="'latest' (the newest complete checkpoint of run.output_dir) or a path")

    export = sub.add_parser("export", help="write the weights the ComfyUI loader reads")
    export.add_argument("checkpoint", help="a checkpoint folder or a run's output folder (its newest checkpoint)")
    export.add_argument("--out", help="single .safetensors file for KontinuousKontextLoader")
    export.add_argument("--official-dir", help="also write the official layout (slider_projector.pth + LoRA)")
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")

    from .demo import add_demo_arguments
    add_demo_arguments(sub.add_parser("demo", help="offline: synthesise data, train a tiny editor, export, "
                                                   "evaluate on held-out photos, write report.md"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "synth":
        from .data import cat, official
        return (cat.run_cat if args.synth_command == "cat" else official.run_filter)(args)
    if args.command == "demo":
        from .demo import run_demo_command
        return run_demo_command(args)
    return {"train": _train, "export": _export}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
