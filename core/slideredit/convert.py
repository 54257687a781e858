"""Convert the SliderEdit authors' files into one Kontext Sliders .safetensors file.

    python -m kontext_sliders.core.convert_slideredit SRC OUT.safetensors [--base-model NAME]
        [--context-in-dim N] [--dtype keep|fp32|bf16|fp16]

SRC: the authors' STLoRA ``selective_lora.pt`` (read with weights_only=True), a GSTLoRA
``pytorch_lora_weights.safetensors``, or a folder holding one.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..convert_cli import run_converter
from .weights import load_slideredit, save_slideredit

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def convert(src: str, out_path: str, base_model: str = "", context_in_dim: int | None = None,
            dtype: str = "keep") -> None:
    weights = load_slideredit(src)
    weights.base_model = base_model or weights.base_model
    weights.context_in_dim = context_in_dim or weights.context_in_dim
    if dtype != "keep":
        cast = _DTYPES[dtype]
        weights.modules = {k: (a.to(cast), b.to(cast)) for k, (a, b) in weights.modules.items()}
    save_slideredit(weights, out_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kontext_sliders.core.convert_slideredit",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", help="selective_lora.pt, pytorch_lora_weights.safetensors, or a folder with one")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--base-model", default="", help="the model it was trained for (recorded in the header)")
    parser.add_argument("--context-in-dim", type=int, default=None,
                        help="T5 width of that model (FLUX.1: 4096), checked by the loader against the model")
    parser.add_argument("--dtype", choices=["keep", *_DTYPES], default="keep",
                        help="tensor dtype in the output (default: as in the source)")
    return run_converter(parser, argv, lambda a: convert(a.src, a.out, a.base_model, a.context_in_dim, a.dtype))


if __name__ == "__main__":
    sys.exit(main())
