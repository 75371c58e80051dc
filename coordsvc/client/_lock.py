"""Locks and leases: sessions kept alive by the client's one keepalive thread, locks with a
fencing token.

A lock of its own is one session: a lock cycle is two replicated writes,
``OpenAndAcquire`` (session and queue entry in one command) and ``CloseSession`` (which
releases what the session holds). A lease (``Client.lease``) is a session too, opened
with ``OpenSession``; any number of ephemeral keys and locks live on it
(``Acquire``/``Release`` on its session), and its one keepalive keeps them all.

Safety on the client side rests on one clock: ``time.monotonic()``. A keepalive sent at
``t`` that succeeds renews the session no earlier than ``t``, so the leader cannot expire
it before ``t + ttl`` (a new leader restarts session timers on takeover). ``valid_until``
is therefore ``send time of the last successful keepalive + ttl``, and the lock is
declared lost -- ``on_lost`` fires -- a safety margin *before* that, so the callback runs
before the server could hand the lock to someone else (clock rates assumed to agree
within the margin).
"""
from __future__ import annotations

import builtins
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeGuard

from coordsvc.core.commands import (
    MAX_LOCK_DELAY_MS,
    MAX_TTL_MS,
    MIN_TTL_MS,
    Acquire,
    AcquireShared,
    Cancel,
    CloseSession,
    Command,
    OpenAndAcquire,
    OpenSession,
    Release,
    validate,
)
from coordsvc.core.protocol import (
    MAX_KEEPALIVE_BATCH,
    KeepaliveReply,
    KeepaliveRequest,
    KeepaliveStatus,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    Result,
    ResultCode,
)

from ._results import expect
from ._transport import Cancelled
from .errors import CoordError, InvalidRequest, LockTimeout, PermissionDenied, Unavailable

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["KeepaliveLoop", "Lease", "Lock", "LockInfo", "RWLock", "acquire_lock",
           "SharedHold", "acquire_shared", "open_lease"]

log = logging.getLogger("coordsvc.client")

LOCK_WAIT_MAX_S = 5.0
# on_lost fires this long before valid_until: max(fraction * ttl, floor).
LOST_MARGIN_FRACTION = 0.2
LOST_MARGIN_MIN_S = 0.5
# The keepalive loop wakes at most this often, so a stream of short-lived locks does not
# wake it once per lock; and sends a keepalive up to BATCH_AHEAD_S early, so sessions due
# close together go in one batch.
LOOP_TICK_S = 0.1
BATCH_AHEAD_S = 0.1
# A keepalive call cut short for the sessions waiting behind it still gets this long.
MIN_CALL_S = 0.25
PURGE_MIN = 1024


@dataclass(frozen=True, slots=True)
class LockInfo:
    """One held lock as the cluster sees it (``Client.locks()``)."""

    name: str
    holder_session: int
    token: int
    waiters: tuple[int, ...]
    ttl_left_s: float | None
    age_s: float | None = None                     # since the grant, as the leader saw it
    waits_s: tuple[float | None, ...] = ()         # per waiter, in queue order
    holder: str | None = None                      # the identity (key name) holding it
    waiter_names: tuple[str, ...] = ()             # per waiter, in queue order
    kind: str = "lock"                             # "lock" | "semaphore" | "rwlock"
    limit: int = 0                                 # a semaphore's slots
    # A semaphore's or rwlock's holders: (session, token, identity, mode), grant order;
    # and each waiter's mode ("semaphore", "read", "write").
    holders: tuple[tuple[int, int, str, str], ...] = ()
    waiter_modes: tuple[str, ...] = ()


class _Kept:
    """A session this client keeps alive, by the client's one ``KeepaliveLoop``.
    ``valid_until`` is a ``time.monotonic()`` deadline up to which the session surely
    lives; ``lost`` turns True (``_lose``) as soon as that can no longer be guaranteed."""

    def __init__(self, client: Client, session_id: int, ttl_s: float, valid_until: float) -> None:
        self.session_id = session_id
        self.ttl_s = ttl_s
        self._client = client
        self._mu = threading.Lock()
        self._valid_until = valid_until
        self._session_lost = False
        self._released = False
        self._unkept = False     # _stop_keepalive: no more keepalives, nothing else
        # A keepalive every ttl/3; lost a margin before valid_until.
        self._period = ttl_s / 3
        self._margin = max(LOST_MARGIN_FRACTION * ttl_s, LOST_MARGIN_MIN_S)

    @property
    def valid_until(self) -> float:
        with self._mu:
            return self._valid_until

    @property
    def lost(self) -> bool:
        """True once the session may have expired."""
        return self._session_lost

    @property
    def released(self) -> bool:
        return self._released

    # -- internals -----------------------------------------------------------------------

    def _start(self) -> None:
        self._client._track(self, True)
        # The first keepalive is due a third of the ttl in: a lock released before then
        # never costs one.
        first_keepalive = self._valid_until - self.ttl_s + self._period
        self._client._keepalive_loop().schedule(self, first_keepalive)

    def _lost_at(self) -> float:
        """When to declare the session lost unless a keepalive succeeds first."""
        return self._valid_until - self._margin

    def _renewed(self, sent: float) -> float:
        """A keepalive sent at ``sent`` succeeded; when the next one is due."""
        with self._mu:
            self._valid_until = max(self._valid_until, sent + self.ttl_s)
        return sent + self._period

    def _stop_keepalive(self) -> None:
        """Send no more keepalives, and declare nothing lost (a frozen holder, in tests)."""
        self._unkept = True

    def _finish(self) -> bool:
        """Mark released (the keepalive loop then drops the session); False if already done."""
        with self._mu:
            if self._released:
                return False
            self._released = True
        self._client._track(self, False)
        return True

    def _lose(self, why: str) -> None:
        raise NotImplementedError


class Lock(_Kept):
    """A held lock. ``token`` is its fencing token; ``release()`` is idempotent.

    ``valid_until`` is a ``time.monotonic()`` deadline up to which the lock is surely
    still ours; ``lost`` turns True (and ``on_lost(lock)`` runs, once, on the keepalive
    thread) as soon as that can no longer be guaranteed. A lock on a lease (``lease``)
    has no session of its own: the lease's keepalive keeps it, and its ``valid_until``
    and ``lost`` are the lease's.
    """

    def __init__(self, client: Client, name: str, session_id: int, ttl_s: float,
                 on_lost: Callable[[Lock], None] | None, valid_until: float,
                 lease: Lease | None = None) -> None:
        super().__init__(client, session_id, ttl_s, valid_until)
        self.name = name
        self.token = 0
        self.lease = lease
        self._on_lost = on_lost

    def __repr__(self) -> str:
        return (f"Lock(name={self.name!r}, token={self.token}, session_id={self.session_id}, "
                f"lost={self.lost}, released={self.released})")

    @property
    def ttl(self) -> float:
        """``ttl_s``, under the name CONTRACT's first client gave it."""
        return self.ttl_s

    @property
    def valid_until(self) -> float:
        if self.lease is not None:
            return self.lease.valid_until
        with self._mu:
            return self._valid_until

    @property
    def lost(self) -> bool:
        """True once the session may have expired (the lock may belong to someone else)."""
        return self._session_lost or (self.lease is not None and self.lease.lost)

    @property
    def held(self) -> bool:
        """Granted, not released, not lost, and ``valid_until`` is still ahead."""
        return (self.token > 0 and not self._released and not self._session_lost
                and time.monotonic() < self.valid_until)

    def release(self) -> None:
        """Release the lock and close its session. A second call does nothing.

        Raises ``Unavailable`` if the cluster cannot be reached: keepalives have stopped,
        so the lock is then freed when its ttl runs out.
        """
        if not self._finish():
            return
        if self.lease is not None:
            # The lease goes on: release this lock alone (or leave its queue).
            res = self._client._write(self._leave())
            expect(res, ResultCode.OK, ResultCode.NO_SESSION, ResultCode.NOT_HELD)
            return
        # The session is this lock's alone: closing it releases the grant (or leaves the
        # queue) and hands the lock to the next waiter, in one write.
        res = self._client._write(CloseSession(self.session_id))
        expect(res, ResultCode.OK, ResultCode.NO_SESSION)

    def _leave(self) -> Command:
        """The write that gives up this lock on its lease: release the grant we know of,
        else leave the queue (which also releases a grant we have not heard of yet)."""
        if self.token > 0:
            return Release(self.name, self.session_id, self.token)
        return Cancel(self.name, self.session_id)

    def release_quietly(self) -> None:
        """``release()`` that logs instead of raising (for exits that already fail)."""
        try:
            self.release()
        except CoordError as e:
            log.warning("releasing lock %r failed: %s", self.name, e)

    def abandon(self, timeout_s: float) -> None:
        """Stop keeping alive and close the session (which also leaves the wait queue and
        frees a grant); best effort, never raises."""
        if not self._finish():
            return
        try:
            self._client._write(self._leave() if self.lease is not None
                                else CloseSession(self.session_id), timeout_s=timeout_s)
        except CoordError as e:
            log.debug("abandoning lock %r: closing session %d failed: %s",
                      self.name, self.session_id, e)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.release()
        else:
            self.release_quietly()

    def _finish(self) -> bool:
        if self.lease is None:
            return super()._finish()
        with self._mu:
            if self._released:
                return False
            self._released = True
        self.lease._detach(self)
        return True

    def _grant(self, token: int) -> bool:
        with self._mu:
            if self.lost:
                return False
            self.token = token
            return True

    def _lose(self, why: str) -> None:
        with self._mu:
            if self._session_lost:
                return
            self._session_lost = True
            fire = self.token > 0 and not self._released
        if not fire:
            return
        log.warning("lock %r (token %d) lost: %s", self.name, self.token, why)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                log.exception("on_lost callback of lock %r raised", self.name)


class Lease(_Kept):
    """A lease: a session of the cluster that this client keeps alive, with one keepalive,
    for everything on it -- ephemeral keys (``put(..., lease=ls)``) and locks
    (``lock(..., lease=ls)``). When it ends (``revoke()``, leaving its ``with`` block, or
    expiry after keepalives stop) the cluster deletes its keys and releases its locks in
    one step. ``id`` is the session id; ``valid_until`` a ``time.monotonic()`` deadline up
    to which it surely lives; ``lost`` turns True (and ``on_lost(lease)`` runs once, and
    every lock on it is lost) as soon as that can no longer be guaranteed.
    """

    def __init__(self, client: Client, session_id: int, ttl_s: float, valid_until: float,
                 on_lost: Callable[[Lease], None] | None) -> None:
        super().__init__(client, session_id, ttl_s, valid_until)
        self._on_lost = on_lost
        self._locks: set[Lock] = set()

    def __repr__(self) -> str:
        return f"Lease(id={self.id}, ttl_s={self.ttl_s}, lost={self.lost}, revoked={self.revoked})"

    @property
    def id(self) -> int:
        return self.session_id

    @property
    def revoked(self) -> bool:
        return self._released

    @property
    def alive(self) -> bool:
        """Not revoked, not lost, and ``valid_until`` is still ahead."""
        return not self._released and not self._session_lost and time.monotonic() < self.valid_until

    def revoke(self) -> None:
        """End the lease: the cluster deletes its keys and releases its locks (each to its
        next waiter). Done when it returns; a second call does nothing. Raises
        ``Unavailable`` if the cluster cannot be reached: keepalives have stopped, so the
        lease then ends when its ttl runs out."""
        if not self._finish():
            return
        self._end_locks()
        res = self._client._write(CloseSession(self.session_id))
        expect(res, ResultCode.OK, ResultCode.NO_SESSION)

    def abandon(self, timeout_s: float) -> None:
        """``revoke()`` as best effort, never raising (a closing client)."""
        if not self._finish():
            return
        self._end_locks()
        try:
            self._client._write(CloseSession(self.session_id), timeout_s=timeout_s)
        except CoordError as e:
            log.debug("revoking lease %d failed: %s", self.session_id, e)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.revoke()
            return
        try:
            self.revoke()
        except CoordError as e:
            log.warning("revoking lease %d failed: %s", self.session_id, e)

    def _attach(self, lk: Lock) -> None:
        with self._mu:
            if self._released or self._session_lost:
                raise CoordError(f"lease {self.session_id} has ended")
            self._locks.add(lk)

    def _detach(self, lk: Lock) -> None:
        with self._mu:
            self._locks.discard(lk)

    def _end_locks(self) -> None:
        with self._mu:
            locks, self._locks = builtins.list(self._locks), set()
        for lk in locks:
            with lk._mu:
                lk._released = True

    def _lose(self, why: str) -> None:
        with self._mu:
            if self._session_lost:
                return
            self._session_lost = True
            fire = not self._released
            locks = builtins.list(self._locks)
        if not fire:
            return
        log.warning("lease %d lost: %s", self.session_id, why)
        for lk in locks:
            lk._lose(why)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                log.exception("on_lost callback of lease %d raised", self.session_id)


class KeepaliveLoop:
    """The Client's one background keepalive: one thread, one socket set, for every
    session the client keeps (locks, leases, semaphore and rwlock holds, election terms).

    Sessions wait in a heap by the time their next keepalive is due (ttl/3 after the last
    successful one). The thread takes every session due within ``BATCH_AHEAD_S`` (sending
    a little early is always safe: ``valid_until`` counts from the send), at most
    ``MAX_KEEPALIVE_BATCH`` at a time, and renews them with one batch request. Each
    session keeps its own ttl, period, lost margin and ``on_lost``: a session the cluster
    no longer knows or refuses is lost alone. A call never outlasts the earliest lost
    deadline in its batch, nor the half-way point between due and lost of any session
    waiting behind it, so one slow batch cannot starve the others. ``on_lost`` callbacks
    run on this thread: a slow one delays the client's other keepalives.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._cv = threading.Condition()
        # (due, order, session, rescue-by): rescue-by is the latest time a call may end and
        # still leave the session half its grace to be renewed.
        self._due: list[tuple[float, int, _Kept, float]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cancel = threading.Event()
        self._purge_at = PURGE_MIN
        self.batches_sent = 0

    def schedule(self, k: _Kept, at: float) -> None:
        with self._cv:
            if self._closed:
                raise CoordError("client is closed")
            self._push(k, at)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="coordsvc-keepalive")
                self._thread.start()
            elif self._due[0][2] is k:
                self._cv.notify()   # the new first deadline: wake the sleeper to re-arm

    def _push(self, k: _Kept, at: float) -> None:
        if len(self._due) >= self._purge_at:
            # Released sessions wait here until they are due (up to ttl/3 away): drop them
            # now and then, keeping the heap within twice the live ones.
            self._due = [e for e in self._due if not e[2].released]
            heapq.heapify(self._due)
            self._purge_at = max(PURGE_MIN, 2 * len(self._due))
        lost_at = k._lost_at()
        at = min(at, lost_at)   # a retry's back-off never delays declaring it lost
        rescue = at + (lost_at - at) / 2
        heapq.heappush(self._due, (at, next(self._order), k, rescue))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._due.clear()
            self._cancel.set()
            self._cv.notify()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    batch, lost, rescue_by = self._take()
                    if batch is None:
                        return
                for k in lost:
                    k._lose("no keepalive succeeded in time")
                if batch:
                    self._send(batch, rescue_by)
        finally:
            self._client._transport.release_thread()

    def _take(self) -> tuple[list[_Kept] | None, list[_Kept], float]:
        """Wait (holding the condition) until sessions are due; those to renew now, those
        past their lost deadline, and when the others behind them need the thread back.
        None once closed."""
        while True:
            if self._closed:
                return None, [], 0.0
            now = time.monotonic()
            batch: list[_Kept] = []
            lost: list[_Kept] = []
            while (self._due and self._due[0][0] <= now + BATCH_AHEAD_S
                   and len(batch) < MAX_KEEPALIVE_BATCH):
                k = heapq.heappop(self._due)[2]
                if k.released or k.lost or k._unkept:
                    continue
                (lost if now >= k._lost_at() else batch).append(k)
            if batch or lost:
                rescue_by = min((e[3] for e in self._due), default=math.inf)
                return batch, lost, rescue_by
            # Never sooner than a tick: released entries pile up due one after another.
            self._cv.wait(max(self._due[0][0] - BATCH_AHEAD_S - now, LOOP_TICK_S)
                          if self._due else None)

    def _send(self, batch: list[_Kept], rescue_by: float) -> None:
        sent = time.monotonic()
        lost_by = min(k._lost_at() for k in batch)
        # Bounded by the batch's first lost deadline, and by the sessions waiting behind
        # it -- but never cut so short that a slow leader could never answer.
        end = min(lost_by, max(rescue_by, sent + MIN_CALL_S))
        self.batches_sent += 1
        try:
            reply = self._client._call(
                KeepaliveRequest.batch([k.session_id for k in batch]), KeepaliveReply.from_wire,
                leader=True, timeout_s=end - sent, cancel=self._cancel)
            if len(reply.sessions) != len(batch):
                raise CoordError("malformed keepalive reply: one status per session expected")
        except Cancelled:
            return
        except Unavailable:
            self._reschedule(batch, time.monotonic())   # those past lost_at are lost then
            return
        except PermissionDenied as e:
            # The key was removed (its sessions closed with it), or lost the rights that
            # sessions need: no keepalive of this client will ever succeed.
            for k in batch:
                k._lose(f"the cluster refused the keepalive: {e}")
            return
        except CoordError as e:
            if self._client._closed:
                return
            log.warning("keepalive of %d session(s) failed: %s", len(batch), e)
            self._reschedule(batch, time.monotonic() + 0.1)
            return
        again: list[tuple[_Kept, float]] = []
        for k, st in zip(batch, reply.sessions, strict=True):
            if st is KeepaliveStatus.KNOWN:
                again.append((k, k._renewed(sent)))
            elif st is KeepaliveStatus.UNKNOWN:
                k._lose("the cluster no longer knows the session")
            else:
                k._lose("the cluster refused the keepalive: the session belongs to another principal")
        with self._cv:
            if not self._closed:
                for k, at in again:
                    self._push(k, at)

    def _reschedule(self, batch: list[_Kept], at: float) -> None:
        with self._cv:
            if not self._closed:
                for k in batch:
                    self._push(k, at)


def _check_ttl(ttl_s: object) -> float:
    if not _is_number(ttl_s) or not MIN_TTL_MS <= ttl_s * 1000 <= MAX_TTL_MS:
        raise InvalidRequest(f"ttl must be a number of seconds in [{MIN_TTL_MS / 1000:g}, "
                             f"{MAX_TTL_MS / 1000:g}], got {ttl_s!r}")
    return float(ttl_s)


def open_lease(client: Client, ttl_s: object, on_lost: Callable[[Lease], None] | None) -> Lease:
    """Open a session to serve as a lease and keep it alive (see Client.lease). If the
    write's outcome stays unknown, a session it opened expires after ``ttl_s``."""
    ttl = _check_ttl(ttl_s)
    start = time.monotonic()
    res = client._write(OpenSession(int(round(ttl * 1000))))
    expect(res, ResultCode.OK)
    sid = res.data.get("session_id")
    if type(sid) is not int:
        raise CoordError("malformed reply: session_id")
    # The session's clock started no earlier than our send, hence ``start``.
    ls = Lease(client, sid, ttl, start + ttl, on_lost)
    ls._start()
    return ls


def _check_delay(lock_delay_s: object) -> int:
    if not _is_number(lock_delay_s) or not 0 <= lock_delay_s * 1000 <= MAX_LOCK_DELAY_MS:
        raise InvalidRequest(f"lock_delay must be a number of seconds in [0, "
                             f"{MAX_LOCK_DELAY_MS / 1000:g}], got {lock_delay_s!r}")
    return int(round(lock_delay_s * 1000))


def acquire_lock(client: Client, name: str, ttl_s: object, timeout_s: object,
                 on_lost: Callable[[Lock], None] | None, lease: Lease | None = None,
                 lock_delay_s: object = 0) -> Lock:
    """Open a session, queue for ``name`` on it, wait for the grant (see Client.acquire);
    or, with ``lease``, queue on the lease's session.

    If the first write's outcome stays unknown (``Unavailable``), a session opened by it
    is not kept alive and expires after ``ttl_s``, releasing whatever it got. (On a lease,
    a grant the unknown write got is the lease's until it ends.)
    """
    delay_ms = _check_delay(lock_delay_s)
    if lease is not None:
        return _acquire_on_lease(client, name, timeout_s, on_lost, lease, delay_ms)
    ttl = _check_ttl(ttl_s)
    timeout = _check_timeout(timeout_s)
    cmd = OpenAndAcquire(name, int(round(ttl * 1000)), wait=timeout != 0, lock_delay_ms=delay_ms)
    err = validate(cmd)
    if err is not None:
        raise InvalidRequest(err)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    res = client._write(cmd)
    if res.code == ResultCode.LOCK_BUSY:
        raise LockTimeout(f"lock {name!r} is held by another session")
    expect(res, ResultCode.OK, ResultCode.QUEUED)
    sid = res.data.get("session_id")
    if type(sid) is not int:
        raise CoordError("malformed reply: session_id")
    # The session's clock started no earlier than our send, hence ``start``.
    lk = Lock(client, name, sid, ttl, on_lost, valid_until=start + ttl)
    lk._start()
    _granted_or_abandoned(client, lk, res, deadline)
    return lk


def _check_timeout(timeout_s: object) -> float | None:
    if timeout_s is None:
        return None
    if not (_is_number(timeout_s) and math.isfinite(timeout_s) and timeout_s >= 0):
        raise InvalidRequest("timeout (--wait) must be a finite number of seconds >= 0 "
                             f"(None in Python waits as long as it takes), got {timeout_s!r}")
    return float(timeout_s)


def _granted_or_abandoned(client: Client, lk: Lock, res: Result, deadline: float | None) -> None:
    try:
        if res.code == ResultCode.OK:
            _take_grant(lk, res.data.get("token"))
        else:
            _wait_for_grant(client, lk, deadline)
    except BaseException:
        lk.abandon(timeout_s=client.timeout)
        raise


def acquire_shared(client: Client, name: str, mode: str, limit: int, ttl_s: object,
                   timeout_s: object, on_lost: Callable[[Lock], None] | None,
                   lease: Lease | None) -> tuple[Lock, Lease | None]:
    """A slot of semaphore ``name`` or a read/write hold of rwlock ``name``: on ``lease``,
    or on a lease of its own (returned, to be revoked with the hold)."""
    own = None
    if lease is None:
        _check_timeout(timeout_s)
        own = lease = open_lease(client, ttl_s, None)
    try:
        return _acquire_on_lease(client, name, timeout_s, on_lost, lease, 0, (mode, limit)), own
    except BaseException:
        if own is not None:
            own.abandon(client.timeout)
        raise


def _acquire_on_lease(client: Client, name: str, timeout_s: object,
                      on_lost: Callable[[Lock], None] | None, lease: Lease, delay_ms: int,
                      shared: tuple[str, int] | None = None) -> Lock:
    if not isinstance(lease, Lease):
        raise InvalidRequest(f"lease must be a Lease, got {type(lease).__name__}")
    if lease._client is not client:
        raise InvalidRequest("that lease belongs to another Client")
    timeout = _check_timeout(timeout_s)
    cmd: Acquire | AcquireShared = Acquire(name, lease.session_id, wait=timeout != 0,
                                           lock_delay_ms=delay_ms)
    if shared is not None:
        cmd = AcquireShared(name, lease.session_id, shared[0], shared[1], wait=timeout != 0)
    err = validate(cmd)
    if err is not None:
        raise InvalidRequest(err)
    deadline = None if timeout is None else time.monotonic() + timeout
    lk = Lock(client, name, lease.session_id, lease.ttl_s, on_lost, lease.valid_until, lease)
    lease._attach(lk)    # raises if the lease has ended
    try:
        res = client._write(cmd)
    except BaseException:
        lease._detach(lk)
        raise
    if res.code in (ResultCode.LOCK_BUSY, ResultCode.NO_SESSION):
        lease._detach(lk)
        raise LockTimeout(f"{name!r} is held by another session" if res.code == ResultCode.LOCK_BUSY
                          else f"{name!r}: lease {lease.session_id} has ended")
    try:
        expect(res, ResultCode.OK, ResultCode.QUEUED)
    except BaseException:
        lease._detach(lk)
        raise
    _granted_or_abandoned(client, lk, res, deadline)
    return lk


def _take_grant(lk: Lock, token: object) -> None:
    if type(token) is not int or token < 1:
        raise CoordError("malformed reply: token")
    if not lk._grant(token):
        raise LockTimeout(f"lock {lk.name!r}: session expired before the grant arrived")


def _wait_for_grant(client: Client, lk: Lock, deadline: float | None) -> None:
    while True:
        if lk.lost:
            raise LockTimeout(f"lock {lk.name!r}: the session expired while waiting")
        wait_s = LOCK_WAIT_MAX_S
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
            if wait_s <= 0:
                _give_up(client, lk)
                raise LockTimeout(f"lock {lk.name!r} not acquired in time")
        reply = client._call(
            LockWaitRequest(lk.name, lk.session_id, int(wait_s * 1000)), LockWaitReply.from_wire,
            leader=True, timeout_s=wait_s + client.timeout, long_poll_s=wait_s)
        if reply.state is LockState.HELD:
            _take_grant(lk, reply.token)
            return
        if reply.state is LockState.NONE:
            raise LockTimeout(f"lock {lk.name!r}: the session expired while waiting")


def _give_up(client: Client, lk: Lock) -> None:
    """Leave the queue: a grant may have raced the timeout, and Cancel releases it too.

    Only once Cancel is applied is "LockTimeout: nothing is held" true; if it cannot be
    confirmed the outcome is unknown, so ``Unavailable`` propagates instead.
    """
    res = client._write(Cancel(lk.name, lk.session_id))
    expect(res, ResultCode.OK, ResultCode.NO_SESSION)


def _is_number(v: object) -> TypeGuard[float]:
    """A real number, not NaN, that a float holds (an int of 400 digits is not one)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return not math.isnan(float(v))
    except OverflowError:
        return False


class RWLock:
    """A read/write lock of the cluster (``Client.rwlock``): many readers or one writer,
    granted in FIFO order (a waiting writer holds back the readers behind it), each hold
    with a fencing token. ``with rw.read(ttl=10.0): ...`` / ``with rw.write(...)``."""

    def __init__(self, client: Client, name: str) -> None:
        self.name = name
        self._client = client

    def read(self, ttl: float = 10.0, timeout: float | None = 30.0,
             on_lost: Callable[[Lock], None] | None = None,
             lease: Lease | None = None) -> SharedHold:
        return SharedHold(self._client, self.name, "read", 0, ttl, timeout, on_lost, lease)

    def write(self, ttl: float = 10.0, timeout: float | None = 30.0,
              on_lost: Callable[[Lock], None] | None = None,
              lease: Lease | None = None) -> SharedHold:
        return SharedHold(self._client, self.name, "write", 0, ttl, timeout, on_lost, lease)


class SharedHold:
    """A semaphore slot or rwlock hold, acquired on ``__enter__`` (which returns its
    ``Lock``: ``token``, ``held``, ``valid_until``) and released on ``__exit__``."""

    def __init__(self, client: Client, name: str, mode: str, limit: int, ttl_s: float,
                 timeout_s: float | None, on_lost: Callable[[Lock], None] | None,
                 lease: Lease | None) -> None:
        self._args = (client, name, mode, limit, ttl_s, timeout_s, on_lost, lease)
        self._held: tuple[Lock, Lease | None] | None = None

    def acquire(self) -> Lock:
        if self._held is None:
            self._held = acquire_shared(*self._args)
        return self._held[0]

    def release(self) -> None:
        if self._held is None:
            return
        lk, own = self._held
        if own is not None:
            own.revoke()      # the hold's own session: closing it releases the slot
        else:
            lk.release()

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.release()
            return
        try:
            self.release()
        except CoordError as e:
            log.warning("releasing %r failed: %s", self._args[1], e)
