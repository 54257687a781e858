"""``method: slideredit``: SliderEdit (``method.py``, ``model.py``; the offline demo: ``demo.py``, ``report.py``)."""
from . import demo, method  # noqa: F401  (registers the method and its demo)
