"""Watches: gap-free, duplicate-free event streams by long-polling ``watch``.

The only state is the last revision handed to the caller. Every poll asks for events
*after* it, so switching nodes (a timeout, a restart, a leader change) can neither skip
an event nor repeat one: events have one global order, and every node serves the same
events for the same revisions.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from ._transport import Cancelled, Pin
from ._types import Event, events_from_wire

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Watch"]

WATCH_WAIT_S = 5.0
WATCH_LIMIT = 1000


class Watch:
    """An iterator of ``Event``s under ``prefix``, in revision order.

    Iterating blocks until the next event; ``next(timeout)`` returns None when none came
    in time (nothing is lost: the following call continues where this one stopped).
    ``Compacted`` is raised when the events wanted have left the cluster's window;
    ``Unavailable`` when no node answered within the client's timeout (iterating again
    resumes without a gap). ``close()`` may be called from another thread: a blocked
    ``next`` then returns None and iteration stops.
    """

    def __init__(self, client: Client, prefix: str, after: int) -> None:
        self.prefix = prefix
        self._client = client
        self._last = after       # the last revision delivered (or start_revision - 1)
        self._scanned = after    # revisions up to here hold nothing more for us
        self._buf: deque[Event] = deque()
        self._pin = Pin()
        self._closed = threading.Event()

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
        polled = False
        while not self._buf:
            if self._closed.is_set():
                return None
            wait_s = WATCH_WAIT_S
            if deadline is not None:
                wait_s = min(wait_s, deadline - time.monotonic())
                if wait_s <= 0:
                    if polled:
                        return None
                    wait_s = 0.0  # next(0): one poll that does not park
            polled = True
            try:
                self._poll(wait_s)
            except Cancelled:
                return None
        ev = self._buf.popleft()
        self._last = ev.revision
        return ev

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _poll(self, wait_s: float) -> None:
        after = max(self._last, self._scanned)
        reply = self._client._call(
            {"op": "watch", "prefix": self.prefix, "after": after,
             "wait_ms": int(wait_s * 1000), "limit": WATCH_LIMIT},
            leader=False, timeout=wait_s + self._client.timeout, long_poll_s=wait_s,
            pin=self._pin, cancel=self._closed)
        events = events_from_wire(reply.get("events"))
        fresh: dict[int, Event] = {}
        for ev in events:
            # Dedupe by revision; the prefix check guards against a node that overshares.
            if ev.revision > after and ev.key.startswith(self.prefix):
                fresh.setdefault(ev.revision, ev)
        self._buf.extend(fresh[r] for r in sorted(fresh))
        rev = reply.get("revision")
        if len(events) < WATCH_LIMIT and type(rev) is int and rev > after:
            # A complete batch computed at the node's revision ``rev``: nothing else under
            # the prefix exists up to it. Moving past it keeps a quiet prefix on a busy
            # cluster from falling out of the window (a spurious Compacted).
            self._scanned = max(rev, max(fresh, default=after))
