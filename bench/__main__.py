"""``python -m bench``: what to run (the scripts are modules of their own)."""
from __future__ import annotations

import sys

from . import __doc__ as doc

if __name__ == "__main__":
    print(doc)
    sys.exit(0)
