"""Membership changes under faults: the replica simulator with an operator at the console.

Built on ``cluster.Sim`` (the shared ``world.py``: same network, disks, clock, crash and
partition timers, same seed discipline), with an operator who, every so often, asks the
leader to add a node (a new id, or one removed before: the replace path), remove a member
(a voter, a learner, or the leader itself, which hands over first) or transfer leadership. A node whose add is chosen
is started blank (it learns its configuration and membership from the leader); a node
that applied its own removal stops and is never started again.

The oracle (:class:`ConfigOracle`, the shared ``oracle.SlotOracle`` with another
quorum rule) knows no fixed quorum: a slot is chosen when a majority of the voters of
config(slot) -- computed from the values the oracle itself saw chosen below it, each vote
counted at the incarnation the voter had when it saved it -- accepted one value at one
ballot. Beside per-slot agreement it checks the rule the safety argument rests on: a
change is only ever accepted at slot ``j`` once every slot below ``j`` is chosen (two
changes in flight break it at once), and that an installed snapshot's configuration is
the one the chosen log gives.

Planted bugs (``MUTATIONS``) the tests require to be caught within the CI seeds:
``two_changes_in_flight`` (a leader proposes a change while another is unchosen),
``learner_votes`` (a learner's acceptance counts before its promotion is chosen) and
``ignore_recovered_config`` (phase 1 leads on a majority of config(c + 1) alone,
ignoring the configurations the recovered changes create).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..core.leadership import Functional
from ..core.membership import ChangeKind, Member, Membership, MembershipChange, change_in
from ..core.messages import Accepted
from ..core.replica import Replica, Role
from ..core.types import Ballot, Persist, Slot, Snapshot, Value
from ..storage.memory import MemoryStore
from .cluster import Params, Result, Sim, _Node
from .oracle import SlotOracle
from .world import Disk, Faults

MUTATIONS = ("two_changes_in_flight", "learner_votes", "ignore_recovered_config")

# Ids the operator may add; at most this many nodes exist at once.
POOL = ("n1", "n2", "n3", "n4", "n5", "n6", "n7")
MAX_MEMBERS = 5


class _TwoChangesReplica(Replica):
    """Known-bad: a change is queued and proposed while another is unchosen."""

    def request_change(self, change: MembershipChange) -> str | None:
        saved = (self.change_queue, self.change_slot, self.tentative)
        if self.role is Role.LEADER and self.change_slot is not None:
            self.change_slot = None          # pretend nothing is in flight
            self.tentative = []
            why = super().request_change(change)
            if why is None:
                self._propose_change_now()
            else:
                self.change_queue, self.change_slot, self.tentative = saved
            return why
        return super().request_change(change)

    def _propose_change_now(self) -> None:
        change = self.change_queue
        assert change is not None
        slot = self.next_slot
        try:
            after = self.config.apply(change, slot)
        except Exception:
            self.change_queue = None
            return
        self.change_queue = None
        self.change_slot = slot
        self.next_slot += 1
        from ..core.messages import Accept, value_bytes
        value = change.value()
        self.inflight[slot] = (value, set(), self.now_ms, value_bytes(value))
        self.inflight_bytes += value_bytes(value)
        self.tentative.append((slot + 1, after))
        self._refresh_members()
        self._broadcast(Accept(self.id, self.ballot, slot, value, self.acceptor.commit_index))


class _LearnerVotesReplica(Replica):
    """Known-bad: a learner's acceptance counts as a vote (before its promotion is chosen)."""

    def _on_accepted(self, m: Accepted) -> None:
        c = self.config_for(m.slot)
        me = c.get(m.src)
        if me is not None and not me.voting and me.incarnation == m.incarnation:
            item = self.inflight.get(m.slot)
            if self.role is Role.LEADER and m.ballot == self.ballot and item is not None:
                item[1].add(m.src)
                if len(item[1]) >= c.quorum:
                    del self.inflight[m.slot]
                    self.inflight_bytes -= item[3]
                    self.chosen_ahead[m.slot] = item[0]
                    self._advance_leader_commit()
            return
        super()._on_accepted(m)


class _IgnoreChainReplica(Replica):
    """Known-bad: phase 1 needs a majority of config(c + 1) only."""

    def _maybe_lead(self) -> None:
        keys = {(n, p.incarnation) for n, p in self.promises.items() if p.complete}
        if self.config.is_quorum(keys):
            best = self._recovered()
            self.tentative = self._chain(best)
            self._refresh_members()
            self._become_leader(best)


_MUTANTS: dict[str, type[Replica]] = {
    "two_changes_in_flight": _TwoChangesReplica,
    "learner_votes": _LearnerVotesReplica,
    "ignore_recovered_config": _IgnoreChainReplica,
}


class ConfigOracle(SlotOracle):
    """Per-slot agreement where the quorum of slot ``s`` is a majority of the voters of
    config(s), and the drain rule: a change is accepted at slot ``j`` only once every slot
    below ``j`` is chosen."""

    def __init__(self, boot: Membership, incarnation_of: Callable[[str], int | None],
                 violate: Callable[[str], None],
                 on_chosen: Callable[[Slot, Value], None] | None = None) -> None:
        super().__init__(0, self._violation, on_chosen)
        self.boot = boot
        self.incarnation_of = incarnation_of       # a node's incarnation now (None: unknown)
        self._report = violate
        self.failed = False
        # votes by (slot, ballot) as (node, incarnation); slots that ever held a change
        self.mvotes: dict[tuple[Slot, Ballot], set[tuple[str, int]]] = {}
        self.change_slots: set[Slot] = set()
        self.pending: set[tuple[Slot, Ballot]] = set()

    def _violation(self, what: str) -> None:
        self.failed = True
        self._report(what)

    def saved(self, nid: str, p: Persist) -> None:
        if p.promised is not None:
            self._promised(nid, p.promised)
        inc = self.incarnation_of(nid)
        if p.incarnation is not None:
            inc = p.incarnation
        for e in p.entries:
            key = (e.slot, e.ballot)
            self._accepted(key, e.value)
            if change_in(e.value) is not None:
                self.change_slots.add(e.slot)
                # The drain rule: a change is accepted only once every slot below it is chosen.
                missing = [s for s in range(1, e.slot) if s not in self.chosen]
                if missing:
                    self.violate(f"a change was accepted at slot {e.slot} while slot "
                                 f"{missing[0]} was not chosen (two changes in flight?)")
            if inc is not None:
                self.mvotes.setdefault(key, set()).add((nid, inc))
            self.pending.add(key)
        self.settle()

    def config_at(self, slot: Slot) -> Membership | None:
        """config(slot) from what the oracle saw chosen; None while a slot below it that
        ever held a change is not known chosen."""
        c = self.boot
        for s in sorted(x for x in self.change_slots if x < slot):
            v = self.chosen.get(s)
            if v is None:
                return None
            ch = change_in(v)
            if ch is not None:
                try:
                    c = c.apply(ch, s)
                except Exception as e:
                    self.violate(f"the change chosen at slot {s} does not apply: {e}")
                    return None
        return c

    def settle(self) -> None:
        """Choose every pending (slot, ballot) whose votes now make a quorum of its config."""
        progress = True
        while progress and not self.failed:
            progress = False
            for key in sorted(self.pending):
                slot, _ = key
                if slot in self.chosen and self.vote_value.get(key) == self.chosen[slot]:
                    self.pending.discard(key)
                    continue
                c = self.config_at(slot)
                if c is None:
                    continue
                if c.is_quorum(self.mvotes.get(key, set())):
                    self.pending.discard(key)
                    before = len(self.chosen)
                    self._chosen(slot, self.vote_value[key])
                    progress = progress or len(self.chosen) > before

    def applied_entry(self, nid: str, slot: Slot, value: Value) -> None:
        if slot not in self.chosen:
            self.settle()
        super().applied_entry(nid, slot, value)


class _MemberFaults(Faults):
    """The shared crash timer, over the members still running: a node that applied its
    own removal is never restarted, and a majority of the rest stays up."""

    def __init__(self, sim: MembershipSim) -> None:
        p = sim.p
        super().__init__(sim.world, sim.net, sim, sim.ids, p.crash_every_ms,
                         p.partition_every_ms, p.disk_loss, p.safety_ms)
        self.sim = sim
        self.ids = sim.ids      # the same list: a node added joins the partition draws

    def crash_or_restart(self) -> None:
        sim = self.sim
        live = [i for i in sim.ids if i not in sim.removed]
        nid = self.world.rng.choice(live)
        if sim.is_up(nid):
            down = sum(1 for i in live if not sim.is_up(i))
            if down + 1 < (len(live) + 1) // 2:
                sim.crash(nid)
        else:
            sim.restart(nid, False)


@dataclass
class _Ask:
    """What the operator last asked for (one at a time, like `coordctl member ...`)."""

    kind: str
    node: str
    since_ms: int


class MembershipSim(Sim):
    def __init__(self, seed: int, mutation: str | None = None, nodes: int | None = None,
                 params: Params | None = None) -> None:
        if mutation is not None and mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation}")
        self.member_mutation = mutation
        super().__init__(seed, None, nodes or 3, params)
        self.boot = list(self.ids)
        self.drift_of = dict(zip(self.ids, self.p.drift, strict=True))
        # Changes come often when hunting a planted bug: the phase-1 chain only matters
        # when a candidate lags two changes behind, which needs changes in quick succession.
        self.change_every_ms = self.rng.choice((30, 60, 120)) if mutation else \
            self.rng.choice((100, 200, 400, 800))
        self.removed: set[str] = set()          # stopped for good
        self.boot_config = Membership.bootstrap(self.boot)
        self.config_oracle = ConfigOracle(self.boot_config, self._incarnation, self._violate,
                                          self._chosen)
        self.oracle = self.config_oracle
        self.faults = _MemberFaults(self)
        self.ask: _Ask | None = None
        self.stats.update({"changes_asked": 0, "changes_chosen": 0, "joined": 0, "removed": 0,
                           "transfers": 0, "refused": 0})

    def _tuned(self, p: Params, mutation: str | None) -> Params:
        # No lost disks here (the rebuilding rule has its own simulation); snapshots often.
        # A node added late copies the whole log (no snapshot when snapshot_every is
        # large) at one entry per round trip under 16-byte budgets: give healing longer.
        p = replace(p, disk_loss=0.0, forge_every_ms=10**9, heal_ms=40_000)
        if self.member_mutation is not None:
            p = replace(p, crash_every_ms=self.rng.choice((150, 10**9)),
                        partition_every_ms=self.rng.choice((100, 250)), max_delay_ms=20,
                        loss=max(p.loss, 0.05))
        return p

    def _incarnation(self, nid: str) -> int | None:
        r = self.nodes[nid].replica
        return None if r is None else r.incarnation

    # ---------------------------------------------------------------- nodes

    def _local_now(self, nid: str) -> int:
        return int(self.now * self.drift_of[nid])

    def _boot(self, nid: str) -> None:
        node = self.nodes[nid]
        durable = node.store.load()
        cls = _MUTANTS.get(self.member_mutation or "", Replica)
        node.replica = cls(nid, self.boot, durable, random.Random(self.rng.random()),
                           self._local_now(nid), self.cfg, leadership=Functional())
        node.saving = False
        node.epoch += 1
        self.oracle.booted(nid)
        self.world.at(self.now + 1, self._ev_tick, (nid, node.epoch))

    def _start_joining(self, nid: str) -> None:
        store = MemoryStore()
        store.incarnation = None
        old = self.nodes.get(nid)
        # A fresh disk and epoch range: nothing queued for the old process reaches the new one.
        self.nodes[nid] = _Node(nid, store, Disk(self.world, self.p.disk_ms),
                                epoch=0 if old is None else old.epoch + 1000)
        if nid not in self.ids:
            self.ids.append(nid)
        self.drift_of.setdefault(nid, round(self.rng.uniform(0.9, 1.1), 3))
        self.stats["joined"] += 1
        self.world.note("join", nid)
        self._boot(nid)

    def _saved(self, nid: str, ready: Any) -> None:
        super()._saved(nid, ready)
        node = self.nodes[nid]
        r = node.replica
        if r is not None and r.status().removed:
            # It applied its own removal: stopped, and never started again.
            node.replica = None
            node.epoch += 1
            node.disk.crash()
            self.removed.add(nid)
            self.stats["removed"] += 1
            self.world.note("removed", nid)

    def restart(self, nid: str, wipe: bool) -> None:
        if nid not in self.removed:
            super().restart(nid, wipe)

    def healed(self) -> None:
        self.world.note("heal")
        for nid in self.ids:
            if self.nodes[nid].replica is None and nid not in self.removed:
                self._boot(nid)

    # ---------------------------------------------------------------- the operator

    def _operate(self) -> None:
        lead_id = self._leader()
        if lead_id is None:
            return
        lead = self.nodes[lead_id].replica
        assert lead is not None
        st = lead.status()
        cfg = st.config
        if self.ask is not None and self.now - self.ask.since_ms < 3000:
            # Like an impatient operator, sometimes ask again before the last change is
            # chosen: the leader must refuse (one change in flight).
            if not self._ask_done(cfg) and (not self.faults.active or self.rng.random() < 0.7):
                return
        if self.ask is not None and self._ask_done(cfg):
            self.ask = None
        members = cfg.ids
        choices = []
        if len(members) < MAX_MEMBERS:
            choices += ["add", "add"]
        if len(cfg.voters) > 2 or cfg.learners:
            choices += ["remove"]
        choices += ["transfer"]
        kind = self.rng.choice(choices)
        if kind == "add":
            free = [i for i in POOL if i not in members
                    and (self.nodes.get(i) is None or self.nodes[i].replica is None)]
            if not free:
                return
            nid = self.rng.choice(free)
            change = MembershipChange(ChangeKind.ADD, Member(nid, address=f"sim://{nid}"))
        elif kind == "remove":
            victim = self.rng.choice(list(cfg.members))
            nid = victim.id
            change = MembershipChange(ChangeKind.REMOVE, victim)
        else:
            others = [v.id for v in cfg.voters if v.id != lead_id]
            if not others:
                return
            nid = self.rng.choice(others)
            self.stats["transfers"] += 1
            why = lead.transfer_leadership(nid)
            self.world.note("transfer", nid, why)
            self._pump(lead_id)
            return
        self.stats["changes_asked"] += 1
        why = lead.request_change(change)
        self.world.note("ask", kind, nid, why)
        if why is not None:
            self.stats["refused"] += 1
            return
        if self.ask is None or kind == "add":
            self.ask = _Ask(kind, nid, self.now)
        self._pump(lead_id)

    def _ask_done(self, cfg: Membership) -> bool:
        a = self.ask
        assert a is not None
        if a.kind == "add":
            m = cfg.get(a.node)
            if m is None:
                return False
            n = self.nodes.get(a.node)
            r = None if n is None else n.replica
            if r is None or (r.incarnation is not None and r.incarnation != m.incarnation):
                # `node init` + `serve` of the new member, on a fresh disk (an old process
                # under this id, removed before, is retired: the replace path).
                self.removed.discard(a.node)
                self._start_joining(a.node)
            return True
        return cfg.get(a.node) is None

    def _ev_operate(self, _: Any) -> None:
        self._operate()
        if self.faults.active or self.ask is not None:
            self.world.at(self.now + self.rng.randint(1, 2 * self.change_every_ms),
                          self._ev_operate)

    # ---------------------------------------------------------------- oracle

    def _chosen(self, slot: Slot, value: Value) -> None:
        if change_in(value) is None:
            super()._chosen(slot, value)     # client commands: proposed by someone
        else:
            self.stats["changes_chosen"] += 1    # the leader's or the operator's change

    def _ev_deliver(self, data: Any) -> None:
        if data[0] in self.nodes:            # a node not started yet hears nothing
            super()._ev_deliver(data)

    def _install(self, node: _Node, snap: Snapshot) -> None:
        super()._install(node, snap)
        want = self.config_oracle.config_at(snap.index + 1)
        if snap.config is not None and want is not None and snap.config != want:
            self._violate(f"{node.id} installed a snapshot at {snap.index} whose configuration "
                          f"is not config({snap.index + 1}) of the chosen log")

    # ---------------------------------------------------------------- main loop

    def run(self) -> Result:
        self.world.at(self.change_every_ms, self._ev_operate)
        return super().run()

    def _converged(self) -> bool:
        top = max(self.oracle.chosen, default=0)
        lead_id = self._leader()
        if lead_id is None or self.ask is not None:
            return False
        lead = self.nodes[lead_id].replica
        assert lead is not None
        cfg = lead.status().config
        if cfg.learners:
            return False            # every learner is promoted once caught up
        for m in cfg.members:
            n = self.nodes.get(m.id)
            if n is None or n.replica is None or self.oracle.applied.get(m.id, 0) < top:
                return False
        return True


def run(seed: int, mutation: str | None = None, nodes: int | None = None) -> Result:
    return MembershipSim(seed, mutation, nodes).run()
