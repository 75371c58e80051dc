"""Request/reply over ZeroMQ DEALER sockets, one per (thread, endpoint).

ZeroMQ sockets are not thread-safe, and one ``Client`` serves many threads at once, so
each thread gets its own DEALER per endpoint (``threading.local``) and does its own I/O:
no background I/O thread, no hop between threads per request. A registry keeps every
socket reachable so that ``close()`` can close them all; sockets of threads that have
ended are closed when the next thread registers.

Each attempt carries a fresh ``id``; a reply with another id is a leftover (a node that
was SIGSTOPped answers late) and is dropped, as is anything that fails to decode. After a
timeout the socket is closed (linger 0) and replaced, so nothing stale can arrive on it.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from coordsvc import wire

from .errors import CoordError

__all__ = ["Cancelled", "Pin", "Transport", "frames_to_reply", "new_dealer"]

# With a cancel event, waits are sliced so that a close() from another thread is noticed.
_CANCEL_SLICE_S = 0.05

Socket = zmq.Socket[bytes]


class Pin:
    """The node a sequence of calls sticks to (a watch stays on one node until it fails)."""

    __slots__ = ("endpoint",)

    def __init__(self) -> None:
        self.endpoint: str | None = None


class Cancelled(Exception):
    """The caller's cancel event was set while a request was outstanding (internal)."""


def new_dealer(ctx: zmq.Context[Socket], endpoint: str) -> Socket:
    s: Socket = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    # Queue only to completed connections: a send to a dead node then waits (and times
    # out) instead of sitting in a pipe to be delivered whenever the node comes back.
    s.setsockopt(zmq.IMMEDIATE, 1)
    s.connect(endpoint)
    return s


def frames_to_reply(frames: list[bytes]) -> dict[str, Any] | None:
    """The reply map in a multipart message (the body is the last frame), or None."""
    if not frames:
        return None
    try:
        return wire.decode_client(frames[-1], wire.CLIENT_REPLY)
    except wire.WireError:
        return None


class Transport:
    def __init__(self) -> None:
        self.context: zmq.Context[Socket] = zmq.Context()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._by_thread: dict[threading.Thread, dict[str, Socket]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    # -- sockets -------------------------------------------------------------------------

    def _sockets(self) -> dict[str, Socket]:
        socks: dict[str, Socket] | None = getattr(self._local, "socks", None)
        if socks is None:
            socks = {}
            with self._lock:
                if self._closed:
                    raise CoordError("client is closed")
                for t in [t for t in self._by_thread if not t.is_alive()]:
                    for s in self._by_thread.pop(t).values():
                        s.close(linger=0)
                self._by_thread[threading.current_thread()] = socks
            self._local.socks = socks
        return socks

    def _socket(self, endpoint: str) -> Socket:
        socks = self._sockets()
        s = socks.get(endpoint)
        if s is None:
            with self._lock:  # against a concurrent close() terminating the context
                if self._closed:
                    raise CoordError("client is closed")
                s = socks[endpoint] = new_dealer(self.context, endpoint)
        return s

    def _drop(self, endpoint: str) -> None:
        socks = self._sockets()
        s = socks.pop(endpoint, None)
        if s is not None:
            s.close(linger=0)

    def release_thread(self) -> None:
        """Close the calling thread's sockets (a worker thread calls this before it ends)."""
        socks: dict[str, Socket] | None = getattr(self._local, "socks", None)
        if socks is None:
            return
        with self._lock:
            self._by_thread.pop(threading.current_thread(), None)
            for s in socks.values():
                s.close(linger=0)
            socks.clear()
        del self._local.socks

    def next_id(self) -> int:
        return next(self._ids)

    # -- one attempt ---------------------------------------------------------------------

    def request(self, endpoint: str, payload: dict[str, Any], deadline: float,
                connect_deadline: float, cancel: threading.Event | None = None
                ) -> dict[str, Any] | None:
        """Send ``payload`` (plus a fresh id) to ``endpoint``; the matching reply, or None
        if the node did not answer in time (the socket is then replaced)."""
        rid = self.next_id()
        body = wire.encode_client(wire.CLIENT_REQUEST, {**payload, "id": rid})
        sock = self._socket(endpoint)
        try:
            if not self._send(sock, body, min(deadline, connect_deadline), cancel):
                self._drop(endpoint)
                return None
            while True:
                if not self._wait(sock, zmq.POLLIN, deadline, cancel):
                    self._drop(endpoint)
                    return None
                reply = frames_to_reply(sock.recv_multipart(zmq.NOBLOCK))
                if reply is not None and type(reply.get("id")) is int and reply["id"] == rid:
                    return reply
        except Cancelled:
            self._drop(endpoint)
            raise
        except zmq.ZMQError as e:
            if self._closed:
                raise CoordError("client is closed") from e
            raise

    def request_all(self, endpoints: Sequence[str], payload: dict[str, Any],
                    timeout_s: float) -> list[dict[str, Any] | None]:
        """Send ``payload`` to every endpoint at once (one poller, no threads, fresh sockets
        closed afterwards); each one's reply, None where none came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        socks: list[Socket] = []
        replies: list[dict[str, Any] | None] = [None] * len(endpoints)
        try:
            with self._lock:  # against a concurrent close() terminating the context
                if self._closed:
                    raise CoordError("client is closed")
                for address in endpoints:
                    socks.append(new_dealer(self.context, address))
            ids = [self.next_id() for _ in endpoints]
            unsent = set(range(len(endpoints)))
            waiting: set[int] = set()
            poller = zmq.Poller()
            for s in socks:
                poller.register(s, zmq.POLLOUT)
            index = {s: i for i, s in enumerate(socks)}
            while unsent or waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for s, ev in poller.poll(max(1, int(left * 1000))):
                    i = index[s]
                    if ev & zmq.POLLIN and i in waiting:
                        reply = frames_to_reply(socks[i].recv_multipart(zmq.NOBLOCK))
                        if reply is not None and reply.get("id") == ids[i]:
                            waiting.discard(i)
                            poller.unregister(s)
                            replies[i] = reply
                    elif ev & zmq.POLLOUT and i in unsent:
                        s.send(wire.encode_client(wire.CLIENT_REQUEST, {**payload, "id": ids[i]}),
                               zmq.NOBLOCK)
                        unsent.discard(i)
                        waiting.add(i)
                        poller.modify(s, zmq.POLLIN)
        finally:
            for s in socks:
                s.close(linger=0)
        return replies

    @classmethod
    def _send(cls, sock: Socket, body: bytes, deadline: float,
              cancel: threading.Event | None) -> bool:
        """Send now if the socket is connected with room (the usual case), else once it
        is writable before ``deadline``; False if it never was."""
        try:
            sock.send(body, zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        if not cls._wait(sock, zmq.POLLOUT, deadline, cancel):
            return False
        try:
            sock.send(body, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    @staticmethod
    def _wait(sock: Socket, event: int, deadline: float, cancel: threading.Event | None) -> bool:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if cancel is not None:
                left = min(left, _CANCEL_SLICE_S)
            # zmq_poll directly: Socket.poll builds a Poller per call.
            if zmq.zmq_poll([(sock, event)], max(1, int(left * 1000))):
                return True

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every socket and terminate the context. Other threads must be done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for socks in self._by_thread.values():
                for s in socks.values():
                    s.close(linger=0)
                socks.clear()
            self._by_thread.clear()
        self.context.term()
