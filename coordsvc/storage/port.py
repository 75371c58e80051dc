"""The narrow storage port the node loop drives: load once, save each Ready."""
from __future__ import annotations

from typing import Protocol

from ..core.types import Durable, Persist


class Store(Protocol):
    def load(self) -> Durable:
        """Everything durable, as it was after the last completed ``save``."""
        ...

    def save(self, p: Persist) -> None:
        """Make ``p`` durable, atomically (all of it or none), before returning."""
        ...

    def close(self) -> None:
        ...
