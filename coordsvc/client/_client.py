"""``Client``: leader discovery, retries with a stable (client_id, seq), result mapping."""
from __future__ import annotations

import builtins
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from coordsvc import clusterfile
from coordsvc.core.commands import Command, Delete, Fence, Put, Request, encode_request, validate
from coordsvc.core.machine import Result
from coordsvc.core.types import ProtocolError

from . import _credentials, _status
from ._lock import KeepaliveStarter, Lock, LockInfo, acquire_lock
from ._results import raise_for
from ._transport import Cancelled, Pin, Transport
from ._types import Entry, Event, entry_from_wire, events_from_wire
from ._watch import Watch, WatchHub
from .errors import Compacted, CoordError, InvalidRequest, Unavailable

__all__ = ["Client"]

# One attempt waits at most this long for a node (plus the long-poll time of watch and
# lock_wait), so a dead or SIGSTOPped node is skipped quickly.
ATTEMPT_S = 1.0
BACKOFF_S = (0.010, 0.050)
# "unavailable" from the same node this many times in a row: try another node (the one
# we talk to may have lost its quorum while the others elected a new leader).
_UNAVAILABLE_BEFORE_ROTATE = 2


class Client:
    """A thread-safe client of a coordsvc cluster (CONTRACT section 4).

    ``endpoints`` is a list of ``tcp://host:port`` node addresses or a loaded
    ``clusterfile.Cluster``; None finds the cluster as the CLI does (``$COORD_CLUSTER``,
    ``$COORD_ENDPOINTS``, ``./.coord/cluster.toml``). ``timeout`` bounds each call's
    retries: past it the call raises ``Unavailable`` (the outcome of a write is unknown).

    ``key`` is a client key file (CONTRACT §7); without it the client uses ``$COORD_KEY``,
    else the ``admin.key`` beside the cluster file. A key the cluster rejects makes calls
    fail at once with ``PermissionDenied``.
    """

    def __init__(self, endpoints: Sequence[str] | clusterfile.Cluster | None = None,
                 timeout: float = 5.0, key: str | os.PathLike[str] | None = None) -> None:
        found: Sequence[str] | clusterfile.Cluster = (
            clusterfile.find() if endpoints is None else endpoints)
        self._cluster: clusterfile.Cluster | None = None
        if isinstance(found, clusterfile.Cluster):
            self._cluster = found
            eps = found.endpoints
        elif isinstance(found, str):
            raise TypeError("endpoints must be a list of 'tcp://host:port' strings, not a str")
        else:
            eps = [clusterfile.check_endpoint(e) for e in found]
        if not eps:
            raise ValueError("need at least one endpoint")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self._endpoints: tuple[str, ...] = tuple(dict.fromkeys(eps))
        self._timeout = float(timeout)
        #: Identifies this client's writes for exactly-once retries (random per Client).
        self.client_id = secrets.token_hex(8)
        self._transport = Transport(_credentials.resolve(self._cluster, key))
        self._seq_mu = threading.Lock()
        self._seq = 0
        self._inflight: set[int] = set()
        self._leader: str | None = None
        self._rr = 0
        self._rng = random.Random()  # backoff jitter only
        self._locks_mu = threading.Lock()
        self._starter: KeepaliveStarter | None = None
        self._hub: WatchHub | None = None
        self._locks: set[Lock] = set()
        self._closed = False

    @classmethod
    def from_cluster_file(cls, path: str | os.PathLike[str], timeout: float = 5.0,
                          key: str | os.PathLike[str] | None = None) -> Client:
        """A client of the cluster in ``path``, with the admin key beside it unless ``key``
        or ``$COORD_KEY`` names another."""
        return cls(clusterfile.load(Path(path)), timeout=timeout, key=key)

    @property
    def endpoints(self) -> builtins.list[str]:
        return list(self._endpoints)

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def leader(self) -> str | None:
        """The endpoint that last answered as leader, if any."""
        return self._leader

    # -- config keys ---------------------------------------------------------------------

    def put(self, key: str, value: str | bytes, if_revision: int | None = None,
            fence: Lock | None = None) -> int:
        """Set ``key``; return the new revision. ``if_revision=0``: only if absent."""
        res = self._write(Put(key, _to_bytes(value), if_revision, _fence(fence)))
        raise_for(res)
        return _int(res.data.get("revision", res.revision), "revision")

    def delete(self, key: str, if_revision: int | None = None, fence: Lock | None = None) -> bool:
        """Delete ``key``; False if it did not exist."""
        res = self._write(Delete(key, if_revision, _fence(fence)))
        raise_for(res)
        return res.data.get("deleted") is True

    def get(self, key: str, stale: bool = False) -> Entry | None:
        """The key's entry or None; linearizable unless ``stale`` (then any node answers)."""
        _check_key(key)
        reply = self._call({"op": "get", "key": key, "stale": bool(stale)}, leader=not stale)
        kv = reply.get("kv")
        return None if kv is None else entry_from_wire(kv)

    def list(self, prefix: str = "", stale: bool = False) -> builtins.list[Entry]:
        """Entries whose key starts with ``prefix``, sorted by key."""
        _check_prefix(prefix)
        reply = self._call({"op": "list", "prefix": prefix, "stale": bool(stale)},
                           leader=not stale)
        kvs = reply.get("kvs")
        if not isinstance(kvs, builtins.list):
            raise CoordError("malformed reply: kvs")
        return sorted((entry_from_wire(kv) for kv in kvs), key=lambda e: e.key)

    def history(self, key: str) -> builtins.list[Event]:
        """The key's recent changes (a bounded history), oldest first."""
        _check_key(key)
        reply = self._call({"op": "history", "key": key}, leader=True)
        return sorted(events_from_wire(reply.get("events")), key=lambda e: e.revision)

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Events under ``prefix`` with revision >= ``start_revision`` (None: from now on)."""
        _check_prefix(prefix)
        if start_revision is None:
            after = self.revision()
        elif type(start_revision) is not int or start_revision < 0:
            raise InvalidRequest(f"start_revision must be an int >= 0, got {start_revision!r}")
        else:
            after = max(0, start_revision - 1)
        return Watch(self._watch_hub(), prefix, after)

    def revision(self) -> int:
        """The cluster's current revision (a linearizable read)."""
        reply = self._call({"op": "get", "key": "/", "stale": False}, leader=True)
        return _int(reply.get("revision"), "revision")

    # -- locks ---------------------------------------------------------------------------

    def acquire(self, name: str, ttl: float = 10.0, timeout: float | None = None,
                on_lost: Callable[[Lock], None] | None = None) -> Lock:
        """Acquire lock ``name`` (FIFO among waiters). ``timeout=0``: try once; None: wait
        forever. Raises ``LockTimeout`` when not acquired (then nothing is held)."""
        return acquire_lock(self, name, ttl, timeout, on_lost)

    @contextmanager
    def lock(self, name: str, ttl: float = 10.0, timeout: float | None = 30.0,
             on_lost: Callable[[Lock], None] | None = None) -> Iterator[Lock]:
        """``with c.lock(name) as lk:`` holds the lock (kept alive) for the block."""
        lk = self.acquire(name, ttl=ttl, timeout=timeout, on_lost=on_lost)
        try:
            yield lk
        except BaseException:
            lk.release_quietly()
            raise
        lk.release()

    def locks(self) -> builtins.list[LockInfo]:
        """Every held lock with its holder, token, waiters and ttl left (linearizable)."""
        reply = self._call({"op": "locks"}, leader=True)
        return _lock_infos(reply.get("locks"))

    # -- cluster -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The dict of ``coordctl status --json`` (CONTRACT section 5)."""
        self._check_open()
        members: builtins.list[tuple[str | None, str]]
        if self._cluster is not None:
            members = [(n.id, n.address) for n in self._cluster.nodes]
            name: str | None = self._cluster.name
        else:
            members = [(None, ep) for ep in self._endpoints]
            name = None
        return _status.collect(self._transport.context, members, name,
                               min(ATTEMPT_S, self._timeout), self._transport.credentials)

    def close(self) -> None:
        """Give up held locks (best effort), close every socket. Idempotent."""
        if self._closed:
            return
        with self._locks_mu:
            held = builtins.list(self._locks)
        for lk in held:
            lk.abandon(timeout=min(ATTEMPT_S, self._timeout))
        with self._locks_mu:
            starter, self._starter = self._starter, None
            hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()       # before _closed: its poll then ends by cancel, not by error
        self._closed = True
        if starter is not None:
            starter.close()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals shared with Lock and Watch --------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CoordError("client is closed")

    def _watch_hub(self) -> WatchHub:
        with self._locks_mu:
            if self._hub is None:
                self._check_open()
                self._hub = WatchHub(self)
            return self._hub

    def _keepalive_starter(self) -> KeepaliveStarter:
        with self._locks_mu:
            if self._starter is None:
                self._check_open()
                self._starter = KeepaliveStarter()
            return self._starter

    def _track(self, lk: Lock, alive: bool) -> None:
        with self._locks_mu:
            if alive:
                self._locks.add(lk)
            else:
                self._locks.discard(lk)

    def _write(self, cmd: Command, timeout: float | None = None) -> Result:
        """Replicate ``cmd`` exactly once; its Result (any code)."""
        err = validate(cmd)
        if err is not None:
            raise InvalidRequest(err)
        with self._seq_mu:
            self._seq += 1
            seq = self._seq
            self._inflight.add(seq)
            first_unacked = min(self._inflight)
        try:
            # Encoded once: every retry sends identical bytes, so the node dedupes it.
            body = encode_request(Request(self.client_id, seq, first_unacked, cmd))
            reply = self._call({"op": "write", "req": body}, leader=True, timeout=timeout)
        finally:
            with self._seq_mu:
                self._inflight.discard(seq)
        try:
            return Result.from_wire(reply.get("result"))
        except ProtocolError as e:
            raise CoordError(f"malformed reply: {e}") from None

    def _call(self, payload: dict[str, Any], *, leader: bool, timeout: float | None = None,
              long_poll_s: float = 0.0, pin: Pin | None = None,
              cancel: threading.Event | None = None) -> dict[str, Any]:
        """Send one request until a node answers it; the successful reply map.

        Leader ops follow ``not_leader`` redirects; others are answered by any node,
        preferring ``pin``'s. Raises ``Unavailable`` once ``timeout`` is spent.
        """
        self._check_open()
        total = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        ep = self._start(leader, pin)
        redirects = unavailable = 0
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                raise Unavailable(f"no node answered {payload['op']!r} within {total:.1f}s "
                                  "(the outcome is unknown)")
            reply = self._transport.request(
                ep, payload, deadline=now + min(remaining, ATTEMPT_S + long_poll_s),
                connect_deadline=now + min(remaining, ATTEMPT_S), cancel=cancel)
            if reply is None:  # timed out: dead, paused or partitioned
                ep = self._rotate(ep, pin)
                self._backoff(deadline, cancel)
                continue
            if reply.get("ok") is True:
                if leader:
                    self._leader = ep
                if pin is not None:
                    pin.endpoint = ep
                return reply
            err = reply.get("error")
            message = str(reply.get("message") or err)
            if err == "not_leader":
                if self._leader == ep:
                    self._leader = None
                addr = reply.get("leader_address")
                self._transport.learn_key(addr, reply.get("leader_public_key"))
                if isinstance(addr, str) and addr and addr != ep and redirects < len(self._endpoints):
                    redirects += 1
                    ep = addr
                    continue
                redirects = 0
                ep = self._rotate(ep, pin)
                self._backoff(deadline, cancel)
            elif err in ("unavailable", "busy"):
                unavailable += 1
                if err == "unavailable" and unavailable >= _UNAVAILABLE_BEFORE_ROTATE:
                    unavailable = 0
                    ep = self._rotate(ep, pin)
                self._backoff(deadline, cancel)
            elif err == "compacted":
                oldest = reply.get("oldest")
                raise Compacted(message, oldest if type(oldest) is int else None)
            elif err == "bad_request":
                raise InvalidRequest(message)
            else:
                raise CoordError(f"{payload['op']}: {err}: {message}")

    def _start(self, leader: bool, pin: Pin | None) -> str:
        if pin is not None and pin.endpoint is not None:
            return pin.endpoint
        known = self._leader
        if known is not None:
            return known
        return self._endpoints[self._rr % len(self._endpoints)]

    def _rotate(self, failed: str, pin: Pin | None) -> str:
        """The endpoint to try after ``failed`` did not answer usefully."""
        if self._leader == failed:
            self._leader = None
        try:
            i = self._endpoints.index(failed) + 1
        except ValueError:  # a redirect target outside our list
            i = self._rr + 1
        self._rr = i % len(self._endpoints)  # a race here only changes where we start
        nxt = self._endpoints[self._rr]
        if pin is not None:
            pin.endpoint = nxt
        return nxt

    def _backoff(self, deadline: float, cancel: threading.Event | None) -> None:
        pause = min(self._rng.uniform(*BACKOFF_S), max(0.0, deadline - time.monotonic()))
        if cancel is None:
            time.sleep(pause)
        elif cancel.wait(pause):
            raise Cancelled()


# -- helpers -------------------------------------------------------------------------------

def _to_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bytes):
        return value
    raise InvalidRequest(f"value must be str or bytes, got {type(value).__name__}")


def _fence(lk: Lock | None) -> Fence | None:
    if lk is None:
        return None
    if not isinstance(lk, Lock):
        raise InvalidRequest(f"fence must be a Lock, got {type(lk).__name__}")
    return Fence(lk.name, lk.token)


def _check_key(key: str) -> None:
    err = validate(Delete(key))  # the key rules, without a value
    if err is not None:
        raise InvalidRequest(err)


def _check_prefix(prefix: str) -> None:
    if prefix != "":
        _check_key(prefix)
    elif not isinstance(prefix, str):
        raise InvalidRequest("prefix must be a string")


def _int(v: object, what: str) -> int:
    if type(v) is not int:
        raise CoordError(f"malformed reply: {what}")
    return v


def _lock_infos(raw: object) -> builtins.list[LockInfo]:
    if not isinstance(raw, builtins.list):
        raise CoordError("malformed reply: locks")
    out = []
    for r in raw:
        # [name, holder_session, token, granted_index, [waiter, ...], ttl_left_ms | nil, ...]
        if not (isinstance(r, builtins.list) and len(r) >= 6 and isinstance(r[0], str)
                and type(r[1]) is int and type(r[2]) is int and isinstance(r[4], builtins.list)
                and (r[5] is None or type(r[5]) in (int, float))):
            raise CoordError("malformed reply: lock")
        age = r[7] if len(r) > 7 and type(r[7]) in (int, float) else None
        waits = r[8] if len(r) > 8 and isinstance(r[8], builtins.list) else []
        out.append(LockInfo(r[0], r[1], r[2], tuple(int(w) for w in r[4]),
                            None if r[5] is None else r[5] / 1000,
                            None if age is None else age / 1000,
                            tuple(w / 1000 if type(w) in (int, float) else None for w in waits)))
    return out
