"""Convert an official Kontinuous Kontext release folder into one Kontext Sliders .safetensors file.

    python -m kontext_sliders.core.convert_kontinuous SRC_DIR OUT.safetensors [--dtype keep|fp32|bf16|fp16]
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..convert_cli import run_converter
from .weights import load_official_folder, save_single_file

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def convert(src_dir: str, out_path: str, dtype: str = "keep") -> None:
    weights = load_official_folder(src_dir)
    if dtype != "keep":
        cast = _DTYPES[dtype]
        weights.projector_state = {k: v.to(cast) for k, v in weights.projector_state.items()}
        weights.lora_state = {k: v.to(cast) for k, v in weights.lora_state.items()}
    save_single_file(weights, out_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kontext_sliders.core.convert_kontinuous",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("src_dir", help="folder with slider_projector.pth and pytorch_lora_weights.safetensors")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--dtype", choices=["keep", *_DTYPES], default="keep",
                        help="tensor dtype in the output (default: as in the release)")
    return run_converter(parser, argv, lambda a: convert(a.src_dir, a.out, a.dtype))


if __name__ == "__main__":
    sys.exit(main())
