"""``method: editor``: a plain instruction editor trained on ground-truth edits (``method.py``)."""
from . import method  # noqa: F401  (registers the method)
