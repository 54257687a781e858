"""``python -m kontext_sliders.core.convert_kontinuous``: the documented command; the converter lives in ``core/kontinuous/convert.py``."""
import sys

from .kontinuous.convert import convert, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
