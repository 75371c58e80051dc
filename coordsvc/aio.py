"""``AsyncClient``: the Client's API as coroutines, on the event loop.

```python
from coordsvc.aio import AsyncClient
async with AsyncClient.from_cluster_file(path) as ac:
    await ac.put("k", "v")
    async for ev in ac.watch("k"): ...
    async with ac.lock("deploy", ttl=10.0) as lk: ...
    async with ac.lease(ttl=10.0) as ls:
        await ac.put("svc/n1", "addr", lease=ls)
    async with ac.election("sched").campaign("host-a") as term: ...
    async with ac.semaphore("pool", limit=4) as slot: ...
    async with ac.rwlock("cfg").write(): ...
```

No thread per call, and none at all: one pyzmq asyncio DEALER per node, shared by every
coroutine of the client. Each request carries a fresh id; one reader task per socket
hands each reply to the future waiting for that id (a late reply to an abandoned attempt
finds none and is dropped). Keepalives of locks and leases are tasks. Everything else --
records, leader discovery and redirects, exactly-once writes with (client id, seq),
result codes -> exceptions -- is the synchronous client's, shared or mirrored from
``coordsvc.client``.

Paged ``list``/``history`` and ``snapshot_save`` stick to one node for their pages as the
sync client's do. Each socket has a handshake monitor (a task): a key the cluster rejects
raises ``PermissionDenied`` at once, not ``Unavailable`` after the timeout. ``on_lost``
callbacks run on the loop (one returning an awaitable has it run as a task).
"""
from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import itertools
import json
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from coordsvc import clusterfile, snapshotfile, wire
from coordsvc.client import _credentials, _snapshot, _status
from coordsvc.client._client import (
    _APPLIED_POLL_S,
    _P,
    _PAGED_READ_ATTEMPTS,
    TRANSFER_ASK_AGAIN_S,
    _applied,
    _check_key,
    _check_prefix,
    _check_timeout,
    _chosen_config,
    _compares,
    _CursorExpired,
    _locate,
    _lock_info,
    _member_request,
    _node_status,
    _prefixes,
    _refusal,
    _Row,
    _row,
    _to_bytes,
    _txn_ops,
)
from coordsvc.client._election import Leader, parse_record
from coordsvc.client._lock import LOST_MARGIN_FRACTION, LOST_MARGIN_MIN_S, LockInfo, _check_delay
from coordsvc.client._results import expect, raise_for
from coordsvc.client._transport import MONITORED_EVENTS, Pin, handshake_error, monitor_event
from coordsvc.client._types import Entry, EntryList, Event, Principal, entry_of, event_of, principal_of
from coordsvc.client.errors import (
    CoordError,
    InvalidRequest,
    LockTimeout,
    MembershipRefused,
    PermissionDenied,
    SnapshotGone,
    Unavailable,
)
from coordsvc.core.commands import (
    ELECTION_PREFIX,
    MAX_INT,
    MAX_TTL_MS,
    MIN_TTL_MS,
    SCHEMA_PREFIX,
    Acquire,
    AcquireShared,
    AuthAdd,
    AuthRemove,
    Campaign,
    Cancel,
    CloseSession,
    Command,
    Delete,
    Fence,
    OpenSession,
    Put,
    Release,
    Request,
    SchemaDelete,
    SchemaSet,
    Txn,
    under,
    validate,
)
from coordsvc.core.protocol import (
    AuthListReply,
    AuthListRequest,
    ClientRequest,
    ErrorCode,
    ErrorReply,
    GetReply,
    GetRequest,
    HistoryReply,
    HistoryRequest,
    KeepaliveReply,
    KeepaliveRequest,
    ListReply,
    ListRequest,
    LocksReply,
    LocksRequest,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    MemberChangeReply,
    MemberChangeRequest,
    MemberRow,
    MembersReply,
    MembersRequest,
    ResultCode,
    RevisionReply,
    RevisionRequest,
    SchemaError,
    SnapshotChunkReply,
    SnapshotChunkRequest,
    SnapshotSaveReply,
    SnapshotSaveRequest,
    StatusRequest,
    WatchReply,
    WatchRequest,
    WriteReply,
    WriteRequest,
)

__all__ = ["AsyncClient", "AsyncElection", "AsyncLease", "AsyncLock", "AsyncRWLock", "AsyncTerm"]

ATTEMPT_S = 1.0
BACKOFF_S = 0.02
LOCK_WAIT_MAX_S = 5.0
WATCH_WAIT_S = 5.0
_R = TypeVar("_R")
_A = TypeVar("_A")
log = logging.getLogger("coordsvc.client")


class _Node:
    """One DEALER to one node, the task that routes its replies by id, and the task that
    watches its handshakes: a node that refuses the client's key (or speaks another
    mechanism) sets ``error`` and ``refused`` at once, as the sync client's monitor does;
    the connection ending (a node killed during a long poll) sets ``gone``, which ends
    the attempts waiting on it."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str,
                 creds: _credentials.Credentials | None) -> None:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        if creds is not None:
            server = creds.server_key(endpoint)
            if server is None:
                s.close(linger=0)
                raise CoordError(f"no public key for {endpoint} in {creds.source}")
            s.setsockopt(zmq.CURVE_PUBLICKEY, creds.pair.public.encode("ascii"))
            s.setsockopt(zmq.CURVE_SECRETKEY, creds.pair.secret.encode("ascii"))
            s.setsockopt(zmq.CURVE_SERVERKEY, server.encode("ascii"))
        try:
            self.monitor: zmq.asyncio.Socket = s.get_monitor_socket(MONITORED_EVENTS)
            s.connect(endpoint)
        except BaseException:
            s.close(linger=0)
            raise
        self.sock = s
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.error: PermissionDenied | None = None
        self.closed = False
        loop = asyncio.get_running_loop()
        self.refused: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.reader = loop.create_task(self._read())
        self.watcher = loop.create_task(self._watch(endpoint, creds))

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                reply = wire.decode_client(frames[-1], wire.CLIENT_REPLY)
            except (wire.WireError, IndexError):
                continue
            rid = reply.get("id")
            fut = self.waiting.pop(rid, None) if type(rid) is int else None
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def _watch(self, endpoint: str, creds: _credentials.Credentials | None) -> None:
        while True:
            frames = await self.monitor.recv_multipart()
            err = handshake_error(frames, endpoint, creds)
            if err is not None:
                self.error = err
                self.refused.set_result(None)
                return
            if monitor_event(frames)[0] == zmq.EVENT_DISCONNECTED and not self.gone.done():
                self.gone.set_result(None)

    async def until(self, aw: asyncio.Future[Any], wait_s: float) -> bool:
        """Whether ``aw`` completed within ``wait_s`` (if not, it is cancelled; False at
        once if the connection ends); ``PermissionDenied`` as soon as the node refuses the
        handshake."""
        both: builtins.set[asyncio.Future[Any]] = {aw, self.refused, self.gone}
        done, _ = await asyncio.wait(both, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        if aw in done:
            return True
        aw.cancel()
        if self.error is not None:
            raise self.error
        return False

    async def close(self) -> None:
        """Idempotent: coroutines that timed out on the same node may each drop it."""
        if self.closed:
            return
        self.closed = True
        for task in (self.reader, self.watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class AsyncClient:
    """The asyncio client of a coordsvc cluster; arguments as ``coordsvc.Client``'s. Create
    it inside a running event loop; ``await ac.close()`` (or ``async with``) at the end."""

    def __init__(self, endpoints: Sequence[str] | clusterfile.Cluster | None = None,
                 timeout: float = 5.0, key: str | os.PathLike[str] | None = None) -> None:
        self._cluster, self._endpoints = _locate(endpoints)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise InvalidRequest(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self._timeout_s = float(timeout)
        self._creds = _credentials.resolve(self._cluster, key)
        self._file_keys = _credentials.FileKeys(self._cluster)
        self._ctx = zmq.asyncio.Context()
        self._nodes: dict[str, _Node] = {}
        self._ids = itertools.count(1)
        self.client_id = secrets.token_hex(8)
        self._seq = 0
        self._inflight: set[int] = set()
        self._leader: str | None = None
        self._rr = 0
        self._kept: set[AsyncLease] = set()
        self._callbacks: set[asyncio.Future[Any]] = set()   # running async on_lost callbacks
        self._closed = False

    @classmethod
    def from_cluster_file(cls, path: str | os.PathLike[str], timeout: float = 5.0,
                          key: str | os.PathLike[str] | None = None) -> AsyncClient:
        """A client of the cluster in ``path`` (a plain function, not a coroutine)."""
        try:
            cluster = clusterfile.load(Path(path))
        except clusterfile.ClusterFileError as e:
            raise InvalidRequest(str(e)) from None
        return cls(cluster, timeout=timeout, key=key)

    @property
    def timeout(self) -> float:
        return self._timeout_s

    @property
    def endpoints(self) -> builtins.list[str]:
        return builtins.list(self._endpoints)

    @property
    def leader(self) -> str | None:
        """The endpoint that last answered as leader, if any."""
        return self._leader

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Revoke leases and release locks (best effort), close every socket. Idempotent."""
        if self._closed:
            return
        for kept in builtins.list(self._kept):
            with contextlib.suppress(CoordError):
                await kept._end(min(ATTEMPT_S, self._timeout_s))
        self._closed = True
        for node in self._nodes.values():
            await node.close()
        self._nodes.clear()
        self._ctx.term()

    # -- keys ------------------------------------------------------------------------------

    async def put(self, key: str, value: str | bytes, if_revision: int | None = None,
                  fence: AsyncLock | None = None, lease: AsyncLease | None = None) -> int:
        """As ``Client.put``; ``fence`` a held ``AsyncLock`` (or semaphore/rwlock hold)."""
        res = await self._write(Put(key, _to_bytes(value), if_revision, _fence(fence),
                                    self._lease_id(lease)))
        raise_for(res)
        rev = res.data.get("revision", res.revision)
        if type(rev) is not int:
            raise CoordError("malformed reply: revision")
        return rev

    async def get(self, key: str, stale: bool = False) -> Entry | None:
        _check_key(key)
        kv = (await self._call(GetRequest(key, bool(stale)), GetReply.from_wire, leader=not stale)).kv
        return None if kv is None else entry_of(kv)

    async def delete(self, key: str, if_revision: int | None = None,
                     fence: AsyncLock | None = None) -> bool:
        res = await self._write(Delete(key, if_revision, _fence(fence)))
        raise_for(res)
        return res.data.get("deleted") is True

    async def list(self, prefix: str = "", stale: bool = False, *, limit: int | None = None,
                   start_after: str | None = None) -> EntryList:
        """As ``Client.list``: every entry under ``prefix`` at one revision, put together from
        as many pages as the node sent; with ``limit``, one page after ``start_after``."""
        _check_prefix(prefix)
        if limit is not None and not (type(limit) is int and 1 <= limit <= MAX_INT):
            raise InvalidRequest(f"limit must be an int >= 1 or None, got {limit!r}")
        if start_after is not None and start_after != "":
            _check_key(start_after, "start_after")
        rows, last = await self._paged(
            ListRequest(prefix, bool(stale), start_after or "", limit or 0),
            lambda cursor, offset: ListRequest(cursor=cursor, offset=offset),
            ListReply.from_wire, lambda r: r.kvs, leader=not stale)
        return EntryList(sorted((entry_of(kv) for kv in rows), key=lambda e: e.key),
                         last.revision, last.more)

    async def history(self, key: str) -> builtins.list[Event]:
        """As ``Client.history``: the key's recent changes, oldest first, from every page."""
        _check_key(key)
        rows, _ = await self._paged(
            HistoryRequest(key), lambda cursor, offset: HistoryRequest(key, cursor=cursor, offset=offset),
            HistoryReply.from_wire, lambda r: r.events, leader=True)
        return sorted((event_of(ch) for ch in rows), key=lambda e: e.revision)

    async def revision(self) -> int:
        return (await self._call(RevisionRequest(), RevisionReply.from_wire, leader=True)).revision

    async def txn(self, compare: Sequence[tuple[str, int]] = (), success: Sequence[tuple[Any, ...]] = (),
                  failure: Sequence[tuple[Any, ...]] = (), fence: AsyncLock | None = None
                  ) -> tuple[bool, int]:
        """As ``Client.txn`` (ops ``("put", key, value[, lease])`` and ``("delete", key)``)."""
        cmd = Txn(_compares(compare), _txn_ops(success, "success", self._lease_id),
                  _txn_ops(failure, "failure", self._lease_id), _fence(fence))
        res = await self._write(cmd)
        raise_for(res)
        ok, rev = res.data.get("succeeded"), res.data.get("revision")
        if type(ok) is not bool or type(rev) is not int:
            raise CoordError("malformed reply: succeeded, revision")
        return ok, rev

    async def watch(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[Event]:
        """Events under ``prefix`` from ``start_revision`` (None: from now), in order, none
        skipped or repeated (an async iterator; break out of it to stop). ``PermissionDenied``
        at the first step when the key may read nothing under ``prefix`` (each watch polls
        on its own, so its first poll is refused: no probe needed, unlike the sync client's)."""
        _check_prefix(prefix)
        if start_revision is not None and (type(start_revision) is not int
                                           or not 0 <= start_revision <= MAX_INT):
            raise InvalidRequest(f"start_revision must be an int in [0, 2**63 - 1], got {start_revision!r}")
        fetched = (await self.revision()) if start_revision is None else max(0, start_revision - 1)
        while True:
            reply = await self._call(
                WatchRequest(fetched, prefix, wait_ms=int(WATCH_WAIT_S * 1000)), WatchReply.from_wire,
                leader=False, long_poll_s=WATCH_WAIT_S)
            before, seen = fetched, set()
            for ch in reply.events:
                if ch.revision > before and under(ch.key, prefix) and (ch.revision, ch.key) not in seen:
                    seen.add((ch.revision, ch.key))
                    fetched = ch.revision
                    yield event_of(ch)
            if not reply.more:
                fetched = max(fetched, reply.revision)

    # -- leases, locks, elections -------------------------------------------------------------

    def lease(self, ttl: float = 10.0, on_lost: Callable[[AsyncLease], object] | None = None
              ) -> AsyncLease:
        """``async with ac.lease(ttl) as ls:`` (or ``ls = await ac.lease(ttl).open()``).
        ``on_lost(ls)`` runs once on the loop if the lease may have expired (a coroutine
        function's coroutine runs as a task)."""
        return AsyncLease(self, _ttl(ttl), on_lost)

    def lock(self, name: str, ttl: float = 10.0, timeout: float | None = 30.0,
             on_lost: Callable[[AsyncLock], object] | None = None,
             lease: AsyncLease | None = None, lock_delay: float = 0.0) -> AsyncLock:
        """``async with ac.lock(name) as lk:`` holds the lock (FIFO; ``lk.token``);
        ``on_lost`` and ``lock_delay`` as ``Client.acquire``'s (``on_lost`` runs on the loop)."""
        return AsyncLock(self, name, _ttl(ttl), timeout, lease,
                         lock_delay_ms=_check_delay(lock_delay), on_lost=on_lost)

    async def acquire(self, name: str, ttl: float = 10.0, timeout: float | None = None,
                      on_lost: Callable[[AsyncLock], object] | None = None,
                      lease: AsyncLease | None = None, lock_delay: float = 0.0) -> AsyncLock:
        lk = AsyncLock(self, name, _ttl(ttl), timeout, lease,
                       lock_delay_ms=_check_delay(lock_delay), on_lost=on_lost)
        await lk.acquire()
        return lk

    def election(self, name: str) -> AsyncElection:
        return AsyncElection(self, name)

    def semaphore(self, name: str, limit: int, ttl: float = 10.0, timeout: float | None = 30.0,
                  on_lost: Callable[[AsyncLock], object] | None = None,
                  lease: AsyncLease | None = None) -> AsyncLock:
        """``async with ac.semaphore(name, limit=4) as slot:`` holds one of ``limit`` slots
        (as ``Client.semaphore``: FIFO, ``slot.token``, the same ``limit`` for every holder)."""
        if type(limit) is not int:
            raise InvalidRequest(f"limit must be an int, got {limit!r}")
        return AsyncLock(self, name, _ttl(ttl), timeout, lease, shared=("semaphore", limit),
                         on_lost=on_lost)

    def rwlock(self, name: str) -> AsyncRWLock:
        """``async with ac.rwlock(name).read():`` (shared) or ``.write()`` (exclusive)."""
        return AsyncRWLock(self, name)

    async def locks(self) -> builtins.list[LockInfo]:
        """As ``Client.locks``: every held lock, semaphore, rwlock and election."""
        rows, _ = await self._paged(
            LocksRequest(), lambda cursor, offset: LocksRequest(cursor=cursor, offset=offset),
            LocksReply.from_wire, lambda r: r.locks, leader=True)
        return [_lock_info(row) for row in rows]

    # -- schemas -------------------------------------------------------------------------------

    async def schema_set(self, prefix: str, schema: str | bytes | Mapping[str, Any]) -> int:
        """As ``Client.schema_set``: attach a JSON Schema to ``prefix``; the revision."""
        raw = json.dumps(schema).encode() if isinstance(schema, Mapping) else _to_bytes(schema)
        res = await self._write(SchemaSet(prefix, raw))
        raise_for(res)
        rev = res.data.get("revision")
        if type(rev) is not int:
            raise CoordError("malformed reply: revision")
        return rev

    async def schema_get(self, prefix: str) -> bytes | None:
        e = await self.get(SCHEMA_PREFIX + prefix)
        return None if e is None else e.value

    async def schema_delete(self, prefix: str) -> bool:
        res = await self._write(SchemaDelete(prefix))
        raise_for(res)
        return res.data.get("deleted") is True

    # -- identities (admin) --------------------------------------------------------------------

    async def auth_add(self, name: str, public_key: str, *, read: Sequence[str] = (),
                       write: Sequence[str] = (), lock: Sequence[str] = (), admin: bool = False) -> None:
        """As ``Client.auth_add``: returns once every node that answers admits the key."""
        await self._auth_write(AuthAdd(name, public_key, _prefixes(read, "read"),
                                       _prefixes(write, "write"), _prefixes(lock, "lock"), admin))

    async def auth_remove(self, name: str) -> None:
        """As ``Client.auth_remove``: returns once every node that answers applied it."""
        await self._auth_write(AuthRemove(name))

    async def auth_list(self) -> builtins.list[Principal]:
        reply = await self._call(AuthListRequest(), AuthListReply.from_wire, leader=True)
        return [principal_of(row) for row in reply.principals]

    async def _auth_write(self, cmd: AuthAdd | AuthRemove) -> None:
        res = await self._write(cmd)
        raise_for(res)
        index = res.data.get("index")
        if type(index) is not int:
            return
        members = self._members_asked()
        deadline = time.monotonic() + self._timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                replies = await self._ask_all(members, StatusRequest(), min(ATTEMPT_S, left))
            except PermissionDenied:
                return    # we removed ourselves: the nodes refuse our key now
            if all(_applied(r, index) for r in replies):
                return
            await asyncio.sleep(_APPLIED_POLL_S)

    def _members_asked(self) -> builtins.list[str]:
        return ([n.address for n in self._cluster.nodes] if self._cluster is not None
                else builtins.list(self._endpoints))

    # -- cluster -------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The dict of ``coordctl status --json``, as ``Client.status`` builds it."""
        members: builtins.list[tuple[str | None, str]]
        if self._cluster is not None:
            members = [(n.id, n.address) for n in self._cluster.nodes]
            name: str | None = self._cluster.name
        else:
            members = [(None, ep) for ep in self._endpoints]
            name = None
        wait_s = min(ATTEMPT_S, self._timeout_s)
        replies = await self._ask_all([a for _, a in members], StatusRequest(), wait_s)
        for r in replies:
            if r is not None and r.get("error") == ErrorCode.PERMISSION_DENIED:
                raise _refusal(StatusRequest(), ErrorReply.from_wire(r))
        statuses = [_node_status(r) for r in replies]
        config = _chosen_config(statuses)
        learners: builtins.list[str] = []
        if config is not None:
            asked = {mid: (mid, addr, st) for (mid, addr), st in zip(members, statuses, strict=True)}
            extra = [(mid, addr) for mid, addr, _, _ in config if mid not in asked and addr]
            if self._creds is not None:
                for _, addr, _, key in config:
                    if key:
                        self._creds.learn(addr, key)
            try:
                more = [_node_status(r) for r in await self._ask_all(
                    [addr for _, addr in extra], StatusRequest(), wait_s)]
            except CoordError:
                more = [None] * len(extra)
            found = {mid: (mid, addr, st) for (mid, addr), st in zip(extra, more, strict=True)}
            rows = [asked.get(mid) or found.get(mid) or (mid, addr, None)
                    for mid, addr, _, _ in config]
            members = [(mid, addr) for mid, addr, _ in rows]
            statuses = [st for _, _, st in rows]
            learners = [mid for mid, _, voting, _ in config if not voting]
        return _status.summarize(members, statuses, name, learners)

    async def members(self) -> builtins.list[MemberRow]:
        """The chosen configuration, from the leader (as ``Client.members``)."""
        return builtins.list((await self.membership()).members)

    async def membership(self) -> MembersReply:
        reply = await self._call(MembersRequest(), MembersReply.from_wire, leader=True)
        if self._creds is not None:
            for r in reply.members:
                if r.public_key:
                    self._creds.learn(r.address, r.public_key)
        return reply

    async def member_add(self, node_id: str, address: str, *, publish: str = "", http: str = "",
                         public_key: str = "", timeout_s: float | None = None) -> MemberRow:
        """As ``Client.member_add``: returns once the change is chosen."""
        req = _member_request("add", node_id, address, publish, http, public_key)
        row: MemberRow = await self._member_change(req, lambda rows: _row(rows, node_id), timeout_s)
        return row

    async def member_remove(self, node_id: str, *, timeout_s: float | None = None) -> None:
        req = _member_request("remove", node_id)
        await self._member_change(req, lambda rows: None if _row(rows, node_id) else True, timeout_s)

    async def transfer_leader(self, node_id: str, *, timeout_s: float | None = None) -> None:
        """As ``Client.transfer_leader``: returns once ``node_id`` leads."""
        req = _member_request("transfer", node_id)
        total = self._timeout_s if timeout_s is None else _check_timeout(timeout_s)
        deadline = time.monotonic() + total
        await self._call(req, MemberChangeReply.from_wire, leader=True, timeout_s=total)
        ask_again = time.monotonic() + TRANSFER_ASK_AGAIN_S
        while time.monotonic() < deadline:
            try:
                leader = (await self._call(MembersRequest(), MembersReply.from_wire, leader=True,
                                           timeout_s=max(0.1, deadline - time.monotonic()))).leader
            except Unavailable:
                leader = None
            if leader == node_id:
                return
            if leader is not None and time.monotonic() >= ask_again:
                await self._call(req, MemberChangeReply.from_wire, leader=True,
                                 timeout_s=max(0.1, deadline - time.monotonic()))
                ask_again = time.monotonic() + TRANSFER_ASK_AGAIN_S
            await asyncio.sleep(0.05)
        raise Unavailable(f"{node_id} did not take over within {total:.1f}s")

    async def _member_change(self, req: MemberChangeRequest,
                             done: Callable[[Sequence[MemberRow]], Any], timeout_s: float | None) -> Any:
        total = self._timeout_s if timeout_s is None else _check_timeout(timeout_s)
        deadline = time.monotonic() + total
        try:
            await self._call(req, MemberChangeReply.from_wire, leader=True, timeout_s=total)
        except MembershipRefused:
            got = done(await self.members())    # a retry of a change that went through already
            if got is not None and req.action == "add":
                return got
            raise
        while time.monotonic() < deadline:
            try:
                seen = (await self._call(MembersRequest(), MembersReply.from_wire, leader=True,
                                         timeout_s=max(0.1, deadline - time.monotonic()))).members
            except Unavailable:
                continue
            got = done(seen)
            if got is not None:
                return got
            await asyncio.sleep(0.05)
        raise Unavailable(f"{req.action} {req.node} was proposed but not seen chosen within "
                          f"{total:.1f}s (it may still be)")

    async def snapshot_save(self, path: str | os.PathLike[str]) -> snapshotfile.Header:
        """As ``Client.snapshot_save``: a consistent backup streamed from the leader into
        ``path`` (written beside it chunk by chunk, verified, renamed); its header."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidRequest(f"path must be a str or path, got {type(path).__name__}")
        for attempt in range(1, _snapshot.ATTEMPTS + 1):
            try:
                return await self._save_once(Path(path))
            except SnapshotGone:
                if attempt == _snapshot.ATTEMPTS:
                    raise
        raise AssertionError("unreachable")   # pragma: no cover

    async def _save_once(self, path: Path) -> snapshotfile.Header:
        pin = Pin()
        begin = await self._call(SnapshotSaveRequest(), SnapshotSaveReply.from_wire, leader=True,
                                 pin=pin)
        with _snapshot.open_writer(path, begin, self._cluster) as writer:
            offset = 0
            while True:
                chunk = await self._call(SnapshotChunkRequest(begin.export_id, offset),
                                         SnapshotChunkReply.from_wire, leader=False, pin=pin)
                offset, header = _snapshot.write_chunk(writer, offset, chunk)
                if header is not None:
                    return header

    # -- internals ----------------------------------------------------------------------------

    def _lease_id(self, lease: AsyncLease | None) -> int:
        if lease is None:
            return 0
        if not isinstance(lease, AsyncLease) or lease._client is not self:
            raise InvalidRequest("lease must be an AsyncLease of this client")
        if lease.session_id == 0:
            raise InvalidRequest("the lease is not open yet")
        return lease.session_id

    async def _write(self, cmd: Command, timeout_s: float | None = None) -> Any:
        _check(cmd)
        self._seq += 1
        seq = self._seq
        self._inflight.add(seq)
        try:
            req = WriteRequest.of(Request(self.client_id, seq, min(self._inflight), cmd))
            return (await self._call(req, WriteReply.from_wire, leader=True, timeout_s=timeout_s)).result
        finally:
            self._inflight.discard(seq)

    async def _paged(self, first: ClientRequest, more: Callable[[int, int], ClientRequest],
                     decode: Callable[[Mapping[str, Any]], _P], rows: Callable[[_P], Sequence[_Row]],
                     *, leader: bool) -> tuple[builtins.list[_Row], _P]:
        """As ``Client._paged``: the first page from a node that may answer ``first``, the
        rest from that node's cursor; a vanished cursor restarts the read."""
        for _ in range(_PAGED_READ_ATTEMPTS):
            pin = Pin()
            reply = await self._call(first, decode, leader=leader, pin=pin)
            out = builtins.list(rows(reply))
            n_first = len(out)
            try:
                while reply.cursor:
                    reply = await self._call(more(reply.cursor, len(out) - n_first), decode,
                                             leader=False, pin=pin)
                    out.extend(rows(reply))
            except _CursorExpired:
                continue
            return out, reply
        raise Unavailable(f"{first.op}: the node kept losing the read's cursor; retry")

    def _node(self, endpoint: str) -> _Node:
        if self._closed:
            raise CoordError("client is closed")
        node = self._nodes.get(endpoint)
        if node is None:
            node = self._nodes[endpoint] = _Node(self._ctx, endpoint, self._creds)
        return node

    async def _attempt(self, endpoint: str, payload: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        node = self._node(endpoint)
        if node.error is not None or node.gone.done():
            # Refused, or cut off, before: a fresh socket tries the key (or the node) again.
            await self._drop(endpoint, node)
            node = self._node(endpoint)
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        node.waiting[rid] = fut
        try:
            body = wire.encode_client(wire.CLIENT_REQUEST, {**payload, "id": rid})
            deadline = time.monotonic() + wait_s
            send = asyncio.ensure_future(node.sock.send(body))
            if await node.until(send, wait_s) and await node.until(
                    fut, max(0.0, deadline - time.monotonic())):
                send.result()
                return fut.result()
            # The socket may hold the request for a dead node: start afresh next time.
            await self._drop(endpoint, node)
            return None
        except PermissionDenied:
            await self._drop(endpoint, node)
            raise
        finally:
            node.waiting.pop(rid, None)

    async def _drop(self, endpoint: str, node: _Node) -> None:
        if self._nodes.get(endpoint) is node:
            del self._nodes[endpoint]
        await node.close()

    async def _ask_all(self, endpoints: Sequence[str], request: ClientRequest,
                       wait_s: float) -> builtins.list[dict[str, Any] | None]:
        """``request`` to every endpoint at once (one attempt each): each one's reply, None
        where none came within ``wait_s``; ``PermissionDenied`` if a node refuses our key."""
        payload = request.to_wire()
        try:
            async with asyncio.TaskGroup() as tg:    # a refusal cancels the other attempts
                tasks = [tg.create_task(self._attempt(ep, payload, wait_s)) for ep in endpoints]
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None     # the first failure, as a plain exception
        return [t.result() for t in tasks]

    async def _call(self, request: ClientRequest, decode: Callable[[Mapping[str, Any]], _R], *,
                    leader: bool, timeout_s: float | None = None, long_poll_s: float = 0.0,
                    pin: Pin | None = None) -> _R:
        """As ``Client._call``: until a node answers (redirects, rotation, backoff)."""
        payload = request.to_wire()
        total = self._timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + total
        ep = ((pin.endpoint if pin is not None else None) or self._leader
              or self._endpoints[self._rr % len(self._endpoints)])
        redirects = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"no node answered {request.op.value!r} within {total:.1f}s "
                                  "(the outcome is unknown)")
            reply = await self._attempt(ep, payload, min(left, ATTEMPT_S + long_poll_s))
            if reply is None:
                if self._creds is not None:
                    self._file_keys.refresh(self._creds.learn)
                ep = self._rotate(ep, pin)
                await asyncio.sleep(BACKOFF_S)
                continue
            if reply.get("ok") is True:
                if leader:
                    self._leader = ep
                if pin is not None:
                    pin.endpoint = ep
                try:
                    return decode(reply)
                except SchemaError as e:
                    raise CoordError(f"malformed reply to {request.op}: {e}") from None
            try:
                err = ErrorReply.from_wire(reply)
            except SchemaError as e:
                raise CoordError(f"malformed reply to {request.op}: {e}") from None
            if err.error == ErrorCode.NOT_LEADER:
                if self._creds is not None:
                    self._creds.learn(err.leader_address, err.leader_public_key)
                if err.leader_address and err.leader_address != ep and redirects < len(self._endpoints):
                    redirects += 1
                    ep = err.leader_address
                    continue
                redirects = 0
                ep = self._rotate(ep, pin)
                await asyncio.sleep(BACKOFF_S)
            elif err.error in (ErrorCode.UNAVAILABLE, ErrorCode.BUSY):
                if err.error == ErrorCode.UNAVAILABLE:
                    ep = self._rotate(ep, pin)
                await asyncio.sleep(BACKOFF_S)
            else:
                raise _refusal(request, err)

    def _rotate(self, failed: str, pin: Pin | None = None) -> str:
        if self._leader == failed:
            self._leader = None
        try:
            i = self._endpoints.index(failed) + 1
        except ValueError:
            i = self._rr + 1
        self._rr = i % len(self._endpoints)
        nxt = self._endpoints[self._rr]
        if pin is not None:
            pin.endpoint = nxt
        return nxt


class AsyncLease:
    """A lease kept alive by a task (see ``coordsvc.Lease``); ``async with`` revokes it."""

    def __init__(self, client: AsyncClient, ttl_s: float,
                 on_lost: Callable[[AsyncLease], object] | None = None) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self._on_lost = on_lost
        self._holds: builtins.set[AsyncLock] = builtins.set()   # held locks with on_lost
        self.session_id = 0
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self.lost = False
        self.revoked = False

    @property
    def id(self) -> int:
        return self.session_id

    @property
    def valid_until(self) -> float:
        return self._valid_until

    async def open(self) -> AsyncLease:
        start = time.monotonic()
        res = await self._client._write(OpenSession(int(round(self.ttl_s * 1000))))
        expect(res, ResultCode.OK)
        sid = res.data.get("session_id")
        if type(sid) is not int:
            raise CoordError("malformed reply: session_id")
        self.session_id, self._valid_until = sid, start + self.ttl_s
        self._client._kept.add(self)
        self._task = asyncio.get_running_loop().create_task(self._keepalive())
        return self

    async def _keepalive(self) -> None:
        period = self.ttl_s / 3
        margin = max(LOST_MARGIN_FRACTION * self.ttl_s, LOST_MARGIN_MIN_S)
        while True:
            await asyncio.sleep(period)
            sent = time.monotonic()
            if sent >= self._valid_until - margin:
                self._lose()
                return
            try:
                known = (await self._client._call(
                    KeepaliveRequest(self.session_id), KeepaliveReply.from_wire, leader=True,
                    timeout_s=max(0.1, self._valid_until - margin - sent))).known
            except Unavailable:
                continue
            if not known:
                self._lose()
                return
            self._valid_until = max(self._valid_until, sent + self.ttl_s)

    def _lose(self) -> None:
        """The session may be gone: ``lost``, and every ``on_lost`` runs once."""
        self.lost = True
        _fire(self._client, self._on_lost, self, "lease")
        for lk in builtins.list(self._holds):
            lk._fire_lost()
        self._holds.clear()

    async def _end(self, timeout_s: float | None = None) -> None:
        if self.revoked:
            return
        self.revoked = True
        self._client._kept.discard(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        res = await self._client._write(CloseSession(self.session_id), timeout_s=timeout_s)
        expect(res, ResultCode.OK, ResultCode.NO_SESSION)

    async def revoke(self) -> None:
        """End the lease: its keys are deleted and its locks released when this returns."""
        await self._end()

    async def __aenter__(self) -> AsyncLease:
        return await self.open() if self.session_id == 0 else self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.revoke()


class AsyncLock:
    """A lock (own session, or ``lease``); ``token`` once held. ``async with`` acquires
    and releases; ``LockTimeout`` if not acquired within ``timeout``."""

    def __init__(self, client: AsyncClient, name: str, ttl_s: float, timeout: float | None,
                 lease: AsyncLease | None, campaign: bytes | None = None,
                 shared: tuple[str, int] | None = None, lock_delay_ms: int = 0,
                 on_lost: Callable[[AsyncLock], object] | None = None) -> None:
        if shared is not None:   # checked before a lease is opened for it
            _check(AcquireShared(name, 1, shared[0], shared[1], True))
        self._client, self.name, self.ttl_s, self._timeout = client, name, ttl_s, timeout
        self._shared = shared
        self._delay_ms = lock_delay_ms
        self._on_lost = on_lost
        self._lease = lease
        self._own: AsyncLease | None = None
        self._campaign = campaign
        self.token = 0

    @property
    def session_id(self) -> int:
        ls = self._lease or self._own
        return 0 if ls is None else ls.session_id

    @property
    def lost(self) -> bool:
        ls = self._lease or self._own
        return ls is not None and ls.lost

    async def acquire(self) -> AsyncLock:
        c = self._client
        if self._timeout is not None and not (isinstance(self._timeout, (int, float))
                                              and self._timeout >= 0):
            raise InvalidRequest(f"timeout must be None or seconds >= 0, got {self._timeout!r}")
        if self._lease is None:
            self._own = await AsyncLease(c, self.ttl_s).open()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        wait = self._timeout != 0
        sid = self.session_id
        cmd: Command
        if self._shared is not None:
            cmd = AcquireShared(self.name, sid, self._shared[0], self._shared[1], wait)
        elif self._campaign is not None:
            cmd = Campaign(self.name[len(ELECTION_PREFIX):], sid, self._campaign, wait)
        else:
            cmd = Acquire(self.name, sid, wait, self._delay_ms)
        try:
            res = await c._write(cmd)
            if res.code == ResultCode.LOCK_BUSY:
                raise LockTimeout(f"{self.name!r} is held by another session")
            expect(res, ResultCode.OK, ResultCode.QUEUED)
            if res.code == ResultCode.OK:
                self.token = int(res.data["token"])
                return self._held()
            while True:
                wait_s = LOCK_WAIT_MAX_S if deadline is None else min(LOCK_WAIT_MAX_S, deadline - time.monotonic())
                if wait_s <= 0:
                    res = await c._write(Cancel(self.name, sid))
                    expect(res, ResultCode.OK, ResultCode.NO_SESSION)
                    raise LockTimeout(f"{self.name!r} not acquired in time")
                reply = await c._call(LockWaitRequest(self.name, sid, int(wait_s * 1000)),
                                      LockWaitReply.from_wire, leader=True,
                                      timeout_s=wait_s + c.timeout, long_poll_s=wait_s)
                if reply.state is LockState.HELD:
                    self.token = reply.token
                    return self._held()
                if reply.state is LockState.NONE:
                    raise LockTimeout(f"{self.name!r}: the session ended while waiting")
        except BaseException:
            if self._own is not None:
                with contextlib.suppress(CoordError):
                    await self._own._end(c.timeout)
            raise

    def _held(self) -> AsyncLock:
        ls = self._lease or self._own
        if self._on_lost is not None and ls is not None:
            ls._holds.add(self)
        return self

    def _fire_lost(self) -> None:
        _fire(self._client, self._on_lost, self, f"lock {self.name!r}")

    async def release(self) -> None:
        ls = self._lease or self._own
        if ls is not None:
            ls._holds.discard(self)
        if self._own is not None:
            await self._own.revoke()
        elif self.token:
            res = await self._client._write(Release(self.name, self.session_id, self.token))
            expect(res, ResultCode.OK, ResultCode.NOT_HELD, ResultCode.NO_SESSION)

    async def resign(self) -> None:
        await self.release()

    async def __aenter__(self) -> AsyncLock:
        return await self.acquire()

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.release()


AsyncTerm = AsyncLock


class AsyncRWLock:
    """Read/write lock ``name`` (see ``coordsvc.RWLock``): many readers or one writer, FIFO."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client, self.name = client, name

    def read(self, ttl: float = 10.0, timeout: float | None = 30.0,
             on_lost: Callable[[AsyncLock], object] | None = None,
             lease: AsyncLease | None = None) -> AsyncLock:
        return AsyncLock(self._client, self.name, _ttl(ttl), timeout, lease, shared=("read", 0),
                         on_lost=on_lost)

    def write(self, ttl: float = 10.0, timeout: float | None = 30.0,
              on_lost: Callable[[AsyncLock], object] | None = None,
              lease: AsyncLease | None = None) -> AsyncLock:
        return AsyncLock(self._client, self.name, _ttl(ttl), timeout, lease, shared=("write", 0),
                         on_lost=on_lost)


class AsyncElection:
    def __init__(self, client: AsyncClient, name: str) -> None:
        _check(Campaign(name, 1, b""))
        self._client, self.name, self.key = client, name, ELECTION_PREFIX + name

    def campaign(self, value: str | bytes, ttl: float = 10.0, timeout: float | None = None,
                 on_lost: Callable[[AsyncLock], object] | None = None,
                 lease: AsyncLease | None = None) -> AsyncTerm:
        """``async with el.campaign(value) as term:`` leads for the block (``term.token``)."""
        return AsyncLock(self._client, self.key, _ttl(ttl), timeout, lease, _to_bytes(value),
                         on_lost=on_lost)

    async def leader(self) -> Leader | None:
        e = await self._client.get(self.key)
        return None if e is None else parse_record(e.value)

    async def observe(self) -> AsyncIterator[Leader | None]:
        """The current leader (or None), then every change of leader, in order."""
        lst = await self._client.list(self.key)
        current = next((e for e in lst if e.key == self.key), None)
        yield None if current is None else parse_record(current.value)
        async for ev in self._client.watch(self.key, start_revision=lst.revision + 1):
            if ev.key == self.key:
                yield parse_record(ev.value) if ev.type == "put" else None


def _check(cmd: Command) -> None:
    err = validate(cmd)
    if err is not None:
        raise InvalidRequest(err)


def _ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (
            MIN_TTL_MS <= ttl * 1000 <= MAX_TTL_MS):
        raise InvalidRequest(f"ttl must be seconds in [{MIN_TTL_MS / 1000:g}, {MAX_TTL_MS / 1000:g}], "
                             f"got {ttl!r}")
    return float(ttl)


def _fire(client: AsyncClient, cb: Callable[[_A], object] | None, arg: _A, what: str) -> None:
    """Run an ``on_lost`` callback; an awaitable it returns runs as a task of the client."""
    if cb is None:
        return
    try:
        out = cb(arg)
        if inspect.isawaitable(out):
            task = asyncio.ensure_future(out)
            client._callbacks.add(task)
            task.add_done_callback(_logged(client, what))
    except Exception:
        log.exception("on_lost callback of %s raised", what)


def _logged(client: AsyncClient, what: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        client._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("on_lost callback of %s raised", what, exc_info=task.exception())
    return done


def _fence(lk: AsyncLock | None) -> Fence | None:
    if lk is None:
        return None
    if not isinstance(lk, AsyncLock):
        raise InvalidRequest(f"fence must be an AsyncLock, got {type(lk).__name__}")
    return Fence(lk.name, lk.token)
