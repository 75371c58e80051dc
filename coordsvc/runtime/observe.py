"""What the node loop tells the outside: counters, histograms, events worth a log line,
and a frozen picture of itself that the HTTP thread reads.

The loop owns everything here except :class:`Shared`. Per-request and per-save work is a
few list and dict operations (no locks, no prometheus-client calls on the hot path); every
``PUBLISH_MS`` the loop freezes its numbers into a :class:`Published` value and swaps it
into :class:`Shared`, the only object both threads touch. The HTTP thread never sees a live
core object, so nothing it does can change or stall the node's state.
"""
from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.protocol import Change, Op
from ..core.replica import Role
from ..core.types import LogEntry
from .logs import event

if TYPE_CHECKING:
    from ..core.service import Service

__all__ = ["FSYNC_BUCKETS_S", "REQUEST_BUCKETS_S", "Histogram", "HistogramValue", "Observer",
           "Published", "Shared", "View", "readiness"]

log = logging.getLogger("coordsvc.node")

PUBLISH_MS = 500
# A node whose loop has not published for this long is not ready (and, at ten times it,
# not healthy): it is stuck in a disk write or a long compaction.
STALL_READY_S = 5.0
STALL_HEALTHY_S = 60.0
# Ready: the applied index trails the highest commit index we heard of by at most this.
READY_MAX_LAG = 1000
SLOW_FSYNC_S = 0.1
# Requests waiting for their reply, tracked for the latency histogram; beyond this many
# (clients that vanished mid-request) new ones are not tracked.
MAX_TRACKED_REQUESTS = 100_000
TAIL_EVENTS = 200
VIEW_MAX_KEYS = 500
VIEW_MAX_LOCKS = 200
# Above this many keys the dashboard shows the count only: listing them sorts them all,
# in the loop.
VIEW_LIST_KEYS_UP_TO = 20_000
VALUE_PREVIEW_BYTES = 256

FSYNC_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
OPS = tuple(op.value for op in Op)
OTHER_OP = "other"   # anything that is not a known op: the label set stays bounded


@dataclass(frozen=True, slots=True)
class HistogramValue:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]    # per bucket (not cumulative); the last one is +Inf
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)


class Histogram:
    """Bucket counts kept by the loop: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.total += v

    def frozen(self) -> HistogramValue:
        return HistogramValue(self.bounds, tuple(self.counts), self.total)


@dataclass(frozen=True, slots=True)
class View:
    """Locks, keys and the latest changes as this replica has applied them (dashboard)."""

    applied_index: int
    revision: int
    locks: tuple[dict[str, Any], ...]
    lock_count: int
    keys: tuple[dict[str, Any], ...]    # value previews included; the HTTP side redacts
    key_count: int
    keys_listed: bool                   # False: too many keys to list from the loop
    events: tuple[Change, ...]
    built_mono: float


@dataclass(frozen=True, slots=True)
class Published:
    """The node as of ``at_mono`` (time.monotonic): what the HTTP thread may read."""

    at_mono: float
    node: str
    status: dict[str, Any]              # the node's own ``status`` map
    members: tuple[str, ...]
    known_commit: int
    election_timeout_ms: int
    serving: bool
    counters: dict[str, int]
    fsync: HistogramValue
    batch: HistogramValue
    requests: dict[str, HistogramValue]
    view: View | None = None
    admin_keys: frozenset[str] = frozenset()   # public keys that may see values (the table's)


class Shared:
    """The one hand-off between the loop (writer) and the HTTP thread (reader)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.latest: Published | None = None
        # The HTTP thread asks for a dashboard view by moving this into the future.
        self.view_wanted_until = 0.0

    def publish(self, p: Published) -> None:
        with self._cond:
            self.latest = p
            self._cond.notify_all()

    def want_view(self, fresh_s: float, wait_s: float) -> Published | None:
        """The latest picture, after waiting up to ``wait_s`` for one whose view is at
        most ``fresh_s`` old (the loop builds views only while someone asks)."""
        now = time.monotonic()
        self.view_wanted_until = now + 30.0
        deadline = now + wait_s
        with self._cond:
            while True:
                p = self.latest
                if p is not None and p.view is not None and time.monotonic() - p.view.built_mono <= fresh_s:
                    return p
                left = deadline - time.monotonic()
                if left <= 0:
                    return p
                self._cond.wait(left)


def readiness(p: Published | None, now_mono: float) -> tuple[bool, str]:
    """(ready, reason): serving a leader that holds a quorum, with a small lag."""
    if p is None:
        return False, "starting: the node has not published its state yet"
    age = now_mono - p.at_mono
    if age > STALL_READY_S:
        return False, f"the node loop has not turned for {age:.1f} s"
    st = p.status
    if not st.get("voting", True):
        if _learner(p.node, st.get("config")):
            return False, "learner: copying the state; ready once the leader promotes it to voter"
        return False, "rebuilding: a replacement node that has not earned its vote yet"
    role = st.get("role")
    if role == "leader":
        if not p.serving:
            return False, "elected leader, still recovering what earlier leaders committed"
        return True, "leader with a quorum (a leader that loses its quorum steps down)"
    leader = st.get("leader")
    if leader is None:
        return False, f"{role}: no leader known"
    contact = st.get("last_leader_contact_ms")
    if contact is None or contact > p.election_timeout_ms:
        return False, (f"leader {leader} not heard within the election timeout "
                       f"({p.election_timeout_ms} ms)")
    lag = max(0, p.known_commit - int(st.get("applied_index") or 0))
    if lag > READY_MAX_LAG:
        return False, f"following {leader} but {lag} entries behind (more than {READY_MAX_LAG})"
    return True, f"following leader {leader}, {lag} entries behind"


@dataclass(slots=True)
class _Seen:
    """What the last turn saw, to log changes once."""

    role: Role = Role.FOLLOWER
    leader: str | None = None
    snapshots: int = 0
    snapshot_index: int = 0
    rejected_keys: int = 0
    rejected_peer: int = 0
    handshake_failures: int = 0
    bad_frames: int = 0
    members: tuple[str, ...] = ()
    alarms: tuple[str, ...] = ()


@dataclass(slots=True)
class _Counts:
    leader_changes: int = 0
    elections: int = 0
    step_downs: int = 0
    proposals: int = 0
    proposed_commands: int = 0
    accepted_entries: int = 0
    slow_fsyncs: int = 0
    untracked_requests: int = 0
    loop_turns: int = 0


class Observer:
    """The loop's instruments. Every method runs in the loop thread."""

    def __init__(self, node_id: str, shared: Shared,
                 extra: Callable[[], dict[str, int]] = dict) -> None:
        self.id = node_id
        self.shared = shared
        self.extra = extra     # the runtime's counters (transport), read when publishing
        self.fsync = Histogram(FSYNC_BUCKETS_S)
        self.batch = Histogram(BATCH_BUCKETS)
        self.requests = {op: Histogram(REQUEST_BUCKETS_S) for op in (*OPS, OTHER_OP)}
        self._known_ops = frozenset(OPS)
        self.pending: dict[tuple[Any, Any], tuple[str, float]] = {}
        self.counts = _Counts()
        self.tail: deque[Change] = deque(maxlen=TAIL_EVENTS)
        self.seen = _Seen()
        self._contact_before: int | None = None
        self._next_publish_ms = 0
        self._last_view_mono = 0.0
        self._last_view: View | None = None
        self.slow_fsync_s = SLOW_FSYNC_S
        self._slow_logged = -1e9
        self._slow_counted = 0

    # ------------------------------------------------------------ hot path

    def request_in(self, route: Any, body: Any, t: float) -> None:
        """A client request arrived at ``t`` (perf_counter seconds)."""
        if type(body) is not dict:
            return
        rid = body.get("id")
        if type(rid) is not int:
            return
        if len(self.pending) >= MAX_TRACKED_REQUESTS:
            self.counts.untracked_requests += 1
            return
        op = body.get("op")
        self.pending[(route, rid)] = (op if op in self._known_ops else OTHER_OP, t)

    def reply_out(self, route: Any, payload: dict[str, Any], t: float) -> None:
        got = self.pending.pop((route, payload.get("id")), None)
        if got is not None:
            self.requests[got[0]].observe(t - got[1])

    def saved(self, entries: list[LogEntry]) -> None:
        """Entries this node's acceptor just made durable; its own ballot's are proposals."""
        c = self.counts
        c.accepted_entries += len(entries)
        me = self.id
        for e in entries:
            if e.ballot.node == me:
                c.proposals += 1
                c.proposed_commands += len(e.value)
                self.batch.observe(len(e.value))

    def synced(self, took_s: float) -> None:
        self.fsync.observe(took_s)
        if took_s >= self.slow_fsync_s:
            self.counts.slow_fsyncs += 1
            # A stalling disk makes every save slow: one line a second, with the count.
            now = time.monotonic()
            if now - self._slow_logged >= 1.0:
                since = self.counts.slow_fsyncs - self._slow_counted
                self._slow_logged, self._slow_counted = now, self.counts.slow_fsyncs
                event(log, logging.WARNING, "slow_fsync",
                      f"a synchronous save took {took_s * 1000:.1f} ms (threshold "
                      f"{self.slow_fsync_s * 1000:.0f} ms; {since} slow since the last line)",
                      took_ms=round(took_s * 1000, 3), threshold_ms=round(self.slow_fsync_s * 1000),
                      slow_since_last=since, slow_total=self.counts.slow_fsyncs)

    def changes(self, events: list[Change]) -> None:
        self.tail.extend(events)

    # ------------------------------------------------------------ once per turn

    def after_turn(self, svc: Service, now_ms: int) -> None:
        """Log role and leader changes (cheap: two comparisons), and publish when due."""
        self.counts.loop_turns += 1
        r = svc.replica
        if r.role is not self.seen.role or r.leader != self.seen.leader:
            self._role_changed(svc, now_ms)
        if now_ms >= self._next_publish_ms:
            self._next_publish_ms = now_ms + PUBLISH_MS
            self.publish(svc)
        else:
            self._contact_before = svc.last_leader_contact_ms

    def _role_changed(self, svc: Service, now_ms: int) -> None:
        r, seen = svc.replica, self.seen
        ballot = [r.ballot.round, r.ballot.node]
        promised = [r.promised.round, r.promised.node]
        b, pb = f"{ballot[0]}/{ballot[1]}", f"{promised[0]}/{promised[1]}"
        if r.leader != seen.leader and r.leader is not None:
            self.counts.leader_changes += 1
        if r.role is Role.CANDIDATE and seen.role is not Role.CANDIDATE:
            self.counts.elections += 1
            contact = self._contact_before
            if seen.leader is not None and contact is not None:
                why = f"leader {seen.leader} silent for {now_ms - contact} ms"
            elif contact is not None:
                why = f"no leader heard for {now_ms - contact} ms"
            else:
                why = "no leader heard since start"
            event(log, logging.INFO, "election", f"campaigning at ballot {b}: {why}",
                  ballot=ballot, reason=why, commit_index=r.commit_index)
        elif seen.role is Role.LEADER and r.role is not Role.LEADER:
            self.counts.step_downs += 1
            if r.promised > r.ballot:
                why = f"saw a higher ballot {pb}"
            else:
                why = "no quorum heard within the election timeout"
            event(log, logging.WARNING, "step_down", f"no longer leader: {why}",
                  ballot=ballot, reason=why, commit_index=r.commit_index)
        elif seen.role is Role.CANDIDATE and r.role is Role.FOLLOWER:
            why = (f"{r.leader} leads at ballot {pb}" if r.leader is not None
                   else f"a higher ballot {pb} exists")
            event(log, logging.INFO, "election_lost", f"campaign at {b} ended: {why}",
                  ballot=ballot, reason=why)
        if r.role is Role.LEADER and seen.role is not Role.LEADER:
            event(log, logging.INFO, "leader", f"elected leader at ballot {b}",
                  ballot=ballot, commit_index=r.commit_index, role=r.role.value)
        elif r.leader != seen.leader and r.role is not Role.CANDIDATE:   # campaigns: above
            event(log, logging.INFO, "leader",
                  f"role {r.role.value}, leader {r.leader}, ballot {pb}",
                  leader=r.leader, role=r.role.value, ballot=promised,
                  commit_index=r.commit_index)
        seen.role, seen.leader = r.role, r.leader

    # ------------------------------------------------------------ publishing

    def publish(self, svc: Service) -> None:
        status = svc.status()
        extra = self.extra()
        self._log_counters(svc, status, extra)
        self._sweep(time.perf_counter())
        rs = svc.replica.status()
        c = self.counts
        counters = {
            "leader_changes": c.leader_changes, "elections": c.elections,
            "step_downs": c.step_downs, "proposals": c.proposals,
            "proposed_commands": c.proposed_commands, "accepted_entries": c.accepted_entries,
            "slow_fsyncs": c.slow_fsyncs, "untracked_requests": c.untracked_requests,
            "loop_turns": c.loop_turns, "applied_commands": svc.counters.applied_commands,
            "snapshots": svc.counters.snapshots, "bad_requests": svc.counters.bad_requests,
            "pending_commands": rs.pending_commands, "inflight_slots": rs.inflight_slots,
            "lock_waiters": 0, **extra,
        }
        mono = time.monotonic()
        view = None
        if mono < self.shared.view_wanted_until:
            if self._last_view is None or mono - self._last_view_mono >= 1.0:
                self._last_view = self._build_view(svc, mono)
                self._last_view_mono = mono
            view = self._last_view
        else:
            self._last_view = None
        counters["lock_waiters"] = svc.machine.lock_waiters
        self.shared.publish(Published(
            at_mono=mono, node=self.id, status=status, members=tuple(svc.replica.members),
            known_commit=max(rs.known_commit, rs.commit_index),
            election_timeout_ms=svc.cfg.election_timeout_ms, serving=rs.serving,
            counters=counters, fsync=self.fsync.frozen(), batch=self.batch.frozen(),
            requests={op: h.frozen() for op, h in self.requests.items()}, view=view,
            admin_keys=svc.admin_keys()))
        self._contact_before = svc.last_leader_contact_ms

    def _sweep(self, now: float) -> None:
        """Forget requests that never got an answer (their client went away)."""
        if len(self.pending) > 1000:
            old = [k for k, (_, t) in self.pending.items() if now - t > 600.0]
            for k in old:
                del self.pending[k]

    def _build_view(self, svc: Service, mono: float) -> View:
        m = svc.machine
        locks = tuple({"name": lk.name, "holder_session": lk.holder_session, "token": lk.token,
                       "granted_index": lk.granted_index, "waiters": list(lk.waiters)}
                      for lk in m.locks()[:VIEW_MAX_LOCKS])
        listed = m.key_count <= VIEW_LIST_KEYS_UP_TO
        keys: tuple[dict[str, Any], ...] = ()
        if listed:
            keys = tuple({"key": kv.key, "revision": kv.revision, "version": kv.version,
                          "create_revision": kv.create_revision, "bytes": len(kv.value),
                          "value": kv.value[:VALUE_PREVIEW_BYTES]}
                         for kv in m.list("")[:VIEW_MAX_KEYS])
        return View(applied_index=svc.replica.applied, revision=m.revision, locks=locks,
                    lock_count=m.locks_held, keys=keys, key_count=m.key_count,
                    keys_listed=listed, events=tuple(self.tail), built_mono=mono)

    def _log_counters(self, svc: Service, status: dict[str, Any], extra: dict[str, int]) -> None:
        """Events seen as counters moving, logged at most once per publish."""
        seen = self.seen
        snaps, snap_index = svc.counters.snapshots, int(status.get("snapshot_index") or 0)
        if snaps > seen.snapshots:
            event(log, logging.INFO, "snapshot", f"took a snapshot at index {snap_index}",
                  index=snap_index, taken=snaps - seen.snapshots)
        elif snap_index > seen.snapshot_index and seen.snapshot_index and snaps == seen.snapshots:
            event(log, logging.INFO, "snapshot_installed",
                  f"installed a snapshot from the leader at index {snap_index}", index=snap_index)
        seen.snapshots, seen.snapshot_index = snaps, snap_index
        for name, now_count, attr, what in (
                ("key_rejected", extra.get("rejected_keys", 0), "rejected_keys",
                 "refused {n} connection(s) whose CURVE key this cluster does not know"),
                ("peer_rejected", svc.counters.rejected_peer, "rejected_peer",
                 "dropped {n} peer message(s) not sent over their member's own connection"),
                ("handshake_failed", extra.get("peer_handshake_failures", 0), "handshake_failures",
                 "{n} handshake(s) with members failed (is cluster.toml the same everywhere?)"),
                ("bad_frames", extra.get("bad_frames", 0), "bad_frames",
                 "dropped {n} undecodable frame(s)")):
            before = getattr(seen, attr)
            if now_count > before:
                event(log, logging.WARNING, name, what.format(n=now_count - before),
                      count=now_count - before, total=now_count)
            setattr(seen, attr, now_count)
        members = tuple(svc.replica.members)
        if members != seen.members:
            if seen.members:
                event(log, logging.INFO, "membership",
                      f"members now {', '.join(members)} (were {', '.join(seen.members)})",
                      members=list(members), previous=list(seen.members))
            seen.members = members
        alarms = _alarms(status)
        if alarms != seen.alarms:
            if alarms:
                event(log, logging.WARNING, "quota_alarm", f"quota alarm: {', '.join(alarms)}",
                      alarms=list(alarms))
            else:
                event(log, logging.INFO, "quota_alarm_cleared", "quota alarms cleared",
                      previous=list(seen.alarms))
            seen.alarms = alarms


def _learner(node: str, config: object) -> bool:
    """Whether the chosen configuration a node reports (status ``config``: rows of [id,
    address, voting, key]) has it as a learner, or not yet at all (a node added at runtime
    that has not learned its membership). False when the node reports none."""
    if not isinstance(config, list):
        return False
    mine = next((r for r in config if isinstance(r, list) and r and r[0] == node), None)
    return mine is None or (len(mine) > 2 and mine[2] is False)


def _alarms(status: dict[str, Any]) -> tuple[str, ...]:
    """Quota alarms a node reports (``alarms``: names, or maps with a ``quota`` name)."""
    raw = status.get("alarms")
    out: list[str] = []
    if isinstance(raw, Iterable) and not isinstance(raw, (str, bytes, dict)):
        for a in raw:
            if isinstance(a, str):
                out.append(a)
            elif isinstance(a, dict) and isinstance(a.get("quota"), str):
                out.append(a["quota"])
    return tuple(sorted(out))
