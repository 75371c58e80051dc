"""coordctl: the operator CLI of coordsvc (console script ``coordctl = coordctl.main:app``)."""
from __future__ import annotations

__all__: list[str] = []
