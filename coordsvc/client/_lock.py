"""Locks: one session per lock, kept alive by a daemon thread, with a fencing token.

A lock cycle is two replicated writes: ``OpenAndAcquire`` (session and queue entry in
one command) and ``CloseSession`` (which releases what the session holds).

Safety on the client side rests on one clock: ``time.monotonic()``. A keepalive sent at
``t`` that succeeds renews the session no earlier than ``t``, so the leader cannot expire
it before ``t + ttl`` (a new leader restarts session timers on takeover). ``valid_until``
is therefore ``send time of the last successful keepalive + ttl``, and the lock is
declared lost -- ``on_lost`` fires -- a safety margin *before* that, so the callback runs
before the server could hand the lock to someone else (clock rates assumed to agree
within the margin).
"""
from __future__ import annotations

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

from coordsvc.core.commands import MAX_TTL_MS, MIN_TTL_MS, Cancel, CloseSession, OpenAndAcquire, validate
from coordsvc.core.protocol import (
    KeepaliveReply,
    KeepaliveRequest,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    ResultCode,
)

from ._results import expect
from ._transport import Cancelled
from .errors import CoordError, InvalidRequest, LockTimeout, Unavailable

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["KeepaliveStarter", "Lock", "LockInfo", "acquire_lock"]

log = logging.getLogger("coordsvc.client")

LOCK_WAIT_MAX_S = 5.0
# on_lost fires this long before valid_until: max(fraction * ttl, floor).
LOST_MARGIN_FRACTION = 0.2
LOST_MARGIN_MIN_S = 0.5
# The keepalive starter wakes at most this often (it starts threads this much early), so
# a stream of short-lived locks does not wake it once per lock.
STARTER_TICK_S = 0.1
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


class Lock:
    """A held lock. ``token`` is its fencing token; ``release()`` is idempotent.

    ``valid_until`` is a ``time.monotonic()`` deadline up to which the lock is surely
    still ours; ``lost`` turns True (and ``on_lost(lock)`` runs, once, on the keepalive
    thread) as soon as that can no longer be guaranteed.
    """

    def __init__(self, client: Client, name: str, session_id: int, ttl_s: float,
                 on_lost: Callable[[Lock], None] | None, valid_until: float) -> None:
        self.name = name
        self.session_id = session_id
        self.ttl_s = ttl_s
        self.token = 0
        self._client = client
        self._on_lost = on_lost
        self._mu = threading.Lock()
        self._valid_until = valid_until
        self._session_lost = False
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None   # made when the first keepalive is due

    def __repr__(self) -> str:
        return (f"Lock(name={self.name!r}, token={self.token}, session_id={self.session_id}, "
                f"lost={self.lost}, released={self.released})")

    @property
    def ttl(self) -> float:
        """``ttl_s``, under the name CONTRACT's first client gave it."""
        return self.ttl_s

    @property
    def valid_until(self) -> float:
        with self._mu:
            return self._valid_until

    @property
    def lost(self) -> bool:
        """True once the session may have expired (the lock may belong to someone else)."""
        return self._session_lost

    @property
    def released(self) -> bool:
        return self._released

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
        # The session is this lock's alone: closing it releases the grant (or leaves the
        # queue) and hands the lock to the next waiter, in one write.
        res = self._client._write(CloseSession(self.session_id))
        expect(res, ResultCode.OK, ResultCode.NO_SESSION)

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
            self._client._write(CloseSession(self.session_id), timeout_s=timeout_s)
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

    # -- internals -----------------------------------------------------------------------

    def _start(self) -> None:
        self._client._track(self, True)
        # The thread is needed only once the first keepalive is due (a third of the ttl
        # in): a lock released before then never costs one.
        first_keepalive = self.valid_until - self.ttl_s * 2 / 3
        self._client._keepalive_starter().schedule(self, first_keepalive - STARTER_TICK_S)

    def _start_thread(self) -> None:
        with self._mu:
            if not self._released:
                self._thread = threading.Thread(target=self._keepalive, daemon=True,
                                                name=f"coordsvc-keepalive-{self.session_id}")
                self._thread.start()

    def _finish(self) -> bool:
        """Mark released and stop the keepalive thread; False if already done."""
        with self._mu:
            if self._released:
                return False
            self._released = True
            thread = self._thread
        self._stop.set()
        # on_lost may call release() from the keepalive thread itself.
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._client._track(self, False)
        return True

    def _grant(self, token: int) -> bool:
        with self._mu:
            if self._session_lost:
                return False
            self.token = token
            return True

    def _keepalive(self) -> None:
        try:
            self._keepalive_loop()
        finally:
            self._client._transport.release_thread()

    def _keepalive_loop(self) -> None:
        period = self.ttl_s / 3
        margin = max(LOST_MARGIN_FRACTION * self.ttl_s, LOST_MARGIN_MIN_S)
        next_send = self.valid_until - self.ttl_s + period
        while True:
            lost_at = self.valid_until - margin
            now = time.monotonic()
            if now >= lost_at:
                self._lose("no keepalive succeeded in time")
                return
            if self._stop.wait(max(0.0, min(next_send, lost_at) - now)):
                return
            if time.monotonic() >= lost_at:
                continue
            sent = time.monotonic()
            try:
                known = self._client._call(
                    KeepaliveRequest(self.session_id), KeepaliveReply.from_wire, leader=True,
                    timeout_s=lost_at - sent, cancel=self._stop).known
            except Cancelled:
                return
            except Unavailable:
                next_send = time.monotonic()
                continue
            except CoordError as e:
                if self._client._closed:
                    return
                log.warning("keepalive of session %d failed: %s", self.session_id, e)
                next_send = time.monotonic() + 0.1
                continue
            if not known:
                self._lose("the cluster no longer knows the session")
                return
            with self._mu:
                self._valid_until = max(self._valid_until, sent + self.ttl_s)
            next_send = sent + period

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


class KeepaliveStarter:
    """One thread per Client that starts each lock's keepalive thread when its first
    keepalive is due. It never does I/O, so a slow keepalive delays nothing here."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: list[tuple[float, int, Lock]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._purge_at = PURGE_MIN

    def schedule(self, lk: Lock, at: float) -> None:
        with self._cv:
            if self._closed:
                raise CoordError("client is closed")
            if len(self._due) >= self._purge_at:
                # Released locks wait here until their start time (up to ttl/3 away):
                # drop them now and then, keeping the heap within twice the live locks.
                self._due = [e for e in self._due if not e[2].released]
                heapq.heapify(self._due)
                self._purge_at = max(PURGE_MIN, 2 * len(self._due))
            heapq.heappush(self._due, (at, next(self._order), lk))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="coordsvc-keepalive-starter")
                self._thread.start()
            elif self._due[0][2] is lk:
                self._cv.notify()   # the new first deadline: wake the sleeper to re-arm

    def _run(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    heapq.heappop(self._due)[2]._start_thread()  # no-op once released
                # Never sooner than a tick: entries of released locks pile up due one
                # after another, and one wake-up should take them all.
                self._cv.wait(max(self._due[0][0] - now, STARTER_TICK_S) if self._due else None)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._due.clear()
            self._cv.notify()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()


def acquire_lock(client: Client, name: str, ttl_s: object, timeout_s: object,
                 on_lost: Callable[[Lock], None] | None) -> Lock:
    """Open a session, queue for ``name`` on it, wait for the grant (see Client.acquire).

    If the first write's outcome stays unknown (``Unavailable``), a session opened by it
    is not kept alive and expires after ``ttl_s``, releasing whatever it got.
    """
    if not _is_number(ttl_s) or not MIN_TTL_MS <= ttl_s * 1000 <= MAX_TTL_MS:
        raise InvalidRequest(f"ttl must be a number of seconds in [{MIN_TTL_MS / 1000:g}, "
                             f"{MAX_TTL_MS / 1000:g}], got {ttl_s!r}")
    if timeout_s is not None and not (_is_number(timeout_s) and math.isfinite(timeout_s)
                                      and timeout_s >= 0):
        raise InvalidRequest("timeout (--wait) must be a finite number of seconds >= 0 "
                             f"(None in Python waits as long as it takes), got {timeout_s!r}")
    cmd = OpenAndAcquire(name, int(round(ttl_s * 1000)), wait=timeout_s != 0)
    err = validate(cmd)
    if err is not None:
        raise InvalidRequest(err)
    start = time.monotonic()
    deadline = None if timeout_s is None else start + timeout_s
    res = client._write(cmd)
    if res.code == ResultCode.LOCK_BUSY:
        raise LockTimeout(f"lock {name!r} is held by another session")
    expect(res, ResultCode.OK, ResultCode.QUEUED)
    sid = res.data.get("session_id")
    if type(sid) is not int:
        raise CoordError("malformed reply: session_id")
    # The session's clock started no earlier than our send, hence ``start``.
    lk = Lock(client, name, sid, float(ttl_s), on_lost, valid_until=start + ttl_s)
    lk._start()
    try:
        if res.code == ResultCode.OK:
            _take_grant(lk, res.data.get("token"))
        else:
            _wait_for_grant(client, lk, deadline)
    except BaseException:
        lk.abandon(timeout_s=client.timeout)
        raise
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
