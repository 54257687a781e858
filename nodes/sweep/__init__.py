"""Strength sweeps: every value of one knob in one queue item (nodes, sampler, per-item noise, preview and save)."""
