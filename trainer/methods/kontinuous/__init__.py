"""``method: kontinuous``: Kontinuous Kontext (``method.py``, ``model.py``, ``export.py``; the offline demo:
``demo.py``, ``report.py``)."""
from . import demo, method  # noqa: F401  (registers the method and its demo)
