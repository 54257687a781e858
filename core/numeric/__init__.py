"""NumeriKontrol core: numbers with units as edit strengths (issue 13). Pure Python/torch, no ComfyUI.

* ``registry``: the tasks as data (names, units, delta ranges, wording, templates), JSON round trip;
  ``defaults.DEFAULT_REGISTRY`` = the ``synth cat`` tasks.
* ``parser``: one line of text -> ``NumericEdit(task, delta, unit)``; the grammar is in its docstring.
* ``adapter``: ``NumericAdapter`` (z = D(E(n) + emb(task))) and ``multi_numeric_mask``.
* ``weights``: the weight file's layout (the registry travels with the weights); ``load_numeric_weights`` /
  ``save_numeric_weights`` for whole files (adapter + LoRA).

Command line: ``python -m kontext_sliders.core.numeric parse LINE [LINE ...] [--weights FILE]``.
"""
from .adapter import AdapterConfig, NumericAdapter, featurize, multi_numeric_mask
from .parser import NumericEdit, NumericParseError, parse_line
from .defaults import DEFAULT_REGISTRY, DEFAULT_REGISTRY_DATA
from .registry import NumericTask, Registry, RegistryError
from .weights import (ADAPTER_PREFIX, FORMAT_NAME, NumericHeader, NumericWeights, load_numeric_weights,
                      numeric_metadata, read_numeric_header, save_numeric_weights)

__all__ = ["ADAPTER_PREFIX", "AdapterConfig", "DEFAULT_REGISTRY", "DEFAULT_REGISTRY_DATA", "FORMAT_NAME",
           "NumericAdapter", "NumericEdit", "NumericHeader", "NumericParseError", "NumericTask", "NumericWeights",
           "Registry", "RegistryError", "featurize", "load_numeric_weights", "multi_numeric_mask", "numeric_metadata",
           "parse_line", "read_numeric_header", "save_numeric_weights"]
