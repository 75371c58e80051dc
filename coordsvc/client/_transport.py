"""Request/reply over ZeroMQ DEALER sockets, one per (thread, endpoint).

ZeroMQ sockets are not thread-safe, and one ``Client`` serves many threads at once, so
each thread gets its own DEALER per endpoint (``threading.local``) and does its own I/O:
no background I/O thread, no hop between threads per request. A registry keeps every
socket reachable so that ``close()`` can close them all; sockets of threads that have
ended are closed when the next thread registers.

Each attempt carries a fresh ``id``; a reply with another id is a leftover (a node that
was SIGSTOPped answers late) and is dropped, as is anything that fails to decode. After a
timeout the socket is closed (linger 0) and replaced, so nothing stale can arrive on it.

With credentials every DEALER is a CURVE client pinning the node's public key. A socket
monitor watches its handshake: a node that refuses the key (ZAP 400) or speaks another
mechanism makes the call fail at once with ``PermissionDenied`` instead of waiting out
the timeout. The same monitor reports the connection ending while a long poll's reply is
awaited (a node killed during a lock wait or a watch): the attempt ends then, not when its
long poll would have, and the caller tries another node. Events from before such a
request are drained as it starts; short requests do not look (they end within a second).
"""
from __future__ import annotations

import itertools
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from coordsvc import wire

from ._credentials import Credentials
from .errors import CoordError, PermissionDenied

__all__ = ["MONITORED_EVENTS", "Cancelled", "Conn", "Pin", "Transport", "frames_to_reply",
           "handshake_error", "monitor_event", "new_dealer"]

# With a cancel event, waits are sliced so that a close() from another thread is noticed.
_CANCEL_SLICE_S = 0.05
# A reply awaited longer than this (a long poll) is also abandoned when the connection ends.
_WATCH_GONE_AFTER_S = 2.0

Socket = zmq.Socket[bytes]


class Pin:
    """The node a sequence of calls sticks to (a watch stays on one node until it fails)."""

    __slots__ = ("endpoint",)

    def __init__(self) -> None:
        self.endpoint: str | None = None


class Cancelled(Exception):
    """The caller's cancel event was set while a request was outstanding (internal)."""


_HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
MONITORED_EVENTS = _HANDSHAKE_FAILED | int(zmq.EVENT_DISCONNECTED)
_REJECTED = "the cluster rejected this client's key"


class Conn:
    """A DEALER to one node and, with credentials, the monitor of its handshakes."""

    __slots__ = ("endpoint", "monitor", "server_key", "sock")

    def __init__(self, sock: Socket, monitor: Socket | None, endpoint: str,
                 server_key: str | None) -> None:
        self.sock = sock
        self.monitor = monitor
        self.endpoint = endpoint
        self.server_key = server_key

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def check_handshake(self, creds: Credentials | None) -> bool:
        """Take the monitor's events: raise PermissionDenied if one is a refused
        handshake; True if one says the connection ended."""
        ended = False
        if self.monitor is None:
            return ended
        while _readable(self.monitor):
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            err = handshake_error(frames, self.endpoint, creds)
            if err is not None:
                raise err
            ended = ended or monitor_event(frames)[0] == zmq.EVENT_DISCONNECTED
        return ended


def _readable(sock: Socket) -> bool:
    events: int = sock.getsockopt(zmq.EVENTS)  # type: ignore[assignment]
    return bool(events & zmq.POLLIN)


def monitor_event(frames: list[bytes]) -> tuple[int, int]:
    """A socket monitor's message as (event, value); (0, 0) if it is not one."""
    if len(frames) != 2 or len(frames[0]) < 6:
        return 0, 0
    event, value = struct.unpack("=Hi", frames[0][:6])
    return event, value


def handshake_error(frames: list[bytes], endpoint: str, creds: Credentials | None
                    ) -> PermissionDenied | None:
    """The error a monitor event means, or None for an event that is not a refusal."""
    event, value = monitor_event(frames)
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return PermissionDenied(_REJECTED)
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        if creds is None:
            return PermissionDenied(f"{endpoint} is a secure (CURVE) node and this client has no "
                                    "key: pass key=FILE (coordctl --key FILE) or set COORD_KEY")
        return PermissionDenied(f"{endpoint} does not use CURVE (an insecure cluster?) but this "
                                f"client has a key ({creds.source})")
    return None


def new_dealer(ctx: zmq.Context[Socket], endpoint: str, creds: Credentials | None = None) -> Conn:
    s: Socket = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    # Queue only to completed connections: a send to a dead node then waits (and times
    # out) instead of sitting in a pipe to be delivered whenever the node comes back.
    s.setsockopt(zmq.IMMEDIATE, 1)
    server_key = None
    monitor: Socket | None = None
    try:
        monitor = s.get_monitor_socket(MONITORED_EVENTS)
        if creds is not None:
            server_key = creds.server_key(endpoint)
            if server_key is None:
                raise PermissionDenied(f"no public key for {endpoint}: the key file "
                                       f"{creds.source} does not name that node")
            s.setsockopt(zmq.CURVE_PUBLICKEY, creds.pair.public.encode("ascii"))
            s.setsockopt(zmq.CURVE_SECRETKEY, creds.pair.secret.encode("ascii"))
            s.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
        s.connect(endpoint)
    except BaseException:
        if monitor is not None:
            s.disable_monitor()
            monitor.close(linger=0)
        s.close(linger=0)
        raise
    return Conn(s, monitor, endpoint, server_key)


def frames_to_reply(frames: list[bytes]) -> dict[str, Any] | None:
    """The reply map in a multipart message (the body is the last frame), or None."""
    if not frames:
        return None
    try:
        return wire.decode_client(frames[-1], wire.CLIENT_REPLY)
    except wire.WireError:
        return None


class Transport:
    def __init__(self, credentials: Credentials | None = None) -> None:
        self.context: zmq.Context[Socket] = zmq.Context()
        #: The client's key and the servers' keys; None: plain TCP (insecure cluster).
        self.credentials = credentials
        self._local = threading.local()
        self._lock = threading.Lock()
        self._by_thread: dict[threading.Thread, dict[str, Conn]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    # -- sockets -------------------------------------------------------------------------

    def _sockets(self) -> dict[str, Conn]:
        socks: dict[str, Conn] | None = getattr(self._local, "socks", None)
        if socks is None:
            socks = {}
            with self._lock:
                if self._closed:
                    raise CoordError("client is closed")
                for t in [t for t in self._by_thread if not t.is_alive()]:
                    for c in self._by_thread.pop(t).values():
                        c.close()
                self._by_thread[threading.current_thread()] = socks
            self._local.socks = socks
        return socks

    def _socket(self, endpoint: str) -> Conn:
        socks = self._sockets()
        c = socks.get(endpoint)
        creds = self.credentials
        if c is not None and creds is not None and c.server_key != creds.server_key(endpoint):
            self._drop(endpoint)   # the node's key changed (learned from the cluster)
            c = None
        if c is None:
            with self._lock:  # against a concurrent close() terminating the context
                if self._closed:
                    raise CoordError("client is closed")
                c = socks[endpoint] = new_dealer(self.context, endpoint, creds)
        return c

    def _drop(self, endpoint: str) -> None:
        socks = self._sockets()
        c = socks.pop(endpoint, None)
        if c is not None:
            c.close()

    def learn_key(self, address: object, public: object) -> None:
        """A member told us the public key of ``address`` (e.g. with a redirect)."""
        if self.credentials is not None:
            self.credentials.learn(address, public)

    def release_thread(self) -> None:
        """Close the calling thread's sockets (a worker thread calls this before it ends)."""
        socks: dict[str, Conn] | None = getattr(self._local, "socks", None)
        if socks is None:
            return
        with self._lock:
            self._by_thread.pop(threading.current_thread(), None)
            for c in socks.values():
                c.close()
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
        conn = self._socket(endpoint)
        sock = conn.sock
        # Only a long wait watches for the connection ending: a short one ends soon anyway,
        # and its requests (most of them) keep the one-socket poll.
        watch = conn.monitor if deadline - time.monotonic() > _WATCH_GONE_AFTER_S else None
        try:
            if watch is not None:
                conn.check_handshake(self.credentials)     # events from before this request
            if not self._send(conn, body, min(deadline, connect_deadline), cancel):
                self._drop(endpoint)
                return None
            while True:
                if not self._wait(sock, zmq.POLLIN, deadline, cancel, watch):
                    self._drop(endpoint)
                    return None
                if watch is not None and not _readable(sock):
                    if conn.check_handshake(self.credentials):
                        self._drop(endpoint)    # the node went away: no reply will come
                        return None
                    continue
                reply = frames_to_reply(sock.recv_multipart(zmq.NOBLOCK))
                if reply is not None and type(reply.get("id")) is int and reply["id"] == rid:
                    return reply
        except (Cancelled, PermissionDenied):
            self._drop(endpoint)   # a refused handshake is final for this socket
            raise
        except zmq.ZMQError as e:
            if self._closed:
                raise CoordError("client is closed") from e
            raise

    def request_all(self, endpoints: Sequence[str], payload: dict[str, Any],
                    timeout_s: float) -> list[dict[str, Any] | None]:
        """Send ``payload`` to every endpoint at once (one poller, no threads, fresh sockets
        closed afterwards); each one's reply, None where none came within ``timeout_s``.

        A node that refuses the client's key raises ``PermissionDenied`` at once: asking
        every node needs a key the cluster knows, like every other call."""
        deadline = time.monotonic() + timeout_s
        conns: list[Conn] = []
        replies: list[dict[str, Any] | None] = [None] * len(endpoints)
        try:
            with self._lock:  # against a concurrent close() terminating the context
                if self._closed:
                    raise CoordError("client is closed")
                for address in endpoints:
                    conns.append(new_dealer(self.context, address, self.credentials))
            socks = [c.sock for c in conns]
            ids = [self.next_id() for _ in endpoints]
            unsent = set(range(len(endpoints)))
            waiting: set[int] = set()
            poller = zmq.Poller()
            for s in socks:
                poller.register(s, zmq.POLLOUT)
            monitors = {c.monitor: c for c in conns if c.monitor is not None}
            for m in monitors:
                poller.register(m, zmq.POLLIN)
            index = {s: i for i, s in enumerate(socks)}
            while unsent or waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for s, ev in poller.poll(max(1, int(left * 1000))):
                    if s in monitors:
                        monitors[s].check_handshake(self.credentials)
                        continue
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
            for c in conns:
                c.close()
        return replies

    def _send(self, conn: Conn, body: bytes, deadline: float,
              cancel: threading.Event | None) -> bool:
        """Send now if the socket is connected with room (the usual case), else once it
        is writable before ``deadline``; False if it never was. PermissionDenied if the
        node refused the handshake meanwhile."""
        sock = conn.sock
        try:
            sock.send(body, zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        while True:
            ready = self._wait(sock, zmq.POLLOUT, deadline, cancel, conn.monitor)
            conn.check_handshake(self.credentials)
            if not ready:
                return False
            try:
                sock.send(body, zmq.NOBLOCK)
                return True
            except zmq.Again:
                if time.monotonic() >= deadline:
                    return False

    @staticmethod
    def _wait(sock: Socket, event: int, deadline: float, cancel: threading.Event | None,
              monitor: Socket | None = None) -> bool:
        """True once ``sock`` has ``event``, or (also True) ``monitor`` has news."""
        items = [(sock, event)] if monitor is None else [(sock, event), (monitor, zmq.POLLIN)]
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if cancel is not None:
                left = min(left, _CANCEL_SLICE_S)
            # zmq_poll directly: Socket.poll builds a Poller per call.
            if zmq.zmq_poll(items, max(1, int(left * 1000))):
                return True

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every socket and terminate the context. Other threads must be done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for socks in self._by_thread.values():
                for c in socks.values():
                    c.close()
                socks.clear()
            self._by_thread.clear()
        self.context.term()
