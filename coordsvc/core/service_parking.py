"""Requests parked until something happens: watches until an event, lock waits until a grant.

Both are long polls with a deadline. A parked request is answered exactly once: when its
condition holds (after an apply), when its deadline passes (``expire``), or -- lock waits
are leader state -- when leadership ends (``take_lock_waits``). Each list is bounded by
``MAX_PARKED``; past it the request is answered ``busy`` at once.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .machine import Grant, Machine, RevisionCompacted
from .protocol import (
    ErrorCode,
    ErrorReply,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    WatchReply,
    WatchRequest,
)
from .service_outbox import Outbox, Route

__all__ = ["MAX_PARKED", "ParkedLockWait", "ParkedWatch", "Parking"]

MAX_PARKED = 50_000


@dataclass(frozen=True, slots=True)
class ParkedWatch:
    route: Route
    rid: object
    deadline_ms: int
    request: WatchRequest


@dataclass(frozen=True, slots=True)
class ParkedLockWait:
    route: Route
    rid: object
    deadline_ms: int
    name: str
    session_id: int


class Parking:
    __slots__ = ("_out", "lock_waits", "watches")

    def __init__(self, out: Outbox) -> None:
        self._out = out
        self.watches: list[ParkedWatch] = []
        self.lock_waits: list[ParkedLockWait] = []

    def next_deadline_ms(self, due_ms: int) -> int:
        """The earlier of ``due_ms`` and every parked deadline."""
        for w in self.watches:
            due_ms = min(due_ms, w.deadline_ms)
        for p in self.lock_waits:
            due_ms = min(due_ms, p.deadline_ms)
        return due_ms

    # -- watches --------------------------------------------------------------------------

    def watch(self, m: Machine, route: Route, rid: object, req: WatchRequest, now_ms: int) -> None:
        w = ParkedWatch(route, rid, now_ms + req.wait_ms, req)
        if self._try_watch(m, w):
            return
        if req.wait_ms == 0:
            self._out.reply(route, rid, WatchReply((), m.revision))
        elif len(self.watches) >= MAX_PARKED:
            self._out.error(route, rid, ErrorCode.BUSY, "too many parked watches on this node")
        else:
            self.watches.append(w)

    def _try_watch(self, m: Machine, w: ParkedWatch) -> bool:
        """Answer ``w`` if there is something to say (events, or that they are gone)."""
        req = w.request
        try:
            events = m.events_since(req.selector, req.after, req.limit)
        except RevisionCompacted as e:
            oldest = e.oldest_available_revision
            self._out.reply(w.route, w.rid, ErrorReply(
                ErrorCode.COMPACTED, f"revision {req.after + 1} is compacted; oldest available "
                f"is {oldest}", oldest=oldest))
            return True
        if not events:
            return False
        self._out.reply(w.route, w.rid, WatchReply(tuple(events), m.revision))
        return True

    def wake_watches(self, m: Machine) -> None:
        """The machine changed: answer every watch that now has events."""
        self.watches = [w for w in self.watches if not self._try_watch(m, w)]

    # -- lock waits -----------------------------------------------------------------------

    def lock_wait(self, m: Machine, route: Route, rid: object, req: LockWaitRequest,
                  now_ms: int) -> None:
        p = ParkedLockWait(route, rid, now_ms + req.wait_ms, req.name, req.session_id)
        if self._try_lock_wait(m, p, final=req.wait_ms == 0):
            return
        if len(self.lock_waits) >= MAX_PARKED:
            self._out.error(route, rid, ErrorCode.BUSY, "too many parked lock waits on this node")
        else:
            self.lock_waits.append(p)

    def _try_lock_wait(self, m: Machine, p: ParkedLockWait, final: bool) -> bool:
        """Answer ``p`` unless it is still waiting and may wait on (not ``final``)."""
        owner = m.lock_owner(p.name)
        if owner is not None and owner[0] == p.session_id:
            self._out.reply(p.route, p.rid, LockWaitReply(LockState.HELD, owner[1]))
        elif not m.waiting(p.name, p.session_id):
            self._out.reply(p.route, p.rid, LockWaitReply(LockState.NONE))
        elif final:
            self._out.reply(p.route, p.rid, LockWaitReply(LockState.WAITING))
        else:
            return False
        return True

    def wake_lock_waits(self, m: Machine, grants: Iterable[Grant]) -> None:
        """Answer the lock waits of sessions just granted their lock."""
        if not self.lock_waits:
            return
        granted = {(g.name, g.session_id) for g in grants}
        self.lock_waits = [p for p in self.lock_waits
                           if (p.name, p.session_id) not in granted
                           or not self._try_lock_wait(m, p, final=True)]

    def take_lock_waits(self) -> list[ParkedLockWait]:
        """Leadership ended: every lock wait, to be redirected to the new leader."""
        out, self.lock_waits = self.lock_waits, []
        return out

    # -- deadlines ------------------------------------------------------------------------

    def expire(self, m: Machine, now_ms: int) -> None:
        """Answer every request whose wait ran out: no events, or where the lock stands."""
        if self.watches:
            keep = []
            for w in self.watches:
                if now_ms >= w.deadline_ms:
                    self._out.reply(w.route, w.rid, WatchReply((), m.revision))
                else:
                    keep.append(w)
            self.watches = keep
        if self.lock_waits:
            waits = []
            for p in self.lock_waits:
                if now_ms >= p.deadline_ms:
                    self._try_lock_wait(m, p, final=True)
                else:
                    waits.append(p)
            self.lock_waits = waits
