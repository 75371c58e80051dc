"""coordsvc: locks and configuration, agreed by multi-Paxos over ZeroMQ, durable in SQLite."""
from __future__ import annotations

from .client import (
    Client, Compacted, CompareFailed, CoordError, Entry, Event, FenceRejected, InvalidRequest,
    Lock, LockTimeout, Unavailable, Watch,
)

__version__ = "0.1.0"
__all__ = [
    "Client", "Compacted", "CompareFailed", "CoordError", "Entry", "Event", "FenceRejected",
    "InvalidRequest", "Lock", "LockTimeout", "Unavailable", "Watch", "__version__",
]
