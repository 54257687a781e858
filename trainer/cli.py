"""``python -m kontext_sliders.trainer`` / ``kontext-sliders``: synth, train, export, demo.

Every mistake in the arguments (a missing option, a config file that is absent or does not parse, a
checkpoint that is not there, the ``train`` extra not installed) ends in one line on stderr and exit
status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

DESCRIPTION = ("Kontext Sliders trainer: make training data (synth), train a strength slider (train), "
               "export it for ComfyUI (export), or run the whole pipeline offline on the CPU (demo).")

# import name -> distribution, for what the ``train`` extra installs (see pyproject.toml)
TRAIN_EXTRA = {"diffusers": "diffusers", "peft": "peft", "accelerate": "accelerate", "transformers": "transformers",
               "kornia": "kornia", "skimage": "scikit-image", "matplotlib": "matplotlib", "yaml": "pyyaml",
               "tqdm": "tqdm", "tensorboard": "tensorboard", "PIL": "pillow", "numpy": "numpy"}


# what a command imports only once it runs: checked first, so that it fails before writing anything
NEEDS = {"train": ("yaml", "tqdm", "accelerate", "diffusers"),
         "demo": ("yaml", "tqdm", "accelerate", "diffusers", "skimage", "matplotlib")}


class UsageError(Exception):
    """Arguments that cannot work; the message says what to pass instead."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where to look), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _train(args) -> int:
    from .engine.config import ConfigError, check_ready_to_train, load_config
    try:
        config = load_config(args.config, args.set)
        check_ready_to_train(config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.resume not in (None, "latest") and not Path(args.resume).is_dir():
        raise UsageError(f"--resume {args.resume}: no such checkpoint folder (or pass --resume latest)")
    from .engine.loop import train
    result = train(config, resume=args.resume)
    if not result.is_main:
        return 0
    print(f"trained {result.steps} steps into {result.output_dir}: last loss {result.last_loss:.5f}, "
          f"{result.seconds_per_step:.3f} s/step, peak memory {result.peak_memory_bytes / 2**30:.2f} GiB"
          + (f", skipped {result.skipped}" if result.skipped else ""))
    return 0


def _export(args) -> int:
    import torch
    from .engine.checkpoint import latest_checkpoint
    from .engine.export import export_checkpoint
    path = Path(args.checkpoint)
    if not (path / "trainable.safetensors").is_file() and latest_checkpoint(path) is None:
        raise UsageError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints "
                         "(pass run.output_dir of a training run, or one of its checkpoints/checkpoint-N)")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    try:
        weights = export_checkpoint(path, args.out, args.official_dir, dtype, args.transformer_out)
    except ValueError as e:  # the run and the flags do not fit (each message names the fix)
        raise UsageError(str(e)) from None
    if weights is None:  # an editor run: its transformer folder
        print(f"exported the editor's transformer to {Path(args.out) / 'transformer'}")
        return 0
    what = (weights.describe() if hasattr(weights, "describe") else
            f"projector {weights.projector_config} + LoRA ({len(weights.lora_state) // 2} modules)")
    written = [args.out, args.official_dir, args.transformer_out and Path(args.transformer_out) / "transformer"]
    print(f"exported {what} to " + ", ".join(str(p) for p in written if p))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kontext-sliders", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{synth,train,export,demo}")

    def command(parent, name: str, text: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")

    synth = command(sub, "synth", "make or filter training trajectories")
    synth_sub = synth.add_subparsers(dest="synth_command", required=True, metavar="{cat,filter}")
    from .data import cat, official
    cat.add_cat_arguments(command(synth_sub, "cat", "ground-truth low-level edits (kornia) on photos"))
    official.add_filter_arguments(command(synth_sub, "filter", "read and filter the official dataset"))

    train = command(sub, "train", "train a slider (Kontinuous Kontext; SliderEdit with method: slideredit; "
                                  "NumeriKontrol with method: numeric)")
    train.add_argument("--config", required=True, metavar="FILE",
                       help="a .yaml or .toml run config (every field and default: trainer/engine/config.py)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set run.max_steps=100 (repeatable)")
    train.add_argument("--resume", metavar="latest|PATH",
                       help="'latest' (the newest complete checkpoint of run.output_dir) or a checkpoint folder")

    export = command(sub, "export", "write the weights the ComfyUI loader reads")
    export.add_argument("checkpoint", help="a checkpoint folder or a run's output folder (its newest checkpoint)")
    export.add_argument("--out", required=True, metavar="FILE.safetensors",
                        help="the single .safetensors file the loader node reads (Kontinuous, SliderEdit or "
                             "NumeriKontrol, after the run's method)")
    export.add_argument("--official-dir", metavar="DIR",
                        help="also write the official layout into this folder (Kontinuous: slider_projector.pth "
                             "+ LoRA; SliderEdit: the authors' selective_lora.safetensors or "
                             "pytorch_lora_weights.safetensors)")
    export.add_argument("--transformer-out", metavar="DIR",
                        help="a run that trained the transformer itself (model.train_transformer, or from scratch): "
                             "write the trained transformer into DIR/transformer (a diffusers folder), the base the "
                             "slider file runs on")
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="precision of the written tensors (default: %(default)s)")

    from . import methods  # noqa: F401  (every method and its demo registers itself)
    from .engine.demo import add_demo_arguments
    add_demo_arguments(command(sub, "demo", "offline: synthesise data, train a tiny editor, export, "
                                            "evaluate on held-out photos, write report.md"))
    return parser


def _missing_train_extra(e: ModuleNotFoundError) -> str | None:
    top = (e.name or "").split(".")[0]
    if top not in TRAIN_EXTRA:
        return None
    return (f"the trainer needs the 'train' extra, and module {top!r} ({TRAIN_EXTRA[top]}) is missing: "
            'pip install -e ".[train]" (from the repository root)')


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
        for module in NEEDS.get(args.command, ()):
            importlib.import_module(module)
        if args.command == "synth":
            from .data import cat, official
            return (cat.run_cat if args.synth_command == "cat" else official.run_filter)(args)
        if args.command == "demo":
            from .engine.demo import run_demo_command
            return run_demo_command(args)
        return {"train": _train, "export": _export}[args.command](args)
    except UsageError as e:
        print(f"kontext-sliders {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        message = _missing_train_extra(e)
        if message is None:
            raise
        print(f"kontext-sliders: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
