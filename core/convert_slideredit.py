"""``python -m kontext_sliders.core.convert_slideredit``: the documented command; the converter lives in ``core/slideredit/convert.py``."""
import sys

from .slideredit.convert import convert, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
