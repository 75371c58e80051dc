"""Requests parked until something happens: watches until an event, lock waits until a grant.

Both are long polls with a deadline. A parked request is answered exactly once: when its
condition holds (after an apply), when its deadline passes (``expire``), when the principal
that sent it is removed (``revoke``: ``permission_denied``), or -- lock waits are leader
state -- when leadership ends (``take_lock_waits``).

A watch sees only keys its principal may read: ``readable`` (None: every key under its
prefixes is readable, so nothing is filtered) is applied inside ``events_page``, so its
``limit`` counts only events the watcher may see.

Costs do not grow with the number of parked requests:

- An applied change wakes only the watches that can see it. Watches are indexed by each
  prefix they name; for a changed key the index is looked up once per distinct prefix
  *length* in use (``key[:n]``), so a change costs O(lengths), not O(watches).
- Lock waits are indexed by (lock, session): a grant wakes its own waiter.
- Deadlines sit in one heap (answered entries are skipped, and the heap is rebuilt when
  they outnumber the live ones), so ``next_deadline_ms`` and ``expire`` look at the
  requests that are due, not at every parked one.

Bounds, per connection (route) so that one client cannot take the whole node, and per
node: ``MAX_PARKED_PER_ROUTE`` watches and as many lock waits per connection,
``MAX_PARKED`` of each per node; parked watch prefixes of at most
``MAX_PREFIX_BYTES_PER_ROUTE`` per connection and ``MAX_PREFIX_BYTES`` per node. Past a
bound the request is answered at once: ``busy`` naming the bound, or ``bad_request``
when the request alone could never fit.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from .machine import Grant, Machine, RevisionCompacted
from .protocol import (
    MESSAGE_BUDGET_BYTES,
    Change,
    ErrorCode,
    ErrorReply,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    WatchReply,
    WatchRequest,
)
from .service_outbox import Outbox, Route
from .types import SafetyViolation

__all__ = ["MAX_PARKED", "MAX_PARKED_PER_ROUTE", "MAX_PREFIX_BYTES", "MAX_PREFIX_BYTES_PER_ROUTE",
           "ParkedLockWait", "ParkedWatch", "Parking"]

MAX_PARKED = 50_000                       # watches, and lock waits, per node
MAX_PARKED_PER_ROUTE = 100                # ... per connection (a Client parks one per socket)
MAX_PREFIX_BYTES = 64 * 1024 * 1024       # parked watch prefixes per node
MAX_PREFIX_BYTES_PER_ROUTE = 1024 * 1024  # ... per connection (one poll: <= 1,000 x 512 B)
_PREFIX_OVERHEAD = 64                     # what one indexed prefix costs besides its text
_HEAP_SLACK = 1024


@dataclass(frozen=True, slots=True)
class ParkedWatch:
    route: Route
    rid: object
    deadline_ms: int
    request: WatchRequest
    prefixes: tuple[str, ...]     # what it is indexed under ("" for everything)
    prefix_bytes: int
    principal: str = ""
    readable: tuple[str, ...] | None = None    # key prefixes it may see; None: all


@dataclass(frozen=True, slots=True)
class ParkedLockWait:
    route: Route
    rid: object
    deadline_ms: int
    name: str
    session_id: int
    principal: str = ""


def _prefixes(req: WatchRequest) -> tuple[str, ...]:
    ps = req.prefixes or (req.prefix,)
    if len(ps) == 1:
        return ps
    return ("",) if "" in ps else tuple(dict.fromkeys(ps))


class Parking:
    __slots__ = ("_by_prefix", "_deadlines", "_lens", "_next_id", "_out", "_per_route",
                 "_prefix_bytes", "_route_bytes", "_waits_by", "lock_waits", "watches")

    def __init__(self, out: Outbox) -> None:
        self._out = out
        self.watches: dict[int, ParkedWatch] = {}
        self.lock_waits: dict[int, ParkedLockWait] = {}
        self._next_id = 0
        self._by_prefix: dict[str, dict[int, None]] = {}
        self._lens: dict[int, int] = {}            # prefix length -> prefixes of that length
        self._waits_by: dict[tuple[str, int], list[int]] = {}
        self._deadlines: list[tuple[int, int]] = []   # (deadline_ms, id), both kinds
        self._per_route: dict[tuple[bool, Route], int] = {}   # (is_watch, route) -> parked
        self._route_bytes: dict[Route, int] = {}
        self._prefix_bytes = 0

    def next_deadline_ms(self, due_ms: int) -> int:
        """The earlier of ``due_ms`` and the first parked deadline."""
        heap = self._deadlines
        while heap and heap[0][1] not in self.watches and heap[0][1] not in self.lock_waits:
            heapq.heappop(heap)
        return min(due_ms, heap[0][0]) if heap else due_ms

    def _park(self, deadline_ms: int) -> int:
        self._next_id += 1
        heap = self._deadlines
        if len(heap) > 2 * (len(self.watches) + len(self.lock_waits)) + _HEAP_SLACK:
            self._deadlines = heap = [e for e in heap if e[1] in self.watches or e[1] in self.lock_waits]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline_ms, self._next_id))
        return self._next_id

    def _count(self, watch: bool, route: Route, delta: int) -> None:
        k = (watch, route)
        n = self._per_route.get(k, 0) + delta
        if n:
            self._per_route[k] = n
        else:
            del self._per_route[k]

    # -- watches --------------------------------------------------------------------------

    def watch(self, m: Machine, route: Route, rid: object, req: WatchRequest, now_ms: int,
              principal: str = "", readable: tuple[str, ...] | None = None) -> None:
        prefixes = _prefixes(req)
        nbytes = (len(prefixes[0]) if len(prefixes) == 1 else sum(map(len, prefixes))) \
            + _PREFIX_OVERHEAD * len(prefixes)
        w = ParkedWatch(route, rid, now_ms + req.wait_ms, req, prefixes, nbytes, principal,
                        readable)
        if self._try_watch(m, w):
            return
        if req.wait_ms == 0:
            self._out.reply(route, rid, WatchReply((), m.revision))
            return
        per_route = self._per_route
        if not (len(self.watches) < MAX_PARKED
                and per_route.get((True, route), 0) < MAX_PARKED_PER_ROUTE
                and self._route_bytes.get(route, 0) + nbytes <= MAX_PREFIX_BYTES_PER_ROUTE
                and self._prefix_bytes + nbytes <= MAX_PREFIX_BYTES):
            refused = self._watch_refusal(w)   # the same checks, saying which one failed
            if refused is not None:
                self._out.error(route, rid, *refused)
                return
        wid = self._park(w.deadline_ms)
        self.watches[wid] = w
        for p in prefixes:
            ids = self._by_prefix.get(p)
            if ids is None:
                self._by_prefix[p] = {wid: None}
                self._lens[len(p)] = self._lens.get(len(p), 0) + 1
            else:
                ids[wid] = None
        k = (True, route)
        per_route[k] = per_route.get(k, 0) + 1
        self._route_bytes[route] = self._route_bytes.get(route, 0) + w.prefix_bytes
        self._prefix_bytes += w.prefix_bytes

    def _watch_refusal(self, w: ParkedWatch) -> tuple[ErrorCode, str] | None:
        if w.prefix_bytes > MAX_PREFIX_BYTES_PER_ROUTE:
            return (ErrorCode.BAD_REQUEST, f"the watch's prefixes take {w.prefix_bytes} bytes, more "
                    f"than max_watch_prefix_bytes_per_connection ({MAX_PREFIX_BYTES_PER_ROUTE})")
        if len(self.watches) >= MAX_PARKED:
            return ErrorCode.BUSY, f"too many parked watches on this node (max_parked_watches {MAX_PARKED})"
        if self._per_route.get((True, w.route), 0) >= MAX_PARKED_PER_ROUTE:
            return (ErrorCode.BUSY, "too many parked watches on this connection "
                    f"(max_parked_watches_per_connection {MAX_PARKED_PER_ROUTE})")
        if self._route_bytes.get(w.route, 0) + w.prefix_bytes > MAX_PREFIX_BYTES_PER_ROUTE:
            return (ErrorCode.BUSY, "parked watches on this connection name too many prefix bytes "
                    f"(max_watch_prefix_bytes_per_connection {MAX_PREFIX_BYTES_PER_ROUTE})")
        if self._prefix_bytes + w.prefix_bytes > MAX_PREFIX_BYTES:
            return (ErrorCode.BUSY, "parked watches on this node name too many prefix bytes "
                    f"(max_watch_prefix_bytes {MAX_PREFIX_BYTES})")
        return None

    def _unpark_watch(self, wid: int) -> None:
        w = self.watches.pop(wid)
        for p in w.prefixes:
            ids = self._by_prefix[p]
            del ids[wid]
            if not ids:
                del self._by_prefix[p]
                n = self._lens[len(p)] - 1
                if n:
                    self._lens[len(p)] = n
                else:
                    del self._lens[len(p)]
        self._count(True, w.route, -1)
        left = self._route_bytes[w.route] - w.prefix_bytes
        if left:
            self._route_bytes[w.route] = left
        else:
            del self._route_bytes[w.route]
        self._prefix_bytes -= w.prefix_bytes

    def _try_watch(self, m: Machine, w: ParkedWatch) -> bool:
        """Answer ``w`` if there is something to say (events, or that they are gone). A
        failure to answer is answered ``internal``: it must not take other requests down."""
        req = w.request
        try:
            events, cut = m.events_page(req.selector, req.after, req.limit, MESSAGE_BUDGET_BYTES,
                                        w.readable, hide_records=True)
        except RevisionCompacted as e:
            oldest = e.oldest_available_revision
            self._out.reply(w.route, w.rid, ErrorReply(
                ErrorCode.COMPACTED, f"revision {req.after + 1} is compacted; oldest available "
                f"is {oldest}", oldest=oldest))
            return True
        except SafetyViolation:
            raise
        except Exception as e:   # a bug: the caller answers internal, the node goes on
            self._out.internal(w.route, w.rid, "answering a watch", e)
            return True
        if not events:
            return False
        self._out.reply(w.route, w.rid, WatchReply(tuple(events), m.revision, cut))
        return True

    def wake_watches(self, m: Machine, changed: Iterable[Change] | None) -> None:
        """The machine changed (``changed``; None: unknown, more than the window): answer
        every watch that now has events."""
        if not self.watches:
            return
        if changed is None:
            hit: dict[int, None] = dict.fromkeys(self.watches)
        else:
            hit = {}
            by, lens = self._by_prefix, self._lens
            for ev in changed:
                key = ev.key
                for n in lens:
                    if n <= len(key):
                        ids = by.get(key[:n])
                        if ids:
                            hit.update(ids)
        for wid in hit:
            w = self.watches.get(wid)
            if w is not None and self._try_watch(m, w):
                self._unpark_watch(wid)

    # -- lock waits -----------------------------------------------------------------------

    def lock_wait(self, m: Machine, route: Route, rid: object, req: LockWaitRequest,
                  now_ms: int, principal: str = "") -> None:
        p = ParkedLockWait(route, rid, now_ms + req.wait_ms, req.name, req.session_id, principal)
        if self._try_lock_wait(m, p, final=req.wait_ms == 0):
            return
        if len(self.lock_waits) >= MAX_PARKED:
            self._out.error(route, rid, ErrorCode.BUSY,
                            f"too many parked lock waits on this node (max_parked_lock_waits {MAX_PARKED})")
            return
        if self._per_route.get((False, route), 0) >= MAX_PARKED_PER_ROUTE:
            self._out.error(route, rid, ErrorCode.BUSY, "too many parked lock waits on this "
                            f"connection (max_parked_lock_waits_per_connection {MAX_PARKED_PER_ROUTE})")
            return
        pid = self._park(p.deadline_ms)
        self.lock_waits[pid] = p
        self._waits_by.setdefault((p.name, p.session_id), []).append(pid)
        self._count(False, route, 1)

    def _unpark_lock_wait(self, pid: int) -> ParkedLockWait:
        p = self.lock_waits.pop(pid)
        k = (p.name, p.session_id)
        ids = self._waits_by[k]
        ids.remove(pid)
        if not ids:
            del self._waits_by[k]
        self._count(False, p.route, -1)
        return p

    def _try_lock_wait(self, m: Machine, p: ParkedLockWait, final: bool) -> bool:
        """Answer ``p`` unless it is still waiting and may wait on (not ``final``)."""
        try:
            token = m.held_token(p.name, p.session_id)    # a lock, semaphore or rwlock
            if token is not None:
                self._out.reply(p.route, p.rid, LockWaitReply(LockState.HELD, token))
            elif not m.waiting(p.name, p.session_id):
                self._out.reply(p.route, p.rid, LockWaitReply(LockState.NONE))
            elif final:
                self._out.reply(p.route, p.rid, LockWaitReply(LockState.WAITING))
            else:
                return False
        except SafetyViolation:
            raise
        except Exception as e:   # a bug: answered internal, the node goes on
            self._out.internal(p.route, p.rid, "answering a lock wait", e)
        return True

    def wake_lock_waits(self, m: Machine, grants: Iterable[Grant]) -> None:
        """Answer the lock waits of sessions just granted their lock."""
        if not self.lock_waits:
            return
        for g in grants:
            for pid in list(self._waits_by.get((g.name, g.session_id), ())):
                if self._try_lock_wait(m, self.lock_waits[pid], final=True):
                    self._unpark_lock_wait(pid)

    def take_lock_waits(self) -> list[ParkedLockWait]:
        """Leadership ended: every lock wait, to be redirected to the new leader."""
        out = [self._unpark_lock_wait(pid) for pid in list(self.lock_waits)]
        return out

    # -- revocation -----------------------------------------------------------------------

    def revoke(self, principal: str) -> None:
        """``principal`` was removed: its parked requests end now, refused."""
        message = f"{principal} was removed from the cluster's identities"
        for wid in [wid for wid, w in self.watches.items() if w.principal == principal]:
            w = self.watches[wid]
            self._unpark_watch(wid)
            self._out.error(w.route, w.rid, ErrorCode.PERMISSION_DENIED, message)
        for pid in [pid for pid, p in self.lock_waits.items() if p.principal == principal]:
            p = self._unpark_lock_wait(pid)
            self._out.error(p.route, p.rid, ErrorCode.PERMISSION_DENIED, message)

    def principals(self) -> set[str]:
        """Everyone with a parked request."""
        return ({w.principal for w in self.watches.values()}
                | {p.principal for p in self.lock_waits.values()})

    # -- deadlines ------------------------------------------------------------------------

    def expire(self, m: Machine, now_ms: int) -> None:
        """Answer every request whose wait ran out: no events, or where the lock stands."""
        heap = self._deadlines
        while heap and heap[0][0] <= now_ms:
            _, pid = heapq.heappop(heap)
            w = self.watches.get(pid)
            if w is not None:
                self._unpark_watch(pid)
                self._out.reply(w.route, w.rid, WatchReply((), m.revision))
            elif pid in self.lock_waits:
                self._try_lock_wait(m, self._unpark_lock_wait(pid), final=True)
