"""The client's exception tree. Every error a ``Client`` call raises is a ``CoordError``.

```
CoordError              the base; also "you misused the client" (e.g. it is closed)
├── CompareFailed       if_revision did not match: nothing was written
├── FenceRejected       the fencing token is no longer the newest grant: nothing was written
├── InvalidRequest      bad key, value too large, bad ttl, bad endpoints or timeout for
│                       Client(...): nothing was written (never TypeError/ValueError)
├── LockTimeout         the lock was not acquired in time: nothing is held
├── LeaseExpired        the lease a put named has ended: nothing was written
├── Compacted           a watch started before the oldest revision the cluster still keeps
├── MembershipRefused   a membership change was refused (one in flight, no live quorum
│                       left, not a member, ...): nothing was changed
├── PermissionDenied    the cluster refused this client's key (or it has none), or the
│                       request is outside the key's rights: nothing was done
├── QuotaExceeded       a put past the cluster's [limits] max_keys or max_db_bytes: nothing
│                       was written (deletes, reads and locks still work)
├── SnapshotGone        the node no longer holds a backup being saved (snapshot_save retries)
└── Unavailable         no quorum answered within the timeout: the outcome is unknown
```
"""
from __future__ import annotations

__all__ = [
    "Compacted", "CompareFailed", "CoordError", "FenceRejected", "InvalidRequest", "LeaseExpired",
    "LockTimeout", "MembershipRefused", "PermissionDenied", "QuotaExceeded", "SnapshotGone",
    "Unavailable",
]


class CoordError(Exception):
    """Base class of every coordsvc client error."""


class CompareFailed(CoordError):
    """The ``if_revision`` condition did not hold: nothing was written."""

    def __init__(self, message: str, current_revision: int | None = None) -> None:
        super().__init__(message)
        #: The key's revision when the compare failed (0: the key did not exist), if known.
        self.current_revision = current_revision


class FenceRejected(CoordError):
    """The fencing token is stale (a newer grant exists or the lock is gone): nothing was written."""


class InvalidRequest(CoordError):
    """The request or an argument breaks a limit or a type (key, value size, ttl, endpoints,
    timeout, ...): nothing was written."""


class LockTimeout(CoordError):
    """The lock was not acquired within the timeout: nothing is held."""


class LeaseExpired(CoordError):
    """The lease named by a put has ended (revoked, or expired): nothing was written."""


class MembershipRefused(CoordError):
    """The leader refused a membership change; the message says why. Nothing changed."""


class PermissionDenied(CoordError):
    """Nothing was done: the cluster refused this client's key (unknown, or removed with
    ``auth remove``), the client has no key for a secure cluster (or a key for an insecure
    one), or the request is outside the key's rights (read/write/lock prefixes, admin), or
    touches another identity's session or client id. A refused key is reported as soon as
    the CURVE handshake fails, not after the timeout."""


class SnapshotGone(CoordError):
    """The node serving a backup no longer holds it (it restarted, or the save sat idle too
    long). ``Client.snapshot_save`` starts over by itself a few times before raising it."""


class Unavailable(CoordError):
    """No quorum answered within the timeout: the outcome of a write is unknown."""


class Compacted(CoordError):
    """The requested start revision is older than the cluster's event window."""

    def __init__(self, message: str, oldest: int | None = None) -> None:
        super().__init__(message)
        #: The oldest revision a watch can still start from, if the node said.
        self.oldest = oldest


class QuotaExceeded(CoordError):
    """A put was refused because a quota (``max_keys``, ``max_db_bytes``) is exceeded:
    nothing was written. The message names the quota."""
