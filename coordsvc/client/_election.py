"""Elections: a lock whose holder is the leader, with a value everyone can read and watch.

A campaign is ``Campaign`` on a lease: the machine queues the candidate (FIFO, like a
lock) and, whenever the election's lock passes to a candidate, writes the election's
record key -- ``ELECTION_PREFIX + name``, the lock's own name -- with the leader's token
and value; when nobody is left it deletes it. So ``leader()`` is a linearizable get and
``observe()`` is a watch of that one key: every change of leader, in log order, none
skipped or repeated, across leader changes of the cluster. Reading the record needs the
lock right on the election's name, nothing else.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from coordsvc.core.commands import ELECTION_PREFIX, Campaign, validate
from coordsvc.core.protocol import ResultCode

from ._lock import Lease, Lock, _check_timeout, _granted_or_abandoned, open_lease
from ._results import expect
from .errors import CoordError, InvalidRequest, LockTimeout

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Election", "Leader", "Term", "parse_record"]

log = logging.getLogger("coordsvc.client")


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads an election: its campaign's ``value`` and its term's fencing ``token``."""

    value: bytes
    token: int


def parse_record(raw: bytes) -> Leader:
    """An election record (``b"<token>\\n<value>"``) as a ``Leader``."""
    head, _, value = raw.partition(b"\n")
    try:
        return Leader(value, int(head))
    except ValueError:
        raise CoordError(f"malformed election record {raw[:40]!r}") from None


class Term:
    """A won campaign: ``token`` (strictly increasing across terms), ``value``, and
    ``resign()`` (also on leaving its ``with`` block). ``lost`` turns True when the term's
    lease may have expired (someone else may lead); ``held`` while surely leading."""

    def __init__(self, lock: Lock, value: bytes, own: Lease | None) -> None:
        self.lock = lock
        self.value = value
        self._own = own

    @property
    def token(self) -> int:
        return self.lock.token

    @property
    def held(self) -> bool:
        return self.lock.held

    @property
    def lost(self) -> bool:
        return self.lock.lost

    @property
    def valid_until(self) -> float:
        return self.lock.valid_until

    def resign(self) -> None:
        """Step down (the next candidate, if any, becomes leader). Idempotent."""
        if self._own is not None:
            self._own.revoke()
        else:
            self.lock.release()

    def __enter__(self) -> Term:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.resign()
            return
        try:
            self.resign()
        except CoordError as e:
            log.warning("resigning from %r failed: %s", self.lock.name, e)


class Election:
    """Election ``name`` (``Client.election``)."""

    def __init__(self, client: Client, name: str) -> None:
        err = validate(Campaign(name, 1, b""))
        if err is not None:
            raise InvalidRequest(err)
        self.name = name
        self.key = ELECTION_PREFIX + name
        self._client = client

    def campaign(self, value: str | bytes, ttl: float = 10.0, timeout: float | None = None,
                 on_lost: Callable[[Lock], None] | None = None,
                 lease: Lease | None = None) -> Term:
        """Block until this candidate leads (FIFO among candidates); its ``Term``.
        ``LockTimeout`` if not leader within ``timeout`` (then it is no candidate either).
        Its session is a lease of its own unless ``lease``."""
        c = self._client
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(raw, bytes):
            raise InvalidRequest(f"value must be str or bytes, got {type(value).__name__}")
        timeout_s = _check_timeout(timeout)
        own = None
        if lease is None:
            own = lease = open_lease(c, ttl, None)
        try:
            cmd = Campaign(self.name, lease.session_id, raw, wait=timeout_s != 0)
            err = validate(cmd)
            if err is not None:
                raise InvalidRequest(err)
            lk = Lock(c, self.key, lease.session_id, lease.ttl_s, on_lost, lease.valid_until, lease)
            lease._attach(lk)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            res = c._write(cmd)
            if res.code in (ResultCode.LOCK_BUSY, ResultCode.NO_SESSION):
                lease._detach(lk)
                raise LockTimeout(f"election {self.name!r} has a leader")
            expect(res, ResultCode.OK, ResultCode.QUEUED)
            _granted_or_abandoned(c, lk, res, deadline)
        except BaseException:
            if own is not None:
                own.abandon(c.timeout)
            raise
        return Term(lk, raw, own)

    def leader(self) -> Leader | None:
        """The current leader (a linearizable read), or None when nobody leads."""
        e = self._client.get(self.key)
        return None if e is None else parse_record(e.value)

    def observe(self) -> Iterator[Leader | None]:
        """The current leader (or None), then every change of leader in order -- None when
        the last candidate left -- for ever (close the iterator to stop)."""
        lst = self._client.list(self.key)
        current = next((e for e in lst if e.key == self.key), None)
        yield None if current is None else parse_record(current.value)
        w = self._client.watch(self.key, start_revision=lst.revision + 1)
        try:
            for ev in w:
                if ev.key != self.key:
                    continue    # another election whose name starts with this one's
                yield parse_record(ev.value) if ev.type == "put" else None
        finally:
            w.close()

