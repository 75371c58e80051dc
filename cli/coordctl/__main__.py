"""`python -m coordctl ...`: how `cluster up` starts its nodes."""
from __future__ import annotations

from coordctl.main import app

if __name__ == "__main__":
    app(prog_name="coordctl")
