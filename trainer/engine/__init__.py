"""The trainer's shared engine: loop, config, method and demo registries, codecs, flow matching, checkpoints,
export dispatch, reports. Imports no method: methods register themselves (``registry.py``)."""
