"""The deterministic replicated state machine: config keys, sessions, locks.

Every replica applies the same ``Request``s in log order and must end in the same
state with the same results, so nothing here reads a clock or an RNG, every
iteration whose order is observable is sorted, and every table is bounded. Session
expiry is decided outside (by the leader) and arrives as ``ExpireSession``.

``apply`` never raises on a decoded ``Request``: bad values become an ``invalid``
``Result``. Queries may raise ``UsageError`` when the caller passes nonsense.

Fairness: besides the global bounds, one *owner* may hold at most
``MAX_SESSIONS_PER_OWNER`` sessions and at most ``MAX_WAITERS_PER_OWNER`` places in one
lock's queue, so one client cannot fill the tables every other client needs. The owner
is the request's ``client_id`` (``_owner``); the identity stream makes it the
authenticated principal the leader stamps into the request -- the same value on every
replica either way, so the bounds are replicated decisions like any other.

Keys are also held in a sorted index, so a page of ``scan`` costs O(log n + page), not a
sort of every key. A key's history keeps its newest ``KEY_HISTORY`` versions, fewer when
their values exceed ``KEY_HISTORY_BYTES`` (never fewer than one).
"""
from __future__ import annotations

import builtins
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs published
from sortedcontainers import SortedList  # type: ignore[import-untyped, unused-ignore]

from .commands import (
    Acquire,
    Cancel,
    CloseSession,
    Command,
    Delete,
    ExpireSession,
    Fence,
    OpenAndAcquire,
    OpenSession,
    Put,
    Release,
    Request,
    validate,
    validate_request,
)
from .protocol import Change, ChangeType, KeyValue, Result, ResultCode
from .types import MiB, ProtocolError, UsageError

__all__ = ["Grant", "HeldLock", "Machine", "RevisionCompacted", "SessionInfo", "owner_of"]

# Module globals rather than constructor arguments: every replica must use the same
# bounds, and tests shrink them with monkeypatch.
MAX_CLIENTS = 100_000
MAX_SEQS_PER_CLIENT = 1_000
MAX_SESSIONS = 100_000
MAX_LOCKS = 100_000
MAX_WAITERS = 1_000
# Per owner (see the module docstring): a tenth of the global table, so it takes ten
# owners to fill it.
MAX_SESSIONS_PER_OWNER = 10_000
MAX_WAITERS_PER_OWNER = 100
KEY_HISTORY = 64
KEY_HISTORY_BYTES = 8 * MiB   # of values: 64 versions of 1 MiB would be 64 MiB per key
WINDOW_EVENTS = 20_000
# Values are up to 1 MiB, so a count bound alone would allow a 20 GB window.
WINDOW_BYTES = 64 * 1_048_576

_PUT, _DELETE = ChangeType.PUT, ChangeType.DELETE

_SNAPSHOT_VERSION = 1


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


def owner_of(req: Request) -> str:
    """Who a request's sessions and queue places count against (one line to re-key)."""
    return req.client_id


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
    owner: str = ""
    held: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Lock:
    # A lock exists only while held: a release hands it straight to the next waiter.
    holder: int
    token: int
    granted_index: int
    waiters: deque[int] = field(default_factory=deque)


@dataclass(slots=True)
class _Client:
    # Seqs below ``floor`` are never applied again: first_unacked, raised past any seq
    # evicted from ``results`` so an evicted seq is refused rather than re-applied.
    floor: int
    results: dict[int, Result] = field(default_factory=dict)


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
        self._kv: dict[str, KeyValue] = {}
        self._keys = SortedList()    # the keys of _kv, sorted: pages without a full sort
        # Plain lists trimmed on append: a deque costs ~760 bytes even for one event, which
        # was 76 MB of a 100,000-key node.
        self._history: dict[str, _Versions] = {}
        self._window: deque[Change] = deque()
        self._window_bytes = 0
        self._sessions: dict[int, _Session] = {}
        self._owner_sessions: dict[str, int] = {}
        self._locks: dict[str, _Lock] = {}
        # Least recently active first; apply order is replicated, so eviction is too.
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    # -- applying ------------------------------------------------------------------

    def apply(self, index: int, req: Request) -> Result:
        """Apply ``req`` from log slot ``index`` (recorded in grants and sessions only)."""
        err = validate_request(req)
        if err is not None:
            return _err(ResultCode.INVALID, self.revision, err)
        if req.client_id == "":
            return self._run(index, req.cmd, internal=True, owner="")
        client = self._clients.get(req.client_id)
        if client is None:
            client = self._clients[req.client_id] = _Client(req.first_unacked)
            if len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
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
        result = self._run(index, req.cmd, internal=False, owner=owner_of(req))
        client.results[req.seq] = result
        if len(client.results) > MAX_SEQS_PER_CLIENT:
            lowest = min(client.results)
            del client.results[lowest]
            client.floor = max(client.floor, lowest + 1)
        return result

    def _run(self, index: int, cmd: Command, internal: bool, owner: str) -> Result:
        err = validate(cmd)
        if err is not None:
            return _err(ResultCode.INVALID, self.revision, err)
        if isinstance(cmd, Put):
            return self._put(cmd)
        if isinstance(cmd, Delete):
            return self._delete(cmd)
        if isinstance(cmd, OpenSession):
            return self._open(index, cmd.ttl_ms, owner)
        if isinstance(cmd, CloseSession):
            return self._close(index, cmd.session_id)
        if isinstance(cmd, ExpireSession):
            if not internal:
                return _err(ResultCode.INVALID, self.revision, "ExpireSession is internal to the leader")
            return self._close(index, cmd.session_id)
        if isinstance(cmd, Acquire):
            return self._acquire(index, cmd, owner)
        if isinstance(cmd, Release):
            return self._release(index, cmd)
        if isinstance(cmd, Cancel):
            return self._cancel(index, cmd)
        if isinstance(cmd, OpenAndAcquire):
            return self._open_and_acquire(index, cmd, owner)
        return Result(ResultCode.OK, self.revision, {})  # Noop: validate() rejected every other type

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
        self._record(Change(_PUT, cmd.key, cmd.value, self.revision))
        return Result(ResultCode.OK, self.revision, {"revision": self.revision})

    def _delete(self, cmd: Delete) -> Result:
        rejected = self._precheck(cmd.key, cmd.if_revision, cmd.fence)
        if rejected is not None:
            return rejected
        if cmd.key not in self._kv:
            return Result(ResultCode.OK, self.revision, {"deleted": False})
        self.revision += 1
        del self._kv[cmd.key]
        self._keys.remove(cmd.key)
        self._record(Change(_DELETE, cmd.key, b"", self.revision))
        return Result(ResultCode.OK, self.revision, {"deleted": True, "revision": self.revision})

    def _record(self, ev: Change) -> None:
        hist = self._history.get(ev.key)
        if hist is None:
            self._history[ev.key] = _Versions([ev])
        else:
            hist.add(ev)
        self._window.append(ev)
        self._window_bytes += len(ev.value)
        while len(self._window) > WINDOW_EVENTS or self._window_bytes > WINDOW_BYTES:
            old = self._window.popleft()
            self._window_bytes -= len(old.value)
            self.first_revision_in_window = old.revision + 1
            # A deleted key's history lives until its delete leaves the window, so the
            # number of histories stays bounded by live keys plus the window.
            last = self._history.get(old.key)
            if old.key not in self._kv and last is not None and last[-1] is old:
                del self._history[old.key]

    # -- sessions and locks --------------------------------------------------------

    def _session_limit(self, owner: str) -> Result | None:
        if len(self._sessions) >= MAX_SESSIONS:
            return _err(ResultCode.LIMIT, self.revision, f"too many sessions (max {MAX_SESSIONS})")
        if self._owner_sessions.get(owner, 0) >= MAX_SESSIONS_PER_OWNER:
            return _err(ResultCode.LIMIT, self.revision, "too many sessions of this client "
                        f"(max_sessions_per_owner {MAX_SESSIONS_PER_OWNER})")
        return None

    def _open(self, index: int, ttl_ms: int, owner: str) -> Result:
        refused = self._session_limit(owner)
        if refused is not None:
            return refused
        sid = self.next_session_id
        self.next_session_id += 1
        self._sessions[sid] = _Session(ttl_ms, index, owner)
        self._owner_sessions[owner] = self._owner_sessions.get(owner, 0) + 1
        return Result(ResultCode.OK, self.revision, {"session_id": sid})

    def _close(self, index: int, sid: int) -> Result:
        s = self._sessions.pop(sid, None)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {sid}")
        left = self._owner_sessions[s.owner] - 1
        if left:
            self._owner_sessions[s.owner] = left
        else:
            del self._owner_sessions[s.owner]
        # Leave queues first so no lock released below is handed back to this session.
        for name in sorted(s.waiting):
            self._locks[name].waiters.remove(sid)
        for name in sorted(s.held):
            self._hand_over(index, name)
        return Result(ResultCode.OK, self.revision, {})

    def _grant(self, index: int, name: str, sid: int) -> int:
        token = self.next_token
        self.next_token += 1
        lk = self._locks.get(name)
        if lk is None:
            self._locks[name] = _Lock(sid, token, index)
        else:
            lk.holder, lk.token, lk.granted_index = sid, token, index
        self._sessions[sid].held.add(name)
        self.grants.append(Grant(name, sid, token))
        return token

    def _hand_over(self, index: int, name: str) -> None:
        """Release ``name`` from its holder and grant it to the first waiter, if any."""
        lk = self._locks[name]
        holder = self._sessions.get(lk.holder)
        if holder is not None:
            holder.held.discard(name)
        if not lk.waiters:
            del self._locks[name]
            return
        nxt = lk.waiters.popleft()
        self._sessions[nxt].waiting.discard(name)
        self._grant(index, name, nxt)

    def _acquire(self, index: int, cmd: Acquire, owner: str) -> Result:
        s = self._sessions.get(cmd.session_id)
        if s is None:
            return _err(ResultCode.NO_SESSION, self.revision, f"no session {cmd.session_id}")
        lk = self._locks.get(cmd.name)
        if lk is None:
            if len(self._locks) >= MAX_LOCKS:
                return _err(ResultCode.LIMIT, self.revision, f"too many locks held (max {MAX_LOCKS})")
            return Result(ResultCode.OK, self.revision, {"token": self._grant(index, cmd.name, cmd.session_id)})
        if lk.holder == cmd.session_id:
            return Result(ResultCode.OK, self.revision, {"token": lk.token})
        if not cmd.wait:
            return _err(ResultCode.LOCK_BUSY, self.revision, f"lock {cmd.name!r} is held by another session")
        if cmd.name not in s.waiting:
            if len(lk.waiters) >= MAX_WAITERS:
                return _err(ResultCode.LIMIT, self.revision, f"too many waiters on {cmd.name!r} (max {MAX_WAITERS})")
            # .get: a waiter always has a session, but counting must not be what fails if not
            mine = sum(1 for w in lk.waiters
                       if (ws := self._sessions.get(w)) is not None and ws.owner == owner)
            if mine >= MAX_WAITERS_PER_OWNER:
                return _err(ResultCode.LIMIT, self.revision, f"too many waiters of this client on "
                            f"{cmd.name!r} (max_waiters_per_owner {MAX_WAITERS_PER_OWNER})")
            lk.waiters.append(cmd.session_id)
            s.waiting.add(cmd.name)
        return Result(ResultCode.QUEUED, self.revision, {})

    def _open_and_acquire(self, index: int, cmd: OpenAndAcquire, owner: str) -> Result:
        refused = self._session_limit(owner)
        if refused is not None:
            return refused
        sid = self.next_session_id
        self._open(index, cmd.ttl_ms, owner)
        res = self._acquire(index, Acquire(cmd.name, sid, cmd.wait), owner)
        if res.code in (ResultCode.OK, ResultCode.QUEUED):
            return Result(res.code, res.revision, {**res.data, "session_id": sid})
        self._close(index, sid)  # busy or a limit: nothing held, so no session either
        return res

    def _release(self, index: int, cmd: Release) -> Result:
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
        if cmd.name in s.waiting:
            s.waiting.discard(cmd.name)
            self._locks[cmd.name].waiters.remove(cmd.session_id)
            dequeued = True
        elif cmd.name in s.held:
            self._hand_over(index, cmd.name)
            released = True
        return Result(ResultCode.OK, self.revision, {"dequeued": dequeued, "released": released})

    def take_grants(self) -> builtins.list[Grant]:
        """Grants made since the last call, so the runtime can wake their waiters."""
        out, self.grants = self.grants, []
        return out

    # -- queries -------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self._kv.get(key)

    def list(self, prefix: str) -> builtins.list[KeyValue]:
        return builtins.list(self.scan(prefix))

    def scan(self, prefix: str, start_after: str = "") -> Iterator[KeyValue]:
        """Current entries under ``prefix`` with key > ``start_after``, in key order, lazily
        (O(log n) to start). Do not apply while iterating."""
        kv = self._kv
        if start_after >= prefix:
            keys = self._keys.irange(minimum=start_after, inclusive=(False, True))
        else:
            keys = self._keys.irange(minimum=prefix)
        for k in keys:
            if not k.startswith(prefix):
                return
            yield kv[k]

    def history(self, key: str) -> builtins.list[Change]:
        return builtins.list(self._history.get(key, ()))

    def has_result(self, client_id: str, seq: int) -> bool:
        """Whether the result of (client_id, seq) is cached: a retry gets it, unapplied."""
        c = self._clients.get(client_id)
        return c is not None and seq in c.results

    def events_since(self, prefix: str | tuple[str, ...], after_revision: int,
                     limit: int) -> builtins.list[Change]:
        """Events after ``after_revision`` whose key starts with ``prefix`` (or any of them)."""
        if after_revision < 0 or limit < 1:
            raise UsageError(f"need after_revision >= 0 and limit >= 1, got {after_revision}, {limit}")
        if after_revision + 1 < self.first_revision_in_window:
            raise RevisionCompacted(self.first_revision_in_window)
        out: builtins.list[Change] = []
        # The window holds every revision from first_revision_in_window on, one event each.
        start = after_revision + 1 - self.first_revision_in_window
        for i in range(start, len(self._window)):
            ev = self._window[i]
            if ev.key.startswith(prefix):
                out.append(ev)
                if len(out) >= limit:
                    break
        return out

    def events_page(self, prefix: str | tuple[str, ...], after_revision: int, limit: int,
                    max_bytes: int) -> tuple[builtins.list[Change], bool]:
        """``events_since``, also cut once the values passed ``max_bytes`` (always one event);
        and whether it was cut (by ``limit`` or bytes): then it is complete only up to its
        last event."""
        if after_revision < 0 or limit < 1:
            raise UsageError(f"need after_revision >= 0 and limit >= 1, got {after_revision}, {limit}")
        if after_revision + 1 < self.first_revision_in_window:
            raise RevisionCompacted(self.first_revision_in_window)
        out: builtins.list[Change] = []
        size = 0
        # The window holds every revision from first_revision_in_window on, one event each.
        start = after_revision + 1 - self.first_revision_in_window
        window = self._window
        for i in range(start, len(window)):
            ev = window[i]
            if ev.key.startswith(prefix):
                size += len(ev.value) + 4 * len(ev.key) + 48
                if out and size > max_bytes:
                    return out, True
                out.append(ev)
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

    def lock_owner(self, name: str) -> tuple[int, int] | None:
        lk = self._locks.get(name)
        return None if lk is None else (lk.holder, lk.token)

    def waiting(self, name: str, session_id: int) -> bool:
        s = self._sessions.get(session_id)
        return s is not None and name in s.waiting

    def locks(self) -> builtins.list[HeldLock]:
        return [HeldLock(n, lk.holder, lk.token, lk.granted_index, tuple(lk.waiters))
                for n, lk in sorted(self._locks.items())]

    @property
    def key_count(self) -> int:
        return len(self._kv)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def locks_held(self) -> int:
        return len(self._locks)

    # -- snapshots -----------------------------------------------------------------
    # Every event is stored once, keyed by its unique revision; the window, the
    # histories and the current values refer to it, so a 1 MiB value is not written
    # three times. Everything is sorted (clients in activity order), so equal
    # machines give equal bytes.

    def snapshot(self) -> bytes:
        events: dict[int, Change] = {ev.revision: ev for ev in self._window}
        for hist in self._history.values():
            events.update((ev.revision, ev) for ev in hist)
        state = {
            "v": _SNAPSHOT_VERSION,
            "rev": self.revision, "sid": self.next_session_id, "tok": self.next_token,
            "w0": self.first_revision_in_window,
            "ev": [[r, ev.type, ev.key, ev.value] for r, ev in sorted(events.items())],
            "kv": [[k, kv.revision, kv.create_revision, kv.version] for k, kv in sorted(self._kv.items())],
            "hist": [[k, [ev.revision for ev in h]] for k, h in sorted(self._history.items())],
            "ses": [[sid, s.ttl_ms, s.opened_index, s.owner]
                    for sid, s in sorted(self._sessions.items())],
            "lk": [[n, lk.holder, lk.token, lk.granted_index, builtins.list(lk.waiters)]
                   for n, lk in sorted(self._locks.items())],
            "cl": [[cid, c.floor, [[s, r.to_wire()] for s, r in sorted(c.results.items())]]
                   for cid, c in self._clients.items()],
        }
        out: bytes = msgpack.packb(state, use_bin_type=True)
        return out

    @classmethod
    def restore(cls, data: bytes) -> Machine:
        """Rebuild from ``snapshot()`` bytes; raises ``ProtocolError`` if they are malformed."""
        m = cls()
        if not data:
            return m
        try:
            m._load(msgpack.unpackb(data, raw=False, strict_map_key=False))
        except ProtocolError:
            raise
        except Exception as e:  # a snapshot from a peer: any malformation is the peer's fault
            raise ProtocolError(f"malformed snapshot: {e!r:.200}") from e
        return m

    def _load(self, st: dict[str, object]) -> None:
        if st.get("v") != _SNAPSHOT_VERSION:
            raise ProtocolError(f"unsupported snapshot version {st.get('v')!r}")
        g = _Getter(st)
        self.revision, self.next_session_id = g.int("rev"), g.int("sid")
        self.next_token, self.first_revision_in_window = g.int("tok"), g.int("w0")
        events: dict[int, Change] = {}
        for r, typ, key, value in g.rows("ev", int, str, str, bytes):
            if typ not in ("put", "delete"):
                raise ProtocolError(f"malformed event type at revision {r}")
            events[r] = Change(ChangeType(typ), key, value, r)
        self._window = deque(events[r] for r in range(self.first_revision_in_window, self.revision + 1))
        self._window_bytes = sum(len(ev.value) for ev in self._window)
        for key, revs in g.rows("hist", str, list):
            hist = _Versions([])
            for r in _ints(revs):
                hist.add(events[r])
            self._history[key] = hist
        for key, rev, create, version in g.rows("kv", str, int, int, int):
            self._kv[key] = KeyValue(key, events[rev].value, rev, create, version)
        self._keys = SortedList(self._kv)
        # Rows of snapshots before per-owner bounds have no owner: counted as "".
        for row in g.rows("ses", int, int, int, str, optional=1):
            sid, ttl_ms, opened, owner = (*row, "")[:4]
            self._sessions[sid] = _Session(ttl_ms, opened, owner)
            self._owner_sessions[owner] = self._owner_sessions.get(owner, 0) + 1
        for name, holder, token, granted, waiters in g.rows("lk", str, int, int, int, list):
            self._locks[name] = _Lock(holder, token, granted, deque(_ints(waiters)))
            self._sessions[holder].held.add(name)
            for w in waiters:
                self._sessions[w].waiting.add(name)
        for cid, floor, results in g.rows("cl", str, int, list):
            if not all(isinstance(x, builtins.list) and len(x) == 2 and _is(x[0], int) for x in results):
                raise ProtocolError(f"snapshot: malformed results of client {cid!r}")
            self._clients[cid] = _Client(floor, {s: Result.from_wire(w) for s, w in results})


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
        """Rows of ``schema``; the last ``optional`` fields may be missing."""
        v = self._st[k]
        if not isinstance(v, builtins.list) or not all(
                isinstance(row, builtins.list) and len(schema) - optional <= len(row) <= len(schema)
                and all(_is(x, t) for x, t in zip(row, schema, strict=False)) for row in v):
            raise ProtocolError(f"snapshot field {k} must be rows of {schema}")
        return v


def _is(v: object, t: type) -> bool:
    return isinstance(v, t) and (t is bool or not isinstance(v, bool))


def _ints(v: builtins.list[Any]) -> builtins.list[int]:
    if not all(_is(x, int) for x in v):
        raise ProtocolError("snapshot: expected a list of ints")
    return v
