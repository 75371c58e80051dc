"""The whole node as a pure object: replica + coordination machine + client protocol.

The runtime feeds it peer messages, client requests (with an opaque reply route) and
the time; it answers with client replies and watch events in ``take_outbox()``. The
only way state leaves is :meth:`step`, which hands every ``Ready`` to ``save`` before
``send`` sees a single message and before any client hears an answer.

The parts, each in its own module: the op table (``service_ops``), writes in flight
(``service_writes``), the read index (``service_reads``), leader-local session and lock
clocks (``service_clocks``), parked long polls (``service_parking``), page cursors
(``service_pages``) and quotas (``quotas``). This module wires them to the replica and
the machine: applying what the log chose, and what changes when this node starts or
stops leading.

A node never exits because of what a client sent: an exception while handling one
request or computing one reply is answered ``internal`` to that request, counted
(``internal_errors`` in status) and kept for the runtime to log with its traceback
(``take_incidents``). What is not caught here is what must stop the node: a
``SafetyViolation``, a failed save, and failures inside the replica or the machine's
``apply`` (state every replica must agree on; continuing after one could diverge).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .acl import ADMIN_RIGHTS, Caller, Rights, may_subscribe, request_refusal
from .commands import (
    Acquire,
    AuthAdd,
    AuthRemove,
    CloseSession,
    Command,
    EndLockDelay,
    ExpireSession,
    OpenAndAcquire,
    OpenSession,
    Request,
    decode_request,
    encode_request,
)
from .export import Exports
from .identity import ADMIN, INSECURE, Identities
from .leadership import Leadership
from .machine import Machine, RevisionCompacted
from .membership import Membership
from .messages import Message, Outbound
from .protocol import (
    Change,
    ErrorCode,
    ErrorReply,
    NodeStatus,
    Result,
    ResultCode,
    SchemaError,
    WriteReply,
    decode_client_request,
)
from .quotas import Quotas
from .replica import Ready, Replica, Role
from .service_clocks import LockDelayClocks, LockTimes, SessionClocks
from .service_ops import HANDLERS
from .service_outbox import Incident, Outbox, Route, WireReply
from .service_pages import Cursors
from .service_parking import Parking
from .service_reads import ReadIndex
from .service_writes import PendingWrites
from .transfer import SinkFactory, StateReader, memory_sink
from .types import (
    Config,
    Durable,
    NodeId,
    Persist,
    ProtocolError,
    SafetyViolation,
    Slot,
    Snapshot,
    StoredPayload,
)

if TYPE_CHECKING:
    from random import Random

_UNKNOWN: Any = object()

__all__ = ["Service", "ServiceCounters"]

# Principals whose rights are cached (cleared whenever the identity table changes).
_MAX_CALLERS = 20_000


@dataclass(slots=True)
class ServiceCounters:
    bad_requests: int = 0
    writes: int = 0
    reads: int = 0
    applied_commands: int = 0
    snapshots: int = 0
    rejected_peer: int = 0    # peer messages whose src is not the connection's principal
    denied: int = 0           # client requests outside their principal's rights


class Snapshotter(Protocol):
    """Writes the state machine out for compaction: a port, so that a large state can be
    written off the loop (the runtime forks and writes a file from the child's copy).

    ``start`` returns the snapshot's data at once, or None if it is being written; the
    runtime then reports ``Service.snapshot_written`` or ``snapshot_failed``."""

    def start(self, index: Slot, machine: Machine,
              config: Membership | None) -> bytes | StoredPayload | None: ...


class InlineSnapshots:
    """The default: the machine's bytes, written now (tests, the simulator)."""

    def start(self, index: Slot, machine: Machine, config: Membership | None) -> bytes:
        return machine.snapshot()


# After a failed snapshot write the next attempt waits this long (a full disk is not
# retried on every applied slot).
SNAPSHOT_RETRY_MS = 5_000


class Service:
    def __init__(self, node_id: NodeId, addresses: dict[NodeId, str], durable: Durable,
                 rng: Random, now_ms: int, config: Config = Config(),
                 leadership: Leadership | None = None,
                 identities: Identities = INSECURE,
                 bootstrap: Membership | None = None,
                 quotas: Quotas = Quotas(),
                 snapshotter: Snapshotter | None = None,
                 sinks: SinkFactory = memory_sink) -> None:
        self.id = node_id
        self.addresses = dict(addresses)
        # Keys and principals (core/identity.py); they follow the configuration the log
        # chooses (a member added brings its key, a removed one takes its key away).
        self.identities = identities
        self.cfg = config
        self.replica = Replica(node_id, bootstrap or sorted(addresses), durable, rng, now_ms,
                               config, leadership, sinks)
        # The latest chosen configuration, once it changed and until the runtime took it.
        self.new_config: Membership | None = None
        # A configuration applied while this node was behind, and the commit index it
        # must reach before the configuration is followed (see ``_release_config``).
        self._held_config: Membership | None = None
        self._held_until: Slot = 0
        self.removed = self.replica.removed    # why this node left the cluster ("": it did not)
        self._follow_config(self.replica.config)
        self.machine = Machine()
        self.started_ms = now_ms
        self.now_ms = now_ms
        self.ticked_ms = now_ms
        self.counters = ServiceCounters()
        self.last_snapshot_index = durable.snapshot.index
        self.snapshotter: Snapshotter = snapshotter or InlineSnapshots()
        self.snapshotting: Slot | None = None    # a snapshot the runtime is writing
        self._snapshot_retry_ms = 0
        self.last_leader_contact_ms: int | None = None
        self.out = Outbox()
        self.writes = PendingWrites()
        self.reads = ReadIndex()
        self.parking = Parking(self.out)
        self.sessions = SessionClocks()
        self.lock_delays = LockDelayClocks()
        self.lock_times = LockTimes()
        # principal -> Caller (None: not known): one dict lookup per request.
        self._callers: dict[str, Caller | None] = {}
        # Removed principals that could subscribe to the PUB socket (the runtime ends
        # their subscriptions: ``take_removed_subscribers``).
        self._removed_subscribers: list[str] = []
        self._admin_keys: frozenset[str] | None = None    # admin_keys(), until the table changes
        self.cursors = Cursors()
        self.exports = Exports()      # backups being served (core/export.py)
        self.quota = quotas
        # This node's database size in use, as the runtime last measured it (quotas).
        self.db_bytes = 0
        self._was_serving = False
        # The runtime adds what only it knows (disk size, fsync latency, transport counters).
        self.extra_status: Callable[[], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ inputs

    def principal_for_key(self, public_z85: str) -> str | None:
        """The principal a CURVE public key authenticates as (the transport's ZAP handler
        asks), or None: members' keys, the bootstrap admin key (unless it was removed), then
        the replicated identity table."""
        p = self.identities.principal_for_key(public_z85)
        if p is None:
            return self.machine.principal_for_key(public_z85) if self.identities.secure else None
        if p == ADMIN and self.machine.rights(ADMIN) is None:
            return None     # `auth remove admin`: the bootstrap key is refused from then on
        return p

    def rights(self, principal: str) -> Rights | None:
        """What ``principal`` may do now (None: it is not, or no longer, known)."""
        if not self.identities.secure:
            return ADMIN_RIGHTS   # no keys, no identities: every client is "admin"
        return self.machine.rights(principal)

    def may_subscribe(self, principal: str) -> bool:
        """May ``principal`` receive the PUB stream (every value written)? Members and
        admins only (the transport's ZAP handler asks for the PUB's domain)."""
        return may_subscribe(self.rights(principal))

    def take_removed_subscribers(self) -> list[str]:
        """Principals removed since the last call that could subscribe to the PUB socket:
        the runtime must end their open subscriptions (ZAP refuses their new ones)."""
        out, self._removed_subscribers = self._removed_subscribers, []
        return out

    def auth_refusal(self, cmd: Command) -> str | None:
        """What the leader refuses to propose to the identity table, knowing what only
        this node's configuration knows (the log cannot: members' and the bootstrap keys)."""
        if not self.identities.secure:
            return ("this cluster is insecure (no keys): identities and rights need a secure "
                    "cluster (coordctl cluster init without --insecure)")
        if isinstance(cmd, AuthAdd):
            if self.identities.principal_for_key(cmd.public_key) is not None:
                return "that public key is a member's or the bootstrap admin's"
        return None

    def admin_keys(self) -> frozenset[str]:
        """The public keys of every admin now (the bootstrap one unless removed): whoever
        proves one of them may see values outside the client protocol (the dashboard)."""
        if self._admin_keys is None:
            self._admin_keys = frozenset(
                k for p in self.machine.principals() if p.rights.admin
                and (k := self.public_key_of(p.name, p.public_key)) is not None)
        return self._admin_keys

    def public_key_of(self, name: str, public_key: str | None) -> str | None:
        """A principal's public key for ``auth list``: the table's, or the bootstrap admin's
        from this node's configuration."""
        return self.identities.admin_key if public_key is None and name == ADMIN else public_key

    def on_peer(self, msg: Message, now_ms: int, principal: str | None = None) -> None:
        """A peer message that arrived over a connection authenticated as ``principal``
        (None: insecure cluster). A message whose ``src`` is not that principal is dropped
        and counted: only node X's own key may speak for X."""
        self.now_ms = now_ms
        if not self.identities.peer_may_send(principal, msg.src):
            self.counters.rejected_peer += 1
            return
        self.replica.receive(msg, now_ms)
        if self.replica.leader is not None and msg.src == self.replica.leader:
            self.last_leader_contact_ms = now_ms

    def tick(self, now_ms: int) -> None:
        self.now_ms = self.ticked_ms = now_ms
        self.replica.tick(now_ms)
        self.parking.expire(self.machine, now_ms)
        self.exports.expire(now_ms)
        if self.serving():
            for sid in self.sessions.due(now_ms):
                self.replica.propose(encode_request(Request("", 0, 0, ExpireSession(sid))))
            for name in self.lock_delays.due(now_ms):
                self.replica.propose(encode_request(Request("", 0, 0, EndLockDelay(name))))
        self.writes.expire(now_ms)
        self.cursors.expire(now_ms)
        if self.lock_times.oversized():
            self.lock_times.prune(self.machine.locks())

    def next_timer_ms(self) -> int:
        """When :meth:`tick` is next needed: the replica's timers, parked deadlines and,
        while serving (it times sessions and lock-delays), a heartbeat after the last tick.
        Not the replica's timer alone: each read's heartbeat counts as its beat, so under
        reads coming faster than heartbeats it never came due, and sessions never expired."""
        due = self.replica.next_timer_ms()
        if self.serving():
            due = min(due, self.ticked_ms + self.cfg.heartbeat_ms)
        return self.parking.next_deadline_ms(due)

    def observe_db_bytes(self, n: int) -> None:
        """The runtime measured this node's database: ``n`` bytes in use (for quotas)."""
        self.db_bytes = n

    def on_client(self, route: Route, req: Any, now_ms: int, principal: str = ADMIN) -> None:
        """A client request from ``principal`` (``"admin"`` in an insecure cluster), refused
        with ``permission_denied`` if it is outside the principal's rights (``core.acl``)."""
        self.now_ms = now_ms
        rid = req.get("id") if isinstance(req, dict) else None
        try:
            request = decode_client_request(req)
        except SchemaError as e:
            self.counters.bad_requests += 1
            self.out.error(route, rid, ErrorCode.BAD_REQUEST, str(e))
            return
        except SafetyViolation:
            raise
        except Exception as e:   # a bug in a record's from_wire
            self.out.internal(route, rid, "decoding a request", e)
            return
        caller = self._callers.get(principal, _UNKNOWN)
        if caller is _UNKNOWN:
            caller = self._caller(principal)
        refused = None
        if caller is None:
            refused = request_refusal(None, request)
        elif not caller.rights.admin:      # an admin costs the lookup above and this test
            refused = request_refusal(caller.rights, request)
        if refused is not None or caller is None:
            self.counters.denied += 1
            self.out.error(route, rid, ErrorCode.PERMISSION_DENIED, f"{principal}: {refused}")
            return
        try:
            HANDLERS[type(request)](self, route, rid, request, caller)
        except SafetyViolation:
            raise
        except Exception as e:
            self.out.internal(route, rid, f"handling {request.op.value!r}", e)

    def _caller(self, principal: str) -> Caller | None:
        rights = self.rights(principal)
        caller = None if rights is None else Caller(principal, rights)
        if len(self._callers) >= _MAX_CALLERS:
            self._callers.clear()
        self._callers[principal] = caller
        return caller

    def take_incidents(self) -> list[Incident]:
        """Requests answered ``internal`` since the last call, with their exceptions."""
        return self.out.take_incidents()

    # ------------------------------------------------------------------ the Ready loop

    def step(self, save: Callable[[Persist], None], send: Callable[[list[Outbound]], None]) -> None:
        """Persist, then send, then apply and answer — for every Ready the replica has."""
        while self.replica.has_ready():
            ready = self.replica.ready()
            save(ready.persist)
            send(ready.messages)
            self._apply(ready)
            self.replica.advance()
        if self._held_config is not None:
            self._release_config()
        self._after_step()

    def take_outbox(self) -> tuple[list[tuple[Route, WireReply]], list[Change]]:
        return self.out.take()

    # ------------------------------------------------------------------ used by the parts

    def leading(self) -> bool:
        return self.replica.role is Role.LEADER

    def serving(self) -> bool:
        """Leading, and everything the previous leaders committed is applied here."""
        return self.replica.serving

    def not_leader(self, route: Route, rid: object) -> None:
        leader = self.replica.leader if self.replica.leader != self.id else None
        self.out.reply(route, rid, ErrorReply(
            ErrorCode.NOT_LEADER, f"{self.id} is not the leader", leader=leader,
            leader_address=self.addresses.get(leader) if leader else None,
            leader_public_key=self.identities.public_key(leader)))

    # ------------------------------------------------------------------ applying

    def _follow_config(self, c: Membership) -> None:
        """Addresses and member keys from the chosen configuration (the log is the truth;
        cluster.toml only bootstraps): a member's own entry wins over the file's."""
        if not c.members:
            return
        for mem in c.members:
            if mem.address:
                self.addresses[mem.id] = mem.address
        if self.identities.secure:
            keys = {mem.id: mem.public_key or self.identities.members.get(mem.id, "")
                    for mem in c.members}
            self.identities = Identities(secure=True, members={k: v for k, v in keys.items() if v},
                                         admin_key=self.identities.admin_key)

    def take_file_keys(self, keys: dict[NodeId, str]) -> str | None:
        """New member keys the cluster file names (a replaced node's): taken for the ids
        this node authenticates now; an id it does not (removed, about to be added back)
        gets its key from the configuration that adds it. None if taken, else why not
        (two members would share a key), and nothing changed."""
        if not self.identities.secure:
            return None
        members = dict(self.identities.members)
        members.update({nid: k for nid, k in keys.items() if nid in members})
        try:
            self.identities = Identities(secure=True, members=members,
                                         admin_key=self.identities.admin_key)
        except ValueError as e:
            return str(e)
        return None

    def take_config(self) -> Membership | None:
        """The configuration chosen since the last call, if it changed (runtime: peers)."""
        c, self.new_config = self.new_config, None
        return c

    def _release_config(self) -> None:
        """Follow the held configuration (keys, addresses, peers) once the commit index
        has reached what peers said was committed when it was applied.

        A node replaying history (a learner copying the log, a member back from a long
        outage) applies every configuration the cluster ever had, in order. The older
        ones name keys and addresses that later changes replaced: a member replaced since
        has a new key, and connecting with (or accepting) its old one would cut this node
        off from the very peers it copies from. So a configuration is followed only once
        nothing committed after it is still unknown here; until then the node keeps the
        peers and keys it had (the cluster file's for a new node, the configuration it
        last followed otherwise). A node in step with the leader releases within one
        round trip: the bound is the commit index known when the configuration was
        applied, not one that keeps moving."""
        held = self._held_config
        if held is not None and self.replica.acceptor.commit_index >= self._held_until:
            self._held_config = None
            self._follow_config(held)
            self.new_config = held

    def _apply(self, ready: Ready) -> None:
        if ready.config is not None:
            self._held_config = ready.config
            self._held_until = max(self._held_until, self.replica.known_commit)
        if ready.removed is not None:
            self.removed = ready.removed
        m = self.machine
        if ready.install is not None:
            admins = {p.name for p in m.principals() if p.rights.admin}
            self.machine = m = _restore(ready.install)
            self.last_snapshot_index = ready.install.index
            self._identities_changed(admins)
        rev_before = m.revision
        for slot, batch in ready.committed:
            for raw in batch:
                request = self.writes.proposed(raw)
                if request is None:
                    try:
                        request = decode_request(raw)
                    except ProtocolError:
                        continue  # every replica skips the same bytes: still deterministic
                cmd = request.cmd
                if type(cmd) is AuthRemove:
                    admins = {p.name for p in m.principals() if p.rights.admin}
                    result = m.apply(slot, request)
                    if result.code == ResultCode.OK:
                        self._identities_changed(admins)
                else:
                    result = m.apply(slot, request)
                    if type(cmd) is AuthAdd and result.code == ResultCode.OK:
                        self._callers.clear()
                        self._admin_keys = None
                self.counters.applied_commands += 1
                self._after_command(request, result)
        changed: list[Change] | None = []
        if m.revision != rev_before:
            try:
                changed = m.events_since("", rev_before, 1 << 30)
                self.out.events.extend(changed)
            except RevisionCompacted:
                changed = None  # more changed in one step than the window holds; pollers catch up
        if ready.install is not None:
            # An installed snapshot may bring events after a parked watch's revision
            # (rev_before is read after the install); left parked the watch would time out
            # answering "no events up to here" past them. Which keys changed is unknown.
            changed = None
        if changed is None or changed:
            self.parking.wake_watches(m, changed)
        for name, delay_ms in m.take_delays():
            self.lock_delays.started(name, self.now_ms, delay_ms, self.leading())
        grants = m.take_grants()
        if grants:
            self.lock_times.granted(grants, self.now_ms)
            self.parking.wake_lock_waits(m, grants)
        for token in ready.reads:
            read = self.reads.take(token)
            if read is not None:
                try:
                    answer = read.answer()
                except SafetyViolation:
                    raise
                except Exception as e:   # a bug in one answer: that read alone fails
                    self.out.internal(read.route, read.rid, "answering a read", e)
                    continue
                self.out.reply(read.route, read.rid, answer)
        for token in ready.aborted_reads:
            read = self.reads.take(token)
            if read is not None:
                self.out.error(read.route, read.rid, ErrorCode.UNAVAILABLE, "leadership lost; retry")
        for raw in ready.aborted_commands:
            request = self.writes.proposed(raw)
            try:
                if request is None:
                    request = decode_request(raw)
            except ProtocolError:
                continue
            for w in self.writes.finish(request):
                self.out.error(w.route, w.rid, ErrorCode.UNAVAILABLE, "leadership lost before the "
                               "write was ordered; it was not applied — retry")
        applied = self.replica.applied
        if (self.snapshotting is None and self.now_ms >= self._snapshot_retry_ms
                and applied - self.last_snapshot_index >= self.cfg.snapshot_every):
            state = self.snapshotter.start(applied, m, self.replica.config_after(applied))
            if state is None:
                self.snapshotting = applied
            else:
                self._compact(applied, state)

    def snapshot_written(self, index: Slot, state: bytes | StoredPayload) -> None:
        """The snapshot of ``index`` the runtime was writing is durable: compact to it
        (unless a snapshot installed from the leader overtook it meanwhile)."""
        self.snapshotting = None
        self._compact(index, state)

    def snapshot_failed(self, index: Slot) -> None:
        """Writing the snapshot of ``index`` failed (the runtime logged why): the log stays
        as it is, and the next attempt waits ``SNAPSHOT_RETRY_MS``."""
        self.snapshotting = None
        self._snapshot_retry_ms = self.now_ms + SNAPSHOT_RETRY_MS

    def _compact(self, index: Slot, state: bytes | StoredPayload) -> None:
        if index <= self.replica.acceptor.snapshot.index:
            return
        self.replica.compact(Snapshot(index, state))
        self.last_snapshot_index = index
        self.counters.snapshots += 1

    def stored_snapshots(self) -> list[StoredPayload]:
        """Every snapshot in use here that lives outside memory: the replica's and those
        pinned by backups being served. The runtime may reclaim any other."""
        out = self.replica.stored_snapshots()
        out.extend(x for x in self.exports.stored() if all(x is not y for y in out))
        return out

    def _identities_changed(self, admins_before: set[str]) -> None:
        """The identity table changed (a removal, or a snapshot installed): forget cached
        rights, end the parked requests of principals no longer known, and have the runtime
        end the PUB subscriptions of admins no longer known (members never change here)."""
        self._callers.clear()
        self._admin_keys = None
        for principal in sorted(self.parking.principals()):
            if self.rights(principal) is None:
                self.parking.revoke(principal)
        self._removed_subscribers.extend(sorted(
            p for p in admins_before if not may_subscribe(self.rights(p))))

    def _after_command(self, request: Request, result: Result) -> None:
        """Node-local bookkeeping of one applied command, then answer its writers."""
        cmd, code, now = request.cmd, result.code, self.now_ms
        if isinstance(cmd, (OpenSession, OpenAndAcquire)) and code in (ResultCode.OK, ResultCode.QUEUED):
            sid = result.data.get("session_id")
            if isinstance(sid, int):
                self.sessions.opened(sid, now, cmd.ttl_ms, self.leading())
                if code == ResultCode.QUEUED and isinstance(cmd, OpenAndAcquire):
                    self.lock_times.queued(cmd.name, sid, now)
        elif isinstance(cmd, (CloseSession, ExpireSession)):
            if code == ResultCode.OK or isinstance(cmd, ExpireSession):
                self.sessions.forget(cmd.session_id)
        elif code == ResultCode.QUEUED and isinstance(cmd, Acquire):
            self.lock_times.queued(cmd.name, cmd.session_id, now)
        elif isinstance(cmd, EndLockDelay):
            self.lock_delays.forget(cmd.name)
        if request.client_id:
            waiters = self.writes.finish(request)
            if waiters:
                reply = WriteReply(result)
                for w in waiters:
                    self.out.reply(w.route, w.rid, reply)

    # ------------------------------------------------------------------ leadership changes

    def _after_step(self) -> None:
        serving = self.serving()
        if serving and not self._was_serving:
            self.sessions.take_over(self.machine.sessions(), self.now_ms,
                                    self.cfg.election_timeout_ms)
            self.lock_delays.take_over(self.machine.delayed_locks(), self.now_ms)
        elif not self.leading() and (self._was_serving or not self.writes.idle()
                                     or self.parking.lock_waits):
            self.sessions.stop_leading()
            self.lock_delays.stop_leading()
            for w in self.writes.drop_all():
                self.out.error(w.route, w.rid, ErrorCode.UNAVAILABLE,
                               "leadership lost; the write may or may not be applied — retry "
                               "with the same sequence number")
            for p in self.parking.take_lock_waits():
                self.not_leader(p.route, p.rid)
        self._was_serving = serving

    # ------------------------------------------------------------------ status

    def node_status(self) -> NodeStatus:
        r, m = self.replica.status(), self.machine
        contact = None
        if r.role is Role.LEADER:
            contact = 0
        elif self.last_leader_contact_ms is not None:
            contact = self.now_ms - self.last_leader_contact_ms
        extra = self.extra_status() if self.extra_status is not None else {}
        # The latest chosen configuration as this node knows it: clients find learners and
        # members added after their cluster file was written from here.
        extra["config"] = [[m.id, m.address, m.voting, m.public_key] for m in r.config.members]
        extra["incarnation"] = r.incarnation
        if r.removed:
            extra["removed"] = r.removed
        bad_frames = self.counters.bad_requests + int(extra.pop("bad_frames", 0))
        ballot = max(r.promised, r.leader_ballot)
        return NodeStatus(
            id=self.id, address=self.addresses.get(self.id), role=r.role.value, leader=r.leader,
            voting=r.voting, ballot=(ballot.round, ballot.node),
            commit_index=r.commit_index, applied_index=r.applied,
            uptime_s=round((self.now_ms - self.started_ms) / 1000, 1),
            sessions=m.session_count, locks_held=m.locks_held, keys=m.key_count,
            revision=m.revision, last_leader_contact_ms=contact, bad_frames=bad_frames,
            snapshot_index=r.snapshot_index, pending_writes=len(self.writes),
            parked_watches=len(self.parking.watches), rejected_replies=r.rejected_replies,
            rounds_exhausted=r.rounds_exhausted, internal_errors=self.out.internal_errors,
            alarms=self.quota.alarms(m, self.db_bytes), cursors=len(self.cursors),
            parked_lock_waits=len(self.parking.lock_waits),
            security="curve" if self.identities.secure else "insecure",
            public_key=self.identities.public_key(self.id),
            rejected_peer=self.counters.rejected_peer, denied=self.counters.denied, extra=extra)

    def status(self) -> dict[str, Any]:
        """This node's entry of ``coordctl status --json``, plus extras."""
        return self.node_status().to_wire()


def _restore(snap: Snapshot) -> Machine:
    """The state machine a snapshot holds (a stored one is read a piece at a time)."""
    if isinstance(snap.data, bytes):
        return Machine.restore(snap.data)
    return Machine.restore_from(StateReader(snap))
