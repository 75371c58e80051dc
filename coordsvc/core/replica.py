"""One multi-Paxos replica: acceptor + proposer/leader + learner + leadership.

Sans-I/O in the style of etcd raft: inputs are ``receive``, ``tick``, ``propose``,
``read`` (and, for external leadership, ``suspect``/``leader_is``); the output is
a :class:`Ready` holding what to persist, what to send, what was chosen and
which reads are now safe. The driver must ``save(ready.persist)`` before it sends
``ready.messages``, then call :meth:`advance`. Until ``advance`` no new Ready is
handed out, so a reply produced while an earlier save is in flight (e.g. to a
duplicate Prepare) can never overtake that save.

**Bounded by bytes.** Every message this replica builds stays within a byte budget
(``Config``): an Accept carries a batch of commands within ``max_batch_bytes``; a Promise
or a catch-up reply carries entries within ``message_budget_bytes``; a snapshot travels
in chunks of ``snapshot_chunk_bytes`` (see ``transfer``). Each packs at least one item,
and one item is at most a batch or one command (``MAX_COMMAND_BYTES``), so no message
exceeds the frame cap. The leader's queues are bounded in bytes too: past
``max_pending_bytes`` ``propose`` refuses, and no new slot is opened while the values in
flight exceed ``max_inflight_bytes``.

**Phase 1 in chunks.** An acceptor's Promise lists its accepted entries within the
budget; when they do not all fit it names the first slot left out (``next_slot``) and
the candidate asks that acceptor again, at the same ballot, from there. The candidate
leads only once a quorum of acceptors sent *complete* promises (down to one with
``next_slot == 0``). The chunks of one acceptor tell the candidate what one big
promise would have, because:

1. Every chunk is computed after the acceptor's promise of our ballot ``b`` is durable
   (the first chunk travels with it; later ones are answers to later Prepares). From
   then on the acceptor accepts nothing below ``b``, and nothing at ``b`` either while
   we are a candidate (we are ``b``'s only proposer). If it accepts above ``b`` it has
   promised above ``b`` and answers our next Prepare with a Nack, never a chunk. So for
   each slot a chunk reports exactly what the acceptor accepted before promising
   ``b`` -- what a single promise sent at promise time would report -- except for two
   changes that are safe to report: a value it has since learned to be chosen (any
   proposal above the choosing ballot must carry it anyway), and slots compacted into
   a snapshot, which the chunk declares through ``snapshot_index`` so that the
   candidate learns them by catch-up before it leads.
2. The chunks cover consecutive ranges ``[from_slot, n1), [n1, n2), ..., [nk, oo)``: a
   chunk is taken only if its ``from_slot`` is the ``next_slot`` we asked for, so a slot
   with no entry listed had none when the chunk covering it was made. Duplicates and
   stragglers from an earlier round at this ballot (phase 1 restarts at the same ballot
   after a catch-up) are dropped, or describe a later state, equally valid by (1).

Hence every quorum intersection argument of single-message Paxos carries over, and the
new leader's rule (adopt the highest-ballot value per slot, no-ops in holes) keeps its
proof. ``tests/unit/test_replica.py`` checks the rules; the simulator runs with budgets
small enough that nearly every promise, batch, catch-up reply and snapshot splits.

**Membership** (``membership.py``; the full argument is in docs/DESIGN.md, "Membership, as
built"). config(s) -- the bootstrap with every change chosen below ``s`` -- decides slot
``s``. R1: a change is proposed only with every slot below it chosen and nothing in flight,
and nothing is proposed after it until it is chosen (``change_slot``, ``_flush_proposals``).
R2: an Accepted counts only for a voter of config(slot) at its incarnation
(``_on_accepted``). R3: phase 1 needs a majority of config(commit + 1) and of every
configuration the recovered changes create, and adopts the highest ballot over all promises
(``_maybe_lead``, ``_chain``). Because each change moves one voter and R1 leaves at most one
change unchosen in anyone's view, the chooser's configuration for a slot is the candidate's
or one voter from a configuration whose majority the candidate holds -- the majorities meet.
Learners replicate but never count or campaign; a removed node stops; leadership moves with
``TimeoutNow`` once the target holds the last slot. Leadership itself (functional with
pre-vote, or external) is a strategy object (``leadership.py``).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .acceptor import Acceptor
from .leadership import Functional, Leadership
from .membership import (
    CHANGE_MARKER,
    ChangeKind,
    ConfigHistory,
    Member,
    Membership,
    MembershipChange,
    change_in,
)
from .messages import (
    COMMAND_OVERHEAD_BYTES,
    VALUE_OVERHEAD_BYTES,
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Outbound,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    SnapshotChunk,
    SnapshotRequest,
    TimeoutNow,
    chosen_bytes,
    value_bytes,
)
from .transfer import Fetch, Shelf, SinkFactory, memory_sink
from .types import (
    MAX_COMMAND_BYTES,
    MAX_MESSAGE_ITEMS,
    MAX_ROUND,
    NOOP,
    ZERO_BALLOT,
    Ballot,
    Config,
    Durable,
    LogEntry,
    NodeId,
    Persist,
    ProtocolError,
    SafetyViolation,
    Slot,
    Snapshot,
    StoredPayload,
    UsageError,
    Value,
)

if TYPE_CHECKING:  # the core never touches the global RNG; one is injected
    from random import Random


class Role(str, Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Ready:
    persist: Persist = field(default_factory=Persist)
    messages: list[Outbound] = field(default_factory=list)
    # Chosen entries to apply, strictly in slot order, after `install`.
    committed: list[tuple[Slot, Value]] = field(default_factory=list)
    install: Snapshot | None = None
    # Read tokens whose read index is covered by `committed`: serve them after applying.
    reads: list[Hashable] = field(default_factory=list)
    # Reads and not-yet-slotted commands dropped because we stopped leading.
    aborted_reads: list[Hashable] = field(default_factory=list)
    aborted_commands: list[bytes] = field(default_factory=list)
    # The latest chosen configuration, when it changed (the runtime connects and drops peers).
    config: Membership | None = None
    # This node applied a configuration without itself: it must stop serving (why).
    removed: str | None = None

    def empty(self) -> bool:
        return (self.persist.empty() and not self.messages and not self.committed
                and self.install is None and not self.reads and not self.aborted_reads
                and not self.aborted_commands and self.config is None
                and self.removed is None)


@dataclass(slots=True)
class _Read:
    token: Hashable
    index: Slot
    round: int


@dataclass(slots=True)
class _Promises:
    """One acceptor's promise of our ballot, gathered chunk by chunk."""

    next_slot: Slot                  # the from_slot the next chunk must have
    listed_to: Slot = 0              # the last slot the chunks so far covered with an entry
    entries: list[LogEntry] = field(default_factory=list)
    complete_through: Slot = 0       # max snapshot_index over the chunks
    commit_index: Slot = 0
    complete: bool = False
    incarnation: Slot = 0            # which member of that id promised


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A snapshot of one replica's state for status pages, the simulator and tests."""

    id: NodeId
    role: Role
    leader: NodeId | None
    ballot: Ballot               # ours, once we campaigned (ZERO_BALLOT before)
    leader_ballot: Ballot        # the ballot of the leader we follow (ours while leading)
    promised: Ballot
    commit_index: Slot
    known_commit: Slot           # the highest commit index any peer told us
    applied: Slot
    snapshot_index: Slot
    voting: bool                 # False while a replacement rebuilds
    serving: bool                # leading, and everything phase 1 recovered is chosen
    pending_commands: int
    pending_bytes: int
    inflight_slots: int
    inflight_bytes: int
    fetch_peer: NodeId | None    # the peer a catch-up or snapshot request is in flight to
    fetch_snapshot_index: Slot   # the snapshot being assembled (0: none)
    fetch_snapshot_bytes: int    # ... and how much of it arrived
    retained_snapshot_index: Slot  # a superseded snapshot kept for a transfer (0: none)
    rejected_replies: int        # replies from a peer we did not ask, or not awaited
    bad_snapshots: int           # assembled snapshots whose checksum did not match
    rounds_exhausted: bool       # someone promised round 2**62: we cannot campaign
    incarnation: Slot | None     # which member we are (None: joining, not yet known)
    removed: str                 # why we were removed ("": we were not)
    config: Membership           # config(commit + 1): the latest chosen configuration
    change_in_flight: bool       # leader: a membership change is queued or not yet chosen
    transfer_to: NodeId | None   # leader: handing leadership to this voter
    progress: tuple[tuple[NodeId, Slot, Slot], ...]  # leader: (id, incarnation, commit) heard


# Resends of one catch-up or snapshot request before starting over with a fresh request.
_FETCH_RESENDS = 5
# A learner is promoted once its commit index is within this many slots of the leader's.
PROMOTE_GAP_SLOTS = 16
_NOBODY = Membership(())


def _is_change(value: Value) -> bool:
    return len(value) == 1 and value[0].startswith(CHANGE_MARKER)
_NO_MEMBER = Member("-", voting=False)


class Replica:
    def __init__(self, node_id: NodeId, members: list[NodeId] | Membership, durable: Durable,
                 rng: Random, now_ms: int, config: Config = Config(),
                 leadership: Leadership | None = None,
                 sinks: SinkFactory = memory_sink) -> None:
        self.id = node_id
        self.incarnation: Slot | None = durable.incarnation
        self.removed = durable.removed
        snap = durable.snapshot
        base: Membership | None = snap.config
        if base is None and self.incarnation is not None:
            # No configuration recorded yet: the bootstrap members (cluster.toml) are config(1).
            base = members if isinstance(members, Membership) else Membership.bootstrap(members)
            if base.get(node_id) is None:
                raise UsageError(f"{node_id} is not one of the members {list(base.ids)}")
        # config(s) for every slot we still care about; None while a node added at runtime
        # has not yet learned any configuration from the leader.
        self.history: ConfigHistory | None = (
            None if base is None else ConfigHistory(snap.index + 1, base))
        # Configurations after changes not yet chosen: the leader's (proposed or recovered)
        # or the candidate's (the chain its promises recovered), as (first slot, config).
        self.tentative: list[tuple[Slot, Membership]] = []
        self.members: list[NodeId] = []
        self.cfg = config
        self.rng = rng
        self.leadership: Leadership = leadership if leadership is not None else Functional()
        self.acceptor = Acceptor(node_id, durable, config.catchup_batch,
                                 config.message_budget_bytes, config.max_ahead_bytes)
        self.acceptor.incarnation = self.incarnation or 0
        self.high_water_round = max(durable.high_water_round, durable.promised.round)
        self.applied: Slot = durable.snapshot.index
        self.now_ms = now_ms

        self.role = Role.FOLLOWER
        self.ballot: Ballot = ZERO_BALLOT        # ours, while candidate/leader
        self.leader: NodeId | None = None
        self.leader_ballot: Ballot = ZERO_BALLOT
        self.highest_seen: Ballot = durable.promised
        self.known_commit: Slot = self.acceptor.commit_index  # highest commit anyone told us

        # candidate state
        self.from_slot: Slot = 0
        self.promises: dict[NodeId, _Promises] = {}
        self.nacks: set[NodeId] = set()
        self.catchup_for_phase1 = False
        self.phase1_progress_ms = -10**12   # when a promise chunk was last taken
        self.phase1_renewed_ms = -10**12    # when complete acceptors were last re-asked
        # leader state
        self.next_slot: Slot = 0
        # slot -> (value, acceptors that accepted it, last sent, value_bytes(value))
        self.inflight: dict[Slot, tuple[Value, set[NodeId], int, int]] = {}
        self.inflight_bytes = 0
        self.chosen_ahead: dict[Slot, Value] = {}
        self.recovered_through: Slot = 0
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self._max_pending = config.max_pending_commands      # read on every propose
        self._max_pending_bytes = config.max_pending_bytes
        self.hb_round = 0
        self.hb_acks: dict[int, set[tuple[NodeId, Slot]]] = {}
        self.confirmed_round = 0
        self.reads: list[_Read] = []
        self.leader_beat_ms = -10**12       # when the leader last sent a heartbeat
        self.leader_duties_ms = -10**12     # ... and last resent, promoted, handed over
        self.leader_heard_ms = -10**12      # when we last heard the leader we follow
        # pre-vote: the round we asked about (0: not asking) and who said yes
        self.prevote_round = 0
        self.prevote_grants: set[NodeId] = set()
        self.hb_wanted = False
        self.last_ack_ms: dict[NodeId, int] = {}
        # When each member last answered our ballot (a promise, an ack): liveness for
        # membership decisions. last_ack_ms starts every member at the takeover (the quorum
        # check's grace); a node we never heard from must not count as live for a removal.
        self.heard_ms: dict[NodeId, int] = {}
        self.refused_by: dict[NodeId, int] = {}  # leader: who nacked us last, and when

        # catch-up: at most one request in flight, and the snapshots we can serve
        self.catchup_sent_ms = -10**12
        self.fetch: Fetch | None = None
        self.sinks = sinks          # where a fetched snapshot is assembled (memory, a file)
        self.catchup_peer: NodeId = node_id      # phase 1 catch-up: whom we learn from
        self.catchup_goal: Slot = 0              # ... and up to which slot
        self.shelf = Shelf(durable.snapshot, config.snapshot_retain_ms)
        self.rejected_replies = 0
        self.bad_snapshots = 0
        self.rounds_exhausted = False
        # At boot there is no leader of ours to disrupt, and a running cluster's heartbeat
        # reaches us within a few heartbeat intervals: the first timer can be shorter.
        self.election_deadline = now_ms + self._election_timeout() // 2
        self.boot_snapshot: Snapshot | None = (
            durable.snapshot if durable.snapshot.index > 0 else None)

        # A replacement for a node whose disk was lost has forgotten what it promised and
        # accepted, so it casts no vote (no Promise, Accepted or HeartbeatAck for anyone,
        # itself included). It learns the log by catch-up, then campaigns: the other
        # members' promises complete a phase 1 that began after it started, and that
        # quorum intersects every quorum its lost promises joined. It leads without its
        # own vote until everything the phase 1 recovered is chosen — by quorums that do
        # not include it — and only then votes. (Paxos Made Live's rule, made concrete.)
        self.rebuilding = durable.rebuilding
        self._campaign_at: int | None = None
        # When a rebuilding follower next looks at whether to campaign. Only a tick moves
        # it: a timer counted from the last input never fires while heartbeats arrive
        # faster than it runs out (a driver ticks only when next_timer_ms() is due).
        self._rebuild_check_ms = now_ms

        # membership (leader): one change queued, then in flight until chosen; learners'
        # progress; a leadership hand-over in progress
        self.change_queue: MembershipChange | None = None
        self.change_slot: Slot | None = None
        self.progress: dict[NodeId, tuple[Slot, Slot, int]] = {}   # id -> (inc, commit, when)
        self.transfer_to: NodeId | None = None
        self.departing: dict[NodeId, int] = {}    # leader: removed members told until then
        self.gone: set[NodeId] = set()            # ids removed by chosen changes
        self.transfer_deadline_ms = 0
        self.timeout_now_sent_ms = -10**12
        self.promote_gap = PROMOTE_GAP_SLOTS

        self._ready = Ready()
        self._outstanding = False
        if snap.config is None and base is not None:
            # Record the bootstrap configuration with the first save: from then on the data
            # directory, not cluster.toml (which `member add` edits), says what config(1) was.
            recorded = Snapshot(snap.index, snap.data, base)
            self.acceptor.snapshot = recorded
            self._ready.persist.snapshot = recorded
        # Slots whose value in our log is a change, not yet taken into config(s): commits
        # look only at these (nearly every slot holds a batch, and commit is the hot path).
        self._change_slots: set[Slot] = {
            e.slot for e in durable.entries if e.slot > snap.index and _is_change(e.value)}
        self._note_committed(snap.index + 1, self.acceptor.commit_index, at_boot=True)
        self._refresh_members()

    # ------------------------------------------------------------------ membership

    def config_for(self, slot: Slot) -> Membership:
        """config(slot): the configuration whose majority decides ``slot``."""
        for start, c in reversed(self.tentative):
            if slot >= start:
                return c
        return self.history.at(slot) if self.history is not None else _NOBODY

    @property
    def config(self) -> Membership:
        """The latest chosen configuration: config(commit + 1)."""
        return self._chosen_config

    @property
    def _chosen_config(self) -> Membership:
        h = self.history
        return h._configs[-1] if h is not None else _NOBODY

    def _latest_config(self) -> Membership:
        return self.tentative[-1][1] if self.tentative else self.config

    def _refresh_members(self) -> None:
        """Whom we talk to and hear from: the members of the latest chosen configuration
        and of any tentative one. A removed member is in neither: its messages are dropped."""
        ids = set(self.config.ids)
        for _, c in self.tentative:
            ids.update(c.ids)
        ids.add(self.id)
        self.members = sorted(ids)

    def may_campaign(self) -> bool:
        """Only a voter of the latest chosen configuration campaigns (never a learner, a
        joining node, or a removed one)."""
        return (self.incarnation is not None and not self.removed
                and self.config.votes(self.id, self.incarnation))

    def _note_committed(self, first: Slot, last: Slot, at_boot: bool = False) -> None:
        """Slots ``first..last`` are chosen: take the changes among them into config(s)."""
        h = self.history
        if h is None or last < first:
            return
        log = self.acceptor.log
        changed = False
        before = h.latest
        todo = sorted(s for s in self._change_slots if s <= last)
        self._change_slots.difference_update(todo)
        for slot in todo:
            e = log.get(slot)
            if slot < max(first, h.latest_start) or e is None or not _is_change(e.value):
                continue         # overwritten by a batch at a higher ballot before it was chosen
            try:
                ch = change_in(e.value)
                if ch is None:
                    continue
                new = h.latest.apply(ch, slot)
            except (ProtocolError, UsageError) as err:
                raise SafetyViolation(f"the change chosen at slot {slot} does not apply: {err}") from err
            h.add(slot, new)
            if ch.kind is ChangeKind.REMOVE:
                self.gone.add(ch.member.id)
            elif ch.kind is ChangeKind.ADD:
                self.gone.discard(ch.member.id)
            changed = True
        if changed:
            if self.role is Role.LEADER:
                # Members that just left hear of it from us (heartbeats, catch-up) for a
                # while: a removed node must learn its removal is chosen to stop.
                for gone in set(before.ids) - set(h.latest.ids):
                    self.departing[gone] = self.now_ms + 4 * self.cfg.election_timeout_ms
            self._configs_changed(at_boot)

    def _configs_changed(self, at_boot: bool = False) -> None:
        h = self.history
        assert h is not None
        while self.tentative and self.tentative[0][0] <= h.latest_start:
            start, c = self.tentative.pop(0)
            # A leader proposed (or re-proposed at its ballot) the change that is now
            # chosen: the configurations must agree. A candidate's chain is only what its
            # promises showed so far (it prepares again after catching up).
            if self.role is Role.LEADER and h.at(start) != c:
                raise SafetyViolation(f"config({start}) chosen differs from the one proposed")
        if self.change_slot is not None and self.acceptor.commit_index >= self.change_slot:
            self.change_slot = None
        self._refresh_members()
        if not at_boot:
            self._ready.config = h.latest
        self._check_removed()

    def _check_removed(self) -> None:
        h = self.history
        if h is None or self.incarnation is None or self.removed:
            return
        if h.latest_start - 1 < self.incarnation:
            return
        me = h.latest.get(self.id)
        if me is None or me.incarnation != self.incarnation:
            self._remove_self(f"{self.id} was removed from the cluster by the change chosen "
                              f"at slot {h.latest_start - 1}")

    def _remove_self(self, why: str) -> None:
        self._step_down(why)
        self.removed = why
        self.leader = None
        self._ready.persist.removed = why
        self._ready.removed = why

    def _maybe_adopt_incarnation(self) -> None:
        """A node added at runtime learns which member it is once it has caught up: the
        learner under its id in the latest configuration (an id is never a member twice)."""
        h = self.history
        if (self.incarnation is not None or h is None or self.leader is None
                or self.acceptor.commit_index < self.known_commit):
            return
        me = h.latest.get(self.id)
        if me is not None and not me.voting:
            self.incarnation = self.acceptor.incarnation = me.incarnation
            self._ready.persist.incarnation = me.incarnation
            self._refresh_members()

    def request_change(self, change: MembershipChange) -> str | None:
        """Queue one membership change (the leader proposes it once the pipeline is
        drained). None if queued; otherwise why not, and nothing changed."""
        if self.role is not Role.LEADER or not self.serving:
            return "not the leader"
        if self.change_queue is not None or self.change_slot is not None or self.tentative:
            return "a membership change is already in flight; retry when it is chosen"
        if self.transfer_to is not None:
            return f"leadership is being handed to {self.transfer_to}"
        latest = self.config
        why = latest.refuses(change)
        if why is not None:
            return why
        m = change.member
        if change.kind is ChangeKind.REMOVE and m.id == self.id:
            target = self._best_successor()
            if target is None:
                return "the leader cannot be removed: no other voter can take over"
            self.transfer_leadership(target)
            return f"{self.id} leads: it hands leadership to {target} first; retry there"
        if change.kind is ChangeKind.REMOVE and latest.votes(m.id, m.incarnation):
            after = latest.apply(change, self.next_slot)
            live = {v.key for v in after.voters if self._live(v.id)}
            if not after.is_quorum(live):
                return (f"removing {m.id} would leave {len(live)} live voter(s) of "
                        f"{len(after.voters)}: no quorum")
        self.change_queue = change
        return None

    def transfer_leadership(self, target: NodeId) -> str | None:
        """Hand leadership to voter ``target`` once it holds our last slot (TimeoutNow)."""
        if self.role is not Role.LEADER:
            return "not the leader"
        if target == self.id:
            return None
        if self.config.get(target) is None or not self.config.get(target).voting:  # type: ignore[union-attr]
            return f"{target} is not a voter"
        if self.change_queue is not None or self.change_slot is not None:
            return "a membership change is in flight; retry when it is chosen"
        self.transfer_to = target
        self.transfer_deadline_ms = self.now_ms + self.cfg.election_timeout_ms
        self.timeout_now_sent_ms = -10**12
        self._maybe_hand_over()
        return None

    def is_live(self, node: NodeId) -> bool:
        """Leader: ``node`` was heard within an election timeout (we always are)."""
        return self._live(node)

    def _live(self, node: NodeId) -> bool:
        return node == self.id or (
            self.now_ms - self.heard_ms.get(node, -10**12) <= self.cfg.election_timeout_ms)

    def _heard(self, node: NodeId) -> None:
        if node in self.members:      # bounded by the members; others are never live
            self.heard_ms[node] = self.now_ms

    def _best_successor(self) -> NodeId | None:
        best: tuple[Slot, NodeId] | None = None
        for v in self.config.voters:
            p = self.progress.get(v.id)
            if v.id == self.id or p is None or p[0] != v.incarnation or not self._live(v.id):
                continue
            if best is None or (p[1], v.id) > best:
                best = (p[1], v.id)
        return None if best is None else best[1]

    def _maybe_hand_over(self) -> None:
        t = self.transfer_to
        if t is None or self.role is not Role.LEADER:
            return
        if self.now_ms > self.transfer_deadline_ms:
            self.transfer_to = None          # it did not catch up in time: keep leading
            return
        p = self.progress.get(t)
        if (p is not None and not self.inflight and p[1] >= self.next_slot - 1
                and self.now_ms - self.timeout_now_sent_ms >= self.cfg.heartbeat_ms):
            self.timeout_now_sent_ms = self.now_ms
            self._send(t, TimeoutNow(self.id, self.ballot))

    def _maybe_promote(self) -> None:
        """Promote a learner once its commit index is within ``promote_gap`` of ours."""
        if (self.change_queue is not None or self.change_slot is not None or self.tentative
                or self.transfer_to is not None or not self.serving):
            return
        for m in self.config.learners:
            p = self.progress.get(m.id)
            if (p is not None and p[0] == m.incarnation and self._live(m.id)
                    and p[1] + self.promote_gap >= self.acceptor.commit_index):
                self.change_queue = MembershipChange(ChangeKind.PROMOTE, m)
                return

    def _propose_change(self) -> None:
        """The queued change goes at the next slot, with nothing before it unchosen."""
        change = self.change_queue
        assert change is not None
        slot = self.next_slot
        try:
            after = self.config.apply(change, slot)
        except UsageError:
            self.change_queue = None     # overtaken (e.g. the learner left): drop it
            return
        self.change_queue = None
        self.change_slot = slot
        self.next_slot += 1
        value = change.value()
        size = value_bytes(value)
        self.inflight[slot] = (value, set(), self.now_ms, size)
        self.inflight_bytes += size
        self.tentative.append((slot + 1, after))
        self._refresh_members()
        for m in after.ids:
            self.last_ack_ms.setdefault(m, self.now_ms)
        self._broadcast(Accept(self.id, self.ballot, slot, value, self.acceptor.commit_index))

    # ------------------------------------------------------------------ inputs

    def propose(self, command: bytes) -> bool:
        """Queue a command for the log. False if we are not leader or the queue is full
        (in commands or in bytes). A command above ``MAX_COMMAND_BYTES`` is the caller's
        error: it could not travel in one Accept."""
        n = len(command)
        if n > MAX_COMMAND_BYTES:
            raise UsageError(f"command of {n} bytes exceeds MAX_COMMAND_BYTES ({MAX_COMMAND_BYTES})")
        if (self.role is not Role.LEADER or len(self.pending) >= self._max_pending
                or self.pending_bytes + n > self._max_pending_bytes
                or self.transfer_to is not None):
            return False
        self.pending.append(command)
        self.pending_bytes += n
        return True

    def read(self, token: Hashable) -> bool:
        """Ask for a linearizable read point. False if we are not leader."""
        if self.role is not Role.LEADER:
            return False
        index = max(self.acceptor.commit_index, self.recovered_through)
        self.reads.append(_Read(token, index, self.hb_round + 1))
        self.hb_wanted = True
        return True

    def tick(self, now_ms: int) -> None:
        self.now_ms = now_ms
        if self.removed:
            return
        if self.shelf.expire(now_ms):
            self.acceptor.trim_tail(self.acceptor.snapshot.index + 1, 0)   # nobody fetches
        if self.role is Role.LEADER:
            if self.leadership.checks_quorum and self._lost_quorum(now_ms):
                self._step_down("no quorum heard within the election timeout")
                return
            if self._refused_by_a_live_voter(now_ms):
                # That voter promised above us (say, as a candidate just before it
                # crashed) and, with pre-vote, can never campaign while we lead: raise
                # our ballot above its promise, or it would never follow us again.
                self._start_phase1()
                return
            if now_ms - self.leader_beat_ms >= self.cfg.heartbeat_ms:
                # The beat is armed whatever the strategy: next_timer_ms() must move on,
                # or a driver that sleeps until it would spin.
                self.leader_beat_ms = now_ms
                if self.leadership.heartbeats:
                    self._send_heartbeat()
            if now_ms - self.leader_duties_ms >= self.cfg.heartbeat_ms:
                # Timed apart from the beat: a read's heartbeat counts as the beat, and
                # under reads faster than heartbeats these would never run (a lost Accept
                # never resent, a caught-up learner never promoted).
                self.leader_duties_ms = now_ms
                self._retransmit_accepts(now_ms)
                self._maybe_promote()
                self._maybe_hand_over()
        else:
            self.leadership.tick(self, now_ms)
        if self.role is Role.CANDIDATE:
            self._renew_promises(now_ms)
        self._maybe_request_catchup()

    def next_timer_ms(self) -> int:
        """The earliest time ``tick`` has something to do (the driver may sleep until then)."""
        if self.role is Role.LEADER:
            return min(self.leader_beat_ms, self.leader_duties_ms) + self.cfg.heartbeat_ms
        return self.leadership.next_timer_ms(self)

    def suspect(self, node: NodeId) -> None:
        """External failure detector: `node` is believed dead (``UsageError`` otherwise)."""
        self.leadership.suspect(self, node)

    def leader_is(self, node: NodeId) -> None:
        """External failure detector: `node` should lead (``UsageError`` otherwise)."""
        self.leadership.leader_is(self, node)

    # -- what the leadership strategy reads and drives

    def is_follower(self) -> bool:
        return self.role is Role.FOLLOWER

    def is_candidate(self) -> bool:
        return self.role is Role.CANDIDATE

    def ballot_beaten(self) -> bool:
        """Someone promised a ballot above the one we campaign with."""
        return self.highest_seen > self.ballot

    def _defer_to(self, node: NodeId, why: str) -> None:
        if self.role is not Role.FOLLOWER:
            self._step_down(why)
        self.leader = node

    def _rebuild_timer_ms(self) -> int:
        return self._campaign_at if self._campaign_at is not None else self._rebuild_check_ms

    def compact(self, snapshot: Snapshot) -> None:
        """The state machine was snapshotted through ``snapshot.index``; drop the log below."""
        if snapshot.index > self.applied:
            raise UsageError(f"snapshot {snapshot.index} beyond applied {self.applied}")
        if snapshot.index <= self.acceptor.snapshot.index:
            return
        if self.history is not None:
            snapshot = Snapshot(snapshot.index, snapshot.data, self.config_after(snapshot.index))
            self.history.compact(snapshot.index)
        self.shelf.replace(snapshot, self.now_ms)
        # A follower still fetching the superseded snapshot will ask for the entries after
        # it: keep them (in memory, within a budget), or it would finish only to find them
        # compacted and fetch again -- for ever, if the leader compacts faster than a big
        # snapshot travels (Raft implementations keep such a tail for the same reason).
        older = self.shelf.retained_index
        self.acceptor.install_snapshot(snapshot, self._ready.persist,
                                       keep_from=None if older is None else older + 1)
        self.acceptor.trim_tail(snapshot.index + 1 if older is None else older + 1,
                                self.cfg.max_catchup_tail_bytes)

    def config_after(self, index: Slot) -> Membership | None:
        """config(index + 1), which a snapshot through ``index`` carries."""
        return None if self.history is None else self.history.at(index + 1)

    def stored_snapshots(self) -> list[StoredPayload]:
        """Every snapshot this replica refers to that lives outside memory: its own and
        those on its shelf (the adapter must keep their files; any other may go)."""
        out = self.shelf.stored()
        own = self.acceptor.snapshot.data
        if not isinstance(own, bytes) and all(own is not x for x in out):
            out.append(own)
        return out

    def export_point(self) -> tuple[Snapshot, tuple[tuple[Slot, Value], ...]]:
        """The latest snapshot and the chosen values after it, through the applied index:
        together, the state applied here (a backup pins them; ``core.export``). The values
        are the log's own objects, not copies."""
        snap, log = self.acceptor.snapshot, self.acceptor.log
        try:
            return snap, tuple((s, log[s].value) for s in range(snap.index + 1, self.applied + 1))
        except KeyError as e:
            raise SafetyViolation(f"slot {e} is applied but not in the log") from None

    def receive(self, msg: Message, now_ms: int) -> None:
        self.now_ms = now_ms
        if self.removed:
            return  # we left the cluster: nothing more to say
        if msg.src in self.gone and isinstance(msg, (Prepare, PreVote, TimeoutNow)):
            # Removed by a chosen change: its campaign changes nothing here. Only campaigns
            # are dropped: a node that lags may know an id as removed that was since added
            # again (a new incarnation, perhaps the leader), and must hear it to catch up.
            # Its votes count for no one anyway (they carry the old incarnation).
            return
        if self.rebuilding and self._receive_rebuilding(msg):
            return
        if isinstance(msg, Prepare):
            self._observe(msg.ballot)
            answer = self.acceptor.on_prepare(msg, self._ready.persist)
            self._vote(msg.src, answer)
            if msg.ballot > self.ballot and self.role is not Role.FOLLOWER and msg.src != self.id:
                self._step_down(f"promised higher ballot {msg.ballot}")
            if isinstance(answer, Promise) and msg.src != self.id and self.role is Role.FOLLOWER:
                # Give the candidate we promised time to finish its (chunked) phase 1
                # before campaigning against it: Raft's rule for a granted vote.
                self._reset_election()
        elif isinstance(msg, Accept):
            self._observe(msg.ballot)
            reply = self.acceptor.on_accept(msg, self._ready.persist)
            v = msg.value
            if len(v) == 1 and v[0].startswith(CHANGE_MARKER):
                self._change_slots.add(msg.slot)
            self._vote(msg.src, reply)
            if msg.ballot > self.ballot and self.role is not Role.FOLLOWER and msg.src != self.id:
                self._step_down(f"accepted for higher ballot {msg.ballot}")
            if isinstance(reply, Accepted) or (reply is None and msg.ballot >= self.acceptor.promised):
                self._follow(msg.src, msg.ballot)
                self._learn_commit(msg.ballot, msg.commit_index)
        elif isinstance(msg, Heartbeat):
            self._on_heartbeat(msg)
        elif isinstance(msg, Promise):
            self._on_promise(msg)
        elif isinstance(msg, Accepted):
            self._on_accepted(msg)
        elif isinstance(msg, Nack):
            self._on_nack(msg)
        elif isinstance(msg, HeartbeatAck):
            self._on_heartbeat_ack(msg)
        elif isinstance(msg, CatchupRequest):
            self._on_catchup_request(msg)
        elif isinstance(msg, CatchupReply):
            self._on_catchup_reply(msg)
        elif isinstance(msg, SnapshotRequest):
            self._on_snapshot_request(msg)
        elif isinstance(msg, SnapshotChunk):
            self._on_snapshot_chunk(msg)
        elif isinstance(msg, PreVote):
            self._on_prevote(msg)
        elif isinstance(msg, PreVoteReply):
            self._on_prevote_reply(msg)
        elif isinstance(msg, TimeoutNow):
            self._on_timeout_now(msg)

    def _receive_rebuilding(self, msg: Message) -> bool:
        """Handle ``msg`` without voting; False lets the normal path take it."""
        if isinstance(msg, Prepare):
            self._observe(msg.ballot)
            if msg.src != self.id and self.role is not Role.FOLLOWER and msg.ballot > self.ballot:
                self._step_down(f"others promise higher ballot {msg.ballot}")
            return True
        if isinstance(msg, (Accept, Heartbeat)):
            self._observe(msg.ballot)
            if msg.src == self.id:
                return True
            if self.role is not Role.FOLLOWER and msg.ballot > self.ballot:
                self._step_down(f"{type(msg).__name__} from higher ballot {msg.ballot}")
            if self.role is Role.FOLLOWER:
                self._follow(msg.src, msg.ballot)
                if msg.commit_index > self.known_commit:
                    self.known_commit = msg.commit_index
                self._maybe_request_catchup()
            return True
        if isinstance(msg, (Promise, Nack)):
            return self.role is Role.FOLLOWER
        if isinstance(msg, (Accepted, HeartbeatAck)):
            return self.role is not Role.LEADER
        return False     # catch-up requests and replies take the normal path

    def _campaign_when_caught_up(self, now_ms: int) -> None:
        # A rebuilding follower never campaigns on the election timer, only once it has
        # learned everything the leader committed: its campaign is how it earns its vote.
        # Called from ticks only, so the next look is counted from this tick, never from
        # the last input (heartbeats arriving faster than the interval would push it back).
        self._rebuild_check_ms = now_ms + self.cfg.heartbeat_ms
        if self.leader is None or self.known_commit > self.acceptor.commit_index:
            self._campaign_at = None
        elif self._campaign_at is None:
            self._campaign_at = now_ms + self._election_timeout()
        elif now_ms >= self._campaign_at:
            self._campaign_at = None
            self._start_phase1()

    def _maybe_finish_rebuild(self) -> None:
        if (not self.rebuilding or self.role is not Role.LEADER
                or self.acceptor.commit_index < self.recovered_through):
            return
        if self.ballot > self.acceptor.promised:
            self.acceptor.promised = self.ballot
            self._ready.persist.promised = self.ballot
        self.rebuilding = False
        self._ready.persist.rebuilt = True

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        if self._outstanding:
            return False
        self._flush_proposals()
        self._collect_committed()
        return not self._ready.empty()

    def ready(self) -> Ready:
        if self._outstanding:
            raise UsageError("ready() called again before advance()")
        self._flush_proposals()
        self._collect_committed()
        r, self._ready = self._ready, Ready()
        self._outstanding = True
        return r

    def advance(self) -> None:
        if not self._outstanding:
            raise UsageError("advance() without ready()")
        self._outstanding = False

    # ------------------------------------------------------------------ status

    @property
    def commit_index(self) -> Slot:
        return self.acceptor.commit_index

    @property
    def promised(self) -> Ballot:
        return self.acceptor.promised

    @property
    def serving(self) -> bool:
        """Leading, and everything phase 1 recovered is chosen: safe to answer clients."""
        return self.role is Role.LEADER and self.acceptor.commit_index >= self.recovered_through

    def status(self) -> ReplicaStatus:
        f = self.fetch
        assembling = f is not None and f.snapshot is not None
        return ReplicaStatus(
            id=self.id, role=self.role, leader=self.leader, ballot=self.ballot,
            leader_ballot=self.leader_ballot, promised=self.acceptor.promised,
            commit_index=self.acceptor.commit_index, known_commit=self.known_commit,
            applied=self.applied, snapshot_index=self.acceptor.snapshot.index,
            voting=not self.rebuilding and self.may_campaign(),
            serving=self.serving,
            pending_commands=len(self.pending), pending_bytes=self.pending_bytes,
            inflight_slots=len(self.inflight), inflight_bytes=self.inflight_bytes,
            fetch_peer=None if f is None else f.peer,
            fetch_snapshot_index=f.snapshot.index if f is not None and f.snapshot else 0,
            fetch_snapshot_bytes=f.received if f is not None and assembling else 0,
            retained_snapshot_index=self.shelf.retained_index or 0,
            rejected_replies=self.rejected_replies, bad_snapshots=self.bad_snapshots,
            rounds_exhausted=self.rounds_exhausted, incarnation=self.incarnation,
            removed=self.removed, config=self.config,
            change_in_flight=(self.change_queue is not None or self.change_slot is not None
                              or bool(self.tentative)),
            transfer_to=self.transfer_to,
            progress=tuple((n, inc, c) for n, (inc, c, _) in sorted(self.progress.items())))

    # ------------------------------------------------------------------ helpers

    def _election_timeout(self) -> int:
        t = self.cfg.election_timeout_ms
        return t + self.rng.randrange(t)

    def _reset_election(self) -> None:
        self.election_deadline = self.now_ms + self._election_timeout()

    def _send(self, dst: NodeId, msg: Message) -> None:
        self._ready.messages.append(Outbound(dst, msg))

    def _broadcast(self, msg: Message) -> None:
        for m in self.members:
            self._send(m, msg)

    def _reply(self, dst: NodeId, msg: Message | None) -> None:
        if msg is not None:
            self._send(dst, msg)

    def _vote(self, dst: NodeId, msg: Message | None) -> None:
        # A node that does not yet know which member it is casts no vote (a Nack is fine).
        if msg is not None and (self.incarnation is not None or isinstance(msg, Nack)):
            self._send(dst, msg)

    def _observe(self, b: Ballot) -> None:
        if b > self.highest_seen:
            self.highest_seen = b

    def _follow(self, node: NodeId, ballot: Ballot) -> None:
        if ballot >= self.leader_ballot or self.leader is None:
            self.leader, self.leader_ballot = node, ballot
        if node != self.id:
            self.leader_heard_ms = self.now_ms
            self.prevote_round = 0
            self._reset_election()

    def _lost_quorum(self, now_ms: int) -> bool:
        limit = self.cfg.election_timeout_ms
        latest = self._latest_config()
        fresh = sum(1 for v in latest.voters
                    if (v.id == self.id and not self.rebuilding)
                    or (v.id != self.id and now_ms - self.last_ack_ms.get(v.id, -10**12) <= limit))
        return fresh < latest.quorum

    def _refused_by_a_live_voter(self, now_ms: int) -> bool:
        """A voter keeps refusing us (a Nack within the last heartbeats) and has not
        accepted anything from us for an election timeout."""
        limit = self.cfg.election_timeout_ms
        return any(now_ms - at <= 4 * self.cfg.heartbeat_ms
                   and now_ms - self.last_ack_ms.get(node, -10**12) > limit
                   for node, at in self.refused_by.items())

    def _step_down(self, why: str) -> None:
        if self.role is Role.FOLLOWER:
            return
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self.promises.clear()
        self.nacks.clear()
        self.catchup_for_phase1 = False
        if was_leader:
            self.leader = None
        self.inflight.clear()
        self.inflight_bytes = 0
        self.chosen_ahead.clear()
        self._ready.aborted_reads.extend(r.token for r in self.reads)
        self.reads.clear()
        self._ready.aborted_commands.extend(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.hb_acks.clear()
        self.tentative.clear()
        self.change_queue = None
        self.change_slot = None
        self.transfer_to = None
        self._refresh_members()
        self._reset_election()

    # ------------------------------------------------------------- phase 1

    def _start_phase1(self) -> None:
        if not self.may_campaign():
            self._reset_election()       # a learner, a joining or a removed node never leads
            return
        top = max(self.high_water_round, self.highest_seen.round, self.acceptor.promised.round)
        if top >= MAX_ROUND:
            # Someone holds the last round there is. Honest rounds grow by one per campaign,
            # so only a forged or corrupt ballot gets here; there is no higher ballot to
            # campaign with, and building one would persist a round that cannot be stored.
            self.rounds_exhausted = True
            self._reset_election()
            return
        self.prevote_round = 0
        self.high_water_round = top + 1
        self._ready.persist.high_water_round = self.high_water_round  # saved before the Prepare leaves
        if self.role is Role.LEADER:
            self._step_down("re-preparing")
        self.role = Role.CANDIDATE
        self.ballot = Ballot(self.high_water_round, self.id)
        self.leader = None
        self._begin_prepare()
        self._reset_election()

    # ------------------------------------------------------------- pre-vote

    def _start_prevote(self) -> None:
        """Ask before raising our ballot (nothing is persisted: a pre-vote binds no one)."""
        top = max(self.high_water_round, self.highest_seen.round, self.acceptor.promised.round)
        self.prevote_round = min(top + 1, MAX_ROUND)
        self.prevote_grants = set()
        self._reset_election()        # no majority by then: ask again
        ask = PreVote(self.id, self.prevote_round, self.acceptor.commit_index)
        for v in self.config.voters:
            self._send(v.id, ask)

    def _grants_prevote(self, m: PreVote) -> bool:
        if self.role is Role.LEADER and m.src != self.id:
            return False
        heard_leader = (self.leader is not None and self.leader != self.id
                        and self.now_ms - self.leader_heard_ms < self.cfg.election_timeout_ms)
        return not heard_leader and m.commit_index >= self.acceptor.commit_index

    def _on_prevote(self, m: PreVote) -> None:
        self._send(m.src, PreVoteReply(self.id, m.round, self._grants_prevote(m)))

    def _on_prevote_reply(self, m: PreVoteReply) -> None:
        if (self.role is not Role.FOLLOWER or not self.prevote_round
                or m.round != self.prevote_round or not m.granted):
            return
        if not (self.config.get(m.src) or _NO_MEMBER).voting:
            return
        self.prevote_grants.add(m.src)
        if len(self.prevote_grants) >= self.config.quorum and self.may_campaign():
            self._start_phase1()

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        # Only the leader we follow may hand over to us, at the ballot we follow it at.
        if (self.role is Role.FOLLOWER and m.src == self.leader and m.ballot == self.leader_ballot
                and self.may_campaign()):
            self._start_phase1()

    def _begin_prepare(self) -> None:
        self.from_slot = self.acceptor.commit_index + 1
        self.phase1_progress_ms = self.phase1_renewed_ms = self.now_ms
        self.promises.clear()
        self.nacks.clear()
        self.catchup_for_phase1 = False
        self.tentative.clear()      # the chain is what this round's promises recover
        self._refresh_members()
        self._broadcast(Prepare(self.id, self.ballot, self.from_slot))
        self.catchup_sent_ms = self.now_ms

    def _resend_prepares(self) -> None:
        self.catchup_sent_ms = self.now_ms
        if self.catchup_for_phase1:
            self._drive_fetch(self.catchup_peer, self.catchup_goal)
            return
        for m in self.members:
            p = self.promises.get(m)
            if p is None or not p.complete:
                self._send(m, Prepare(self.id, self.ballot,
                                      self.from_slot if p is None else p.next_slot))

    def _renew_promises(self, now_ms: int) -> None:
        """While phase 1 moves, keep acceptors that already answered from campaigning.

        A chunked phase 1 may outlast an election timeout. An acceptor resets its timer
        whenever it promises a candidate, so every half timeout in which some chunk
        arrived, the complete acceptors are asked again from past what they listed (an
        empty answer, normally). A candidate that stops moving stops asking, and the
        others' timers run out as usual.
        """
        if (self.catchup_for_phase1 or self.phase1_progress_ms <= self.phase1_renewed_ms
                or now_ms - self.phase1_renewed_ms < self.cfg.election_timeout_ms // 2):
            return
        self.phase1_renewed_ms = now_ms
        for node, p in sorted(self.promises.items()):
            if p.complete and node != self.id:
                self._send(node, Prepare(self.id, self.ballot, max(self.from_slot, p.listed_to + 1)))

    def _on_promise(self, m: Promise) -> None:
        if self.role is not Role.CANDIDATE or m.ballot != self.ballot:
            return
        p = self.promises.get(m.src)
        if (p is not None and p.complete) or m.from_slot != (self.from_slot if p is None
                                                             else p.next_slot):
            return   # a duplicate, or not the chunk we asked for
        if p is None:
            p = self.promises[m.src] = _Promises(self.from_slot, incarnation=m.incarnation)
        self._heard(m.src)
        self._reset_election()        # phase 1 is moving: do not start it over
        self.phase1_progress_ms = self.now_ms
        p.entries.extend(m.accepted)
        if m.accepted:
            p.listed_to = m.accepted[-1].slot
        p.complete_through = max(p.complete_through, m.snapshot_index)
        p.commit_index = max(p.commit_index, m.commit_index)
        if m.commit_index > self.known_commit:
            self.known_commit = m.commit_index
        if p.complete_through >= self.from_slot:
            # Slots chosen there were compacted or left out: we must learn them and prepare
            # again before leading (the acceptor listed nothing, knowing that). Start now.
            p.complete = True
            if not self.catchup_for_phase1:
                self.catchup_for_phase1 = True
                self.catchup_peer, self.catchup_goal = m.src, p.commit_index
                self._fetch_entries(self.catchup_peer, self.catchup_goal)
            return
        if m.next_slot:
            p.next_slot = m.next_slot           # more follows: ask for it at the same ballot
            self._send(m.src, Prepare(self.id, self.ballot, m.next_slot))
            return
        p.complete = True
        if self.catchup_for_phase1:
            return
        self._maybe_lead()

    def _recovered(self) -> dict[Slot, tuple[Ballot, Value]]:
        """Per slot from ``from_slot``, the highest-ballot value the complete promises list."""
        best: dict[Slot, tuple[Ballot, Value]] = {}
        for p in self.promises.values():
            if not p.complete:
                continue
            for e in p.entries:
                if e.slot >= self.from_slot and (e.slot not in best or e.ballot > best[e.slot][0]):
                    best[e.slot] = (e.ballot, e.value)
        return best

    def _chain(self, best: dict[Slot, tuple[Ballot, Value]]) -> list[tuple[Slot, Membership]]:
        """The configurations the recovered changes create, in slot order."""
        chain: list[tuple[Slot, Membership]] = []
        c = self.config
        for slot in sorted(best):
            value = best[slot][1]
            if len(value) != 1:
                continue
            try:
                ch = change_in(value)
                if ch is None:
                    continue
                c = c.apply(ch, slot)
            except (ProtocolError, UsageError) as err:
                raise SafetyViolation(f"a change recovered at slot {slot} does not apply: "
                                      f"{err}") from err
            chain.append((slot + 1, c))
        return chain

    def _maybe_lead(self) -> None:
        """Lead once the complete promises hold a majority of config(from_slot) and of
        every configuration a recovered change creates (see the module docstring)."""
        keys = {(n, p.incarnation) for n, p in self.promises.items() if p.complete}
        if not self.config.is_quorum(keys):
            return
        best = self._recovered()
        chain = self._chain(best)
        if chain != self.tentative:
            self.tentative = chain
            asked = set(self.members)
            self._refresh_members()
            for n in self.members:
                if n not in asked:       # a voter only the recovered chain names: ask it too
                    self._send(n, Prepare(self.id, self.ballot, self.from_slot))
        if all(c.is_quorum(keys) for _, c in chain):
            self._become_leader(best)

    def _become_leader(self, best: dict[Slot, tuple[Ballot, Value]]) -> None:
        self.role = Role.LEADER
        self.leader, self.leader_ballot = self.id, self.ballot
        self._drop_fetch()
        top = max(best, default=self.from_slot - 1)
        # A recovered change is in flight: nothing new is proposed until it is chosen.
        changes = [s for s, (_, v) in best.items() if len(v) == 1 and change_in(v) is not None]
        self.change_slot = max(changes) if changes else None
        self.change_queue = None
        self.transfer_to = None
        self.progress.clear()
        self.inflight.clear()
        self.inflight_bytes = 0
        self.chosen_ahead.clear()
        for s in range(self.from_slot, top + 1):
            value = best[s][1] if s in best else NOOP   # holes become no-ops
            size = value_bytes(value)
            self.inflight[s] = (value, set(), self.now_ms, size)
            self.inflight_bytes += size
            self._broadcast(Accept(self.id, self.ballot, s, value, self.acceptor.commit_index))
        self.next_slot = top + 1
        self.recovered_through = top
        self.promises.clear()
        self.nacks.clear()
        self.last_ack_ms = {m: self.now_ms for m in self.members}
        self.heard_ms = {m: t for m, t in self.heard_ms.items() if m in self.members}
        self.refused_by.clear()
        self.hb_acks.clear()
        self.leader_beat_ms = self.leader_duties_ms = self.now_ms
        self._send_heartbeat()
        self._maybe_finish_rebuild()

    # ------------------------------------------------------------- phase 2

    def _flush_proposals(self) -> None:
        if self.role is not Role.LEADER:
            return
        if self.change_slot is not None or self.transfer_to is not None:
            return      # nothing after a change until it is chosen; nothing while handing over
        if self.change_queue is not None:
            # A change goes only at a slot with everything before it chosen.
            if not self.inflight and self.acceptor.commit_index == self.next_slot - 1:
                self._propose_change()
            return
        cfg, pending = self.cfg, self.pending
        while (pending and len(self.inflight) < cfg.max_inflight_slots
               and self.inflight_bytes < cfg.max_inflight_bytes):
            # A batch is cut by count and by encoded bytes, and always takes one command:
            # one command (<= MAX_COMMAND_BYTES) fits any Accept by itself.
            queued = len(pending)
            if (VALUE_OVERHEAD_BYTES + self.pending_bytes + COMMAND_OVERHEAD_BYTES * queued
                    <= cfg.max_batch_bytes and queued <= cfg.max_batch_commands):
                # Everything queued fits (the usual case): one step, no per-command loop.
                value = tuple(pending)
                pending.clear()
                size = VALUE_OVERHEAD_BYTES + self.pending_bytes + COMMAND_OVERHEAD_BYTES * queued
                self.pending_bytes = 0
            else:
                batch: list[bytes] = []
                size = VALUE_OVERHEAD_BYTES
                while pending and len(batch) < cfg.max_batch_commands:
                    cost = len(pending[0]) + COMMAND_OVERHEAD_BYTES
                    if batch and size + cost > cfg.max_batch_bytes:
                        break
                    batch.append(pending.popleft())
                    size += cost
                self.pending_bytes -= size - VALUE_OVERHEAD_BYTES - COMMAND_OVERHEAD_BYTES * len(batch)
                value = tuple(batch)
            slot = self.next_slot
            self.next_slot += 1
            self.inflight[slot] = (value, set(), self.now_ms, size)
            self.inflight_bytes += size
            self._broadcast(Accept(self.id, self.ballot, slot, value, self.acceptor.commit_index))

    def _retransmit_accepts(self, now_ms: int) -> None:
        for slot in sorted(self.inflight):
            value, acks, sent, size = self.inflight[slot]
            if now_ms - sent >= 2 * self.cfg.heartbeat_ms:
                self.inflight[slot] = (value, acks, now_ms, size)
                for m in self.members:
                    if m not in acks:
                        self._send(m, Accept(self.id, self.ballot, slot, value,
                                             self.acceptor.commit_index))

    def _on_accepted(self, m: Accepted) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        self.last_ack_ms[m.src] = self.now_ms
        self._heard(m.src)
        item = self.inflight.get(m.slot)
        if item is None:
            return
        # Counted only for a voter of config(slot), at its incarnation.
        c = self.config_for(m.slot) if self.tentative else self._chosen_config
        if (m.src, m.incarnation) not in c.voter_keys:
            return
        item[1].add(m.src)
        if len(item[1]) >= c.quorum:
            del self.inflight[m.slot]
            self.inflight_bytes -= item[3]
            self.chosen_ahead[m.slot] = item[0]
            self._advance_leader_commit()

    def _advance_leader_commit(self) -> None:
        c = self.acceptor.commit_index
        while c + 1 in self.chosen_ahead:
            c += 1
            value = self.chosen_ahead.pop(c)
            self.acceptor.learn_chosen(c, self.ballot, value, self._ready.persist)
            if len(value) == 1 and value[0].startswith(CHANGE_MARKER):
                self._change_slots.add(c)
        self._set_commit(c)
        self._maybe_finish_rebuild()

    def _set_commit(self, c: Slot) -> None:
        old = self.acceptor.commit_index
        if c > old:
            self.acceptor.set_commit(c)
            self._ready.persist.commit_index = c
            if c > self.known_commit:
                self.known_commit = c
            if self._change_slots:
                self._note_committed(old + 1, c)
        if self.incarnation is None:
            self._maybe_adopt_incarnation()

    def _on_nack(self, m: Nack) -> None:
        self._observe(m.promised)
        if m.ballot != self.ballot or self.role is Role.FOLLOWER:
            return
        self.nacks.add(m.src)
        # One NACK alone does not unseat us (the nacking node may be a lone stray);
        # a quorum of them means a higher ballot holds the majority.
        if self.role is Role.LEADER and m.src != self.id:
            self.refused_by[m.src] = self.now_ms
        latest = self._latest_config()
        if sum(1 for n in self.nacks if (latest.get(n) or _NO_MEMBER).voting) >= latest.quorum:
            self._step_down(f"nacked by a quorum; ballot to beat {self.highest_seen}")

    # ------------------------------------------------------------- heartbeats and reads

    def _send_heartbeat(self) -> None:
        self.hb_round += 1
        self.hb_acks[self.hb_round] = set()
        for k in [k for k in self.hb_acks if k < self.hb_round - 8]:
            del self.hb_acks[k]
        hb = Heartbeat(self.id, self.ballot, self.acceptor.commit_index, self.hb_round)
        self._broadcast(hb)
        if self.departing:
            for node, until in sorted(self.departing.items()):
                if self.now_ms > until:
                    del self.departing[node]
                elif node not in self.members:
                    self._send(node, hb)
        if self.leadership.heartbeats:
            self.leader_beat_ms = self.now_ms   # a heartbeat for a read counts as the beat
        self.hb_wanted = False

    def _on_heartbeat(self, m: Heartbeat) -> None:
        self._observe(m.ballot)
        if m.ballot < self.acceptor.promised:
            self._send(m.src, Nack(self.id, m.ballot, self.acceptor.promised))
            return
        if m.src != self.id:
            if self.role is not Role.FOLLOWER and m.ballot > self.ballot:
                self._step_down(f"heartbeat from higher ballot {m.ballot}")
            if self.role is Role.FOLLOWER:
                self._follow(m.src, m.ballot)
                self._learn_commit(m.ballot, m.commit_index)
                self._maybe_request_catchup()
        if self.incarnation is not None:
            self._send(m.src, HeartbeatAck(self.id, m.ballot, m.round, self.acceptor.commit_index,
                                           self.incarnation))

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        self.last_ack_ms[m.src] = self.now_ms
        self._heard(m.src)
        self.progress[m.src] = (m.incarnation, m.commit_index, self.now_ms)
        if m.src == self.transfer_to:
            self._maybe_hand_over()
        acks = self.hb_acks.get(m.round)
        if acks is None:
            return
        acks.add((m.src, m.incarnation))
        # A read is confirmed by a majority of the chosen configuration and of any
        # tentative one: whichever a next leader's phase 1 needs, we hold a majority of it.
        if (m.round > self.confirmed_round and self.config.is_quorum(acks)
                and all(c.is_quorum(acks) for _, c in self.tentative)):
            self.confirmed_round = m.round

    # ------------------------------------------------------------- learning and catch-up

    def _learn_commit(self, ballot: Ballot, commit: Slot) -> None:
        if commit > self.known_commit:
            self.known_commit = commit
        if self.history is None:
            return      # learns by catch-up first: config(1) comes with slot 1
        c = self.acceptor.commit_index
        while c < commit:
            e = self.acceptor.log.get(c + 1)
            # The leader of `ballot` proposed one value per slot: if ours was
            # accepted at that ballot, it is the chosen one.
            if e is None or e.ballot != ballot:
                break
            c += 1
        self._set_commit(c)

    def _maybe_request_catchup(self, now: bool = False) -> None:
        """A follower behind the leader's commit index keeps one request in flight to it."""
        if self.role is not Role.FOLLOWER or self.leader is None or self.leader == self.id:
            return
        if self.known_commit <= self.acceptor.commit_index:
            self._drop_fetch()    # caught up (perhaps by Accepts): nothing left to fetch
            return
        if now:
            self._fetch_entries(self.leader, self.known_commit)
        else:
            self._drive_fetch(self.leader, self.known_commit)

    def _fetch_entries(self, peer: NodeId, to_slot: Slot) -> None:
        first = self.acceptor.commit_index + 1
        req = CatchupRequest(self.id, first, max(first, to_slot))
        self._drop_fetch()
        self.fetch = Fetch(peer, req, self.now_ms)
        self._send(peer, req)
        self.catchup_sent_ms = self.now_ms

    def _drive_fetch(self, peer: NodeId, to_slot: Slot) -> None:
        """Keep a request to ``peer`` in flight: resend one left unanswered (a snapshot
        resumes at the offset reached), and after a few silent resends start afresh."""
        f = self.fetch
        if f is not None and f.peer == peer:
            if self.now_ms - f.sent_ms < 4 * self.cfg.heartbeat_ms:
                return
            if f.resends < _FETCH_RESENDS:
                f.resends += 1
                f.sent_ms = self.catchup_sent_ms = self.now_ms
                self._send(peer, f.request)
                return
        self._fetch_entries(peer, to_slot)

    def _fetch_done(self, progressed: bool) -> None:
        """A catch-up reply or a whole snapshot was taken in: ask for what is still missing."""
        self._drop_fetch()
        if self.role is Role.CANDIDATE and self.catchup_for_phase1:
            if progressed:
                self._reset_election()
            if progressed and self.acceptor.commit_index < self.catchup_goal:
                self._fetch_entries(self.catchup_peer, self.catchup_goal)
            else:
                self._begin_prepare()  # same ballot, from our new first unchosen slot
        elif progressed:
            self._maybe_request_catchup(now=True)

    def _verify_snapshot(self, f: Fetch) -> bool:
        return f.intact()

    def _drop_fetch(self) -> None:
        if self.fetch is not None:
            self.fetch.drop()      # a partial snapshot's bytes go with it
            self.fetch = None

    def _expected_reply(self, src: NodeId) -> bool:
        """Replies are taken only from the peer a request is in flight to: a forged or
        stale catch-up reply or snapshot chunk changes nothing."""
        return self.fetch is not None and self.fetch.peer == src

    def _label(self) -> Ballot:
        return self.ballot if self.role is Role.LEADER else self.acceptor.promised

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        commit = self.acceptor.commit_index
        snap = self.acceptor.snapshot
        if m.from_slot <= snap.index and (m.from_slot < 2 or m.from_slot not in self.acceptor.log):
            # Compacted here (and not in the tail kept for fetchers): name the snapshot;
            # the requester fetches it in chunks.
            self._send(m.src, CatchupReply(self.id, self._label(), (), self.shelf.info(), commit))
            return
        end = min(m.to_slot, commit, m.from_slot + self.cfg.catchup_batch - 1)
        if m.from_slot > end:
            return
        log, budget = self.acceptor.log, self.cfg.message_budget_bytes
        chosen: list[tuple[Slot, Value]] = []
        used = 0
        for s in range(m.from_slot, end + 1):
            value = log[s].value
            cost = chosen_bytes(value)
            if chosen and (used + cost > budget or len(chosen) >= MAX_MESSAGE_ITEMS):
                break
            chosen.append((s, value))
            used += cost
        config = self.history.at(1) if m.from_slot == 1 and self.history is not None else None
        self._send(m.src, CatchupReply(self.id, self._label(), tuple(chosen), None, commit, config))

    def _on_catchup_reply(self, m: CatchupReply) -> None:
        if not self._expected_reply(m.src):
            self.rejected_replies += 1
            return
        if m.commit_index > self.known_commit:
            self.known_commit = m.commit_index
        f = self.fetch
        if m.snapshot is not None:
            if f is None or m.snapshot.index <= self.acceptor.commit_index or (
                    f.snapshot is not None and (m.snapshot == f.snapshot
                                                or m.snapshot.index < f.snapshot.index)):
                return    # nothing we need, or a duplicate of what we are fetching
            # Behind the peer's snapshot: fetch it, chunk by chunk, from the start.
            f.begin(m.snapshot, self.sinks)
            self._request_chunk(f)
            return
        if f is not None and f.snapshot is not None:
            return        # a straggler from before the snapshot transfer began
        persist = self._ready.persist
        before = c = self.acceptor.commit_index
        if self.history is None:
            # Joining: config(1) comes with slot 1 (or a snapshot brings its own).
            if m.config is None or c != 0 or not m.chosen or m.chosen[0][0] != 1:
                self._fetch_done(progressed=False)
                return
            self.history = ConfigHistory(1, m.config)
            self.acceptor.install_snapshot(Snapshot(0, b"", m.config), persist)
            self._refresh_members()
        for slot, value in m.chosen:
            if slot == c + 1:
                self.acceptor.learn_chosen(slot, m.ballot, value, persist)
                if _is_change(value):
                    self._change_slots.add(slot)
                c = slot
        self._set_commit(c)
        self._fetch_done(progressed=c > before)

    def _request_chunk(self, f: Fetch) -> None:
        f.request = f.next_chunk(self.id)
        f.sent_ms = self.catchup_sent_ms = self.now_ms
        self._send(f.peer, f.request)

    def _on_snapshot_request(self, m: SnapshotRequest) -> None:
        got = self.shelf.chunk(m.index, m.offset, self.cfg.snapshot_chunk_bytes, self.now_ms)
        if got is not None:
            info, offset, data = got
            self._send(m.src, SnapshotChunk(self.id, info, offset, data))
        elif self.acceptor.snapshot.index > 0:
            # No longer kept here: name the current snapshot so the requester moves to it.
            self._send(m.src, CatchupReply(self.id, self._label(), (), self.shelf.info(),
                                           self.acceptor.commit_index))

    def _on_snapshot_chunk(self, m: SnapshotChunk) -> None:
        f = self.fetch
        if (not self._expected_reply(m.src) or f is None or f.snapshot != m.snapshot
                or m.offset != f.received):
            self.rejected_replies += 1
            return
        f.take(m.data)
        f.resends = 0
        if self.role is Role.CANDIDATE:
            self._reset_election()    # a long transfer is progress, not a dead election
        if f.received < m.snapshot.size:
            self._request_chunk(f)
            return
        try:
            if not self._verify_snapshot(f):
                raise ProtocolError("snapshot checksum mismatch")
            snap = f.complete()
        except ProtocolError:
            # Damaged on the way (or a sender's bug): nothing is installed; start again.
            self.bad_snapshots += 1
            f.begin(m.snapshot, self.sinks)
            self._request_chunk(f)
            return
        # Not installed if entries took us past it meanwhile (the adapter reclaims a
        # stored payload nothing refers to).
        installed = snap.index > self.acceptor.commit_index
        if installed:
            self.fetch = None
            self.acceptor.install_snapshot(snap, self._ready.persist)
            self._change_slots = {x for x in self._change_slots if x > snap.index}
            if snap.config is not None:
                if self.history is None:
                    self.history = ConfigHistory(snap.index + 1, snap.config)
                else:
                    self.gone |= set(self.history.latest.ids) - set(snap.config.ids)
                    self.history.reset(snap.index + 1, snap.config)
                self.gone -= set(snap.config.ids)
                self.tentative.clear()
                self._configs_changed()
            self.shelf.replace(snap, self.now_ms)
            self.applied = snap.index
            self._ready.install = snap
            self._ready.committed.clear()
        self._fetch_done(progressed=installed)

    def _collect_committed(self) -> None:
        if self.boot_snapshot is not None:
            self._ready.install = self.boot_snapshot
            self.boot_snapshot = None
        c = self.acceptor.commit_index
        log = self.acceptor.log
        while self.applied < c:
            s = self.applied + 1
            e = log.get(s)
            if e is None:
                raise SafetyViolation(f"slot {s} is committed but not in the log")
            self._ready.committed.append((s, e.value))
            self.applied = s
        if self.reads:
            keep: list[_Read] = []
            for r in self.reads:
                if r.round <= self.confirmed_round and r.index <= self.applied:
                    self._ready.reads.append(r.token)
                else:
                    keep.append(r)
            self.reads = keep
            if keep and self.hb_wanted and self.role is Role.LEADER and self.hb_round < keep[-1].round:
                self._send_heartbeat()
