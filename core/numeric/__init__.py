"""NumeriKontrol core: numbers with units as edit strengths (issue 13). Pure Python/torch, no ComfyUI.

* ``registry``: the tasks as data (names, units, delta ranges, wording, templates), JSON round trip;
  ``defaults.DEFAULT_REGISTRY`` = the ``synth cat`` tasks.
* ``parser``: one line of text -> ``NumericEdit(task, delta, unit)``; the grammar is in its docstring.
* ``adapter``: ``NumericAdapter`` (z = D(E(n) + emb(task))) and ``multi_numeric_mask``.
"""
from .adapter import AdapterConfig, NumericAdapter, featurize, multi_numeric_mask
from .defaults import DEFAULT_REGISTRY, DEFAULT_REGISTRY_DATA
from .parser import NumericEdit, NumericParseError, parse_line
from .registry import NumericTask, Registry, RegistryError

__all__ = ["AdapterConfig", "DEFAULT_REGISTRY", "DEFAULT_REGISTRY_DATA", "NumericAdapter", "NumericEdit",
           "NumericParseError", "NumericTask", "Registry", "RegistryError", "featurize", "multi_numeric_mask",
           "parse_line"]
