"""``parse_line``: one instruction line -> (task, delta), against a registry or the default one.

The grammar itself is ``grammar.py``; this module adds the default registry (the synth cat tasks).
"""
from __future__ import annotations

from .defaults import DEFAULT_REGISTRY
# the parser's API, as before the grammar had a module of its own
from .grammar import FILLER, NUMBER_RE, NumericEdit, NumericParseError, check_round_trip, read_line  # noqa: F401
from .registry import Registry


def parse_line(line: str, registry: Registry | None = None) -> NumericEdit:
    """Read one instruction line (see ``grammar.py``) against ``registry`` (default: the synth cat tasks)."""
    return read_line(line, DEFAULT_REGISTRY if registry is None else registry)
