"""The Python client of coordsvc (CONTRACT section 4): ``from coordsvc import Client``.

```python
with Client(["tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102"]) as c:
    rev = c.put("app/db_url", "postgres://...")
    with c.lock("deploy", ttl=10.0, timeout=30.0) as lk:
        c.put("app/version", "42", fence=lk)      # FenceRejected once lk is stale
    for ev in c.watch("app/", start_revision=rev):
        print(ev.type, ev.key, ev.value, ev.revision)
```
"""
from __future__ import annotations

from ._client import Client, ClientTransport
from ._election import Election, Leader, Term
from ._lock import Lease, Lock, LockInfo, RWLock, SharedHold
from ._types import Entry, EntryList, Event, Principal
from ._watch import Watch
from .errors import (
    Compacted,
    CompareFailed,
    CoordError,
    FenceRejected,
    InvalidRequest,
    LeaseExpired,
    LockTimeout,
    MembershipRefused,
    PermissionDenied,
    QuotaExceeded,
    SnapshotGone,
    Unavailable,
)

__all__ = [
    "Client", "ClientTransport", "Compacted", "CompareFailed", "CoordError", "Election", "Entry",
    "EntryList", "Event", "FenceRejected", "InvalidRequest", "Leader", "Lease", "LeaseExpired",
    "Lock", "LockInfo", "LockTimeout", "MembershipRefused", "PermissionDenied", "Principal",
    "QuotaExceeded", "RWLock", "SharedHold", "SnapshotGone", "Term", "Unavailable", "Watch",
]
