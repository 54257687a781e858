"""The training-free knobs' math: per-instruction sliders (token -> pad) and per-instruction guidance.

The modulation multiplier needs no math beyond a product; its node and runtime patch live in ``nodes``.
"""
