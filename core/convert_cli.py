"""The shared tail of the converter commands: argument check, one-line error, exit code."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .weights_io import WeightsFormatError


def run_converter(parser: argparse.ArgumentParser, argv: list[str] | None,
                  convert: Callable[[argparse.Namespace], None]) -> int:
    """Parse ``argv``, require an OUT ending in .safetensors, convert; a bad source is exit 2 with one line."""
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("OUT must end in .safetensors")
    try:
        convert(args)
    except WeightsFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0
