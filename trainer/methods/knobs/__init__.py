"""The training-free knobs on the trainer side: their diffusers twins (``modulation_hook``, ``toward_pad_hook``;
nothing to train, so no method registration), used by the demos to compare trained sliders with them and by the
cross-checks against the nodes; and their own demo (``demo.py``: the knobs measured on a tiny editor of each
model family, ``evaluation.py``, ``report.py``; ``compare.py``: the model-agnostic knobs against the trained
Kontinuous slider on one editor, ``compare_report.py``)."""
from . import compare, demo  # noqa: F401  (register the demos)
