"""One multi-Paxos replica: acceptor + proposer/leader + learner + leadership.

Sans-I/O in the style of etcd raft: inputs are ``receive``, ``tick``, ``propose``,
``read`` (and, for external leadership, ``suspect``/``leader_is``); the output is
a :class:`Ready` holding what to persist, what to send, what was chosen and
which reads are now safe. The driver must ``save(ready.persist)`` before it sends
``ready.messages``, then call :meth:`advance`. Until ``advance`` no new Ready is
handed out, so a reply produced while an earlier save is in flight (e.g. to a
duplicate Prepare) can never overtake that save.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .acceptor import Acceptor
from .messages import (
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
    Promise,
)
from .types import (
    NOOP,
    ZERO_BALLOT,
    Ballot,
    Config,
    Durable,
    NodeId,
    Persist,
    SafetyViolation,
    Slot,
    Snapshot,
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
    # Session ids the leader reported renewed (followers only): restart their clocks.
    renewed: list[int] = field(default_factory=list)

    def empty(self) -> bool:
        return (self.persist.empty() and not self.messages and not self.committed
                and self.install is None and not self.reads and not self.aborted_reads
                and not self.aborted_commands and not self.renewed)


@dataclass(slots=True)
class _Read:
    token: Hashable
    index: Slot
    round: int


class Replica:
    def __init__(self, node_id: NodeId, members: list[NodeId], durable: Durable,
                 rng: Random, now_ms: int, config: Config = Config(),
                 external_leadership: bool = False) -> None:
        if node_id not in members:
            raise UsageError(f"{node_id} is not one of the members {members}")
        self.id = node_id
        self.members = sorted(members)
        self.quorum = len(self.members) // 2 + 1
        self.cfg = config
        self.rng = rng
        self.external = external_leadership
        self.acceptor = Acceptor(node_id, durable, config.catchup_batch)
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
        self.promises: dict[NodeId, Promise] = {}
        self.nacks: set[NodeId] = set()
        self.catchup_for_phase1 = False
        # leader state
        self.next_slot: Slot = 0
        self.inflight: dict[Slot, tuple[Value, set[NodeId], int]] = {}
        self.chosen_ahead: dict[Slot, Value] = {}
        self.recovered_through: Slot = 0
        self.pending: deque[bytes] = deque()
        self.hb_round = 0
        self.hb_acks: dict[int, set[NodeId]] = {}
        self.confirmed_round = 0
        self.reads: list[_Read] = []
        self.last_hb_sent_ms = -10**12
        self.hb_wanted = False
        self.last_ack_ms: dict[NodeId, int] = {}
        self.renewed: list[int] = []

        # catch-up
        self.catchup_sent_ms = -10**12
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

        self._ready = Ready()
        self._outstanding = False

    # ------------------------------------------------------------------ inputs

    def propose(self, command: bytes) -> bool:
        """Queue a command for the log. False if we are not leader or the queue is full."""
        if self.role is not Role.LEADER or len(self.pending) >= self.cfg.max_pending_commands:
            return False
        self.pending.append(command)
        return True

    def read(self, token: Hashable) -> bool:
        """Ask for a linearizable read point. False if we are not leader."""
        if self.role is not Role.LEADER:
            return False
        index = max(self.acceptor.commit_index, self.recovered_through)
        self.reads.append(_Read(token, index, self.hb_round + 1))
        self.hb_wanted = True
        return True

    def note_renewal(self, session_id: int) -> None:
        """A session keep-alive reached us as leader; tell followers on the next heartbeat."""
        if self.role is Role.LEADER and len(self.renewed) < 4096:
            self.renewed.append(session_id)

    def tick(self, now_ms: int) -> None:
        self.now_ms = now_ms
        if self.role is Role.LEADER:
            if self._lost_quorum(now_ms):
                self._step_down("no quorum heard within the election timeout")
                return
            due = now_ms - self.last_hb_sent_ms >= self.cfg.heartbeat_ms
            if not self.external and due:
                self._send_heartbeat()
            if due:
                self._retransmit_accepts(now_ms)
        elif self.rebuilding and self.role is Role.FOLLOWER:
            self._rebuild_check_ms = now_ms + self.cfg.heartbeat_ms
            self._campaign_when_caught_up(now_ms)
        elif not self.external and now_ms >= self.election_deadline:
            self._start_phase1()
        elif self.role is Role.CANDIDATE and now_ms - self.catchup_sent_ms > 4 * self.cfg.heartbeat_ms:
            self._resend_prepares()
        self._maybe_request_catchup()

    def next_timer_ms(self) -> int:
        """The earliest time ``tick`` has something to do (the driver may sleep until then)."""
        hb = self.cfg.heartbeat_ms
        if self.role is Role.LEADER:
            return self.last_hb_sent_ms + hb
        due = self.election_deadline if not self.external else self.now_ms + 10 * hb
        if self.role is Role.CANDIDATE or self.known_commit > self.acceptor.commit_index:
            due = min(due, self.catchup_sent_ms + 4 * hb + 1)
        if self.rebuilding and self.role is Role.FOLLOWER:
            due = min(due, self._campaign_at if self._campaign_at is not None
                      else self._rebuild_check_ms)
        return due

    def suspect(self, node: NodeId) -> None:
        """External failure detector: `node` is believed dead."""
        if node == self.leader and self.role is Role.FOLLOWER:
            self.leader = None

    def leader_is(self, node: NodeId) -> None:
        """External failure detector: `node` should lead."""
        if node == self.id and not self.rebuilding:
            if self.role is Role.FOLLOWER:
                self._start_phase1()
        else:
            if self.role is not Role.FOLLOWER:
                self._step_down(f"external detector chose {node}")
            self.leader = node

    def compact(self, snapshot: Snapshot) -> None:
        """The state machine was snapshotted through ``snapshot.index``; drop the log below."""
        if snapshot.index > self.applied:
            raise UsageError(f"snapshot {snapshot.index} beyond applied {self.applied}")
        if snapshot.index <= self.acceptor.snapshot.index:
            return
        self.acceptor.install_snapshot(snapshot, self._ready.persist)

    def receive(self, msg: Message, now_ms: int) -> None:
        self.now_ms = now_ms
        if msg.src not in self.members:
            return  # not one of ours: ignore (counted by the transport)
        if self.rebuilding and self._receive_rebuilding(msg):
            return
        if isinstance(msg, Prepare):
            self._observe(msg.ballot)
            self._reply(msg.src, self.acceptor.on_prepare(msg, self._ready.persist))
            if msg.ballot > self.ballot and self.role is not Role.FOLLOWER and msg.src != self.id:
                self._step_down(f"promised higher ballot {msg.ballot}")
        elif isinstance(msg, Accept):
            self._observe(msg.ballot)
            reply = self.acceptor.on_accept(msg, self._ready.persist)
            self._reply(msg.src, reply)
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
        if self.external or self.leader is None or self.known_commit > self.acceptor.commit_index:
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

    def _observe(self, b: Ballot) -> None:
        if b > self.highest_seen:
            self.highest_seen = b

    def _follow(self, node: NodeId, ballot: Ballot) -> None:
        if ballot >= self.leader_ballot or self.leader is None:
            self.leader, self.leader_ballot = node, ballot
        if node != self.id:
            self._reset_election()

    def _lost_quorum(self, now_ms: int) -> bool:
        if self.external:
            return False
        limit = self.cfg.election_timeout_ms
        fresh = sum(1 for m in self.members
                    if (m == self.id and not self.rebuilding)
                    or (m != self.id and now_ms - self.last_ack_ms.get(m, -10**12) <= limit))
        return fresh < self.quorum

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
        self.chosen_ahead.clear()
        self._ready.aborted_reads.extend(r.token for r in self.reads)
        self.reads.clear()
        self._ready.aborted_commands.extend(self.pending)
        self.pending.clear()
        self.renewed.clear()
        self.hb_acks.clear()
        self._reset_election()

    # ------------------------------------------------------------- phase 1

    def _start_phase1(self) -> None:
        top = max(self.high_water_round, self.highest_seen.round, self.acceptor.promised.round)
        self.high_water_round = top + 1
        self._ready.persist.high_water_round = self.high_water_round  # saved before the Prepare leaves
        if self.role is Role.LEADER:
            self._step_down("re-preparing")
        self.role = Role.CANDIDATE
        self.ballot = Ballot(self.high_water_round, self.id)
        self.leader = None
        self._begin_prepare()
        self._reset_election()

    def _begin_prepare(self) -> None:
        self.from_slot = self.acceptor.commit_index + 1
        self.promises.clear()
        self.nacks.clear()
        self.catchup_for_phase1 = False
        self._broadcast(Prepare(self.id, self.ballot, self.from_slot))
        self.catchup_sent_ms = self.now_ms

    def _resend_prepares(self) -> None:
        self.catchup_sent_ms = self.now_ms
        if self.catchup_for_phase1:
            self._request_catchup_from_best()
            return
        for m in self.members:
            if m not in self.promises:
                self._send(m, Prepare(self.id, self.ballot, self.from_slot))

    def _on_promise(self, m: Promise) -> None:
        if self.role is not Role.CANDIDATE or m.ballot != self.ballot or m.from_slot != self.from_slot:
            return
        self.promises[m.src] = m
        if m.commit_index > self.known_commit:
            self.known_commit = m.commit_index
        if len(self.promises) < self.quorum or self.catchup_for_phase1:
            return
        if any(p.snapshot_index >= self.from_slot for p in self.promises.values()):
            # Chosen slots we do not hold were compacted or omitted: learn them first.
            self.catchup_for_phase1 = True
            self._request_catchup_from_best()
            return
        self._become_leader()

    def _request_catchup_from_best(self) -> None:
        best = max(self.promises.values(), key=lambda p: (p.snapshot_index, p.commit_index, p.src))
        self._send(best.src, CatchupRequest(self.id, self.acceptor.commit_index + 1, best.commit_index))
        self.catchup_sent_ms = self.now_ms

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader, self.leader_ballot = self.id, self.ballot
        best: dict[Slot, tuple[Ballot, Value]] = {}
        for p in self.promises.values():
            for e in p.accepted:
                if e.slot >= self.from_slot and (e.slot not in best or e.ballot > best[e.slot][0]):
                    best[e.slot] = (e.ballot, e.value)
        top = max(best, default=self.from_slot - 1)
        self.inflight.clear()
        self.chosen_ahead.clear()
        for s in range(self.from_slot, top + 1):
            value = best[s][1] if s in best else NOOP   # holes become no-ops
            self.inflight[s] = (value, set(), self.now_ms)
            self._broadcast(Accept(self.id, self.ballot, s, value, self.acceptor.commit_index))
        self.next_slot = top + 1
        self.recovered_through = top
        self.promises.clear()
        self.nacks.clear()
        self.last_ack_ms = {m: self.now_ms for m in self.members}
        self.hb_acks.clear()
        self._send_heartbeat()
        self._maybe_finish_rebuild()

    # ------------------------------------------------------------- phase 2

    def _flush_proposals(self) -> None:
        if self.role is not Role.LEADER:
            return
        while self.pending and len(self.inflight) < self.cfg.max_inflight_slots:
            n = min(len(self.pending), self.cfg.max_batch_commands)
            batch = tuple(self.pending.popleft() for _ in range(n))
            slot = self.next_slot
            self.next_slot += 1
            self.inflight[slot] = (batch, set(), self.now_ms)
            self._broadcast(Accept(self.id, self.ballot, slot, batch, self.acceptor.commit_index))

    def _retransmit_accepts(self, now_ms: int) -> None:
        for slot in sorted(self.inflight):
            value, acks, sent = self.inflight[slot]
            if now_ms - sent >= 2 * self.cfg.heartbeat_ms:
                self.inflight[slot] = (value, acks, now_ms)
                for m in self.members:
                    if m not in acks:
                        self._send(m, Accept(self.id, self.ballot, slot, value,
                                             self.acceptor.commit_index))

    def _on_accepted(self, m: Accepted) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        self.last_ack_ms[m.src] = self.now_ms
        item = self.inflight.get(m.slot)
        if item is None:
            return
        item[1].add(m.src)
        if len(item[1]) >= self.quorum:
            del self.inflight[m.slot]
            self.chosen_ahead[m.slot] = item[0]
            self._advance_leader_commit()

    def _advance_leader_commit(self) -> None:
        c = self.acceptor.commit_index
        while c + 1 in self.chosen_ahead:
            c += 1
            self.acceptor.learn_chosen(c, self.ballot, self.chosen_ahead.pop(c), self._ready.persist)
        self._set_commit(c)
        self._maybe_finish_rebuild()

    def _set_commit(self, c: Slot) -> None:
        if c > self.acceptor.commit_index:
            self.acceptor.commit_index = c
            self._ready.persist.commit_index = c
            if c > self.known_commit:
                self.known_commit = c

    def _on_nack(self, m: Nack) -> None:
        self._observe(m.promised)
        if m.ballot != self.ballot or self.role is Role.FOLLOWER:
            return
        self.nacks.add(m.src)
        # One NACK alone does not unseat us (the nacking node may be a lone stray);
        # a quorum of them means a higher ballot holds the majority.
        if len(self.nacks) >= self.quorum:
            self._step_down(f"nacked by a quorum; ballot to beat {self.highest_seen}")

    # ------------------------------------------------------------- heartbeats and reads

    def _send_heartbeat(self) -> None:
        self.hb_round += 1
        self.hb_acks[self.hb_round] = set()
        for k in [k for k in self.hb_acks if k < self.hb_round - 8]:
            del self.hb_acks[k]
        renewed, self.renewed = tuple(self.renewed), []
        self._broadcast(Heartbeat(self.id, self.ballot, self.acceptor.commit_index,
                                  self.hb_round, renewed))
        self.last_hb_sent_ms = self.now_ms
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
                self._ready.renewed.extend(m.renewed)
                self._learn_commit(m.ballot, m.commit_index)
                self._maybe_request_catchup()
        self._send(m.src, HeartbeatAck(self.id, m.ballot, m.round, self.acceptor.commit_index))

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        self.last_ack_ms[m.src] = self.now_ms
        acks = self.hb_acks.get(m.round)
        if acks is None:
            return
        acks.add(m.src)
        if len(acks) >= self.quorum and m.round > self.confirmed_round:
            self.confirmed_round = m.round

    # ------------------------------------------------------------- learning and catch-up

    def _learn_commit(self, ballot: Ballot, commit: Slot) -> None:
        if commit > self.known_commit:
            self.known_commit = commit
        c = self.acceptor.commit_index
        while c < commit:
            e = self.acceptor.log.get(c + 1)
            # The leader of `ballot` proposed one value per slot: if ours was
            # accepted at that ballot, it is the chosen one.
            if e is None or e.ballot != ballot:
                break
            c += 1
        self._set_commit(c)

    def _maybe_request_catchup(self) -> None:
        if self.role is not Role.FOLLOWER or self.leader is None or self.leader == self.id:
            return
        if self.known_commit <= self.acceptor.commit_index:
            return
        if self.now_ms - self.catchup_sent_ms < 4 * self.cfg.heartbeat_ms:
            return
        self.catchup_sent_ms = self.now_ms
        self._send(self.leader, CatchupRequest(self.id, self.acceptor.commit_index + 1,
                                               self.known_commit))

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        commit = self.acceptor.commit_index
        snap = self.acceptor.snapshot
        start = m.from_slot
        snapshot = None
        if start <= snap.index:
            snapshot, start = snap, snap.index + 1
        end = min(m.to_slot, commit, start + self.cfg.catchup_batch - 1)
        if snapshot is None and start > end:
            return
        chosen = tuple((s, self.acceptor.log[s].value) for s in range(start, end + 1))
        label = self.ballot if self.role is Role.LEADER else self.acceptor.promised
        self._send(m.src, CatchupReply(self.id, label, chosen, snapshot, commit))

    def _on_catchup_reply(self, m: CatchupReply) -> None:
        if m.commit_index > self.known_commit:
            self.known_commit = m.commit_index
        persist = self._ready.persist
        if m.snapshot is not None and m.snapshot.index > self.acceptor.commit_index:
            self.acceptor.install_snapshot(m.snapshot, persist)
            self.applied = m.snapshot.index
            self._ready.install = m.snapshot
            self._ready.committed.clear()
        c = self.acceptor.commit_index
        for slot, value in m.chosen:
            if slot == c + 1:
                self.acceptor.learn_chosen(slot, m.ballot, value, persist)
                c = slot
        self._set_commit(c)
        self.catchup_sent_ms = -10**12  # ask for the next batch straight away
        if self.role is Role.CANDIDATE and self.catchup_for_phase1:
            self._begin_prepare()  # same ballot, from our new first unchosen slot

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
