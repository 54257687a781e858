"""Trainer side (diffusers + peft + accelerate)."""
