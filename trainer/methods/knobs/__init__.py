"""The training-free knobs on the trainer side: their diffusers twins (nothing to train, so no registration),
used by the demos to compare trained sliders with them and by the cross-checks against the nodes."""
