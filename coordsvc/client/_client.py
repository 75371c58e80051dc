"""``Client``: leader discovery, retries with a stable (client_id, seq), result mapping.

Requests and replies are the records of ``coordsvc.core.protocol``; the bytes travel
through a ``ClientTransport`` -- ZeroMQ unless the caller passes another (the client's
tests pass one that reaches an in-process node).
"""
from __future__ import annotations

import builtins
import json
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from coordsvc import clusterfile, snapshotfile
from coordsvc.core.commands import (
    MAX_INT,
    SCHEMA_PREFIX,
    AuthAdd,
    AuthRemove,
    Command,
    Delete,
    Fence,
    Put,
    Request,
    SchemaDelete,
    SchemaSet,
    Txn,
    name_error,
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
    ListReply,
    ListRequest,
    LockRow,
    LocksReply,
    LocksRequest,
    MemberChangeReply,
    MemberChangeRequest,
    MemberRow,
    MembersReply,
    MembersRequest,
    Result,
    RevisionReply,
    RevisionRequest,
    SchemaError,
    StatusReply,
    StatusRequest,
    WatchReply,
    WatchRequest,
    WriteReply,
    WriteRequest,
)

from . import _credentials, _snapshot, _status
from ._election import Election
from ._lock import (
    KeepaliveLoop,
    Lease,
    Lock,
    LockInfo,
    RWLock,
    SharedHold,
    _Kept,
    acquire_lock,
    open_lease,
)
from ._results import raise_for
from ._transport import Cancelled, Pin, Transport
from ._types import Entry, EntryList, Event, Principal, entry_of, event_of, principal_of
from ._watch import Watch, WatchHub
from .errors import (
    Compacted,
    CoordError,
    InvalidRequest,
    MembershipRefused,
    PermissionDenied,
    QuotaExceeded,
    SnapshotGone,
    Unavailable,
)

__all__ = ["Client", "ClientTransport"]

# One attempt waits at most this long for a node (plus the long-poll time of watch and
# lock_wait), so a dead or SIGSTOPped node is skipped quickly.
ATTEMPT_S = 1.0
BACKOFF_S = (0.010, 0.050)
# "unavailable" from the same node this many times in a row: try another node (the one
# we talk to may have lost its quorum while the others elected a new leader).
_UNAVAILABLE_BEFORE_ROTATE = 2
# While waiting for every node to apply an identity change: the pause between rounds.
_APPLIED_POLL_S = 0.02
# A leader gives a transfer one election timeout for the target to hold its last slot,
# holding new writes meanwhile, and then keeps leading without a word; a target cut off
# just before (TCP retransmits back off for seconds after a partition heals) is often
# caught up a moment later. transfer_leader asks again this often while it waits.
TRANSFER_ASK_AGAIN_S = 2.0
_PROBE_AFTER = 2**62
# A paged read whose cursor vanished (its node restarted, or lost us for 30 s) is started
# again from its first page, at most this many times.
_PAGED_READ_ATTEMPTS = 3

_R = TypeVar("_R")
_Row = TypeVar("_Row")


class _Paged(Protocol):
    @property
    def cursor(self) -> int: ...


_P = TypeVar("_P", bound=_Paged)


class _CursorExpired(CoordError):
    """A paged read's cursor is gone from its node (internal: the read starts again)."""


class ClientTransport(Protocol):
    """What a ``Client`` needs to reach nodes: one request at a time per thread.

    Payloads are request maps without ``id``; a transport adds a fresh ``id`` per
    attempt and returns only the reply carrying it.
    """

    def request(self, endpoint: str, payload: dict[str, Any], deadline: float,
                connect_deadline: float, cancel: threading.Event | None = None
                ) -> dict[str, Any] | None:
        """``endpoint``'s reply map, or None if none came by ``deadline`` (``time.monotonic``).
        Raises ``Cancelled`` once ``cancel`` is set."""

    def request_all(self, endpoints: Sequence[str], payload: dict[str, Any],
                    timeout_s: float) -> builtins.list[dict[str, Any] | None]:
        """``payload`` to every endpoint at once; each one's reply, None if it did not answer."""

    def learn_key(self, address: object, public: object) -> None:
        """A member named ``public`` as the CURVE key of ``address`` (with a redirect)."""

    def release_thread(self) -> None:
        """The calling thread is done with the transport (a worker thread about to end)."""

    def close(self) -> None:
        """Release everything; later requests raise ``CoordError``."""


class Client:
    """A thread-safe client of a coordsvc cluster (CONTRACT section 4).

    ``endpoints`` is a list of ``tcp://host:port`` node addresses or a loaded
    ``clusterfile.Cluster``; None finds the cluster as the CLI does (``$COORD_CLUSTER``,
    ``$COORD_ENDPOINTS``, ``./.coord/cluster.toml``). ``timeout`` bounds each call's
    retries: past it the call raises ``Unavailable`` (the outcome of a write is unknown).
    Bad arguments raise ``InvalidRequest``. ``transport`` replaces the ZeroMQ transport.

    ``key`` is a client key file (CONTRACT §7); without it the client uses ``$COORD_KEY``,
    else the ``admin.key`` beside the cluster file. A key the cluster rejects makes calls
    fail at once with ``PermissionDenied``.
    """

    def __init__(self, endpoints: Sequence[str] | clusterfile.Cluster | None = None,
                 timeout: float = 5.0, key: str | os.PathLike[str] | None = None, *,
                 transport: ClientTransport | None = None) -> None:
        self._cluster, self._endpoints = _locate(endpoints)
        self._timeout_s = _check_timeout(timeout)
        #: Identifies this client's writes for exactly-once retries (random per Client).
        self.client_id = secrets.token_hex(8)
        self._transport: ClientTransport = (
            Transport(_credentials.resolve(self._cluster, key)) if transport is None else transport)
        self._file_keys = _credentials.FileKeys(self._cluster)
        self._seq_mu = threading.Lock()
        self._seq = 0
        self._inflight: set[int] = set()
        self._leader: str | None = None
        self._rr = 0
        self._rng = random.Random()  # backoff jitter only
        self._locks_mu = threading.Lock()
        self._keepalive: KeepaliveLoop | None = None   # the one keepalive thread, once needed
        self._hub: WatchHub | None = None
        self._locks: set[_Kept] = set()    # locks of their own session, and leases
        self._closed = False

    @classmethod
    def from_cluster_file(cls, path: str | os.PathLike[str], timeout: float = 5.0,
                          key: str | os.PathLike[str] | None = None) -> Client:
        """A client of the cluster in ``path``, with the admin key beside it unless ``key``
        or ``$COORD_KEY`` names another."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidRequest(f"path must be a str or path, got {type(path).__name__}")
        try:
            cluster = clusterfile.load(Path(path))
        except clusterfile.ClusterFileError as e:
            raise InvalidRequest(str(e)) from None
        return cls(cluster, timeout=timeout, key=key)

    @property
    def endpoints(self) -> builtins.list[str]:
        return list(self._endpoints)

    @property
    def timeout(self) -> float:
        return self._timeout_s

    @property
    def leader(self) -> str | None:
        """The endpoint that last answered as leader, if any."""
        return self._leader

    # -- config keys ---------------------------------------------------------------------

    def put(self, key: str, value: str | bytes, if_revision: int | None = None,
            fence: Lock | None = None, lease: Lease | None = None) -> int:
        """Set ``key``; return the new revision. ``if_revision=0``: only if absent.
        ``lease``: the key is ephemeral, deleted when the lease ends (``LeaseExpired`` if
        it has); a later put without a lease makes it persistent again."""
        res = self._write(Put(key, _to_bytes(value), if_revision, _fence(fence),
                              self._lease_id(lease)))
        raise_for(res)
        rev = res.data.get("revision", res.revision)
        if type(rev) is not int:
            raise CoordError("malformed reply: revision")
        return rev

    def delete(self, key: str, if_revision: int | None = None, fence: Lock | None = None) -> bool:
        """Delete ``key``; False if it did not exist."""
        res = self._write(Delete(key, if_revision, _fence(fence)))
        raise_for(res)
        return res.data.get("deleted") is True

    def txn(self, compare: Sequence[tuple[str, int]] = (), success: Sequence[TxnOp] = (),
            failure: Sequence[TxnOp] = (), fence: Lock | None = None) -> tuple[bool, int]:
        """Atomically: if every ``(key, revision)`` of ``compare`` holds (0: the key is
        absent), apply ``success``, else ``failure``; ``(succeeded, revision)``. Ops are
        ``("put", key, value)``, ``("put", key, value, lease)`` or ``("delete", key)``; all
        writes of the applied branch share one revision (the one returned; the current one
        if the branch changed nothing). A failed compare is not an exception. ``fence``
        guards it like a single put (``FenceRejected``: nothing was applied). At most
        ``MAX_TXN_OPS`` (64) compares and ops per branch, and 1 MiB of keys and values."""
        cmd = Txn(_compares(compare), _txn_ops(success, "success", self._lease_id),
                  _txn_ops(failure, "failure", self._lease_id), _fence(fence))
        res = self._write(cmd)
        raise_for(res)
        ok, rev = res.data.get("succeeded"), res.data.get("revision")
        if type(ok) is not bool or type(rev) is not int:
            raise CoordError("malformed reply: succeeded, revision")
        return ok, rev

    def schema_set(self, prefix: str, schema: str | bytes | Mapping[str, Any]) -> int:
        """Attach JSON Schema ``schema`` (JSON text, or a dict) to ``prefix``: from then on a
        put or txn under it whose value is not JSON validating against it is refused with
        ``InvalidRequest`` naming the failing path (values already there are not checked).
        ``InvalidRequest`` if the schema is not a valid JSON Schema. The revision."""
        raw = (json.dumps(schema).encode() if isinstance(schema, Mapping) else _to_bytes(schema))
        res = self._write(SchemaSet(prefix, raw))
        raise_for(res)
        rev = res.data.get("revision")
        if type(rev) is not int:
            raise CoordError("malformed reply: revision")
        return rev

    def schema_get(self, prefix: str) -> bytes | None:
        """The JSON Schema attached to exactly ``prefix``, or None."""
        e = self.get(SCHEMA_PREFIX + prefix)
        return None if e is None else e.value

    def schema_delete(self, prefix: str) -> bool:
        """Detach ``prefix``'s schema; False if it had none."""
        res = self._write(SchemaDelete(prefix))
        raise_for(res)
        return res.data.get("deleted") is True

    def get(self, key: str, stale: bool = False) -> Entry | None:
        """The key's entry or None; linearizable unless ``stale`` (then any node answers)."""
        _check_key(key)
        kv = self._call(GetRequest(key, bool(stale)), GetReply.from_wire, leader=not stale).kv
        return None if kv is None else entry_of(kv)

    def list(self, prefix: str = "", stale: bool = False, *, limit: int | None = None,
             start_after: str | None = None) -> EntryList:
        """Entries whose key starts with ``prefix``, sorted by key, all read at one revision
        (``lst.revision``). However large the answer, the node sends it in pages and this
        call puts them together. With ``limit``: at most that many entries after
        ``start_after`` (one page for callers who page themselves; ``lst.more`` says
        whether keys beyond it exist)."""
        _check_prefix(prefix)
        if limit is not None and not (type(limit) is int and 1 <= limit <= MAX_INT):
            raise InvalidRequest(f"limit must be an int >= 1 or None, got {limit!r}")
        if start_after is not None and start_after != "":
            _check_key(start_after, "start_after")
        rows, last = self._paged(
            ListRequest(prefix, bool(stale), start_after or "", limit or 0),
            lambda cursor, offset: ListRequest(cursor=cursor, offset=offset),
            ListReply.from_wire, lambda r: r.kvs, leader=not stale)
        return EntryList(sorted((entry_of(kv) for kv in rows), key=lambda e: e.key),
                         last.revision, last.more)

    def history(self, key: str) -> builtins.list[Event]:
        """The key's recent changes (a bounded history), oldest first, read at one revision
        and put together from as many pages as the node sent."""
        _check_key(key)
        rows, _ = self._paged(
            HistoryRequest(key), lambda cursor, offset: HistoryRequest(key, cursor=cursor, offset=offset),
            HistoryReply.from_wire, lambda r: r.events, leader=True)
        return sorted((event_of(ch) for ch in rows), key=lambda e: e.revision)

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Events under ``prefix`` with revision >= ``start_revision`` (None: from now on).

        Only events of keys this client's key may read are delivered; ``PermissionDenied``
        (here, at once) when it may read nothing under ``prefix``, and from the iterator
        when the key is removed while watching."""
        _check_prefix(prefix)
        if start_revision is None:
            after = self.revision()
        elif type(start_revision) is not int or not 0 <= start_revision <= MAX_INT:
            raise InvalidRequest(f"start_revision must be an int in [0, 2**63 - 1], got {start_revision!r}")
        else:
            after = max(0, start_revision - 1)
        # One poll serves every watch of this client, so a prefix the key may not read is
        # refused here, alone, rather than failing the shared poll for all of them. Asking
        # for events after a revision far ahead is answered at once, with none.
        self._call(WatchRequest(_PROBE_AFTER, prefix), WatchReply.from_wire, leader=False)
        return Watch(self._watch_hub(), prefix, after)

    def revision(self) -> int:
        """The cluster's current revision (a linearizable read; any key may ask)."""
        return self._call(RevisionRequest(), RevisionReply.from_wire, leader=True).revision

    # -- locks ---------------------------------------------------------------------------

    def acquire(self, name: str, ttl: float = 10.0, timeout: float | None = None,
                on_lost: Callable[[Lock], None] | None = None, lease: Lease | None = None,
                lock_delay: float = 0.0) -> Lock:
        """Acquire lock ``name`` (FIFO among waiters). ``timeout=0``: try once; None: wait
        forever. Raises ``LockTimeout`` when not acquired (then nothing is held).
        ``lease``: hold it on that lease (``ttl`` is then the lease's): it is released when
        the lease ends, and the lease's keepalive keeps it. ``lock_delay`` (seconds, at most
        60): should this holder's session expire (not a release), nobody gets the lock for
        that long, so a holder that lost its session but not its work has time to notice."""
        return acquire_lock(self, name, ttl, timeout, on_lost, lease, lock_delay)

    @contextmanager
    def lock(self, name: str, ttl: float = 10.0, timeout: float | None = 30.0,
             on_lost: Callable[[Lock], None] | None = None,
             lease: Lease | None = None, lock_delay: float = 0.0) -> Iterator[Lock]:
        """``with c.lock(name) as lk:`` holds the lock (kept alive) for the block."""
        lk = self.acquire(name, ttl=ttl, timeout=timeout, on_lost=on_lost, lease=lease,
                          lock_delay=lock_delay)
        try:
            yield lk
        except BaseException:
            lk.release_quietly()
            raise
        lk.release()

    def lease(self, ttl: float = 10.0, on_lost: Callable[[Lease], None] | None = None) -> Lease:
        """A new lease of ``ttl`` seconds, kept alive in the background until ``revoke()``
        (or the end of its ``with`` block, or ``close()``). Keys put on it and locks taken
        on it end with it: ``with c.lease(10.0) as ls: c.put(k, v, lease=ls)``."""
        return open_lease(self, ttl, on_lost)

    def semaphore(self, name: str, limit: int, ttl: float = 10.0, timeout: float | None = 30.0,
                  on_lost: Callable[[Lock], None] | None = None,
                  lease: Lease | None = None) -> SharedHold:
        """``with c.semaphore(name, limit=4) as slot:`` holds one of ``limit`` slots
        (FIFO among waiters; ``slot.token`` a fencing token). Every holder must name the
        same ``limit`` (``InvalidRequest`` otherwise). ``LockTimeout`` if no slot came within
        ``timeout``. Its session is its own unless ``lease``."""
        if type(limit) is not int:
            raise InvalidRequest(f"limit must be an int, got {limit!r}")
        return SharedHold(self, name, "semaphore", limit, ttl, timeout, on_lost, lease)

    def election(self, name: str) -> Election:
        """Election ``name``: ``campaign(value, ttl, timeout)`` -> a ``Term`` once leading,
        ``leader()`` -> ``Leader(value, token)`` or None, ``observe()`` every change."""
        return Election(self, name)

    def rwlock(self, name: str) -> RWLock:
        """Read/write lock ``name``: ``with c.rwlock(name).read(): ...`` (shared) or
        ``.write()`` (exclusive), FIFO between them."""
        return RWLock(self, name)

    def _lease_id(self, lease: Lease | None) -> int:
        if lease is None:
            return 0
        if not isinstance(lease, Lease):
            raise InvalidRequest(f"lease must be a Lease, got {type(lease).__name__}")
        if lease._client is not self:
            raise InvalidRequest("that lease belongs to another Client")
        return lease.session_id

    def locks(self) -> builtins.list[LockInfo]:
        """Every held lock with its holder, token, waiters and ttl left (linearizable); only
        locks whose names this client's key may lock."""
        rows, _ = self._paged(
            LocksRequest(), lambda cursor, offset: LocksRequest(cursor=cursor, offset=offset),
            LocksReply.from_wire, lambda r: r.locks, leader=True)
        return [_lock_info(row) for row in rows]

    # -- identities (admin) ----------------------------------------------------------------

    def auth_add(self, name: str, public_key: str, *, read: Sequence[str] = (),
                 write: Sequence[str] = (), lock: Sequence[str] = (), admin: bool = False) -> None:
        """Record client ``name`` with CURVE ``public_key`` and these rights (CONTRACT §7):
        ``read``/``write``/``lock`` prefix lists (write implies read), ``admin`` for all.

        Only the public key travels; generate the pair where the key will be used
        (``keys.KeyPair.generate()``, or ``coordctl auth add --out FILE``). Returns once
        every node that answers admits the key. ``InvalidRequest`` if the name, key or a
        prefix is malformed, ``CoordError`` if the name or key is taken (a removed name stays
        taken: it is never given to another key), ``PermissionDenied``
        unless this client is an admin."""
        cmd = AuthAdd(name, public_key, _prefixes(read, "read"), _prefixes(write, "write"),
                      _prefixes(lock, "lock"), admin)
        self._auth_write(cmd)

    def auth_remove(self, name: str) -> None:
        """Forget client ``name``: its key is refused on new connections, everything its
        open connections send is refused, its watches and lock waits end with
        ``PermissionDenied``, its sessions close (locks go to the next waiter). Returns once
        every node that answers has applied it. ``CoordError`` for an unknown name or the
        last admin (which cannot be removed)."""
        self._auth_write(AuthRemove(name))

    def auth_list(self) -> builtins.list[Principal]:
        """Every client identity with its public key and rights, by name (admin only)."""
        reply = self._call(AuthListRequest(), AuthListReply.from_wire, leader=True)
        return [principal_of(row) for row in reply.principals]

    def _auth_write(self, cmd: AuthAdd | AuthRemove) -> None:
        res = self._write(cmd)
        raise_for(res)
        index = res.data.get("index")
        if type(index) is int:
            self._wait_applied(index)

    def _wait_applied(self, index: int) -> None:
        """Until every node that answers has applied log slot ``index`` (within the client's
        timeout): a key just added is then admitted, and one just removed refused, whichever
        node a client reaches first."""
        members = ([n.address for n in self._cluster.nodes] if self._cluster is not None
                   else builtins.list(self._endpoints))
        deadline = time.monotonic() + self._timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                replies = self._transport.request_all(members, StatusRequest().to_wire(),
                                                      min(ATTEMPT_S, left))
            except PermissionDenied:
                return    # we removed ourselves: the nodes refuse our key now
            if all(_applied(r, index) for r in replies):
                return
            time.sleep(_APPLIED_POLL_S)

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
        wait_s = min(ATTEMPT_S, self._timeout_s)
        replies = self._transport.request_all([address for _, address in members],
                                              StatusRequest().to_wire(), wait_s)
        for r in replies:    # a removed key, its connections still open: not "unreachable"
            if r is not None and r.get("error") == ErrorCode.PERMISSION_DENIED:
                raise _refusal(StatusRequest(), ErrorReply.from_wire(r))
        statuses = [_node_status(r) for r in replies]
        # The configuration the log chose (from the leader, else the newest answer) is the
        # member list: members added since the cluster file was written are asked too, and
        # members removed since are left out.
        config = _chosen_config(statuses)
        learners: builtins.list[str] = []
        if config is not None:
            asked = {mid: (mid, addr, st) for (mid, addr), st in zip(members, statuses,
                                                                       strict=True)}
            extra = [(mid, addr) for mid, addr, _, _ in config if mid not in asked and addr]
            for _, addr, _, key in config:
                if key:      # members added later: their keys come from the cluster itself
                    self._transport.learn_key(addr, key)
            try:
                more = [_node_status(r) for r in self._transport.request_all(
                    [addr for _, addr in extra], StatusRequest().to_wire(), wait_s)]
            except CoordError:
                more = [None] * len(extra)      # no key for them (yet): shown unreachable
            found = {mid: (mid, addr, st) for (mid, addr), st in zip(extra, more, strict=True)}
            rows = [asked.get(mid) or found.get(mid) or (mid, addr, None)
                    for mid, addr, _, _ in config]
            members = [(mid, addr) for mid, addr, _ in rows]
            statuses = [st for _, _, st in rows]
            learners = [mid for mid, _, voting, _ in config if not voting]
        return _status.summarize(members, statuses, name, learners)

    def members(self) -> builtins.list[MemberRow]:
        """The chosen configuration, from the leader: voters and learners (a learner's
        ``progress`` is the commit index it last reported; -1 not heard yet)."""
        return builtins.list(self.membership().members)

    def membership(self) -> MembersReply:
        """The leader's answer to ``members``: the rows, who leads, whether a change is in
        flight. Members' public keys are learned from it (secure clusters)."""
        reply = self._call(MembersRequest(), MembersReply.from_wire, leader=True)
        for r in reply.members:
            if r.public_key:
                self._transport.learn_key(r.address, r.public_key)
        return reply

    def member_add(self, node_id: str, address: str, *, publish: str = "", http: str = "",
                   public_key: str = "", timeout_s: float | None = None) -> MemberRow:
        """Add ``node_id`` as a learner; returns once the change is chosen (it does not
        wait for the node to start). ``MembershipRefused`` says why when refused."""
        req = _member_request("add", node_id, address, publish, http, public_key)
        row: MemberRow = self._member_change(req, lambda rows: _row(rows, node_id), timeout_s)
        return row

    def member_remove(self, node_id: str, *, timeout_s: float | None = None) -> None:
        """Remove ``node_id`` (the leader hands over first); returns once chosen."""
        req = _member_request("remove", node_id)
        self._member_change(req, lambda rows: None if _row(rows, node_id) else True, timeout_s)

    def transfer_leader(self, node_id: str, *, timeout_s: float | None = None) -> None:
        """Move leadership to voter ``node_id``; returns once it leads (asking again every
        ``TRANSFER_ASK_AGAIN_S`` while it does not: a leader drops a transfer whose target
        has not caught up within an election timeout)."""
        req = _member_request("transfer", node_id)
        total = self._timeout_s if timeout_s is None else _check_timeout(timeout_s)
        deadline = time.monotonic() + total
        self._call(req, MemberChangeReply.from_wire, leader=True, timeout_s=total)
        ask_again = time.monotonic() + TRANSFER_ASK_AGAIN_S
        while time.monotonic() < deadline:
            try:
                leader = self._call(MembersRequest(), MembersReply.from_wire, leader=True,
                                    timeout_s=max(0.1, deadline - time.monotonic())).leader
            except Unavailable:
                leader = None
            if leader == node_id:
                return
            if leader is not None and time.monotonic() >= ask_again:
                self._call(req, MemberChangeReply.from_wire, leader=True,
                           timeout_s=max(0.1, deadline - time.monotonic()))
                ask_again = time.monotonic() + TRANSFER_ASK_AGAIN_S
            time.sleep(0.05)
        raise Unavailable(f"{node_id} did not take over within {total:.1f}s")

    def _member_change(self, req: MemberChangeRequest, done: Callable[[Sequence[MemberRow]], Any],
                       timeout_s: float | None) -> Any:
        total = self._timeout_s if timeout_s is None else _check_timeout(timeout_s)
        deadline = time.monotonic() + total
        try:
            self._call(req, MemberChangeReply.from_wire, leader=True, timeout_s=total)
        except MembershipRefused:
            rows = self.members()       # a retry of a change that went through already
            got = done(rows)
            if got is not None and req.action == "add":
                return got
            raise
        while time.monotonic() < deadline:
            try:
                seen = self._call(MembersRequest(), MembersReply.from_wire, leader=True,
                                  timeout_s=max(0.1, deadline - time.monotonic())).members
            except Unavailable:
                continue
            got = done(seen)
            if got is not None:
                return got
            time.sleep(0.05)
        raise Unavailable(f"{req.action} {req.node} was proposed but not seen chosen within "
                          f"{total:.1f}s (it may still be)")

    def snapshot_save(self, path: str | os.PathLike[str]) -> snapshotfile.Header:
        """Write a consistent point-in-time backup of the cluster's state to ``path``
        (CONTRACT §9: keys with history, sessions, locks and fencing counters, exactly-once
        records). The leader pins the state at a linearizable point and streams it; the
        file is written beside ``path`` as chunks arrive, verified, then renamed over
        ``path``. Returns its header (index, revision, keys, checksum, ...)."""
        self._check_open()
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidRequest(f"path must be a str or path, got {type(path).__name__}")
        return _snapshot.save(self, Path(path))

    def close(self) -> None:
        """Give up held locks and revoke leases (best effort), close every socket.
        Idempotent."""
        if self._closed:
            return
        with self._locks_mu:
            held = builtins.list(self._locks)
        for lk in held:   # locks and leases (a lease's end deletes its keys)
            if isinstance(lk, (Lock, Lease)):
                lk.abandon(timeout_s=min(ATTEMPT_S, self._timeout_s))
        with self._locks_mu:
            keepalive, self._keepalive = self._keepalive, None
            hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()       # before _closed: its poll then ends by cancel, not by error
        self._closed = True
        if keepalive is not None:
            keepalive.close()
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

    def _keepalive_loop(self) -> KeepaliveLoop:
        with self._locks_mu:
            if self._keepalive is None:
                self._check_open()
                self._keepalive = KeepaliveLoop(self)
            return self._keepalive

    def _track(self, lk: _Kept, alive: bool) -> None:
        with self._locks_mu:
            if alive:
                self._locks.add(lk)
            else:
                self._locks.discard(lk)

    def _write(self, cmd: Command, timeout_s: float | None = None) -> Result:
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
            request = WriteRequest.of(Request(self.client_id, seq, first_unacked, cmd))
            return self._call(request, WriteReply.from_wire, leader=True, timeout_s=timeout_s).result
        finally:
            with self._seq_mu:
                self._inflight.discard(seq)

    def _paged(self, first: ClientRequest, more: Callable[[int, int], ClientRequest],
               decode: Callable[[Mapping[str, Any]], _P], rows: Callable[[_P], Sequence[_Row]], *,
               leader: bool) -> tuple[builtins.list[_Row], _P]:
        """Every row of a paged read and its last reply: the first page from a node that may
        answer ``first``, the others from the same node's cursor (``more(cursor, offset)``,
        ``offset`` = rows received after the first page). A vanished cursor restarts the
        read, so the rows always come from one read at one revision."""
        for _ in range(_PAGED_READ_ATTEMPTS):
            pin = Pin()
            reply = self._call(first, decode, leader=leader, pin=pin)
            out = builtins.list(rows(reply))
            n_first = len(out)
            try:
                while reply.cursor:
                    reply = self._call(more(reply.cursor, len(out) - n_first), decode,
                                       leader=False, pin=pin)
                    out.extend(rows(reply))
            except _CursorExpired:
                continue
            return out, reply
        raise Unavailable(f"{first.op}: the node kept losing the read's cursor; retry")

    def _call(self, request: ClientRequest, decode: Callable[[Mapping[str, Any]], _R], *,
              leader: bool, timeout_s: float | None = None, long_poll_s: float = 0.0,
              pin: Pin | None = None, cancel: threading.Event | None = None) -> _R:
        """Send one request until a node answers it; the successful reply, ``decode``d.

        Leader ops follow ``not_leader`` redirects; others are answered by any node,
        preferring ``pin``'s. Raises ``Unavailable`` once ``timeout_s`` is spent, and
        ``CoordError`` for a reply that does not fit its record.
        """
        self._check_open()
        payload = request.to_wire()
        total = self._timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + total
        ep = self._start(leader, pin)
        redirects = unavailable = 0
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                raise Unavailable(f"no node answered {request.op.value!r} within {total:.1f}s "
                                  "(the outcome is unknown)")
            reply = self._transport.request(
                ep, payload, deadline=now + min(remaining, ATTEMPT_S + long_poll_s),
                connect_deadline=now + min(remaining, ATTEMPT_S), cancel=cancel)
            if reply is None:  # timed out: dead, paused or partitioned (or replaced: new key)
                self._file_keys.refresh(self._transport.learn_key)
                ep = self._rotate(ep, pin)
                self._backoff(deadline, cancel)
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
                if self._leader == ep:
                    self._leader = None
                addr = err.leader_address
                self._transport.learn_key(addr, err.leader_public_key)
                if addr is not None and addr != ep and redirects < len(self._endpoints):
                    redirects += 1
                    ep = addr
                    continue
                redirects = 0
                ep = self._rotate(ep, pin)
                self._backoff(deadline, cancel)
            elif err.error in (ErrorCode.UNAVAILABLE, ErrorCode.BUSY):
                unavailable += 1
                if err.error == ErrorCode.UNAVAILABLE and unavailable >= _UNAVAILABLE_BEFORE_ROTATE:
                    unavailable = 0
                    ep = self._rotate(ep, pin)
                self._backoff(deadline, cancel)
            else:
                raise _refusal(request, err)

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

# Refusals that end a call, by error code; any other code is a plain CoordError.
_REFUSALS: dict[ErrorCode | str, Callable[[ErrorReply], CoordError]] = {
    ErrorCode.COMPACTED: lambda err: Compacted(err.message, err.oldest),
    ErrorCode.BAD_REQUEST: lambda err: InvalidRequest(err.message),
    ErrorCode.SNAPSHOT_GONE: lambda err: SnapshotGone(err.message),
    ErrorCode.PERMISSION_DENIED: lambda err: PermissionDenied(f"permission denied: {err.message}"),
    ErrorCode.REFUSED: lambda err: MembershipRefused(err.message),
    ErrorCode.QUOTA_EXCEEDED: lambda err: QuotaExceeded(err.message),
    ErrorCode.CURSOR_EXPIRED: lambda err: _CursorExpired(err.message),
}


def _refusal(request: ClientRequest, err: ErrorReply) -> CoordError:
    make = _REFUSALS.get(err.error)
    if make is None:
        return CoordError(f"{request.op}: {err.error}: {err.message}")
    return make(err)


def _locate(endpoints: object) -> tuple[clusterfile.Cluster | None, tuple[str, ...]]:
    """The cluster (if a file names it) and its distinct endpoints, or ``InvalidRequest``."""
    try:
        found = clusterfile.find() if endpoints is None else endpoints
    except clusterfile.ClusterFileError as e:
        raise InvalidRequest(str(e)) from None
    if isinstance(found, clusterfile.Cluster):
        return found, tuple(dict.fromkeys(found.endpoints))
    if isinstance(found, (str, bytes)) or not isinstance(found, (builtins.list, tuple)):
        raise InvalidRequest("endpoints must be a list of 'tcp://host:port' strings, "
                             f"got {type(found).__name__}")
    eps = []
    for ep in found:
        if not isinstance(ep, str):
            raise InvalidRequest(f"endpoint {ep!r} is not a 'tcp://host:port' string")
        try:
            eps.append(clusterfile.check_endpoint(ep))
        except clusterfile.ClusterFileError as err:
            raise InvalidRequest(str(err)) from None
    if not eps:
        raise InvalidRequest("need at least one endpoint")
    return None, tuple(dict.fromkeys(eps))


def _check_timeout(timeout: object) -> float:
    try:
        seconds = float(timeout) if isinstance(timeout, (int, float)) else math.nan
    except OverflowError:    # an int too large for a float
        seconds = math.inf
    if not isinstance(timeout, bool) and math.isfinite(seconds) and seconds > 0:
        return seconds
    raise InvalidRequest(f"timeout must be a finite number of seconds > 0, got {timeout!r}")


def _to_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequest(f"value is not valid UTF-8: {e}") from None
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bytes):
        return value
    raise InvalidRequest(f"value must be str or bytes, got {type(value).__name__}")


TxnOp = tuple[Any, ...]   # ("put", key, value[, lease]) | ("delete", key)


def _txn_ops(ops: Sequence[TxnOp], what: str,
             lease_id: Callable[[Any], int]) -> tuple[Put | Delete, ...]:
    """A txn branch as commands; ``lease_id`` turns an op's lease into its id (both clients)."""
    if isinstance(ops, (str, bytes)) or not isinstance(ops, (builtins.list, tuple)):
        raise InvalidRequest(f"{what} must be a list of ops")
    out: builtins.list[Put | Delete] = []
    for op in ops:
        if isinstance(op, tuple) and len(op) in (3, 4) and op[0] == "put":
            out.append(Put(op[1], _to_bytes(op[2]), lease=lease_id(op[3] if len(op) == 4 else None)))
        elif isinstance(op, tuple) and len(op) == 2 and op[0] == "delete":
            out.append(Delete(op[1]))
        else:
            raise InvalidRequest(f"{what}: an op is ('put', key, value[, lease]) or "
                                 f"('delete', key), got {op!r:.100}")
    return tuple(out)


def _compares(compare: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    if isinstance(compare, (str, bytes)) or not isinstance(compare, (builtins.list, tuple)):
        raise InvalidRequest("compare must be a list of (key, revision)")
    out = []
    for c in compare:
        if not (isinstance(c, tuple) and len(c) == 2 and type(c[1]) is int):
            raise InvalidRequest(f"a compare is (key, revision), got {c!r:.100}")
        out.append((c[0], c[1]))
    return tuple(out)


def _fence(lk: Lock | None) -> Fence | None:
    if lk is None:
        return None
    if not isinstance(lk, Lock):
        raise InvalidRequest(f"fence must be a Lock, got {type(lk).__name__}")
    return Fence(lk.name, lk.token)


def _check_key(key: str, what: str = "key") -> None:
    """A key to read by: a client's key, or a record's name (an election's, a schema's)."""
    err = name_error(what, key, records=True)
    if err is not None:
        raise InvalidRequest(err)


def _check_prefix(prefix: str) -> None:
    if prefix != "":
        _check_key(prefix, "prefix")
    elif not isinstance(prefix, str):
        raise InvalidRequest("prefix must be a string")


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _lock_info(row: LockRow) -> LockInfo:
    return LockInfo(row.name, row.holder_session, row.token, row.waiters,
                    _seconds(row.holder_ttl_left_ms), _seconds(row.age_ms),
                    tuple(_seconds(w) for w in row.waits_ms), row.holder, row.waiter_names,
                    row.kind, row.limit, row.holders, row.waiter_modes)


def _prefixes(v: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, (builtins.list, tuple)) or not all(
            isinstance(p, str) for p in v):
        raise InvalidRequest(f"{what} must be a list of key prefixes (strings)")
    return tuple(v)


def _applied(reply: dict[str, Any] | None, index: int) -> bool:
    """Whether a node's status reply shows it applied ``index`` (a node that did not
    answer is not waited for; one that refuses us has applied our own removal)."""
    if reply is None or reply.get("error") == ErrorCode.PERMISSION_DENIED:
        return True
    status = _node_status(reply)
    return status is None or status["applied_index"] >= index


def _member_request(action: str, node_id: object, address: object = "", publish: object = "",
                    http: object = "", public_key: object = "") -> MemberChangeRequest:
    """The request, checked as the node will check it: ``InvalidRequest`` before sending."""
    wire = {"action": action, "node": node_id, "address": address, "publish": publish,
            "http": http, "public_key": public_key}
    try:
        req = MemberChangeRequest.from_wire(wire)
        for v in (req.node, req.address, req.publish, req.http, req.public_key):
            v.encode("utf-8")
    except SchemaError as e:
        raise InvalidRequest(str(e)) from None
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"member ids, addresses and keys must be valid UTF-8: {e}") from None
    return req


def _row(rows: Sequence[MemberRow], node_id: str) -> MemberRow | None:
    return next((r for r in rows if r.id == node_id), None)


def _chosen_config(statuses: Sequence[dict[str, Any] | None]
                   ) -> builtins.list[tuple[str, str, bool, str]] | None:
    """(id, address, voting, public key) of the configuration the leader (else the node
    with the highest commit index) reports, or None if no answer carries one."""
    best: tuple[int, int, Any] | None = None
    for st in statuses:
        if st is None or not isinstance(st.get("config"), list):
            continue
        commit = st.get("commit_index")
        rank = (1 if st.get("role") == "leader" else 0, commit if type(commit) is int else -1)
        if best is None or rank > best[:2]:
            best = (rank[0], rank[1], st["config"])
    if best is None:
        return None
    rows = []
    for r in best[2]:
        if not (isinstance(r, list) and len(r) >= 3 and type(r[0]) is str
                and type(r[1]) is str and r[1] and type(r[2]) is bool):
            return None    # a configuration without addresses (recorded before they were)
        key = r[3] if len(r) > 3 and type(r[3]) is str else ""
        rows.append((r[0], r[1], r[2], key))
    return rows or None


def _node_status(reply: dict[str, Any] | None) -> dict[str, Any] | None:
    """A member's status map from its reply; None if it did not answer (or not sensibly)."""
    if reply is None or reply.get("ok") is not True:
        return None
    try:
        return StatusReply.from_wire(reply).status.to_wire()
    except SchemaError:
        return None
