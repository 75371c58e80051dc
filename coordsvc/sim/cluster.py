"""A seeded, deterministic simulation of N bare replicas over a faulty network and disk.

Everything random is drawn from one ``random.Random(seed)``: the fault rates
themselves, message loss/duplication/delay, partitions, crashes, clock drift and
proposals of opaque commands. The network, the fault timers and the per-slot oracle are
shared with the whole-node simulation (``world.py``, ``oracle.py``); the oracle watches
every durable save and never forgets what was chosen, so a violation is caught at the
step that caused it.

Byte budgets are tiny (tens of bytes, drawn per seed), so nearly every Accept batch,
Promise, catch-up reply and snapshot is cut into several messages or chunks. The network
may also damage a snapshot chunk's bytes and deliver forged catch-up replies that claim
to come from a peer the receiver did not ask; both must change nothing.

Known-bad variants (``mutation``) exist so tests can show the simulator catches them:
``forget_promise`` (a restarted acceptor loses its promise), ``skip_adopt`` (a new
leader ignores accepted values in promises), ``reply_before_save`` (the driver
sends before the save completes), ``wiped_node_votes`` (a node whose disk was lost comes
back blank and votes at once, instead of rebuilding as a non-voting learner),
``skip_checksum`` (a snapshot is installed without checking its checksum),
``trust_any_reply`` (catch-up replies are taken from any peer, asked or not),
``lead_on_partial_promises`` (a candidate counts a promise before all its chunks came).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.messages import (
    CatchupReply,
    Message,
    Outbound,
    Promise,
    SnapshotChunk,
)
from ..core.replica import Ready, Replica, Role
from ..core.transfer import Fetch
from ..core.types import Ballot, Config, Durable, NodeId, SafetyViolation, Slot, Snapshot, Value
from ..storage.memory import MemoryStore
from .mutations import SkipAdoptReplica
from .oracle import SlotOracle
from .world import Disk, Faults, Network, World

MUTATIONS = ("forget_promise", "skip_adopt", "reply_before_save", "wiped_node_votes",
             "skip_checksum", "trust_any_reply", "lead_on_partial_promises")


@dataclass(frozen=True)
class Params:
    nodes: int
    loss: float
    dup: float
    max_delay_ms: int
    disk_ms: int
    crash_every_ms: int
    partition_every_ms: int
    drift: tuple[float, ...]
    propose_every_ms: int
    safety_ms: int
    heal_ms: int
    snapshot_every: int
    disk_loss: float          # chance that a restart finds the node's disk wiped
    batch_bytes: int          # one Accept's batch
    budget_bytes: int         # promises and catch-up replies
    chunk_bytes: int          # snapshot chunks
    snapshot_pad: int         # filler bytes in each snapshot, so they span many chunks
    corrupt: float            # chance that a snapshot chunk arrives damaged
    forge_every_ms: int       # forged catch-up replies from a peer nobody asked

    @staticmethod
    def draw(rng: random.Random, nodes: int | None = None) -> Params:
        n = nodes or rng.choice((3, 3, 5))
        return Params(
            nodes=n,
            loss=rng.choice((0.0, 0.02, 0.1, 0.25)),
            dup=rng.choice((0.0, 0.05, 0.2)),
            max_delay_ms=rng.choice((1, 5, 20, 60)),
            disk_ms=rng.choice((0, 1, 5, 15)),
            crash_every_ms=rng.choice((150, 400, 1000, 10**9)),
            partition_every_ms=rng.choice((200, 600, 1500, 10**9)),
            drift=tuple(round(rng.uniform(0.9, 1.1), 3) for _ in range(n)),
            propose_every_ms=rng.choice((5, 20, 60)),
            safety_ms=2500,
            # Long enough for a node left ~400 slots behind to catch up at one entry per
            # round trip (16-byte budgets, 60 ms delays); a run ends once it converges.
            heal_ms=20000,
            snapshot_every=rng.choice((8, 50, 10**9)),
            disk_loss=rng.choice((0.0, 0.0, 0.2, 0.5)),
            batch_bytes=rng.choice((45, 60, 200)),
            budget_bytes=rng.choice((16, 60, 200)),
            chunk_bytes=rng.choice((7, 40)),
            snapshot_pad=rng.choice((0, 100)),
            corrupt=rng.choice((0.0, 0.0, 0.05)),
            forge_every_ms=rng.choice((10**9, 10**9, 100)),
        )


class Violation(Exception):
    pass


class _SkipChecksumReplica(Replica):
    def _verify_snapshot(self, f: Fetch) -> bool:
        # Known-bad: trusts whatever arrived, as long as there is enough of it.
        return f.snapshot is not None and f.received == f.snapshot.size


class _TrustAnyReplyReplica(Replica):
    def _expected_reply(self, src: NodeId) -> bool:
        return True                          # known-bad: takes replies nobody asked for


class _PartialPromiseReplica(Replica):
    def _on_promise(self, m: Promise) -> None:
        # Known-bad: take the first chunk of a promise as the whole promise.
        if m.next_slot:
            m = Promise(m.src, m.ballot, m.from_slot, m.accepted, m.commit_index,
                        m.snapshot_index, 0)
        super()._on_promise(m)


_MUTANTS: dict[str, type[Replica]] = {
    "skip_adopt": SkipAdoptReplica, "skip_checksum": _SkipChecksumReplica,
    "trust_any_reply": _TrustAnyReplyReplica,
    "lead_on_partial_promises": _PartialPromiseReplica,
}


@dataclass
class _Node:
    id: str
    store: MemoryStore
    disk: Disk
    replica: Replica | None = None
    saving: bool = False
    epoch: int = 0


@dataclass
class Result:
    seed: int
    params: Params
    violations: list[str]
    trace_hash: str
    chosen: int
    unchosen: int
    stats: dict[str, int] = field(default_factory=dict)


class Sim:
    def __init__(self, seed: int, mutation: str | None = None, nodes: int | None = None,
                 params: Params | None = None) -> None:
        if mutation is not None and mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.world = World(self.rng)
        self.p = self._tuned(params or Params.draw(self.rng, nodes), mutation)
        self.mutation = mutation
        self.ids = [f"n{i + 1}" for i in range(self.p.nodes)]
        self.quorum = self.p.nodes // 2 + 1
        self.cfg = Config(heartbeat_ms=30, election_timeout_ms=200, max_inflight_slots=16,
                          max_inflight_bytes=12 * self.p.batch_bytes,
                          max_batch_commands=8, max_batch_bytes=self.p.batch_bytes,
                          max_pending_bytes=20 * self.p.batch_bytes,
                          catchup_batch=16, message_budget_bytes=self.p.budget_bytes,
                          snapshot_chunk_bytes=self.p.chunk_bytes, snapshot_retain_ms=300,
                          snapshot_every=self.p.snapshot_every)
        self.nodes = {i: _Node(i, MemoryStore(), Disk(self.world, self.p.disk_ms))
                      for i in self.ids}
        self.net = Network(self.world, self.p.loss, self.p.dup, self.p.max_delay_ms)
        self.faults = Faults(self.world, self.net, self, self.ids, self.p.crash_every_ms,
                             self.p.partition_every_ms, self.p.disk_loss, self.p.safety_ms)
        self.oracle = SlotOracle(self.quorum, self._violate, self._chosen,
                                 promises_may_regress=mutation == "forget_promise")
        self.snapshot_data: dict[Slot, bytes] = {}   # every snapshot a node made, by index
        self.proposed: set[bytes] = set()
        self.outstanding: set[bytes] = set()
        self.last_try: dict[bytes, int] = {}
        self.seen_chosen: set[bytes] = set()
        self.violations: list[str] = []
        self.stats = {"delivered": 0, "dropped": 0, "crashes": 0, "elections": 0, "saves": 0,
                      "snapshot_chunks": 0, "corrupted": 0, "forged": 0, "promise_chunks": 0,
                      "installs": 0}
        self.next_cmd = 0

    def _tuned(self, p: Params, mutation: str | None) -> Params:
        """The parameters of this run, from those drawn (a subclass may adjust them before
        the network and fault timers are built from them)."""
        if mutation is None:
            return p
        # Bad variants need faults to show; keep the run violent.
        return replace(p, crash_every_ms=120, disk_ms=8, partition_every_ms=300,
                       max_delay_ms=20,
                       disk_loss=0.5 if mutation == "wiped_node_votes" else 0.0,
                       corrupt=0.3 if mutation == "skip_checksum" else 0.0,
                       snapshot_every=(8 if mutation in ("skip_checksum", "trust_any_reply")
                                       else p.snapshot_every),
                       forge_every_ms=20 if mutation == "trust_any_reply" else 10**9,
                       budget_bytes=(16 if mutation == "lead_on_partial_promises"
                                     else p.budget_bytes))

    @property
    def now(self) -> int:
        return self.world.now

    def _local_now(self, nid: str) -> int:
        return int(self.now * self.p.drift[self.ids.index(nid)])

    # ---------------------------------------------------------------- node driving

    def _boot(self, nid: str) -> None:
        node = self.nodes[nid]
        durable = node.store.load()
        if self.mutation == "forget_promise":
            durable = Durable(Ballot(0, ""), 0, durable.entries, durable.commit_index,
                              durable.snapshot)
        cls = _MUTANTS.get(self.mutation or "", Replica)
        node.replica = cls(nid, self.ids, durable, random.Random(self.rng.random()),
                           self._local_now(nid), self.cfg)
        node.saving = False
        node.epoch += 1
        self.oracle.booted(nid)
        self.world.at(self.now + 1, self._ev_tick, (nid, node.epoch))

    def _pump(self, nid: str) -> None:
        node = self.nodes[nid]
        r = node.replica
        if r is None or node.saving or not r.has_ready():
            return
        ready = r.ready()
        node.saving = True
        if self.mutation == "reply_before_save":
            self._send_all(nid, ready.messages)
            ready.messages = []
        node.disk.save(self._ev_saved, (nid, node.epoch, ready))

    def _saved(self, nid: str, ready: Ready) -> None:
        node = self.nodes[nid]
        r = node.replica
        assert r is not None
        node.store.save(ready.persist)      # the durability point
        self.stats["saves"] += 1
        self.oracle.saved(nid, ready.persist)
        if ready.install is not None:
            self._install(node, ready.install)
        for slot, value in ready.committed:
            self.oracle.applied_entry(nid, slot, value)
        self._send_all(nid, ready.messages)
        node.saving = False
        r.advance()
        applied, chain = self.oracle.applied[nid], self.oracle.chain[nid]
        if applied - r.status().snapshot_index >= self.p.snapshot_every and applied > 0:
            data = f"{applied}:{chain}:".encode() + b"." * self.p.snapshot_pad
            known = self.snapshot_data.setdefault(applied, data)
            if known != data:
                self._violate(f"{nid} snapshotted different bytes at {applied}")
            r.compact(Snapshot(applied, data))
        self._pump(nid)

    def _send_all(self, src: str, msgs: list[Outbound]) -> None:
        for o in msgs:
            self._transmit(src, o.dst, o.msg)

    def _transmit(self, src: str, dst: str, msg: Message) -> None:
        self.net.send(src, dst, self._ev_deliver, (dst, msg), on_the_wire=self._on_the_wire)

    def _on_the_wire(self, data: tuple[str, Message]) -> tuple[str, Message]:
        """A message the network did not drop: count chunks, and now and then damage a
        snapshot chunk's bytes (the checksum must catch it)."""
        dst, msg = data
        if isinstance(msg, SnapshotChunk):
            self.stats["snapshot_chunks"] += 1
            if self.net.faults and msg.data and self.rng.random() < self.p.corrupt:
                i = self.rng.randrange(len(msg.data))
                bad = msg.data[:i] + bytes([msg.data[i] ^ 0x5A]) + msg.data[i + 1:]
                self.stats["corrupted"] += 1
                return dst, SnapshotChunk(msg.src, msg.snapshot, msg.offset, bad)
        elif isinstance(msg, Promise) and msg.next_slot:
            self.stats["promise_chunks"] += 1
        return data

    # ---------------------------------------------------------------- oracle

    def _violate(self, what: str) -> None:
        self.violations.append(f"t={self.now} {what}")

    def _chosen(self, slot: Slot, value: Value) -> None:
        for c in value:
            if c not in self.proposed:
                self._violate(f"slot {slot} chose {c!r}, which nobody proposed")
            self.seen_chosen.add(c)
            self.outstanding.discard(c)

    def _install(self, node: _Node, snap: Snapshot) -> None:
        self.stats["installs"] += 1
        if not isinstance(snap.data, bytes) or snap.data != self.snapshot_data.get(snap.index):
            self._violate(f"{node.id} installed a snapshot at {snap.index} that no node made "
                          f"(damaged or forged): {snap.data!r:.60}")
            return
        index_s, chain, _ = snap.data.decode().split(":", 2)
        if int(index_s) != snap.index:
            self._violate(f"snapshot label {index_s} != index {snap.index}")
        self.oracle.installed(node.id, snap.index, chain)

    # ---------------------------------------------------------------- faults and clients

    def _leader(self) -> str | None:
        best = None
        for nid in self.ids:
            r = self.nodes[nid].replica
            if r is None:
                continue
            st = r.status()
            if st.role is Role.LEADER and (best is None or st.ballot > best[0]):
                best = (st.ballot, nid)
        return best[1] if best else None

    def _forge(self) -> None:
        """A catch-up reply claiming to come from a member the receiver did not ask."""
        nid = self.rng.choice(self.ids)
        r = self.nodes[nid].replica
        if r is None:
            return
        st = r.status()
        liars = [i for i in self.ids if i not in (nid, st.fetch_peer)]
        if not liars:
            return
        src = self.rng.choice(liars)
        slot = st.commit_index + 1
        forged = CatchupReply(src, Ballot(st.promised.round, src), ((slot, (b"forged",)),),
                              None, slot)
        self.stats["forged"] += 1
        # Delivered at once: by the time a queued copy arrived, nid might have asked src.
        self.world.note("forge", nid, src)
        r.receive(forged, self._local_now(nid))
        self._pump(nid)

    def _propose(self) -> None:
        if self.faults.active:
            self.next_cmd += 1
            cmd = f"c{self.next_cmd}".encode()
            self.proposed.add(cmd)
            self.outstanding.add(cmd)
        target = self._leader()
        if target is not None:
            r = self.nodes[target].replica
            assert r is not None
            # Like a client: (re)send a command only when its last attempt is a while ago.
            retry = [c for c in sorted(self.outstanding)
                     if self.now - self.last_try.get(c, -10**9) >= 250][:32]
            for c in retry:
                if r.propose(c):
                    self.last_try[c] = self.now
            self._pump(target)

    # ---------------------------------------------------------------- world.Host

    def is_up(self, nid: str) -> bool:
        return self.nodes[nid].replica is not None

    def crash(self, nid: str) -> None:
        node = self.nodes[nid]
        node.replica = None
        node.epoch += 1
        node.disk.crash()
        self.stats["crashes"] += 1
        self.world.note("crash", nid)

    def restart(self, nid: str, wipe: bool) -> None:
        node = self.nodes[nid]
        if wipe:
            # The disk is gone: a blank store, marked as a replacement (or not, in
            # the known-bad variant). Its promises are legitimately forgotten.
            node.store = MemoryStore()
            node.store.rebuilding = self.mutation != "wiped_node_votes"
            self.oracle.disk_lost(nid)
            self.stats["wipes"] = self.stats.get("wipes", 0) + 1
            self.world.note("wipe", nid)
        self._boot(nid)
        self.world.note("restart", nid)

    def may_wipe(self, nid: str) -> bool:
        # Paxos tolerates f lost disks only while a majority keeps its memory: never wipe
        # when another member is still rebuilding (that would be two lost disks at once).
        return not any(n.store.rebuilding for i, n in self.nodes.items() if i != nid)

    def repartitioned(self, kind: str) -> None:
        self.world.note("partition", kind, sorted(self.net.blocked))

    def healed(self) -> None:
        self.world.note("heal")
        for nid in self.ids:
            if self.nodes[nid].replica is None:
                self._boot(nid)

    # ---------------------------------------------------------------- main loop

    def run(self) -> Result:
        for nid in self.ids:
            self._boot(nid)
        self.world.at(self.p.propose_every_ms, self._ev_propose)
        self.faults.start()
        self.world.at(self.p.forge_every_ms, self._ev_forge)
        end = self.p.safety_ms + self.p.heal_ms
        while not self.violations:
            try:
                if not self.world.run_one(end):
                    break
            except SafetyViolation as e:    # a node caught a broken invariant itself
                self._violate(f"a node raised SafetyViolation: {e}")
                break
            if not self.faults.active and not self.outstanding and self._converged():
                break
        if not self.violations:
            if self.outstanding:
                self._violate(f"after healing, {len(self.outstanding)} proposals never chosen "
                              f"(e.g. {sorted(self.outstanding)[:3]})")
            elif not self._converged():
                self._violate("after healing, replicas did not converge on the chosen log "
                              "(or a replaced node never regained its vote)")
        self.stats["dropped"] = self.net.dropped
        return Result(self.seed, self.p, self.violations, self.world.trace_hash(),
                      len(self.oracle.chosen), len(self.outstanding), dict(self.stats))

    def _converged(self) -> bool:
        top = max(self.oracle.chosen, default=0)
        # A replaced node must also have earned its vote back.
        return all(n.replica is not None and self.oracle.applied[n.id] >= top
                   and n.replica.status().voting for n in self.nodes.values())

    def _ev_tick(self, data: Any) -> None:
        nid, epoch = data
        node = self.nodes[nid]
        if node.replica is None or node.epoch != epoch:
            return
        was = node.replica.role
        node.replica.tick(self._local_now(nid))
        if node.replica.role is Role.CANDIDATE and was is not Role.CANDIDATE:
            self.stats["elections"] += 1
        self._pump(nid)
        self.world.at(self.now + 10, self._ev_tick, (nid, epoch))

    def _ev_deliver(self, data: Any) -> None:
        nid, msg = data
        node = self.nodes[nid]
        if node.replica is None:
            return
        self.stats["delivered"] += 1
        self.world.note("deliver", nid, type(msg).__name__, getattr(msg, "src", ""))
        node.replica.receive(msg, self._local_now(nid))
        self._pump(nid)

    def _ev_saved(self, data: Any) -> None:
        nid, epoch, ready = data
        node = self.nodes[nid]
        if node.replica is None or node.epoch != epoch:
            return  # crashed before the save completed: the write is lost
        self._saved(nid, ready)

    def _ev_propose(self, _: Any) -> None:
        self._propose()
        self.world.at(self.now + (self.p.propose_every_ms if self.faults.active else 100),
                      self._ev_propose)

    def _ev_forge(self, _: Any) -> None:
        if self.faults.active:
            self._forge()
            self.world.at(self.now + self.rng.randint(1, 2 * self.p.forge_every_ms), self._ev_forge)


def run(seed: int, mutation: str | None = None, nodes: int | None = None) -> Result:
    return Sim(seed, mutation, nodes).run()
