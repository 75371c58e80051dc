"""Watches: gap-free, duplicate-free event streams by long-polling ``watch``.

One thread per Client (the ``WatchHub``) long-polls for *all* of its watches at once:
one request names every watched prefix and asks for events after the oldest revision
any watch still needs, and the reply is shared out. Fifty watches cost one parked
request on the node and one reply per change, not fifty.

Each watch's only state is ``fetched``: every event under its prefix up to that revision
is in its buffer or was delivered. Polls ask for events *after* the lowest ``fetched``
and each watch keeps only events beyond its own, so switching nodes (a timeout, a
restart, a leader change) can neither skip an event nor repeat one: events have one
global order, and every node serves the same events for the same revisions.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from coordsvc.core.commands import is_record, under
from coordsvc.core.protocol import WatchReply, WatchRequest

from ._transport import Cancelled, Pin
from ._types import Event, event_of
from .errors import Compacted, CoordError, PermissionDenied

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Watch", "WatchHub"]

WATCH_WAIT_S = 5.0
WATCH_LIMIT = 1000
MAX_PREFIXES = 1000   # more distinct prefixes than this: poll everything, filter here (_plan)
# A watch holding this many undelivered events is left out of polls until its reader
# catches up: a slow reader costs memory up to this bound, not without one.
BUFFER_MAX = 2 * WATCH_LIMIT
ERROR_PAUSE_S = 0.1   # after a failed poll, before the next


class Watch:
    """An iterator of ``Event``s under ``prefix``, in revision order.

    Iterating blocks until the next event; ``next(timeout)`` returns None when none came
    in time (nothing is lost: the following call continues where this one stopped).
    ``Compacted`` is raised when the events wanted have left the cluster's window;
    ``Unavailable`` when no node answered within the client's timeout (iterating again
    resumes without a gap). ``close()`` may be called from another thread: a blocked
    ``next`` then returns None and iteration stops.
    """

    def __init__(self, hub: WatchHub, prefix: str, after: int) -> None:
        self.prefix = prefix
        self._hub = hub
        self._cv = threading.Condition()
        self._last = after       # the last revision delivered (or start_revision - 1)
        self.fetched = after     # see the module docstring; written by the hub only
        self._buf: deque[Event] = deque()
        self._error: CoordError | None = None
        self._error_sticks = False   # Compacted and "client is closed" never clear
        self._closed = False
        hub.add(self)

    @property
    def last_revision(self) -> int:
        """The revision of the last event delivered (start_revision - 1 before any)."""
        return self._last

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Event:
        ev = self.next(None)
        if ev is None:
            raise StopIteration
        return ev

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None if ``timeout`` seconds pass first or the watch is closed."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cv:
            while not self._buf:
                if self._closed:
                    return None
                if self._error is not None:
                    err = self._error
                    if not self._error_sticks:
                        self._error = None
                    raise err
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)
            ev = self._buf.popleft()
            self._last = ev.revision
            if len(self._buf) == BUFFER_MAX - 1:
                self._hub.wake()     # no longer full: poll for us again
            return ev

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._hub.remove(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- called by the hub ---------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._buf) >= BUFFER_MAX

    def _deliver(self, events: list[Event], through: int) -> None:
        """``events`` (revision order) hold every event up to ``through`` for us."""
        with self._cv:
            # Dedupe by revision: a transaction's events share one, and a node never splits
            # a revision across replies, so everything after ``fetched`` is new. The prefix
            # check also guards against oversharing, and keeps a record polled for another
            # watch out of a watch of "" (commands.under).
            # (revision, key) names an event: a transaction writes each key once.
            before, seen = self.fetched, set()
            for ev in events:
                if (ev.revision > before and under(ev.key, self.prefix)
                        and (ev.revision, ev.key) not in seen):
                    seen.add((ev.revision, ev.key))
                    self._buf.append(ev)
                    self.fetched = ev.revision
            self.fetched = max(self.fetched, through)
            self._cv.notify_all()

    def _fail(self, err: CoordError, sticky: bool = False) -> None:
        with self._cv:
            if not self._error_sticks:
                self._error, self._error_sticks = err, sticky
            self._cv.notify_all()


class WatchHub:
    """The one thread of a Client that long-polls for all of its open watches."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._cv = threading.Condition()
        # Weak: a watch dropped without close() stops being polled for.
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()
        self._pin = Pin()
        # Set to end the current poll early: a watch was added (it may need older
        # revisions than the poll asked for) or the hub is stopping.
        self._interrupt = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, w: Watch) -> None:
        with self._cv:
            if self._stopping:
                raise CoordError("client is closed")
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="coordsvc-watch-hub")
                self._thread.start()
            self._interrupt.set()
            self._cv.notify()

    def remove(self, w: Watch) -> None:
        with self._cv:
            self._watches.discard(w)

    def wake(self) -> None:
        """Re-plan the poll now (a full watch was drained)."""
        with self._cv:
            self._interrupt.set()
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._interrupt.set()
            self._cv.notify()
            t = self._thread
            watches = list(self._watches)
            self._watches.clear()
        for w in watches:
            w._fail(CoordError("client is closed"), sticky=True)
        if t is not None and t is not threading.current_thread():
            t.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while True:
                        if self._stopping:
                            return
                        watches = [w for w in self._watches if not w._full()]
                        if watches:
                            break
                        self._cv.wait()
                    self._interrupt.clear()
                try:
                    ok = self._poll(watches)
                except Exception as e:   # a bug here must not stall every other watch
                    for w in watches:
                        w._fail(CoordError(f"watch poll failed: {type(e).__name__}: {e}"))
                    ok = False
                if not ok:
                    self._interrupt.wait(ERROR_PAUSE_S)
        finally:
            self._client._transport.release_thread()

    def _poll(self, watches: list[Watch]) -> bool:
        """One long-poll for ``watches`` (those ``_plan`` picks); False if it failed (the
        caller pauses)."""
        watches, prefixes = _plan(watches)
        after = min(w.fetched for w in watches)
        c = self._client
        try:
            reply = c._call(
                WatchRequest(after, prefixes=prefixes, wait_ms=int(WATCH_WAIT_S * 1000),
                             limit=WATCH_LIMIT), WatchReply.from_wire,
                leader=False, timeout_s=WATCH_WAIT_S + c.timeout, long_poll_s=WATCH_WAIT_S,
                pin=self._pin, cancel=self._interrupt)
        except Cancelled:
            return True
        except Compacted as e:
            oldest = e.oldest if e.oldest is not None else after + 2
            for w in watches:
                if w.fetched + 1 < oldest:
                    w._fail(e, sticky=True)
                    self.remove(w)
            return True
        except PermissionDenied as e:
            # Each prefix was allowed when its watch began (Client.watch asks first), so
            # this is the key removed: every watch of this client ends.
            for w in watches:
                w._fail(e, sticky=True)
                self.remove(w)
            return True
        except CoordError as e:   # Unavailable and the like: each watch hears it once
            for w in watches:
                w._fail(e)
            return False
        events = sorted((event_of(ch) for ch in reply.events), key=lambda ev: ev.revision)
        if reply.more or len(events) >= WATCH_LIMIT:
            # Cut by count or bytes: complete only up to its last event.
            through = events[-1].revision if events else after
        else:
            # A complete batch computed at the node's revision: nothing else under the
            # prefixes exists up to it. Moving past it keeps a quiet prefix on a busy
            # cluster from falling out of the window (a spurious Compacted).
            through = max(reply.revision, events[-1].revision if events else after)
        for w in watches:
            w._deliver(events, through)
        return True


def _plan(watches: list[Watch]) -> tuple[list[Watch], tuple[str, ...]]:
    """The watches one poll serves, and the prefixes it names. Past ``MAX_PREFIXES``
    prefixes, or with a watch of everything, it names "" -- every client key -- and beside
    it each record watched (no record is under ""). Should those still be too many, the
    records whose watches are furthest behind go first and the others wait for a later
    poll (each poll moves those it served ahead, so all take turns)."""
    prefixes = sorted({w.prefix for w in watches})
    if len(prefixes) <= MAX_PREFIXES and "" not in prefixes:
        return watches, tuple(prefixes)
    records: dict[str, None] = {}
    for w in sorted((w for w in watches if is_record(w.prefix)), key=lambda w: w.fetched):
        if len(records) == MAX_PREFIXES - 1:
            break
        records[w.prefix] = None
    served = [w for w in watches if not is_record(w.prefix) or w.prefix in records]
    return served, ("", *sorted(records))
