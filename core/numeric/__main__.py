"""``python -m kontext_sliders.core.numeric parse LINE [LINE ...] [--weights FILE]``.

Prints one JSON object per line, ``{"line", "task", "delta", "unit", "canonical"}`` or ``{"line", "error"}``; exit status 0
when every line parsed, 2 when any failed or the weight file is missing or unusable (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..weights_io import WeightsFormatError
from .parser import NumericParseError, parse_line
from .defaults import DEFAULT_REGISTRY
from .weights import read_numeric_header

PROG = "python -m kontext_sliders.core.numeric"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="NumeriKontrol: numbers with units as edit strengths.")
    sub = parser.add_subparsers(dest="command", required=True)
    parse = sub.add_parser("parse", help="read instruction lines into (task, delta, unit), one JSON object a line",
                           description="Lines starting with '-' and holding no space go after '--'.")
    parse.add_argument("lines", nargs="+", metavar="LINE", help="e.g. 'Increase the exposure by 1.5 EV'")
    parse.add_argument("--weights", metavar="FILE",
                       help="a NumeriKontrol .safetensors: use the task registry in its header "
                            "(default: the synth cat tasks)")
    args = parser.parse_args(argv)
    registry = DEFAULT_REGISTRY
    if args.weights:
        try:
            registry = read_numeric_header(args.weights).registry
        except WeightsFormatError as e:
            print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    failed = False
    for line in args.lines:
        try:
            edit = parse_line(line, registry)
            out = {"line": line, **edit.to_json(), "canonical": registry.task(edit.task).canonical(edit.delta)}
        except NumericParseError as e:
            out, failed = {"line": line, "error": str(e)}, True
        print(json.dumps(out, ensure_ascii=False), flush=True)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
