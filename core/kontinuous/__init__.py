"""Kontinuous Kontext: the strength projector, its per-row offsets, the weight formats and the converter.

``projector`` (the module), ``offsets`` (strength -> text-stream modulation offsets per batch row),
``weights`` (the official release folder and our single file), ``convert`` (release -> single file).
"""
