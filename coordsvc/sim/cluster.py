"""A seeded, deterministic simulation of N replicas over a faulty network and disk.

Everything random is drawn from one ``random.Random(seed)``: the fault rates
themselves, message loss/duplication/delay, partitions, crashes, clock drift and
client proposals. The oracle watches every durable save and never forgets what
was chosen, so a violation is caught at the step that caused it.

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

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.messages import (
    CatchupReply,
    Message,
    Outbound,
    Promise,
    SnapshotChunk,
    SnapshotInfo,
)
from ..core.replica import Ready, Replica, Role
from ..core.types import (
    Ballot,
    Config,
    Durable,
    NodeId,
    Persist,
    SafetyViolation,
    Slot,
    Snapshot,
    Value,
)
from ..storage.memory import MemoryStore

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


class _SkipAdoptReplica(Replica):
    def _recovered(self) -> dict[Slot, tuple[Ballot, Value]]:
        # Known-bad: forget what the promises reported (every slot becomes a no-op).
        return {}


class _SkipChecksumReplica(Replica):
    def _verify_snapshot(self, data: bytearray, info: SnapshotInfo) -> bool:
        return len(data) == info.size       # known-bad: trusts whatever arrived


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
    "skip_adopt": _SkipAdoptReplica, "skip_checksum": _SkipChecksumReplica,
    "trust_any_reply": _TrustAnyReplyReplica,
    "lead_on_partial_promises": _PartialPromiseReplica,
}


@dataclass
class _Node:
    id: str
    store: MemoryStore
    replica: Replica | None = None
    saving: bool = False
    epoch: int = 0
    chain: str = ""           # rolling hash of the applied prefix
    applied: Slot = 0
    renewals: int = 0


@dataclass
class Result:
    seed: int
    params: Params
    violations: list[str]
    trace_hash: str
    chosen: int
    unchosen: int
    stats: dict[str, int] = field(default_factory=dict)


def _h(prev: str, slot: Slot, value: Value) -> str:
    d = hashlib.blake2b(prev.encode(), digest_size=8)
    d.update(str(slot).encode())
    for c in value:
        d.update(len(c).to_bytes(4, "big"))
        d.update(c)
    return d.hexdigest()


class Sim:
    def __init__(self, seed: int, mutation: str | None = None, nodes: int | None = None,
                 params: Params | None = None) -> None:
        if mutation is not None and mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.p = params or Params.draw(self.rng, nodes)
        if mutation is not None:
            # Bad variants need faults to show; keep the run violent.
            self.p = Params(**{**self.p.__dict__, "crash_every_ms": 120, "disk_ms": 8,
                               "partition_every_ms": 300, "max_delay_ms": 20,
                               "disk_loss": 0.5 if mutation == "wiped_node_votes" else 0.0,
                               "corrupt": 0.3 if mutation == "skip_checksum" else 0.0,
                               "snapshot_every": (8 if mutation in ("skip_checksum",
                                                                    "trust_any_reply")
                                                  else self.p.snapshot_every),
                               "forge_every_ms": 20 if mutation == "trust_any_reply" else 10**9,
                               "budget_bytes": 16 if mutation == "lead_on_partial_promises"
                               else self.p.budget_bytes})
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
        self.now = 0
        self.queue: list[tuple[int, int, str, Any]] = []
        self.seq = 0
        self.nodes = {i: _Node(i, MemoryStore()) for i in self.ids}
        self.blocked: set[tuple[str, str]] = set()
        self.faults = True
        self.trace = hashlib.blake2b(digest_size=16)
        # oracle
        self.votes: dict[tuple[Slot, Ballot], set[str]] = {}
        self.vote_value: dict[tuple[Slot, Ballot], Value] = {}
        self.chosen: dict[Slot, Value] = {}
        self.chain_at: dict[Slot, str] = {0: ""}
        self.snapshot_data: dict[Slot, bytes] = {}
        self.max_promised: dict[str, Ballot] = {}
        self.proposed: set[bytes] = set()
        self.outstanding: set[bytes] = set()
        self.last_try: dict[bytes, int] = {}
        self.seen_chosen: set[bytes] = set()
        self.violations: list[str] = []
        self.stats = {"delivered": 0, "dropped": 0, "crashes": 0, "elections": 0, "saves": 0,
                      "snapshot_chunks": 0, "corrupted": 0, "forged": 0, "promise_chunks": 0,
                      "installs": 0}
        self.next_cmd = 0

    # ---------------------------------------------------------------- scheduling

    def _at(self, t: int, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, data))

    def _local_now(self, nid: str) -> int:
        return int(self.now * self.p.drift[self.ids.index(nid)])

    def _note(self, *parts: object) -> None:
        self.trace.update(repr((self.now,) + parts).encode())

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
        node.chain, node.applied = "", 0
        self._at(self.now + 1, "tick", (nid, node.epoch))

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
        self._at(self.now + self.rng.randint(0, self.p.disk_ms), "saved", (nid, node.epoch, ready))

    def _saved(self, nid: str, ready: Ready) -> None:
        node = self.nodes[nid]
        r = node.replica
        assert r is not None
        node.store.save(ready.persist)      # the durability point
        self.stats["saves"] += 1
        self._check_save(nid, ready.persist)
        if ready.install is not None:
            self._install(node, ready.install)
        for slot, value in ready.committed:
            self._apply(node, slot, value)
        self._send_all(nid, ready.messages)
        node.saving = False
        r.advance()
        if node.applied - r.status().snapshot_index >= self.p.snapshot_every and node.applied > 0:
            data = f"{node.applied}:{node.chain}:".encode() + b"." * self.p.snapshot_pad
            known = self.snapshot_data.setdefault(node.applied, data)
            if known != data:
                self._violate(f"{nid} snapshotted different bytes at {node.applied}")
            r.compact(Snapshot(node.applied, data))
        self._pump(nid)

    def _send_all(self, src: str, msgs: list[Outbound]) -> None:
        for o in msgs:
            self._transmit(src, o.dst, o.msg)

    def _transmit(self, src: str, dst: str, msg: Message) -> None:
        if src == dst:
            self._at(self.now, "deliver", (dst, msg))
            return
        if self.faults and ((src, dst) in self.blocked or self.rng.random() < self.p.loss):
            self.stats["dropped"] += 1
            return
        if isinstance(msg, SnapshotChunk):
            self.stats["snapshot_chunks"] += 1
            if self.faults and msg.data and self.rng.random() < self.p.corrupt:
                i = self.rng.randrange(len(msg.data))
                bad = msg.data[:i] + bytes([msg.data[i] ^ 0x5A]) + msg.data[i + 1:]
                msg = SnapshotChunk(msg.src, msg.snapshot, msg.offset, bad)
                self.stats["corrupted"] += 1
        elif isinstance(msg, Promise) and msg.next_slot:
            self.stats["promise_chunks"] += 1
        copies = 2 if self.faults and self.rng.random() < self.p.dup else 1
        for _ in range(copies):
            self._at(self.now + self.rng.randint(0, self.p.max_delay_ms), "deliver", (dst, msg))

    # ---------------------------------------------------------------- oracle

    def _violate(self, what: str) -> None:
        self.violations.append(f"t={self.now} {what}")

    def _check_save(self, nid: str, p: Persist) -> None:
        if p.promised is not None:
            prev = self.max_promised.get(nid)
            if prev is not None and p.promised < prev and self.mutation != "forget_promise":
                self._violate(f"{nid} promised ballot went down {prev} -> {p.promised}")
            if prev is None or p.promised > prev:
                self.max_promised[nid] = p.promised
        for e in p.entries:
            key = (e.slot, e.ballot)
            if key in self.vote_value and self.vote_value[key] != e.value:
                self._violate(f"two values accepted for slot {e.slot} at {e.ballot}")
            self.vote_value[key] = e.value
            voters = self.votes.setdefault(key, set())
            voters.add(nid)
            if len(voters) >= self.quorum:
                self._chosen(e.slot, e.value)

    def _chosen(self, slot: Slot, value: Value) -> None:
        old = self.chosen.get(slot)
        if old is not None and old != value:
            self._violate(f"slot {slot} chosen twice: {old!r} then {value!r}")
            return
        if old is None:
            self.chosen[slot] = value
            for c in value:
                if c not in self.proposed:
                    self._violate(f"slot {slot} chose {c!r}, which nobody proposed")
                self.seen_chosen.add(c)
                self.outstanding.discard(c)

    def _apply(self, node: _Node, slot: Slot, value: Value) -> None:
        if slot != node.applied + 1:
            self._violate(f"{node.id} applied slot {slot} after {node.applied}")
        if self.chosen.get(slot) != value:
            self._violate(f"{node.id} applied {value!r} at slot {slot}; chosen is {self.chosen.get(slot)!r}")
        node.applied = slot
        node.chain = _h(node.chain, slot, value)
        known = self.chain_at.setdefault(slot, node.chain)
        if known != node.chain:
            self._violate(f"{node.id} applied prefix through {slot} differs from another node's")

    def _install(self, node: _Node, snap: Snapshot) -> None:
        self.stats["installs"] += 1
        if snap.data != self.snapshot_data.get(snap.index):
            self._violate(f"{node.id} installed a snapshot at {snap.index} that no node made "
                          f"(damaged or forged): {snap.data[:40]!r}")
            return
        index_s, chain, _ = snap.data.decode().split(":", 2)
        if int(index_s) != snap.index:
            self._violate(f"snapshot label {index_s} != index {snap.index}")
        known = self.chain_at.get(snap.index)
        if known is not None and known != chain:
            self._violate(f"{node.id} installed a snapshot whose prefix differs at {snap.index}")
        node.applied, node.chain = snap.index, chain

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
        self._note("forge", nid, src)
        r.receive(forged, self._local_now(nid))
        self._pump(nid)

    def _propose(self) -> None:
        if self.faults:
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

    def _crash_or_restart(self) -> None:
        nid = self.rng.choice(self.ids)
        node = self.nodes[nid]
        if node.replica is not None:
            down = sum(1 for n in self.nodes.values() if n.replica is None)
            if down + 1 < self.p.nodes:
                node.replica = None
                node.epoch += 1
                self.stats["crashes"] += 1
                self._note("crash", nid)
        else:
            if self.rng.random() < self.p.disk_loss and self._may_wipe(nid):
                # The disk is gone: a blank store, marked as a replacement (or not, in
                # the known-bad variant). Its promises are legitimately forgotten.
                node.store = MemoryStore()
                node.store.rebuilding = self.mutation != "wiped_node_votes"
                self.max_promised.pop(nid, None)
                self.stats["wipes"] = self.stats.get("wipes", 0) + 1
                self._note("wipe", nid)
            self._boot(nid)
            self._note("restart", nid)

    def _may_wipe(self, nid: str) -> bool:
        # Paxos tolerates f lost disks only while a majority keeps its memory: never wipe
        # when another member is still rebuilding (that would be two lost disks at once).
        return not any(n.store.rebuilding for i, n in self.nodes.items() if i != nid)

    def _repartition(self) -> None:
        self.blocked.clear()
        kind = self.rng.choice(("none", "isolate", "split", "asym", "bridge"))
        ids = list(self.ids)
        self.rng.shuffle(ids)
        if kind == "isolate":
            a = ids[0]
            for b in ids[1:]:
                self.blocked |= {(a, b), (b, a)}
        elif kind == "split":
            k = self.rng.randint(1, len(ids) - 1)
            for a in ids[:k]:
                for b in ids[k:]:
                    self.blocked |= {(a, b), (b, a)}
        elif kind == "asym":
            for _ in range(self.rng.randint(1, len(ids))):
                a, b = self.rng.sample(ids, 2)
                self.blocked.add((a, b))
        elif kind == "bridge":
            mid, rest = ids[0], ids[1:]
            half = len(rest) // 2
            for a in rest[:half]:
                for b in rest[half:]:
                    self.blocked |= {(a, b), (b, a)}
            del mid
        self._note("partition", kind, sorted(self.blocked))

    # ---------------------------------------------------------------- main loop

    def run(self) -> Result:
        for nid in self.ids:
            self._boot(nid)
        self._at(self.p.propose_every_ms, "propose", None)
        self._at(self.p.crash_every_ms, "crash", None)
        self._at(self.p.partition_every_ms, "partition", None)
        self._at(self.p.safety_ms, "heal", None)
        self._at(self.p.forge_every_ms, "forge", None)
        end = self.p.safety_ms + self.p.heal_ms
        handlers = self._handlers()
        while self.queue and not self.violations:
            t, _, kind, data = heapq.heappop(self.queue)
            if t > end:
                break
            self.now = t
            try:
                handlers[kind](data)
            except SafetyViolation as e:    # a node caught a broken invariant itself
                self._violate(f"{kind}: a node raised SafetyViolation: {e}")
            if not self.faults and not self.outstanding and self._converged():
                break
        if not self.violations:
            if self.outstanding:
                self._violate(f"after healing, {len(self.outstanding)} proposals never chosen "
                              f"(e.g. {sorted(self.outstanding)[:3]})")
            elif not self._converged():
                self._violate("after healing, replicas did not converge on the chosen log "
                              "(or a replaced node never regained its vote)")
        return Result(self.seed, self.p, self.violations, self.trace.hexdigest(),
                      len(self.chosen), len(self.outstanding), dict(self.stats))

    def _handlers(self) -> dict[str, Callable[[Any], None]]:
        return {
            "tick": self._ev_tick, "deliver": self._ev_deliver, "saved": self._ev_saved,
            "propose": self._ev_propose, "crash": self._ev_crash,
            "partition": self._ev_partition, "heal": self._ev_heal, "forge": self._ev_forge,
        }

    def _converged(self) -> bool:
        top = max(self.chosen, default=0)
        # A replaced node must also have earned its vote back.
        return all(n.replica is not None and n.applied >= top and n.replica.status().voting
                   for n in self.nodes.values())

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
        self._at(self.now + 10, "tick", (nid, epoch))

    def _ev_deliver(self, data: Any) -> None:
        nid, msg = data
        node = self.nodes[nid]
        if node.replica is None:
            return
        self.stats["delivered"] += 1
        self._note("deliver", nid, type(msg).__name__, getattr(msg, "src", ""))
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
        self._at(self.now + (self.p.propose_every_ms if self.faults else 100), "propose", None)

    def _ev_crash(self, _: Any) -> None:
        if self.faults:
            self._crash_or_restart()
            self._at(self.now + self.rng.randint(1, 2 * self.p.crash_every_ms), "crash", None)

    def _ev_partition(self, _: Any) -> None:
        if self.faults:
            self._repartition()
            self._at(self.now + self.rng.randint(1, 2 * self.p.partition_every_ms), "partition", None)

    def _ev_forge(self, _: Any) -> None:
        if self.faults:
            self._forge()
            self._at(self.now + self.rng.randint(1, 2 * self.p.forge_every_ms), "forge", None)

    def _ev_heal(self, _: Any) -> None:
        self.faults = False
        self.blocked.clear()
        self._note("heal")
        for nid in self.ids:
            if self.nodes[nid].replica is None:
                self._boot(nid)


def run(seed: int, mutation: str | None = None, nodes: int | None = None) -> Result:
    return Sim(seed, mutation, nodes).run()
