"""coordsvc: locks and configuration, agreed by multi-Paxos over ZeroMQ, durable in SQLite."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "Client", "Compacted", "CompareFailed", "CoordError", "Election", "Entry", "Event",
    "FenceRejected", "InvalidRequest", "Leader", "Lease", "LeaseExpired", "Lock", "LockTimeout",
    "MembershipRefused", "PermissionDenied", "QuotaExceeded", "RWLock", "Term", "Unavailable",
    "Watch", "__version__",
]

if TYPE_CHECKING:
    from .client import (
        Client,
        Compacted,
        CompareFailed,
        CoordError,
        Election,
        Entry,
        Event,
        FenceRejected,
        InvalidRequest,
        Leader,
        Lease,
        LeaseExpired,
        Lock,
        LockTimeout,
        MembershipRefused,
        PermissionDenied,
        QuotaExceeded,
        RWLock,
        Term,
        Unavailable,
        Watch,
    )


def __getattr__(name: str) -> Any:
    # The client is imported on first use, so a node process (which never needs it)
    # starts without paying for it.
    if name in __all__:
        from . import client
        return getattr(client, name)
    raise AttributeError(f"module 'coordsvc' has no attribute {name!r}")
