"""The deterministic replicated state machine: config keys, sessions, locks, identities.

Every replica applies the same ``Request``s in log order and must end in the same
state with the same results, so nothing here reads a clock or an RNG, every
iteration whose order is observable is sorted, and every table is bounded. Session
expiry is decided outside (by the leader) and arrives as ``ExpireSession``.

``apply`` never raises on a decoded ``Request``: bad values become an ``invalid``
``Result``. Queries may raise ``UsageError`` when the caller passes nonsense.

Identities and ownership are replicated state like any other. The identity table maps
client names to public keys and rights (``AuthAdd``/``AuthRemove``; the bootstrap
``admin`` is in it from the start, its key in cluster.toml). Each request carries the
principal the leader stamped into it, and ``apply`` decides with the table *as of that
log position*: whether the principal may run the command at all (``acl.command_refusal``),
and whether it owns what the command touches -- a client id belongs to the principal of
its first request, a session to the principal that opened it. Admin may act on any
session; nobody may use another principal's client id (that would let it answer or
poison the owner's exactly-once records). A refusal is a ``permission_denied`` Result and
changes nothing.

Fairness: besides the global bounds, one *owner* may hold at most
``MAX_SESSIONS_PER_OWNER`` sessions and at most ``MAX_WAITERS_PER_OWNER`` places in one
lock's queue, so one client cannot fill the tables every other client needs. The owner
is the principal the leader stamped into the request, however many client ids it uses;
for a principal with admin rights (every client of an insecure cluster) it is the
client id, so trusted clients are still kept from crowding each other out
(``quota_owner``). The same value on every replica, so the bounds are replicated
decisions like any other.

Leases are sessions. A put on a lease (``Put.lease``, a session id) makes its key
ephemeral: the session's end -- close, expiry, its owner's removal -- deletes the key in
the same apply step, one revision (and one watch event) each, before its locks pass on.
A put without a lease makes the key persistent again; the lease must be the writer's
(or the writer an admin), as for every other use of a session.

A transaction (``Txn``) compares revisions and applies one branch at one revision: the
event window holds one item per revision -- a change, or a transaction's changes sorted
by key -- so revision arithmetic still finds a revision's place, and pages of events are
never cut inside a revision.

Keys are also held in a sorted index, so a page of ``scan`` costs O(log n + page), not a
sort of every key. A key's history keeps its newest ``KEY_HISTORY`` versions, fewer when
their values exceed ``KEY_HISTORY_BYTES`` (never fewer than one). A key written once (most
keys of a large store) has no history object at all: its one version is its current value,
and ``history`` rebuilds it from there. The first change after that makes the history real
(two versions), as does a delete.
"""
from __future__ import annotations

import builtins
import gc
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs published
from sortedcontainers import SortedList  # type: ignore[import-untyped, unused-ignore]

from .acl import ADMIN_RIGHTS, MEMBER_RIGHTS, Rights, command_refusal
from .commands import (
    BOOTSTRAP_ADMIN,
    ELECTION_PREFIX,
    RESERVED_PREFIX,
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
    EndLockDelay,
    ExpireSession,
    Fence,
    OpenAndAcquire,
    OpenSession,
    Put,
    Release,
    Request,
    SchemaDelete,
    SchemaSet,
    Txn,
    is_record,
    validate,
    validate_request,
)
from .protocol import Change, ChangeType, KeyValue, Result, ResultCode
from .schemas import MAX_SCHEMAS, Schema, compile_schema
from .types import MiB, ProtocolError, UsageError

__all__ = ["Grant", "HeldLock", "Machine", "Principal", "RevisionCompacted", "SessionInfo",
           "quota_owner"]

# Module globals rather than constructor arguments: every replica must use the same
# bounds, and tests shrink them with monkeypatch.
MAX_CLIENTS = 100_000
MAX_SEQS_PER_CLIENT = 1_000
MAX_SESSIONS = 100_000
MAX_LOCKS = 100_000
MAX_WAITERS = 1_000
MAX_PRINCIPALS = 10_000
# Removed names are retired, never given to another key: a connection authenticated before
# the removal still carries the name. Past this many the oldest is forgotten (a connection
# would have to stay open across that many removals to notice).
MAX_RETIRED = 100_000
# Per owner (see the module docstring): a tenth of the global table, so it takes ten
# owners to fill it.
MAX_SESSIONS_PER_OWNER = 10_000
MAX_WAITERS_PER_OWNER = 100
# Semaphores and read/write locks: a writer weighs every slot of an rwlock; holders of one
# are listed in ``locks`` answers, so at most this many at once (readers queue beyond it).
RW_ALL = 1 << 30
MAX_SHARED_HOLDERS = 1_000
# Ephemeral keys on one lease: its end deletes them all in one apply step, one revision
# each, so this bounds the work (and the events) of one expiry.
MAX_KEYS_PER_LEASE = 10_000
KEY_HISTORY = 64
KEY_HISTORY_BYTES = 8 * MiB   # of values: 64 versions of 1 MiB would be 64 MiB per key
WINDOW_EVENTS = 20_000
# Values are up to 1 MiB, so a count bound alone would allow a 20 GB window.
WINDOW_BYTES = 64 * 1_048_576

_PUT, _DELETE = ChangeType.PUT, ChangeType.DELETE
_MEMBER_PREFIX = "node:"

_SNAPSHOT_VERSION = 2
# Version 1 kept the records under "\x01", which clients could not write then (a narrower
# key rule); loading one renames them under RESERVED_PREFIX (``_load``). Version 2 may
# hold client keys under "\x01", so only the version tells the two apart.
_V1_RECORD_PREFIXES = (("\x01election/", ELECTION_PREFIX), ("\x01schema/", SCHEMA_PREFIX))
# Where a version-1 snapshot names a key or a lock: (table, column). An election's lock is
# named as its record is, so its holder, waiters and candidates move with it.
_V1_NAMES = (("ev", 2), ("kv", 0), ("hist", 0), ("eph", 0), ("lk", 0), ("sh", 0), ("cand", 0),
             ("ldel", 1))
# Records sort before every client key: this is the least client key.
_LEAST_CLIENT_KEY = chr(ord(RESERVED_PREFIX) + 1)
# Snapshots are written and read in pieces of about this size; one row (a key's value
# with its framing, a client's cached results) must fit in the reader's buffer.
SNAPSHOT_PIECE_BYTES = 1 * MiB
_MAX_SNAPSHOT_ROW_BYTES = 64 * MiB


class SupportsRead(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Counted:
    def __init__(self, stream: SupportsRead) -> None:
        self.stream, self.total = stream, 0

    def read(self, n: int) -> bytes:
        b = self.stream.read(n)
        self.total += len(b)
        return b



class RevisionCompacted(Exception):
    """Events after the requested revision were dropped from the window."""

    def __init__(self, oldest_available_revision: int) -> None:
        super().__init__(f"compacted: oldest available revision is {oldest_available_revision}")
        self.oldest_available_revision = oldest_available_revision


@dataclass(frozen=True, slots=True)
class Grant:
    name: str
    session_id: int
    token: int


@dataclass(frozen=True, slots=True)
class SessionInfo:
    ttl_ms: int
    locks: tuple[str, ...]
    opened_index: int


@dataclass(frozen=True, slots=True)
class HeldLock:
    name: str
    holder_session: int
    token: int
    granted_index: int
    waiters: tuple[int, ...]
    holder: str = ""                      # the principal owning the holding session
    waiter_names: tuple[str, ...] = ()    # the principals owning the waiting sessions
    kind: str = "lock"                    # "lock" | "semaphore" | "rwlock"
    limit: int = 0                        # a semaphore's slots
    # Semaphores and rwlocks: every holder (session, token, principal, mode), grant order,
    # and each waiter's mode ("semaphore", "read", "write").
    holders: tuple[tuple[int, int, str, str], ...] = ()
    waiter_modes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """One entry of the identity table. ``public_key`` is None for the bootstrap admin,
    whose key is in cluster.toml rather than in the log."""

    name: str
    public_key: str | None
    rights: Rights


_BOOTSTRAP = Principal(BOOTSTRAP_ADMIN, None, ADMIN_RIGHTS)


def quota_owner(who: str, rights: Rights, client_id: str) -> str:
    """Whom a request's sessions and queue places count against (the module docstring)."""
    return client_id if rights.admin else who


class _Versions(builtins.list[Change]):
    """A key's history, oldest first, with the bytes of its values."""

    __slots__ = ("nbytes",)

    def __init__(self, events: builtins.list[Change]) -> None:
        super().__init__(events)
        self.nbytes = sum(len(e.value) for e in events)

    def add(self, ev: Change) -> None:
        self.append(ev)
        self.nbytes += len(ev.value)
        if len(self) > KEY_HISTORY or self.nbytes > KEY_HISTORY_BYTES:
            while len(self) > 1 and (len(self) > KEY_HISTORY or self.nbytes > KEY_HISTORY_BYTES):
                self.nbytes -= len(self.pop(0).value)


@dataclass(slots=True)
class _Session:
    ttl_ms: int
    opened_index: int
    owner: str = ""     # the principal that opened it
    quota: str = ""     # whom it counts against (quota_owner)
    held: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)    # ephemeral keys: deleted when it ends
    delays: dict[str, int] = field(default_factory=dict)   # lock -> its lock_delay_ms (if not 0)


@dataclass(slots=True)
class _Lock:
    # A lock exists only while held -- a release hands it straight to the next waiter --
    # or while delayed: its holder's session expired and it had a lock-delay, so nobody
    # (holder 0, token 0) holds it until the leader's EndLockDelay.
    holder: int
    token: int
    granted_index: int
    waiters: deque[int] = field(default_factory=deque)
    delay_ms: int = 0     # the holder's lock-delay, applied if its session expires


@dataclass(slots=True)
class _Shared:
    """A semaphore (``limit`` slots, each holder weighs 1) or a read/write lock (``limit``
    RW_ALL: a reader weighs 1, a writer RW_ALL). Exists while held or waited for. Waiters
    are admitted strictly in order: one that does not fit blocks those behind it."""

    kind: str
    limit: int
    holders: dict[int, tuple[int, int]] = field(default_factory=dict)   # sid -> (token, weight)
    used: int = 0
    waiters: deque[tuple[int, int]] = field(default_factory=deque)      # (sid, weight)


def _mode(kind: str, weight: int) -> str:
    return "semaphore" if kind == "semaphore" else "write" if weight == RW_ALL else "read"


@dataclass(slots=True)
class _Client:
    # Seqs below ``floor`` are never applied again: first_unacked, raised past any seq
    # evicted from ``results`` so an evicted seq is refused rather than re-applied.
    floor: int
    results: dict[int, Result] = field(default_factory=dict)
    owner: str = BOOTSTRAP_ADMIN    # the principal of its first request: only it may use the id


def _err(code: ResultCode, revision: int, message: str) -> Result:
    return Result(code, revision, {"message": message})


class Machine:
    """Config keys, sessions and locks, changed only by ``apply`` in log order."""

    def __init__(self) -> None:
        self.revision = 0
        self.next_session_id = 1
        self.next_token = 1
        self.first_revision_in_window = 1
        self.grants: builtins.list[Grant] = []
        self.delays: builtins.list[tuple[str, int]] = []   # lock-delays begun: (lock, ms)
        self._kv: dict[str, KeyValue] = {}
        self._keys = SortedList()    # the keys of _kv, sorted: pages without a full sort
        # Plain lists trimmed on append: a deque costs ~760 bytes even for one event, which
        # was 76 MB of a 100,000-key node.
        self._history: dict[str, _Versions] = {}
        # One item per revision: its change, or a transaction's changes (sorted by key).
        self._window: deque[Change | tuple[Change, ...]] = deque()
        self._window_bytes = 0
        self._window_events = 0
        self._sessions: dict[int, _Session] = {}
        self._owner_sessions: dict[str, int] = {}
        self._locks: dict[str, _Lock] = {}
        self._shared: dict[str, _Shared] = {}   # semaphores and rwlocks (names apart from locks)
        # prefix -> its compiled schema: a cache of the keys under SCHEMA_PREFIX
        self._schemas: dict[str, Schema] = {}
        # (election lock, session) -> the value it campaigns with, while it waits
        self._candidates: dict[tuple[str, int], bytes] = {}
        self._leased: dict[str, int] = {}     # ephemeral key -> the session (lease) it lives on
        # Least recently active first; apply order is replicated, so eviction is too.
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._principals: dict[str, Principal] = {BOOTSTRAP_ADMIN: _BOOTSTRAP}
        self._by_key: dict[str, str] = {}     # public key -> name (table entries only)
        self._retired: dict[str, None] = {}   # removed names, oldest first

    # -- applying ------------------------------------------------------------------

    def apply(self, index: int, req: Request) -> Result:
        """Apply ``req`` from log slot ``index`` (recorded in grants and sessions only)."""
        err = validate_request(req)
        if err is not None:
            return _err(ResultCode.INVALID, self.revision, err)
        if req.client_id == "":
            return self._run(index, req.cmd, "", "")
        who = req.principal or BOOTSTRAP_ADMIN   # unstamped: written before principals existed
        client = self._clients.get(req.client_id)
        if client is None:
            client = self._clients[req.client_id] = _Client(req.first_unacked, owner=who)
            if len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        elif client.owner != who:
            # Not even cached or counted as activity: the owner's records stay exactly as
            # they were, so its own requests with this id still apply exactly once.
            return _err(ResultCode.PERMISSION_DENIED, self.revision,
                        f"client id {req.client_id!r} belongs to another principal")
        else:
            self._clients.move_to_end(req.client_id)
            if req.first_unacked > client.floor:
                client.floor = req.first_unacked
                for s in [s for s in client.results if s < client.floor]:
                    del client.results[s]
        cached = client.results.get(req.seq)
        if cached is not None:
            return cached
        if req.seq < client.floor:
            return _err(ResultCode.STALE_REQUEST, self.revision, f"seq {req.seq} is below {client.floor}")
        result = self._run(index, req.cmd, who, req.client_id)
        client.results[req.seq] = result
        if len(client.results) > MAX_SEQS_PER_CLIENT:
            lowest = min(client.results)
            del client.results[lowest]
            client.floor = max(client.floor, lowest + 1)
        return result

    def _run(self, index: int, cmd: Command, who: str, client_id: str) -> Result:
        """Run ``cmd`` for principal ``who`` ("": an internal request of the leader) from
        ``client_id``."""
        err = validate(cmd)
        if err is not None:
            return _err(ResultCode.INVALID, self.revision, err)
        rights = ADMIN_RIGHTS
        if who:
            r = self.rights(who)
            refused = command_refusal(r, cmd)
            if refused is not None:
                return _err(ResultCode.PERMISSION_DENIED, self.revision, f"{who}: {refused}")
            assert r is not None   # command_refusal refuses None
            rights = r
        if isinstance(cmd, Put) and self._schemas:
            problem = self._schema_problem(cmd.key, cmd.value)
            if problem is not None:
                return _err(ResultCode.INVALID, self.revision, problem)
        if isinstance(cmd, (SchemaSet, SchemaDelete)):
            return self._schema_change(cmd)
        if isinstance(cmd, Put):
            if cmd.lease:
                refused_lease = self._lease_refusal(cmd.lease, cmd.key, who, rights)
                if refused_lease is not None:
                    return refused_lease
            return self._put(cmd)
        if isinstance(cmd, Delete):
            return self._delete(cmd)
        if isinstance(cmd, Txn):
            return self._txn(cmd, who, rights)
        quota = quota_owner(who, rights, client_id)
        if isinstance(cmd, OpenSession):
            return self._open(index, cmd.ttl_ms, who, quota)
        if isinstance(cmd, ExpireSession):
            if who:
                return _err(ResultCode.INVALID, self.revision, "ExpireSession is internal to the leader")
            return self._close(index, cmd.session_id, expired=True)
        if isinstance(cmd, EndLockDelay):
            if who:
                return _err(ResultCode.INVALID, self.revision, "EndLockDelay is internal to the leader")
            return self._end_delay(index, cmd.name)
        if isinstance(cmd, OpenAndAcquire):
            return self._open_and_acquire(index, cmd, who, quota)
        if isinstance(cmd, AuthAdd):
            return self._auth_add(index, cmd)
        if isinstance(cmd, AuthRemove):
            return self._auth_remove(index, cmd)
        if isinstance(cmd, (CloseSession, Acquire, Release, Cancel, AcquireShared, Campaign)):
            refused_session = self._not_owner(cmd.session_id, who, rights)
            if refused_session is not None:
                return refused_session
            if isinstance(cmd, CloseSession):
                return self._close(index, cmd.session_id)
            if isinstance(cmd, Acquire):
                return self._acquire(index, cmd)
            if isinstance(cmd, AcquireShared):
                return self._acquire_shared(index, cmd)
            if isinstance(cmd, Campaign):
                return self._campaign(index, cmd)
            if isinstance(cmd, Release):
                return self._release(index, cmd)
            return self._cancel(index, cmd)
        return Result(ResultCode.OK, self.revision, {})  # Noop: validate() rejected every other type

    def _not_owner(self, sid: int, who: str, rights: Rights) -> Result | None:
        """Refused unless session ``sid`` (if it exists) is ``who``'s, or ``who`` is admin."""
        s = self._sessions.get(sid)
        if s is None or s.owner == who or rights.admin:
            return None
        return _err(ResultCode.PERMISSION_DENIED, self.revision,
                    f"{who}: session {sid} belongs to another principal")

    def _lease_refusal(self, sid: int, key: str, who: str, rights: Rights) -> Result | None:
        """A put on lease ``sid``: the session must exist and be ``who``'s (or ``who`` an
        admin), and have room for another key."""
        s = self._sessions.get(sid)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no lease (session) {sid}")
        refused = self._not_owner(sid, who, rights)
        if refused is not None:
            return refused
        if key not in s.keys and len(s.keys) >= MAX_KEYS_PER_LEASE:
            return _err(ResultCode.LIMIT, self.revision,
                        f"too many keys on lease {sid} (max {MAX_KEYS_PER_LEASE})")
        return None

    # -- keys ----------------------------------------------------------------------

    def _precheck(self, key: str, if_revision: int | None, fence: Fence | None) -> Result | None:
        if fence is not None:
            lk = self._locks.get(fence.lock)
            if lk is None or lk.token != fence.token:
                return _err(ResultCode.FENCE_REJECTED, self.revision,
                            f"lock {fence.lock!r} is not held with token {fence.token}")
        if if_revision is not None:
            cur = self._kv.get(key)
            current = 0 if cur is None else cur.revision
            if current != if_revision:
                return Result(ResultCode.COMPARE_FAILED, self.revision, {
                    "message": f"key {key!r} is at revision {current}, not {if_revision}",
                    "current_revision": current})
        return None

    def _put(self, cmd: Put) -> Result:
        rejected = self._precheck(cmd.key, cmd.if_revision, cmd.fence)
        if rejected is not None:
            return rejected
        self.revision += 1
        cur = self._kv.get(cmd.key)
        if cur is None:
            self._keys.add(cmd.key)
        self._kv[cmd.key] = KeyValue(cmd.key, cmd.value, self.revision,
                               self.revision if cur is None else cur.create_revision,
                               1 if cur is None else cur.version + 1)
        self._attach(cmd.key, cmd.lease)
        self._record(Change(_PUT, cmd.key, cmd.value, self.revision), cur)
        return Result(ResultCode.OK, self.revision, {"revision": self.revision})

    def _delete(self, cmd: Delete) -> Result:
        rejected = self._precheck(cmd.key, cmd.if_revision, cmd.fence)
        if rejected is not None:
            return rejected
        if cmd.key not in self._kv:
            return Result(ResultCode.OK, self.revision, {"deleted": False})
        self._remove_key(cmd.key)
        return Result(ResultCode.OK, self.revision, {"deleted": True, "revision": self.revision})

    def _txn(self, cmd: Txn, who: str, rights: Rights) -> Result:
        """Compare, then apply one branch at one revision (the ``Txn`` docstring)."""
        rejected = self._precheck("", None, cmd.fence)
        if rejected is not None:
            return rejected
        kv = self._kv
        ok = all((0 if (cur := kv.get(key)) is None else cur.revision) == rev
                 for key, rev in cmd.compare)
        branch = cmd.success if ok else cmd.failure
        for op in branch:
            if isinstance(op, Put) and self._schemas:
                problem = self._schema_problem(op.key, op.value)
                if problem is not None:
                    return _err(ResultCode.INVALID, self.revision, problem)
            if isinstance(op, Put) and op.lease:
                refused = self._lease_refusal(op.lease, op.key, who, rights)
                if refused is not None:
                    return refused
        ops = sorted((op for op in branch if isinstance(op, Put) or op.key in kv),
                     key=lambda op: op.key)
        if not ops:    # nothing to change (no ops, or deletes of absent keys): no revision
            return Result(ResultCode.OK, self.revision, {"succeeded": ok, "revision": self.revision})
        self.revision += 1
        rev = self.revision
        changes, before = [], []
        for op in ops:
            cur = kv.get(op.key)
            before.append(cur)
            if isinstance(op, Put):
                if cur is None:
                    self._keys.add(op.key)
                kv[op.key] = KeyValue(op.key, op.value, rev, rev if cur is None else cur.create_revision,
                                      1 if cur is None else cur.version + 1)
                self._attach(op.key, op.lease)
                changes.append(Change(_PUT, op.key, op.value, rev))
            else:
                del kv[op.key]
                self._keys.remove(op.key)
                self._attach(op.key, 0)
                changes.append(Change(_DELETE, op.key, b"", rev))
        self._record_group(tuple(changes), before)
        return Result(ResultCode.OK, rev, {"succeeded": ok, "revision": rev})

    def _remove_key(self, key: str) -> None:
        """Delete the existing ``key`` at the next revision."""
        self.revision += 1
        cur = self._kv.pop(key)
        self._keys.remove(key)
        self._attach(key, 0)
        self._record(Change(_DELETE, key, b"", self.revision), cur)

    def _attach(self, key: str, sid: int) -> None:
        """``key`` now lives on lease ``sid`` (0: on none, persistent)."""
        old = self._leased.get(key, 0)
        if old == sid:
            return
        if old:
            self._sessions[old].keys.discard(key)
            del self._leased[key]
        if sid:
            self._sessions[sid].keys.add(key)
            self._leased[key] = sid

    def _record(self, ev: Change, before: KeyValue | None) -> None:
        """Record ``ev``; ``before`` is the key's value it replaced (None: it had none)."""
        self._add_history(ev, before)
        self._window.append(ev)
        self._window_bytes += len(ev.value)
        self._window_events += 1
        self._trim_window()

    def _record_group(self, evs: tuple[Change, ...],
                      before: builtins.list[KeyValue | None]) -> None:
        """The changes of one transaction, all at one revision, sorted by key, and the
        values they replaced."""
        if len(evs) == 1:
            self._record(evs[0], before[0])
            return
        for ev, cur in zip(evs, before, strict=True):
            self._add_history(ev, cur)
            self._window_bytes += len(ev.value)
        self._window.append(evs)
        self._window_events += len(evs)
        self._trim_window()

    def _add_history(self, ev: Change, before: KeyValue | None) -> None:
        hist = self._history.get(ev.key)
        if hist is not None:
            hist.add(ev)
        elif before is not None:
            # Its history was its one version, held as its value (``history``): now real.
            hist = self._history[ev.key] = _Versions([Change(_PUT, ev.key, before.value, before.revision)])
            hist.add(ev)
        elif ev.type is not _PUT:
            self._history[ev.key] = _Versions([ev])
        # else: a key's first version is its value; no history object until it changes

    def _trim_window(self) -> None:
        while self._window_events > WINDOW_EVENTS or self._window_bytes > WINDOW_BYTES:
            item = self._window.popleft()
            group = (item,) if type(item) is Change else item
            assert isinstance(group, tuple)
            for old in group:
                self._window_bytes -= len(old.value)
                self._window_events -= 1
                # A deleted key's history lives until its delete leaves the window, so the
                # number of histories stays bounded by live keys plus the window.
                last = self._history.get(old.key)
                if old.key not in self._kv and last is not None and last[-1] is old:
                    del self._history[old.key]
            self.first_revision_in_window = group[0].revision + 1

    # -- sessions and locks --------------------------------------------------------

    def _session_limit(self, quota: str) -> Result | None:
        if len(self._sessions) >= MAX_SESSIONS:
            return _err(ResultCode.LIMIT, self.revision, f"too many sessions (max {MAX_SESSIONS})")
        if self._owner_sessions.get(quota, 0) >= MAX_SESSIONS_PER_OWNER:
            return _err(ResultCode.LIMIT, self.revision, "too many sessions of this client "
                        f"(max_sessions_per_owner {MAX_SESSIONS_PER_OWNER})")
        return None

    def _open(self, index: int, ttl_ms: int, owner: str, quota: str) -> Result:
        refused = self._session_limit(quota)
        if refused is not None:
            return refused
        sid = self.next_session_id
        self.next_session_id += 1
        self._sessions[sid] = _Session(ttl_ms, index, owner, quota)
        self._owner_sessions[quota] = self._owner_sessions.get(quota, 0) + 1
        return Result(ResultCode.OK, self.revision, {"session_id": sid})

    def _close(self, index: int, sid: int, expired: bool = False) -> Result:
        s = self._sessions.pop(sid, None)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {sid}")
        left = self._owner_sessions[s.quota] - 1
        if left:
            self._owner_sessions[s.quota] = left
        else:
            del self._owner_sessions[s.quota]
        # Its ephemeral keys go first, in this same step, one revision each: whoever gets
        # one of its locks below never sees them.
        for key in sorted(s.keys):
            self._leased.pop(key, None)
            self._remove_key(key)
        # Leave queues first so no lock released below is handed back to this session.
        shared = sorted(n for n in s.waiting | s.held if n in self._shared)
        for name in sorted(s.waiting):
            if name in self._shared:
                self._leave_shared(name, sid)
            else:
                self._locks[name].waiters.remove(sid)
                self._candidates.pop((name, sid), None)
        for name in sorted(s.held):
            if name in self._shared:
                self._release_shared(name, sid, s)
                continue
            lk = self._locks[name]
            if expired and lk.delay_ms:
                # An involuntary release: the holder may still be working, unaware.
                lk.holder, lk.token, lk.granted_index = 0, 0, index
                self.delays.append((name, lk.delay_ms))
            else:
                self._hand_over(index, name)
        for name in shared:
            self._admit(index, name)
        return Result(ResultCode.OK, self.revision, {})

    # -- config schemas ---------------------------------------------------------------------

    def _schema_problem(self, key: str, value: bytes) -> str | None:
        """Why ``value`` may not be put at ``key`` under the schemas in force (the shortest
        failing prefix first, so every replica says the same)."""
        if len(self._schemas) <= len(key):
            prefixes = sorted((p for p in self._schemas if key.startswith(p)), key=len)
        else:
            prefixes = [key[:i] for i in range(len(key) + 1) if key[:i] in self._schemas]
        for p in prefixes:
            problem = self._schemas[p].problem(key, value)
            if problem is not None:
                return problem
        return None

    def _schema_change(self, cmd: SchemaSet | SchemaDelete) -> Result:
        key = SCHEMA_PREFIX + cmd.prefix
        if isinstance(cmd, SchemaDelete):
            if key not in self._kv:
                return Result(ResultCode.OK, self.revision, {"deleted": False})
            del self._schemas[cmd.prefix]
            self._remove_key(key)
            return Result(ResultCode.OK, self.revision, {"deleted": True, "revision": self.revision})
        compiled = compile_schema(cmd.prefix, cmd.schema)
        if isinstance(compiled, str):
            return _err(ResultCode.INVALID, self.revision, compiled)
        if cmd.prefix not in self._schemas and len(self._schemas) >= MAX_SCHEMAS:
            return _err(ResultCode.LIMIT, self.revision, f"too many schemas (max {MAX_SCHEMAS})")
        self._schemas[cmd.prefix] = compiled
        self._set_key(key, cmd.schema)
        return Result(ResultCode.OK, self.revision, {"revision": self.revision})

    def _set_key(self, key: str, value: bytes) -> None:
        """Put ``value`` at ``key`` at the next revision (the machine's own keys)."""
        self.revision += 1
        cur = self._kv.get(key)
        if cur is None:
            self._keys.add(key)
        self._kv[key] = KeyValue(key, value, self.revision,
                                 self.revision if cur is None else cur.create_revision,
                                 1 if cur is None else cur.version + 1)
        self._record(Change(_PUT, key, value, self.revision), cur)

    # -- elections -------------------------------------------------------------------------

    def _campaign(self, index: int, cmd: Campaign) -> Result:
        if cmd.session_id not in self._sessions:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {cmd.session_id}")
        name, sid = ELECTION_PREFIX + cmd.name, cmd.session_id
        self._candidates[(name, sid)] = cmd.value
        res = self._acquire(index, Acquire(name, sid, cmd.wait))
        if res.code != ResultCode.QUEUED:     # granted (the record is written) or refused
            self._candidates.pop((name, sid), None)
        return res

    def _set_record(self, name: str, token: int, value: bytes) -> None:
        """Election ``name``'s record: its leader's token and value (``b"<token>\n<value>"``)."""
        self._set_key(name, b"%d\n%s" % (token, value))

    # -- semaphores and read/write locks -------------------------------------------------

    def _acquire_shared(self, index: int, cmd: AcquireShared) -> Result:
        s = self._sessions.get(cmd.session_id)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {cmd.session_id}")
        name, sid = cmd.name, cmd.session_id
        if name in self._locks:
            return _err(ResultCode.INVALID, self.revision, f"{name!r} is a lock, not a {cmd.mode} lock")
        kind = "semaphore" if cmd.mode == "semaphore" else "rwlock"
        limit = cmd.limit if kind == "semaphore" else RW_ALL
        weight = RW_ALL if cmd.mode == "write" else 1
        sh = self._shared.get(name)
        if sh is None:
            if len(self._locks) + len(self._shared) >= MAX_LOCKS:
                return _err(ResultCode.LIMIT, self.revision, f"too many locks held (max {MAX_LOCKS})")
            sh = _Shared(kind, limit)
        elif sh.kind != kind:
            return _err(ResultCode.INVALID, self.revision, f"{name!r} is a {sh.kind}, not a {kind}")
        elif sh.limit != limit:
            return _err(ResultCode.INVALID, self.revision,
                        f"semaphore {name!r} has limit {sh.limit}, not {cmd.limit}")
        held = sh.holders.get(sid)
        if held is not None:
            return Result(ResultCode.OK, self.revision, {"token": held[0]})
        if name in s.waiting:
            return Result(ResultCode.QUEUED, self.revision, {})
        self._shared[name] = sh
        if not sh.waiters and self._fits(sh, weight):
            return Result(ResultCode.OK, self.revision,
                          {"token": self._grant_shared(index, name, sh, sid, weight)})
        refused = None
        if not cmd.wait:
            refused = _err(ResultCode.LOCK_BUSY, self.revision, f"{kind} {name!r} has no room")
        elif len(sh.waiters) >= MAX_WAITERS:
            refused = _err(ResultCode.LIMIT, self.revision, f"too many waiters on {name!r} (max {MAX_WAITERS})")
        elif sum(1 for w, _ in sh.waiters if (ws := self._sessions.get(w)) is not None
                 and ws.quota == s.quota) >= MAX_WAITERS_PER_OWNER:
            refused = _err(ResultCode.LIMIT, self.revision, f"too many waiters of this client on "
                           f"{name!r} (max_waiters_per_owner {MAX_WAITERS_PER_OWNER})")
        if refused is not None:
            if not sh.holders and not sh.waiters:
                del self._shared[name]
            return refused
        sh.waiters.append((sid, weight))
        s.waiting.add(name)
        return Result(ResultCode.QUEUED, self.revision, {})

    @staticmethod
    def _fits(sh: _Shared, weight: int) -> bool:
        return sh.used + weight <= sh.limit and len(sh.holders) < MAX_SHARED_HOLDERS

    def _grant_shared(self, index: int, name: str, sh: _Shared, sid: int, weight: int) -> int:
        token = self.next_token
        self.next_token += 1
        sh.holders[sid] = (token, weight)
        sh.used += weight
        self._sessions[sid].held.add(name)
        self.grants.append(Grant(name, sid, token))
        return token

    def _admit(self, index: int, name: str) -> None:
        """Grant waiters of ``name`` in order while the first fits; drop it if unused."""
        sh = self._shared.get(name)
        if sh is None:
            return
        while sh.waiters and self._fits(sh, sh.waiters[0][1]):
            sid, weight = sh.waiters.popleft()
            self._sessions[sid].waiting.discard(name)
            self._grant_shared(index, name, sh, sid, weight)
        if not sh.holders and not sh.waiters:
            del self._shared[name]

    def _leave_shared(self, name: str, sid: int) -> None:
        sh = self._shared[name]
        sh.waiters = deque(w for w in sh.waiters if w[0] != sid)

    def _release_shared(self, name: str, sid: int, s: _Session | None) -> None:
        sh = self._shared[name]
        _, weight = sh.holders.pop(sid)
        sh.used -= weight
        if s is not None:
            s.held.discard(name)

    def _end_delay(self, index: int, name: str) -> Result:
        lk = self._locks.get(name)
        if lk is None or lk.holder != 0:
            return Result(ResultCode.OK, self.revision, {"ended": False})
        if not lk.waiters:
            del self._locks[name]
        else:
            nxt = lk.waiters.popleft()
            self._sessions[nxt].waiting.discard(name)
            self._grant(index, name, nxt)
        return Result(ResultCode.OK, self.revision, {"ended": True})

    def _grant(self, index: int, name: str, sid: int) -> int:
        token = self.next_token
        self.next_token += 1
        lk = self._locks.get(name)
        s = self._sessions[sid]
        delay_ms = s.delays.get(name, 0)
        if lk is None:
            self._locks[name] = _Lock(sid, token, index, delay_ms=delay_ms)
        else:
            lk.holder, lk.token, lk.granted_index, lk.delay_ms = sid, token, index, delay_ms
        s.held.add(name)
        self.grants.append(Grant(name, sid, token))
        if name.startswith(ELECTION_PREFIX):
            self._set_record(name, token, self._candidates.pop((name, sid), b""))
        return token

    def _hand_over(self, index: int, name: str) -> None:
        """Release ``name`` from its holder and grant it to the first waiter, if any."""
        lk = self._locks[name]
        holder = self._sessions.get(lk.holder)
        if holder is not None:
            holder.held.discard(name)
            holder.delays.pop(name, None)
        if not lk.waiters:
            del self._locks[name]
            if name in self._kv and name.startswith(ELECTION_PREFIX):
                self._remove_key(name)    # nobody leads
            return
        nxt = lk.waiters.popleft()
        self._sessions[nxt].waiting.discard(name)
        self._grant(index, name, nxt)

    def _acquire(self, index: int, cmd: Acquire) -> Result:
        s = self._sessions.get(cmd.session_id)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {cmd.session_id}")
        sh = self._shared.get(cmd.name)
        if sh is not None:
            # One name, one kind: a plain lock beside a semaphore of the same name would
            # leave a session in both tables, and closing it would fail on every replica.
            return _err(ResultCode.INVALID, self.revision, f"{cmd.name!r} is a {sh.kind}, not a lock")
        lk = self._locks.get(cmd.name)
        if cmd.lock_delay_ms and (lk is None or lk.holder != cmd.session_id):
            s.delays[cmd.name] = cmd.lock_delay_ms    # applies from its grant on
        if lk is None:
            if len(self._locks) >= MAX_LOCKS:
                return _err(ResultCode.LIMIT, self.revision, f"too many locks held (max {MAX_LOCKS})")
            return Result(ResultCode.OK, self.revision, {"token": self._grant(index, cmd.name, cmd.session_id)})
        if lk.holder == cmd.session_id:
            return Result(ResultCode.OK, self.revision, {"token": lk.token})
        if not cmd.wait:
            s.delays.pop(cmd.name, None)
            return _err(ResultCode.LOCK_BUSY, self.revision, f"lock {cmd.name!r} is held by another session"
                        if lk.holder else f"lock {cmd.name!r} is in its lock-delay")
        if cmd.name not in s.waiting:
            if len(lk.waiters) >= MAX_WAITERS:
                return _err(ResultCode.LIMIT, self.revision, f"too many waiters on {cmd.name!r} (max {MAX_WAITERS})")
            # .get: a waiter always has a session, but counting must not be what fails if not
            mine = sum(1 for w in lk.waiters
                       if (ws := self._sessions.get(w)) is not None and ws.quota == s.quota)
            if mine >= MAX_WAITERS_PER_OWNER:
                return _err(ResultCode.LIMIT, self.revision, f"too many waiters of this client on "
                            f"{cmd.name!r} (max_waiters_per_owner {MAX_WAITERS_PER_OWNER})")
            lk.waiters.append(cmd.session_id)
            s.waiting.add(cmd.name)
        return Result(ResultCode.QUEUED, self.revision, {})

    def _open_and_acquire(self, index: int, cmd: OpenAndAcquire, owner: str, quota: str) -> Result:
        refused = self._session_limit(quota)
        if refused is not None:
            return refused
        sid = self.next_session_id
        self._open(index, cmd.ttl_ms, owner, quota)
        res = self._acquire(index, Acquire(cmd.name, sid, cmd.wait, cmd.lock_delay_ms))
        if res.code in (ResultCode.OK, ResultCode.QUEUED):
            return Result(res.code, res.revision, {**res.data, "session_id": sid})
        self._close(index, sid)  # busy or a limit: nothing held, so no session either
        return res

    def _release(self, index: int, cmd: Release) -> Result:
        sh = self._shared.get(cmd.name)
        if sh is not None:
            held = sh.holders.get(cmd.session_id)
            if held is None or held[0] != cmd.token:
                return _err(ResultCode.NOT_HELD, self.revision, f"{sh.kind} {cmd.name!r} is not held "
                            f"by session {cmd.session_id} with token {cmd.token}")
            self._release_shared(cmd.name, cmd.session_id, self._sessions.get(cmd.session_id))
            self._admit(index, cmd.name)
            return Result(ResultCode.OK, self.revision, {})
        lk = self._locks.get(cmd.name)
        if lk is None or lk.holder != cmd.session_id or lk.token != cmd.token:
            return _err(ResultCode.NOT_HELD, self.revision,
                        f"lock {cmd.name!r} is not held by session {cmd.session_id} with token {cmd.token}")
        self._hand_over(index, cmd.name)
        return Result(ResultCode.OK, self.revision, {})

    def _cancel(self, index: int, cmd: Cancel) -> Result:
        s = self._sessions.get(cmd.session_id)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {cmd.session_id}")
        dequeued = released = False
        if cmd.name in self._shared:
            if cmd.name in s.waiting:
                s.waiting.discard(cmd.name)
                self._leave_shared(cmd.name, cmd.session_id)
                dequeued = True
            elif cmd.name in s.held:
                self._release_shared(cmd.name, cmd.session_id, s)
                released = True
            self._admit(index, cmd.name)    # the head may have left: those behind may fit
        elif cmd.name in s.waiting:
            s.waiting.discard(cmd.name)
            s.delays.pop(cmd.name, None)
            self._candidates.pop((cmd.name, cmd.session_id), None)
            self._locks[cmd.name].waiters.remove(cmd.session_id)
            dequeued = True
        elif cmd.name in s.held:
            self._hand_over(index, cmd.name)
            released = True
        return Result(ResultCode.OK, self.revision, {"dequeued": dequeued, "released": released})

    # -- identities ----------------------------------------------------------------

    def _auth_add(self, index: int, cmd: AuthAdd) -> Result:
        if cmd.name in self._principals:
            return _err(ResultCode.REFUSED, self.revision, f"principal {cmd.name!r} exists "
                        "(pick another name)")
        if cmd.name in self._retired:
            # Connections keep the name they were authenticated with: a new key under a
            # removed name would hand its rights to the old key's open connections.
            return _err(ResultCode.REFUSED, self.revision, f"{cmd.name!r} was removed, and a "
                        "removed name is never given to another key: pick a new name")
        if cmd.public_key in self._by_key:
            return _err(ResultCode.REFUSED, self.revision,
                        f"that public key is {self._by_key[cmd.public_key]!r}'s already")
        if len(self._principals) >= MAX_PRINCIPALS:
            return _err(ResultCode.LIMIT, self.revision, f"too many principals (max {MAX_PRINCIPALS})")
        self._principals[cmd.name] = Principal(cmd.name, cmd.public_key, Rights(
            _dedupe(cmd.read), _dedupe(cmd.write), _dedupe(cmd.lock), cmd.admin))
        self._by_key[cmd.public_key] = cmd.name
        return Result(ResultCode.OK, self.revision, {"index": index})

    def _auth_remove(self, index: int, cmd: AuthRemove) -> Result:
        p = self._principals.get(cmd.name)
        if p is None:
            return _err(ResultCode.REFUSED, self.revision, f"no principal {cmd.name!r}")
        if p.rights.admin and not any(q.rights.admin for q in self._principals.values() if q is not p):
            return _err(ResultCode.REFUSED, self.revision,
                        f"{cmd.name!r} is the last admin; add another admin first")
        del self._principals[cmd.name]
        if p.public_key is not None:
            del self._by_key[p.public_key]
        self._retired[cmd.name] = None
        if len(self._retired) > MAX_RETIRED:
            del self._retired[next(iter(self._retired))]
        # Its sessions end now (their locks go to the next waiters): nobody could keep
        # them alive any more, and a removed identity should hold nothing.
        mine = sorted(sid for sid, s in self._sessions.items() if s.owner == cmd.name)
        for sid in mine:
            self._close(index, sid)
        return Result(ResultCode.OK, self.revision, {"index": index, "sessions_closed": len(mine)})

    def rights(self, principal: str) -> Rights | None:
        """What ``principal`` may do (None: nothing; it is not, or no longer, known)."""
        p = self._principals.get(principal)
        if p is not None:
            return p.rights
        return MEMBER_RIGHTS if principal.startswith(_MEMBER_PREFIX) else None

    def principal_for_key(self, public_z85: str) -> str | None:
        """The table's principal for a client key (the bootstrap admin's key is not here)."""
        return self._by_key.get(public_z85)

    def principals(self) -> builtins.list[Principal]:
        return [p for _, p in sorted(self._principals.items())]

    def session_owner(self, session_id: int) -> str | None:
        s = self._sessions.get(session_id)
        return None if s is None else s.owner

    def take_delays(self) -> builtins.list[tuple[str, int]]:
        """Lock-delays begun since the last call: (lock, delay_ms), for the leader's clock."""
        out, self.delays = self.delays, []
        return out

    def delayed_locks(self) -> dict[str, int]:
        """Every lock in its lock-delay, with the delay (a new leader restarts them all)."""
        return {n: lk.delay_ms for n, lk in sorted(self._locks.items()) if lk.holder == 0}

    def take_grants(self) -> builtins.list[Grant]:
        """Grants made since the last call, so the runtime can wake their waiters."""
        out, self.grants = self.grants, []
        return out

    # -- queries -------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self._kv.get(key)

    def list(self, prefix: str) -> builtins.list[KeyValue]:
        return builtins.list(self.scan(prefix))

    def scan(self, prefix: str, start_after: str = "", hide_records: bool = False) -> Iterator[KeyValue]:
        """Current entries under ``prefix`` with key > ``start_after``, in key order, lazily
        (O(log n) to start). With ``hide_records``, as a client lists (``commands.under``):
        "" is the client keys alone. Do not apply while iterating."""
        kv = self._kv
        if hide_records and prefix == "" and start_after < _LEAST_CLIENT_KEY:
            keys = self._keys.irange(minimum=_LEAST_CLIENT_KEY)
        elif start_after >= prefix:
            keys = self._keys.irange(minimum=start_after, inclusive=(False, True))
        else:
            keys = self._keys.irange(minimum=prefix)
        for k in keys:
            if not k.startswith(prefix):
                return
            yield kv[k]

    def history(self, key: str) -> builtins.list[Change]:
        hist = self._history.get(key)
        if hist is not None:
            return builtins.list(hist)
        kv = self._kv.get(key)
        return [] if kv is None else [Change(_PUT, key, kv.value, kv.revision)]

    def has_result(self, client_id: str, seq: int) -> bool:
        """Whether the result of (client_id, seq) is cached: a retry gets it, unapplied."""
        c = self._clients.get(client_id)
        return c is not None and seq in c.results

    def events_since(self, prefix: str | tuple[str, ...], after_revision: int,
                     limit: int, readable: tuple[str, ...] | None = None,
                     hide_records: bool = False) -> builtins.list[Change]:
        """Events after ``after_revision`` whose key starts with ``prefix`` (or any of them)
        and, unless ``readable`` is None, with one of the prefixes in ``readable``; with
        ``hide_records``, as a client watches (``commands.under``): "" selects client keys
        alone. The events of one revision (a transaction) are never split: ``limit`` may be
        passed to finish one."""
        return self.events_page(prefix, after_revision, limit, 1 << 62, readable, hide_records)[0]

    def events_page(self, prefix: str | tuple[str, ...], after_revision: int, limit: int,
                    max_bytes: int, readable: tuple[str, ...] | None = None,
                    hide_records: bool = False) -> tuple[builtins.list[Change], bool]:
        """``events_since``, also cut once the values passed ``max_bytes`` (always one
        revision); and whether it was cut (by ``limit`` or bytes): then it is complete only
        up to its last event. A cut never falls inside a revision, so a reader resuming
        after the last revision it got misses nothing."""
        # A record's event passes only a prefix of records, never "" (None: nothing hidden).
        records = _record_prefixes(prefix) if hide_records else None
        if after_revision < 0 or limit < 1:
            raise UsageError(f"need after_revision >= 0 and limit >= 1, got {after_revision}, {limit}")
        if after_revision + 1 < self.first_revision_in_window:
            raise RevisionCompacted(self.first_revision_in_window)
        out: builtins.list[Change] = []
        size = 0
        # The window holds every revision from first_revision_in_window on, one item each.
        start = after_revision + 1 - self.first_revision_in_window
        window = self._window
        for i in range(start, len(window)):
            item = window[i]
            if type(item) is Change:
                if not (item.key.startswith(prefix)
                        and (readable is None or item.key.startswith(readable))):
                    continue
                if records is not None and is_record(item.key) and not item.key.startswith(records):
                    continue
                size += len(item.value) + 4 * len(item.key) + 48
                if out and size > max_bytes:
                    return out, True
                out.append(item)
            else:
                assert isinstance(item, tuple)
                picked = [ev for ev in item if ev.key.startswith(prefix)
                          and (readable is None or ev.key.startswith(readable))
                          and (records is None or not is_record(ev.key) or ev.key.startswith(records))]
                if not picked:
                    continue
                size += sum(len(ev.value) + 4 * len(ev.key) + 48 for ev in picked)
                if out and size > max_bytes:
                    return out, True
                out.extend(picked)
            if len(out) >= limit:
                return out, i + 1 < len(window)
        return out, False

    def session_ttl_ms(self, session_id: int) -> int | None:
        """The session's ttl, or None if it does not exist (O(1): keep-alives call this)."""
        sess = self._sessions.get(session_id)
        return None if sess is None else sess.ttl_ms

    def sessions(self) -> dict[int, SessionInfo]:
        return {sid: SessionInfo(s.ttl_ms, tuple(sorted(s.held)), s.opened_index)
                for sid, s in sorted(self._sessions.items())}

    def lease_of(self, key: str) -> int | None:
        """The lease (session id) ``key`` lives on, or None if it is persistent or absent."""
        return self._leased.get(key)

    def lease_keys(self, session_id: int) -> builtins.list[str]:
        s = self._sessions.get(session_id)
        return [] if s is None else sorted(s.keys)

    def held_token(self, name: str, session_id: int) -> int | None:
        """The token session ``session_id`` holds lock, semaphore or rwlock ``name`` with."""
        lk = self._locks.get(name)
        if lk is not None:
            return lk.token if lk.holder == session_id else None
        sh = self._shared.get(name)
        held = None if sh is None else sh.holders.get(session_id)
        return None if held is None else held[0]

    def lock_owner(self, name: str) -> tuple[int, int] | None:
        lk = self._locks.get(name)
        return None if lk is None else (lk.holder, lk.token)

    def waiting(self, name: str, session_id: int) -> bool:
        s = self._sessions.get(session_id)
        return s is not None and name in s.waiting

    def locks(self) -> builtins.list[HeldLock]:
        ses = self._sessions
        out = [HeldLock(n, lk.holder, lk.token, lk.granted_index, tuple(lk.waiters),
                        ses[lk.holder].owner if lk.holder else "",
                        tuple(ses[w].owner for w in lk.waiters))
               for n, lk in self._locks.items()]
        for n, sh in self._shared.items():
            holders = tuple((sid, tok, ses[sid].owner, _mode(sh.kind, w))
                            for sid, (tok, w) in sh.holders.items())
            first = holders[0] if holders else (0, 0, "", "")
            out.append(HeldLock(n, first[0], first[1], 0, tuple(w for w, _ in sh.waiters), first[2],
                                tuple(ses[w].owner for w, _ in sh.waiters), sh.kind,
                                sh.limit if sh.kind == "semaphore" else 0, holders,
                                tuple(_mode(sh.kind, wt) for _, wt in sh.waiters)))
        return sorted(out, key=lambda h: h.name)

    @property
    def key_count(self) -> int:
        return len(self._kv)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def locks_held(self) -> int:
        return len(self._locks) + len(self._shared)

    @property
    def lock_waiters(self) -> int:
        """Sessions queued on locks, semaphores and rwlocks, counted without building
        ``locks()`` (which costs an object per lock: metrics read this twice a second)."""
        return (sum(len(lk.waiters) for lk in self._locks.values())
                + sum(len(sh.waiters) for sh in self._shared.values()))

    # -- snapshots -----------------------------------------------------------------
    # Every event is stored once, keyed by its unique revision; the window, the
    # histories and the current values refer to it, so a 1 MiB value is not written
    # three times. Everything is sorted (clients in activity order), so equal
    # machines give equal bytes.

    def snapshot(self) -> bytes:
        return b"".join(self.snapshot_pieces())

    def snapshot_pieces(self, piece_bytes: int = SNAPSHOT_PIECE_BYTES) -> Iterator[bytes]:
        """The bytes of ``snapshot()``, a piece of about ``piece_bytes`` at a time (one row
        may make a piece larger): a large state is written out without a second copy of it
        in memory. The pieces joined are exactly ``msgpack.packb`` of the state's map."""
        state = self._snapshot_state()
        packer = msgpack.Packer(use_bin_type=True)
        out = [packer.pack_map_header(len(state))]
        size = 0
        for name, value in state.items():
            out.append(packer.pack(name))
            if type(value) is not builtins.list:
                out.append(packer.pack(value))
                continue
            out.append(packer.pack_array_header(len(value)))
            for row in value:
                piece = packer.pack(row)
                out.append(piece)
                size += len(piece)
                if size >= piece_bytes:
                    yield b"".join(out)
                    out, size = [], 0
        yield b"".join(out)

    def _snapshot_state(self) -> dict[str, Any]:
        # A transaction writes several keys at one revision, each key once: (revision, key)
        # names an event. A key without a history object has its value as its one version:
        # the snapshot lists it as every other history (the format does not know).
        events: dict[tuple[int, str], builtins.list[object]] = {}
        for item in self._window:
            for ev in ((item,) if type(item) is Change else item):   # type: ignore[union-attr]
                events[(ev.revision, ev.key)] = [ev.revision, ev.type, ev.key, ev.value]
        hists: dict[str, builtins.list[int]] = {}
        for k, h in self._history.items():
            hists[k] = [ev.revision for ev in h]
            events.update(((ev.revision, k), [ev.revision, ev.type, k, ev.value]) for ev in h)
        for k, kv in self._kv.items():
            if k not in hists:
                hists[k] = [kv.revision]
                events[(kv.revision, k)] = [kv.revision, _PUT, k, kv.value]
        state = {
            "v": _SNAPSHOT_VERSION,
            "rev": self.revision, "sid": self.next_session_id, "tok": self.next_token,
            "w0": self.first_revision_in_window,
            "ev": [row for _, row in sorted(events.items())],
            "kv": [[k, kv.revision, kv.create_revision, kv.version] for k, kv in sorted(self._kv.items())],
            "hist": sorted([k, revs] for k, revs in hists.items()),
            "ses": [[sid, s.ttl_ms, s.opened_index, s.owner, s.quota]
                    for sid, s in sorted(self._sessions.items())],
            "lk": [[n, lk.holder, lk.token, lk.granted_index, builtins.list(lk.waiters)]
                   + ([lk.delay_ms] if lk.delay_ms else [])
                   for n, lk in sorted(self._locks.items())],
            "sh": [[n, sh.kind, sh.limit, [[sid, tok, w] for sid, (tok, w) in sh.holders.items()],
                    [[sid, w] for sid, w in sh.waiters]] for n, sh in sorted(self._shared.items())],
            "cand": [[n, sid, v] for (n, sid), v in sorted(self._candidates.items())],
            "ldel": [[sid, n, ms] for sid, s in sorted(self._sessions.items())
                     for n, ms in sorted(s.delays.items())],
            "cl": [[cid, c.floor, [[s, r.to_wire()] for s, r in sorted(c.results.items())], c.owner]
                   for cid, c in self._clients.items()],
            "acl": [[p.name, p.public_key, builtins.list(p.rights.read), builtins.list(p.rights.write),
                     builtins.list(p.rights.lock), p.rights.admin] for p in self.principals()],
            "retired": builtins.list(self._retired),
            "eph": [[k, sid] for k, sid in sorted(self._leased.items())],
        }
        return state

    @classmethod
    def restore(cls, data: bytes) -> Machine:
        """Rebuild from ``snapshot()`` bytes; raises ``ProtocolError`` if they are malformed."""
        m = cls()
        if not data:
            return m
        try:
            with _collector_paused():
                m._load(msgpack.unpackb(data, raw=False, strict_map_key=False))
        except ProtocolError:
            raise
        except Exception as e:  # a snapshot from a peer: any malformation is the peer's fault
            raise ProtocolError(f"malformed snapshot: {e!r:.200}") from e
        return m

    @classmethod
    def restore_from(cls, stream: SupportsRead) -> Machine:
        """``restore`` from the bytes ``stream.read`` gives, in pieces: only the state
        being rebuilt and one row at a time are held, never all of the bytes."""
        counted = _Counted(stream)
        unpacker = msgpack.Unpacker(counted, raw=False, strict_map_key=False,
                                    read_size=SNAPSHOT_PIECE_BYTES,
                                    max_buffer_size=_MAX_SNAPSHOT_ROW_BYTES)
        m = cls()
        try:
            with _collector_paused():
                try:
                    st = unpacker.unpack()
                except msgpack.OutOfData:
                    if counted.total:
                        raise ProtocolError("malformed snapshot: it ends inside the state") from None
                    return m                        # no bytes: the empty state
                try:
                    unpacker.unpack()
                except msgpack.OutOfData:
                    pass
                else:
                    raise ProtocolError("malformed snapshot: bytes after the state")
                m._load(st)
        except ProtocolError:
            raise
        except Exception as e:  # a snapshot from a peer: any malformation is the peer's fault
            raise ProtocolError(f"malformed snapshot: {e!r:.200}") from e
        return m

    def _load(self, st: dict[str, object]) -> None:
        if st.get("v") == 1:
            _rename_v1_records(st)
        elif st.get("v") != _SNAPSHOT_VERSION:
            raise ProtocolError(f"unsupported snapshot version {st.get('v')!r}")
        g = _Getter(st)
        self.revision, self.next_session_id = g.int("rev"), g.int("sid")
        self.next_token, self.first_revision_in_window = g.int("tok"), g.int("w0")
        # Events stay rows until something holds them: the window (recent revisions) or
        # a history of more than the key's value. One Change per event either holds.
        rows: dict[tuple[int, str], tuple[str, bytes]] = {}
        at: dict[int, builtins.list[str]] = {}    # revision (in the window) -> its keys
        w0 = self.first_revision_in_window
        for r, typ, key, value in g.rows("ev", int, str, str, bytes):
            if typ not in ("put", "delete"):
                raise ProtocolError(f"malformed event type at revision {r}")
            rows[(r, key)] = (typ, value)
            if r >= w0:
                at.setdefault(r, []).append(key)
        made: dict[tuple[int, str], Change] = {}

        def change(r: int, key: str) -> Change:
            ev = made.get((r, key))
            if ev is None:
                typ, value = rows[(r, key)]
                ev = made[(r, key)] = Change(ChangeType(typ), key, value, r)
            return ev

        for r in range(w0, self.revision + 1):
            group = [change(r, key) for key in sorted(at[r])]
            self._window.append(group[0] if len(group) == 1 else tuple(group))
            self._window_bytes += sum(len(ev.value) for ev in group)
            self._window_events += len(group)
        for key, rev, create, version in g.rows("kv", str, int, int, int):
            typ, value = rows[(rev, key)]
            if typ != "put":
                raise ProtocolError(f"malformed snapshot: {key!r} holds a delete")
            self._kv[key] = KeyValue(key, value, rev, create, version)
        for key, revs in g.rows("hist", str, list):
            versions = _ints(revs)
            kv = self._kv.get(key)
            if kv is not None and versions == [kv.revision]:
                continue        # its one version is its value
            hist = _Versions([])
            for r in versions:
                hist.add(change(r, key))
            self._history[key] = hist
        self._keys = SortedList(self._kv)
        for key in self._keys.irange(minimum=SCHEMA_PREFIX):
            if not key.startswith(SCHEMA_PREFIX):
                break
            compiled = compile_schema(key[len(SCHEMA_PREFIX):], self._kv[key].value)
            if isinstance(compiled, str):
                raise ProtocolError(f"snapshot: the schema at {key!r} does not compile: {compiled}")
            self._schemas[compiled.prefix] = compiled
        # Rows of snapshots from before principals have no owners: those sessions and
        # client ids were the bootstrap admin's (every client was, then). Rows from before
        # per-owner bounds have no quota owner: counted as "".
        for row in g.rows("ses", int, int, int, str, str, optional=2):
            sid, ttl_ms, opened, owner, quota = (*row, BOOTSTRAP_ADMIN, "")[:5]
            self._sessions[sid] = _Session(ttl_ms, opened, owner, quota)
            self._owner_sessions[quota] = self._owner_sessions.get(quota, 0) + 1
        for row in g.rows("lk", str, int, int, int, list, int, optional=1):
            name, holder, token, granted, waiters, delay_ms = (*row, 0)[:6]
            self._locks[name] = _Lock(holder, token, granted, deque(_ints(waiters)), delay_ms)
            if holder:     # 0: in its lock-delay
                self._sessions[holder].held.add(name)
            for w in waiters:
                self._sessions[w].waiting.add(name)
        for row in g.rows("cl", str, int, list, str, optional=1):
            cid, floor, results, owner = (*row, BOOTSTRAP_ADMIN)[:4]
            if not all(isinstance(x, builtins.list) and len(x) == 2 and _is(x[0], int) for x in results):
                raise ProtocolError(f"snapshot: malformed results of client {cid!r}")
            self._clients[cid] = _Client(floor, {s: Result.from_wire(w) for s, w in results}, owner)
        if "acl" in st:   # snapshots from before the identity table have only the bootstrap admin
            self._principals = {}
            for name, public, read, write, lock, admin in g.rows("acl", str, object, list, list, list, bool):
                if not (public is None or isinstance(public, str)):
                    raise ProtocolError(f"snapshot: malformed key of principal {name!r}")
                self._principals[name] = Principal(name, public, Rights(
                    _strs(read), _strs(write), _strs(lock), admin))
                if public is not None:
                    self._by_key[public] = name
        retired = st.get("retired", [])
        if not isinstance(retired, builtins.list) or not all(isinstance(n, str) for n in retired):
            raise ProtocolError("snapshot field retired must be a list of names")
        self._retired = dict.fromkeys(retired)
        if "sh" in st:   # snapshots from before semaphores and rwlocks have none
            for name, kind, limit, holders, waiters in g.rows("sh", str, str, int, list, list):
                sh = self._shared[name] = _Shared(kind, limit)
                for sid, tok, w in holders:
                    sh.holders[sid] = (tok, w)
                    sh.used += w
                    self._sessions[sid].held.add(name)
                for sid, w in waiters:
                    sh.waiters.append((sid, w))
                    self._sessions[sid].waiting.add(name)
        if "cand" in st:   # snapshots from before elections have no candidates
            for name, sid, value in g.rows("cand", str, int, bytes):
                self._candidates[(name, sid)] = value
        if "ldel" in st:   # snapshots from before lock-delays have none
            for sid, name, ms in g.rows("ldel", int, str, int):
                self._sessions[sid].delays[name] = ms
        if "eph" in st:   # snapshots from before leases have no ephemeral keys
            for key, sid in g.rows("eph", str, int):
                if key not in self._kv or sid not in self._sessions:
                    raise ProtocolError(f"snapshot: ephemeral key {key!r} on a missing key or lease")
                self._attach(key, sid)


def _rename_v1_records(st: dict[str, object]) -> None:
    """Rename, in place, a version-1 snapshot's records (``_V1_RECORD_PREFIXES``) to their
    names under RESERVED_PREFIX: keys with their events and history, election locks with
    their candidates. Malformed rows are left for ``_load`` to refuse."""
    for table, col in _V1_NAMES:
        rows = st.get(table)
        if not isinstance(rows, builtins.list):
            continue     # a table older snapshots lack
        for row in rows:
            if not (isinstance(row, builtins.list) and len(row) > col and isinstance(row[col], str)):
                continue
            for old, new in _V1_RECORD_PREFIXES:
                if row[col].startswith(old):
                    row[col] = new + row[col][len(old):]
                    break


def _record_prefixes(selector: str | tuple[str, ...]) -> tuple[str, ...] | None:
    """For a client's ``selector``: the prefixes a record's key must start with to be
    selected -- those of records -- when "" (every key) is among them; else None, as
    any other prefix selects only records or only client keys already."""
    prefixes = (selector,) if type(selector) is str else selector
    if "" not in prefixes:
        return None
    return tuple(p for p in prefixes if is_record(p))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a state is rebuilt: each of the many passes that
    building millions of rows and objects triggers walks everything built so far (more
    than half of a large restore went there). Nothing built holds a cycle to collect
    meanwhile; collection resumes, as it was, at the end."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Getter:
    """Typed access to a decoded snapshot: a malformed field is a ProtocolError."""

    def __init__(self, st: dict[str, object]) -> None:
        self._st = st

    def int(self, k: str) -> int:
        v = self._st[k]
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(f"snapshot field {k} must be an int")
        return v

    def rows(self, k: str, *schema: type, optional: builtins.int = 0) -> builtins.list[builtins.list[Any]]:
        """Rows of ``schema``; the last ``optional`` fields may be missing.

        msgpack decodes to exact types (int, never a subclass but bool; str; bytes; list),
        so each field is checked by identity of its type: a restart checks a million rows,
        and ``isinstance`` through a generator per field was half of its restore time."""
        v = self._st[k]
        lo, hi = len(schema) - optional, len(schema)
        fields = [(i, t) for i, t in enumerate(schema) if t is not object]
        if type(v) is not builtins.list:
            raise ProtocolError(f"snapshot field {k} must be rows of {schema}")
        for row in v:
            if type(row) is not builtins.list or not lo <= len(row) <= hi:
                raise ProtocolError(f"snapshot field {k} must be rows of {schema}")
            n = len(row)
            for i, t in fields:
                if i < n and type(row[i]) is not t:
                    raise ProtocolError(f"snapshot field {k} must be rows of {schema}")
        return v


def _is(v: object, t: type) -> bool:
    return t is object or isinstance(v, t) and (t is bool or not isinstance(v, bool))


def _strs(v: builtins.list[Any]) -> tuple[str, ...]:
    if not all(isinstance(x, str) for x in v):
        raise ProtocolError("snapshot: expected a list of strings")
    return tuple(v)


def _dedupe(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(prefixes))


def _ints(v: builtins.list[Any]) -> builtins.list[int]:
    if not all(_is(x, int) for x in v):
        raise ProtocolError("snapshot: expected a list of ints")
    return v
