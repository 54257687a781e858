"""Every training method, one package each; importing this package registers them all (``engine/registry.py``).

This import is the one place that knows every method: the CLI imports it, and the engine's registry imports it
by name when a lookup finds nothing registered. The order here is the order ``method:`` lists them in errors.
"""
from . import kontinuous, slideredit, editor, numeric, knobs  # noqa: F401
