"""The whole node as a pure object: replica + coordination machine + client protocol.

The runtime feeds it peer messages, client requests (with an opaque reply route) and
the time; it answers with client replies and watch events in ``take_outbox()``. The
only way state leaves is :meth:`step`, which hands every ``Ready`` to ``save`` before
``send`` sees a single message and before any client hears an answer.

Sessions are timed here, on the leader only, and never inside the replicated
machine: keep-alives renew a leader-local deadline. Whoever takes over restarts every
session's clock at its takeover, with the full ttl plus one election timeout of grace:
the old leader may have renewed a session until it stepped down, which can be after
the takeover, and no renewal it granted then reaches us.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .commands import (
    Acquire,
    CloseSession,
    ExpireSession,
    OpenAndAcquire,
    OpenSession,
    Request,
    decode_request,
    encode_request,
)
from .machine import KV, Compacted, Event, Machine, Result
from .messages import Message, Outbound
from .protocol import MAX_WAIT_MS, MAX_WATCH_BATCH, MAX_WATCH_PREFIXES, OPS
from .replica import Ready, Replica, Role
from .types import Config, Durable, NodeId, Persist, ProtocolError, Snapshot

if TYPE_CHECKING:
    from random import Random

Route = Hashable
Reply = dict[str, Any]

MAX_WRITE_WAITERS = 100_000
MAX_PARKED = 50_000
WRITE_WAITER_TTL_MS = 30_000


@dataclass(slots=True)
class _Parked:
    route: Route
    rid: object
    deadline_ms: int
    key: str          # watch prefix or lock name
    after: int = 0    # watch: last revision the client has; lock_wait: session id
    limit: int = MAX_WATCH_BATCH
    prefixes: tuple[str, ...] = ()   # watch: several prefixes at once (then key is "")


@dataclass(slots=True)
class Counters:
    bad_requests: int = 0
    writes: int = 0
    reads: int = 0
    applied_commands: int = 0
    snapshots: int = 0


def kv_wire(kv: KV) -> list[object]:
    return [kv.key, kv.value, kv.revision, kv.create_revision, kv.version]


def event_wire(e: Event) -> list[object]:
    return [e.type, e.key, e.value, e.revision]


class BadRequest(Exception):
    pass


def _field(req: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    v = req.get(name, default)
    if v is None and default is None and name in req:
        raise BadRequest(f"field {name!r} must not be nil")
    if v is None:
        raise BadRequest(f"missing field {name!r}")
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise BadRequest(f"field {name!r} must be {kind.__name__}")
    return v


class Service:
    def __init__(self, node_id: NodeId, addresses: dict[NodeId, str], durable: Durable,
                 rng: Random, now_ms: int, config: Config = Config(),
                 external_leadership: bool = False) -> None:
        self.id = node_id
        self.addresses = dict(addresses)
        self.cfg = config
        self.replica = Replica(node_id, sorted(addresses), durable, rng, now_ms, config,
                               external_leadership)
        self.machine = Machine()
        self.started_ms = now_ms
        self.now_ms = now_ms
        self.counters = Counters()
        self.last_snapshot_index = durable.snapshot.index
        self.last_leader_contact_ms: int | None = None
        self.replies: list[tuple[Route, Reply]] = []
        self.events: list[Event] = []
        self._writes: dict[tuple[str, int], list[tuple[Route, object, int]]] = {}
        # Requests this leader proposed, already decoded: applying them need not decode
        # the same bytes again. Emptied when leadership ends; bounded by MAX_WRITE_WAITERS.
        self._proposed: dict[bytes, Request] = {}
        self._reads: dict[int, tuple[Route, object, str, dict[str, Any]]] = {}
        self._read_seq = 0
        self._watches: list[_Parked] = []
        self._lock_waits: list[_Parked] = []
        # Sessions: the leader's deadlines.
        self._deadline_ms: dict[int, int] = {}
        self._expiring: dict[int, int] = {}
        # When this node applied each grant and each queued acquire (its own clock), for
        # `lock list`'s age and wait times. Leader-local, like session timing.
        self._granted_at: dict[tuple[str, int], int] = {}
        self._queued_at: dict[tuple[str, int], int] = {}
        self._was_serving = False
        # The runtime adds what only it knows (disk size, fsync latency, transport counters).
        self.extra_status: Callable[[], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ inputs

    def on_peer(self, msg: Message, now_ms: int) -> None:
        self.now_ms = now_ms
        self.replica.receive(msg, now_ms)
        if self.replica.leader is not None and msg.src == self.replica.leader:
            self.last_leader_contact_ms = now_ms

    def tick(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.replica.tick(now_ms)
        self._expire_parked(now_ms)
        if self._serving():
            self._expire_sessions(now_ms)
        for key in [k for k, ws in self._writes.items()
                    if ws and now_ms - ws[0][2] > WRITE_WAITER_TTL_MS]:
            del self._writes[key]
        if len(self._granted_at) + len(self._queued_at) > 2 * MAX_PARKED:
            self._prune_lock_times()

    def next_timer_ms(self) -> int:
        """When :meth:`tick` is next needed: the replica's timers and parked deadlines."""
        due = self.replica.next_timer_ms()
        for p in self._watches:
            due = min(due, p.deadline_ms)
        for p in self._lock_waits:
            due = min(due, p.deadline_ms)
        return due

    def on_client(self, route: Route, req: Any, now_ms: int) -> None:
        self.now_ms = now_ms
        rid = req.get("id") if isinstance(req, dict) else None
        try:
            if not isinstance(req, dict):
                raise BadRequest("request must be a map")
            op = req.get("op")
            if op not in OPS:
                raise BadRequest(f"unknown op {op!r}")
            getattr(self, f"_op_{op}")(route, rid, req)
        except BadRequest as e:
            self.counters.bad_requests += 1
            self._error(route, rid, "bad_request", str(e))

    # ------------------------------------------------------------------ the Ready loop

    def step(self, save: Callable[[Persist], None], send: Callable[[list[Outbound]], None]) -> None:
        """Persist, then send, then apply and answer — for every Ready the replica has."""
        while self.replica.has_ready():
            ready = self.replica.ready()
            save(ready.persist)
            send(ready.messages)
            self._apply(ready)
            self.replica.advance()
        self._after_step()

    def take_outbox(self) -> tuple[list[tuple[Route, Reply]], list[Event]]:
        out = (self.replies, self.events)
        self.replies, self.events = [], []
        return out

    # ------------------------------------------------------------------ ops

    def _not_leader(self, route: Route, rid: object) -> None:
        leader = self.replica.leader if self.replica.leader != self.id else None
        self.replies.append((route, {
            "id": rid, "ok": False, "error": "not_leader", "message": f"{self.id} is not the leader",
            "leader": leader, "leader_address": self.addresses.get(leader) if leader else None}))

    def _error(self, route: Route, rid: object, error: str, message: str, **extra: Any) -> None:
        self.replies.append((route, {"id": rid, "ok": False, "error": error, "message": message,
                                     **extra}))

    def _ok(self, route: Route, rid: object, **fields: Any) -> None:
        self.replies.append((route, {"id": rid, "ok": True, **fields}))

    def _leading(self) -> bool:
        return self.replica.role is Role.LEADER

    def _serving(self) -> bool:
        r = self.replica
        return r.role is Role.LEADER and r.commit_index >= r.recovered_through

    def _op_write(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        raw = _field(req, "req", bytes)
        try:
            request = decode_request(raw)
        except ProtocolError as e:
            raise BadRequest(f"undecodable write: {e}") from None
        if request.client_id == "":
            raise BadRequest("internal requests are the leader's alone")
        if not self._leading():
            self._not_leader(route, rid)
            return
        key = (request.client_id, request.seq)
        waiting = self._writes.get(key)
        if waiting is not None:
            waiting.append((route, rid, self.now_ms))   # a retry while the first is in flight
            return
        if len(self._writes) >= MAX_WRITE_WAITERS or not self.replica.propose(raw):
            self._error(route, rid, "busy", "the leader's proposal queue is full; retry shortly")
            return
        self.counters.writes += 1
        self._writes[key] = [(route, rid, self.now_ms)]
        self._proposed[raw] = request

    def _op_keepalive(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        sid = _field(req, "session_id", int)
        if not self._leading():
            self._not_leader(route, rid)
            return
        ttl_ms = self.machine.session_ttl_ms(sid)
        if ttl_ms is None:
            self._ok(route, rid, known=False)
            return
        self._deadline_ms[sid] = self.now_ms + ttl_ms
        self._ok(route, rid, known=True)

    def _read(self, route: Route, rid: object, op: str, req: dict[str, Any]) -> None:
        if req.get("stale") is True:
            self._answer_read(route, rid, op, req)
            return
        if not self._leading():
            self._not_leader(route, rid)
            return
        self._read_seq += 1
        token = self._read_seq
        if not self.replica.read(token):
            self._not_leader(route, rid)
            return
        self.counters.reads += 1
        self._reads[token] = (route, rid, op, req)

    def _op_get(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        _field(req, "key", str)
        self._read(route, rid, "get", req)

    def _op_list(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        _field(req, "prefix", str, "")
        self._read(route, rid, "list", req)

    def _op_history(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        _field(req, "key", str)
        self._read(route, rid, "history", req)

    def _op_locks(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        self._read(route, rid, "locks", req)

    def _answer_read(self, route: Route, rid: object, op: str, req: dict[str, Any]) -> None:
        m = self.machine
        if op == "get":
            kv = m.get(req["key"])
            self._ok(route, rid, kv=kv_wire(kv) if kv else None, revision=m.revision)
        elif op == "list":
            self._ok(route, rid, kvs=[kv_wire(kv) for kv in m.list(req.get("prefix", ""))],
                     revision=m.revision)
        elif op == "history":
            self._ok(route, rid, events=[event_wire(e) for e in m.history(req["key"])],
                     revision=m.revision)
        elif op == "locks":
            sessions = m.sessions()
            rows = []
            for lk in m.locks():
                dl = self._deadline_ms.get(lk.holder_session)
                ttl_left = max(0, dl - self.now_ms) if dl is not None else None
                ttl = sessions[lk.holder_session].ttl_ms if lk.holder_session in sessions else None
                granted = self._granted_at.get((lk.name, lk.token))
                waits = [None if (t := self._queued_at.get((lk.name, w))) is None
                         else self.now_ms - t for w in lk.waiters]
                rows.append([lk.name, lk.holder_session, lk.token, lk.granted_index,
                             list(lk.waiters), ttl_left, ttl,
                             None if granted is None else self.now_ms - granted, waits])
            self._ok(route, rid, locks=rows, revision=m.revision)

    def _op_watch(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        prefix = _field(req, "prefix", str, "")
        prefixes = req.get("prefixes", [])
        if not (isinstance(prefixes, list) and len(prefixes) <= MAX_WATCH_PREFIXES
                and all(type(x) is str for x in prefixes)):
            raise BadRequest(f"prefixes must be a list of at most {MAX_WATCH_PREFIXES} strings")
        after = _field(req, "after", int)
        wait_ms = min(max(_field(req, "wait_ms", int, 0), 0), MAX_WAIT_MS)
        limit = min(max(_field(req, "limit", int, MAX_WATCH_BATCH), 1), MAX_WATCH_BATCH)
        if after < 0:
            raise BadRequest("after must be >= 0")
        p = _Parked(route, rid, self.now_ms + wait_ms, prefix, after, limit, tuple(prefixes))
        if not self._try_watch(p):
            if wait_ms == 0:
                self._ok(route, rid, events=[], revision=self.machine.revision)
            elif len(self._watches) >= MAX_PARKED:
                self._error(route, rid, "busy", "too many parked watches on this node")
            else:
                self._watches.append(p)

    def _try_watch(self, p: _Parked) -> bool:
        try:
            evs = self.machine.events_since(p.prefixes or p.key, p.after, p.limit)
        except Compacted as e:
            self._error(p.route, p.rid, "compacted",
                        f"revision {p.after + 1} is compacted; oldest available is "
                        f"{e.oldest_available_revision}", oldest=e.oldest_available_revision)
            return True
        if not evs:
            return False
        self._ok(p.route, p.rid, events=[event_wire(e) for e in evs], revision=self.machine.revision)
        return True

    def _op_lock_wait(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        name = _field(req, "name", str)
        sid = _field(req, "session_id", int)
        wait_ms = min(max(_field(req, "wait_ms", int, 0), 0), MAX_WAIT_MS)
        if not self._leading():
            self._not_leader(route, rid)
            return
        p = _Parked(route, rid, self.now_ms + wait_ms, name, sid)
        if not self._try_lock_wait(p, final=wait_ms == 0):
            if len(self._lock_waits) >= MAX_PARKED:
                self._error(route, rid, "busy", "too many parked lock waits on this node")
            else:
                self._lock_waits.append(p)

    def _try_lock_wait(self, p: _Parked, final: bool) -> bool:
        owner = self.machine.lock_owner(p.key)
        if owner is not None and owner[0] == p.after:
            self._ok(p.route, p.rid, state="held", token=owner[1])
            return True
        if not self.machine.waiting(p.key, p.after):
            self._ok(p.route, p.rid, state="none", token=0)
            return True
        if final:
            self._ok(p.route, p.rid, state="waiting", token=0)
            return True
        return False

    def _op_status(self, route: Route, rid: object, req: dict[str, Any]) -> None:
        self._ok(route, rid, status=self.status())

    # ------------------------------------------------------------------ applying

    def _apply(self, ready: Ready) -> None:
        m = self.machine
        if ready.install is not None:
            self.machine = m = Machine.restore(ready.install.data)
            self.last_snapshot_index = ready.install.index
        rev_before = m.revision
        for slot, batch in ready.committed:
            for raw in batch:
                request = self._proposed.pop(raw, None)
                if request is None:
                    try:
                        request = decode_request(raw)
                    except ProtocolError:
                        continue  # every replica skips the same bytes: still deterministic
                result = m.apply(slot, request)
                self.counters.applied_commands += 1
                self._after_command(request, result)
        if m.revision != rev_before:
            try:
                self.events.extend(m.events_since("", rev_before, 1 << 30))
            except Compacted:
                pass  # more changed in one step than the window holds; pollers catch up
        if m.revision != rev_before or ready.install is not None:
            # A parked watch has no event after its revision; an installed snapshot may
            # bring some, and a timeout would otherwise answer "none up to here".
            self._watches = [p for p in self._watches if not self._try_watch(p)]
        grants = m.take_grants()
        for g in grants:
            self._granted_at.setdefault((g.name, g.token), self.now_ms)
            self._queued_at.pop((g.name, g.session_id), None)
        if grants and self._lock_waits:
            granted = {(g.name, g.session_id) for g in grants}
            self._lock_waits = [p for p in self._lock_waits
                                if (p.key, p.after) not in granted
                                or not self._try_lock_wait(p, final=True)]
        for token in ready.reads:
            pending = self._reads.pop(token, None)  # type: ignore[call-overload]
            if pending is not None:
                self._answer_read(*pending)
        for token in ready.aborted_reads:
            pending = self._reads.pop(token, None)  # type: ignore[call-overload]
            if pending is not None:
                self._error(pending[0], pending[1], "unavailable", "leadership lost; retry")
        for raw in ready.aborted_commands:
            request = self._proposed.pop(raw, None)
            try:
                if request is None:
                    request = decode_request(raw)
            except ProtocolError:
                continue
            for route, rid, _ in self._writes.pop((request.client_id, request.seq), []):
                self._error(route, rid, "unavailable", "leadership lost before the write was "
                            "ordered; it was not applied — retry")
        applied = self.replica.applied
        if applied - self.last_snapshot_index >= self.cfg.snapshot_every:
            self.replica.compact(Snapshot(applied, m.snapshot()))
            self.last_snapshot_index = applied
            self.counters.snapshots += 1

    def _after_command(self, request: Request, result: Result) -> None:
        cmd = request.cmd
        code = result.code
        if isinstance(cmd, (OpenSession, OpenAndAcquire)) and code in ("ok", "queued"):
            sid = result.data.get("session_id")
            if isinstance(sid, int):
                if self._leading():
                    self._deadline_ms[sid] = self.now_ms + cmd.ttl_ms
                if code == "queued" and isinstance(cmd, OpenAndAcquire):
                    self._queued_at.setdefault((cmd.name, sid), self.now_ms)
        elif isinstance(cmd, (CloseSession, ExpireSession)):
            if code == "ok" or isinstance(cmd, ExpireSession):
                self._forget_session(cmd.session_id)
        elif code == "queued" and isinstance(cmd, Acquire):
            self._queued_at.setdefault((cmd.name, cmd.session_id), self.now_ms)
        waiters = self._writes.pop((request.client_id, request.seq), None)
        if waiters and request.client_id:
            wire = result.to_wire()
            for route, rid, _ in waiters:
                self._ok(route, rid, result=wire)

    def _prune_lock_times(self) -> None:
        live = {(lk.name, lk.token) for lk in self.machine.locks()}
        waiting = {(lk.name, w) for lk in self.machine.locks() for w in lk.waiters}
        self._granted_at = {k: v for k, v in self._granted_at.items() if k in live}
        self._queued_at = {k: v for k, v in self._queued_at.items() if k in waiting}

    def _forget_session(self, sid: int) -> None:
        self._deadline_ms.pop(sid, None)
        self._expiring.pop(sid, None)

    # ------------------------------------------------------------------ leadership changes

    def _after_step(self) -> None:
        serving = self._serving()
        if serving and not self._was_serving:
            # Took over: every live session gets its full ttl from now, plus one election
            # timeout of grace. Not "from its last renewal that reached us": renewals ride
            # heartbeats, which never reach a follower cut off from the leader, and the
            # old leader answers keepalives until it notices it lost its quorum, up to an
            # election timeout after our takeover. Two clients then held one lock (found
            # by the whole-node simulator).
            grace = self.cfg.election_timeout_ms
            self._deadline_ms = {sid: self.now_ms + info.ttl_ms + grace
                                 for sid, info in self.machine.sessions().items()}
            self._expiring.clear()
        elif not self._leading() and (self._was_serving or self._writes or self._proposed
                                         or self._lock_waits):
            self._deadline_ms.clear()
            self._expiring.clear()
            for waiters in self._writes.values():
                for route, rid, _ in waiters:
                    self._error(route, rid, "unavailable",
                                "leadership lost; the write may or may not be applied — retry "
                                "with the same sequence number")
            self._writes.clear()
            self._proposed.clear()
            for p in self._lock_waits:
                self._not_leader(p.route, p.rid)
            self._lock_waits.clear()
        self._was_serving = serving

    def _expire_sessions(self, now_ms: int) -> None:
        for sid, deadline in sorted(self._deadline_ms.items()):
            if now_ms > deadline and now_ms - self._expiring.get(sid, -10**12) > 1000:
                self._expiring[sid] = now_ms
                self.replica.propose(encode_request(Request("", 0, 0, ExpireSession(sid))))

    def _expire_parked(self, now_ms: int) -> None:
        if self._watches:
            keep = []
            for p in self._watches:
                if now_ms >= p.deadline_ms:
                    self._ok(p.route, p.rid, events=[], revision=self.machine.revision)
                else:
                    keep.append(p)
            self._watches = keep
        if self._lock_waits:
            keep = []
            for p in self._lock_waits:
                if now_ms >= p.deadline_ms:
                    self._try_lock_wait(p, final=True)
                else:
                    keep.append(p)
            self._lock_waits = keep

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        r, m = self.replica, self.machine
        contact = None
        if r.role is Role.LEADER:
            contact = 0
        elif self.last_leader_contact_ms is not None:
            contact = self.now_ms - self.last_leader_contact_ms
        extra = self.extra_status() if self.extra_status is not None else {}
        bad_frames = self.counters.bad_requests + int(extra.pop("bad_frames", 0))
        return {
            **extra,
            "id": self.id, "address": self.addresses.get(self.id), "reachable": True,
            "role": r.role.value, "leader": r.leader, "voting": not r.rebuilding, "ballot": max(r.promised, r.leader_ballot).as_list(),
            "commit_index": r.commit_index, "applied_index": r.applied,
            "uptime_s": round((self.now_ms - self.started_ms) / 1000, 1),
            "sessions": m.session_count, "locks_held": m.locks_held, "keys": m.key_count,
            "revision": m.revision, "last_leader_contact_ms": contact,
            "bad_frames": bad_frames, "snapshot_index": r.acceptor.snapshot.index,
            "pending_writes": len(self._writes), "parked_watches": len(self._watches),
        }
