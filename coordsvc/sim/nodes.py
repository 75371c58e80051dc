"""Whole nodes in simulation: each a production ``Service`` on a ``MemoryStore``, driven as
``runtime/node.py`` drives it, with simulated clients and a checker over what they saw.

The loop of a node is the runtime's: take every input that arrived, ``tick`` if the
timer is due, ``step(save, send)``, then answer clients and publish events, and sleep
until ``next_timer_ms()`` (at most 250 ms) or the next input. The runtime's save blocks
on fsync; here each save takes a random time during which the node is blocked, messages
handed to ``send`` after a save leave only when it completed, and client replies leave
when the step's last save completed. A crash loses every save not completed, and with
it everything that was waiting for it. The cluster is a secure one: each peer message
reaches ``on_peer`` with its sender's principal, each request ``on_client`` as "admin",
and requests and replies cross the network as msgpack bytes, as on the real wire.

One seed draws everything (``Params`` lists every drawn value; a failure prints them):
fault rates, per-node clock drift, partitions between nodes and between clients and
nodes, byte budgets (small enough, in some seeds, that promises, catch-up replies and
snapshots travel in many pieces), the clients' workload. A run is a safety phase under faults, then the heal:
every client must finish (every request it retries answered) and every watcher catch
up. The per-slot oracle checks every durable save and every applied slot as it happens;
the history is checked when the run ends (``checks.py``, ``linearizability.py``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.identity import ADMIN, Identities, node_principal
from ..core.machine import Machine
from ..core.messages import Message, Outbound, Promise, SnapshotChunk
from ..core.protocol import Change
from ..core.replica import Ready, Role
from ..core.service_outbox import Route
from ..core.types import Config, Persist
from ..storage.memory import MemoryStore
from . import checks, requests
from .checks import Tenure, Watcher, WatchEvent
from .client import SimClient
from .history import Recorder, summarize
from .linearizability import check as check_linearizable
from .linearizability import step_budget
from .mutations import MUTATIONS, ObservedService
from .oracle import SlotOracle
from .reference import Reference
from .requests import BadReply, Payload
from .workload import Record, Workload, watcher, worker
from .world import Disk, Faults, Network, World

__all__ = ["MUTATIONS", "NodeSim", "Params", "Result", "run"]

MAX_SLEEP_MS = 250            # runtime/node.py
LINEARIZABILITY_POLLS = 200   # the checker's step budget: 200 x 2048 search steps
DONE_CHECK_MS = 20


@dataclass(frozen=True)
class Params:
    """Every value drawn for a run; printed with the seed when it fails."""

    nodes: int
    loss: float
    dup: float
    max_delay_ms: int
    disk_ms: int
    crash_every_ms: int
    partition_every_ms: int
    disk_loss: float             # chance that a restart finds the node's disk wiped
    client_cut: float            # chance per client and repartition of cut client links
    drift: tuple[float, ...]
    clock_offset_ms: tuple[int, ...]
    election_timeout_ms: int
    snapshot_every: int
    safety_ms: int
    heal_ms: int                 # the most the heal may take before liveness fails
    workers: int
    watchers: tuple[tuple[str, int, bool], ...]   # (prefix, start ms, from now?)
    workload: Workload
    # Byte budgets (None: the production default): one Accept's batch, a Promise's or
    # catch-up reply's entries, a snapshot chunk. Small ones split nearly every message.
    batch_bytes: int | None
    budget_bytes: int | None
    chunk_bytes: int | None

    @staticmethod
    def draw(rng: random.Random, nodes: int | None = None) -> Params:
        n = nodes or rng.choice((3, 3, 3, 5))
        keys = tuple(f"k/{i}" for i in range(rng.choice((2, 3, 5))))
        safety_ms = rng.choice((2000, 3000, 5000))
        wl = Workload(
            keys=keys,
            locks=("lock/a", "lock/b")[:rng.choice((1, 2))],
            # get, put, cas, delete, lock, locks, lease, eph_get, sem, elect, txn, rw
            weights=rng.choice(((40, 25, 20, 5, 8, 2, 8, 12, 8, 6, 8, 6),
                                (30, 20, 15, 5, 25, 5, 8, 12, 10, 8, 8, 10),
                                (20, 10, 10, 5, 50, 5, 8, 12, 15, 10, 6, 15),
                                (10, 5, 5, 0, 70, 10, 5, 10, 30, 15, 4, 25))),
            think_ms=rng.choice((5, 20, 60)),
            give_up_ms=rng.choice((None, None, 2000, 5000)),
            ttl_ms=rng.choice(((1000,), (1000, 3000), (3000,), (3000,))),
            hold_ms=rng.choice(((0, 300), (100, 2000), (1000, 6000), (1000, 6000))),
            lock_timeout_ms=rng.choice(((200, 1000), (1000, 3000))),
            interrupt=rng.choice((0.0, 0.2)),
            fenced=rng.choice((0.0, 0.5)),
            watch_wait_ms=rng.choice((300, 2000)),
            watch_limit=rng.choice((2, 1000)),
            watch_switch=rng.choice((0.0, 0.1, 0.3)),
            rwlocks=("rw/a", "rw/b")[:rng.choice((1, 1, 2))],
            lock_delay_ms=rng.choice(((0, 500), (0, 300, 1500), (300, 1000, 3000))),
            vanish=rng.choice((0.05, 0.15, 0.3)),
        )
        watchers = tuple(
            (rng.choice(("", "k/", keys[0])), rng.randrange(safety_ms), rng.random() < 0.5)
            for _ in range(rng.choice((1, 2, 3))))
        return Params(
            nodes=n,
            loss=rng.choice((0.0, 0.02, 0.1, 0.25)),
            dup=rng.choice((0.0, 0.05, 0.2)),
            max_delay_ms=rng.choice((1, 5, 20, 60)),
            disk_ms=rng.choice((0, 1, 5, 15)),
            crash_every_ms=rng.choice((150, 400, 1000, 10**9, 10**9)),
            partition_every_ms=rng.choice((200, 600, 1500, 10**9)),
            disk_loss=rng.choice((0.0, 0.2, 0.5)),
            client_cut=rng.choice((0.0, 0.2, 0.5)),
            drift=tuple(round(rng.uniform(0.9, 1.1), 3) for _ in range(n)),
            clock_offset_ms=tuple(rng.randrange(10**6) for _ in range(n)),
            election_timeout_ms=rng.choice((200, 200, 400)),
            snapshot_every=rng.choice((4, 8, 50, 10**9)),
            safety_ms=safety_ms,
            heal_ms=30_000,
            workers=rng.choice((3, 5, 8)),
            watchers=watchers,
            workload=wl,
            batch_bytes=rng.choice((100, 400, None)),
            budget_bytes=rng.choice((128, 1024, None)),
            chunk_bytes=rng.choice((32, 256, None)),
        )

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))


@dataclass
class Result:
    seed: int
    params: Params
    mutation: str | None
    violations: list[str]
    trace_hash: str
    stats: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        head = f"seed={self.seed}" + (f" mutation={self.mutation}" if self.mutation else "")
        return (f"{head} stats={self.stats}\n  params: {self.params.describe()}\n  "
                + "\n  ".join(self.violations[:8])
                + (f"\n  ... and {len(self.violations) - 8} more" if len(self.violations) > 8
                   else ""))


@dataclass
class _Node:
    id: str
    rate: float
    offset_ms: int
    disk: Disk                     # the node is blocked until disk.busy_until
    store: MemoryStore = field(default_factory=MemoryStore)
    svc: ObservedService | None = None
    epoch: int = 0
    inbox: list[tuple[str, Message | Payload]] = field(default_factory=list)   # (sender, body)
    poll_pending: bool = False
    next_tick_ms: int = 0          # local clock, as the runtime's next_tick
    wake_at: int | None = None     # the timer event that counts (sim time)
    # The last revision it published, and how many of that revision's changes.
    last_published: tuple[int, int] | None = None


class NodeSim:
    def __init__(self, seed: int, mutation: str | None = None, nodes: int | None = None,
                 params: Params | None = None) -> None:
        if mutation is not None and mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation}")
        self.seed = seed
        self.mutation = mutation
        self.service_class = MUTATIONS[mutation] if mutation else ObservedService
        self.rng = random.Random(seed)
        self.world = World(self.rng)
        self.p = p = params or Params.draw(self.rng, nodes)
        self.ids = [f"n{i + 1}" for i in range(p.nodes)]
        self.endpoints = list(self.ids)
        self.nodes = {nid: _Node(nid, p.drift[i], p.clock_offset_ms[i], Disk(self.world, p.disk_ms))
                      for i, nid in enumerate(self.ids)}
        self.addresses = {nid: f"sim://{nid}" for nid in self.ids}
        # A secure cluster, as deployed: a peer message arrives with the principal of the
        # member that sent it, a client request as "admin". Keys are plain names here;
        # the core only compares them.
        self.identities = Identities(secure=True, members={nid: f"key:{nid}" for nid in self.ids},
                                     admin_key="key:admin")
        self._by_address = {a: nid for nid, a in self.addresses.items()}
        budgets: dict[str, int] = {}
        if p.batch_bytes is not None:
            budgets.update(max_batch_bytes=p.batch_bytes, max_inflight_bytes=12 * p.batch_bytes,
                           max_pending_bytes=20 * p.batch_bytes)
        if p.budget_bytes is not None:
            budgets["message_budget_bytes"] = p.budget_bytes
        if p.chunk_bytes is not None:
            budgets["snapshot_chunk_bytes"] = p.chunk_bytes
        self.cfg = Config(heartbeat_ms=50, election_timeout_ms=p.election_timeout_ms,
                          max_inflight_slots=16, max_batch_commands=8, catchup_batch=16,
                          snapshot_every=p.snapshot_every, **budgets)
        self.net = Network(self.world, p.loss, p.dup, p.max_delay_ms)
        self.faults = Faults(self.world, self.net, self, self.ids, p.crash_every_ms,
                             p.partition_every_ms, p.disk_loss, p.safety_ms)
        self.violations: list[str] = []
        self.reference = Reference(self.service_class.swaps.get(Machine, Machine))
        self.oracle = SlotOracle(p.nodes // 2 + 1, self._violate, self.reference.chosen)
        self.history = Recorder()
        self.record = Record()
        self.lease_ended: dict[int, int] = {}   # session -> when a node first applied its end
        self.applied_at: dict[int, int] = {}    # slot -> when a node first applied it
        self.stats = {"crashes": 0, "wipes": 0, "peer_messages": 0, "client_requests": 0,
                      "saves": 0, "steps": 0, "snapshot_chunks": 0, "promise_chunks": 0,
                      "installs": 0}
        self.workers: list[SimClient] = []
        self.watchers: list[SimClient] = []
        self._clients: dict[str, SimClient] = {}
        self.done = False

    # ---------------------------------------------------------------- plumbing

    @property
    def now(self) -> int:
        return self.world.now

    def _violate(self, what: str) -> None:
        self.violations.append(f"t={self.now} {what}")

    def protocol_violation(self, what: str) -> None:
        self._violate(f"protocol: {what}")

    def node_at(self, address: str) -> str | None:
        return self._by_address.get(address)

    def _local(self, node: _Node, t: int | None = None) -> int:
        return int(node.offset_ms + node.rate * (self.now if t is None else t))

    def _sim_time_of(self, node: _Node, local_ms: int) -> int:
        t = max(self.now + 1, math.ceil((local_ms - node.offset_ms) / node.rate))
        while self._local(node, t) < local_ms:
            t += 1
        return t

    # ---------------------------------------------------------------- nodes (world.Host)

    def is_up(self, nid: str) -> bool:
        return self.nodes[nid].svc is not None

    def crash(self, nid: str) -> None:
        node = self.nodes[nid]
        node.svc = None
        node.epoch += 1
        node.disk.crash()
        node.inbox.clear()
        node.poll_pending, node.wake_at = False, None
        self.stats["crashes"] += 1
        self.world.note("crash", nid)

    def restart(self, nid: str, wipe: bool) -> None:
        node = self.nodes[nid]
        if wipe:
            node.store = MemoryStore()
            node.store.rebuilding = True   # a replacement disk: it may not vote yet
            self.oracle.disk_lost(nid)
            self.stats["wipes"] += 1
            self.world.note("wipe", nid)
        self._boot(nid)
        self.world.note("restart", nid)

    def may_wipe(self, nid: str) -> bool:
        return not any(n.store.rebuilding for i, n in self.nodes.items() if i != nid)

    def repartitioned(self, kind: str) -> None:
        rng = self.rng
        for c in self.workers + self.watchers:
            if rng.random() < self.p.client_cut:
                cut = rng.sample(self.ids, rng.randint(1, len(self.ids)))
                one_way = rng.random() < 0.5
                for nid in sorted(cut):
                    self.net.cut(c.name, nid, both_ways=not one_way)
        self.world.note("partition", kind, sorted(self.net.blocked))

    def healed(self) -> None:
        self.world.note("heal")
        for nid in self.ids:
            if self.nodes[nid].svc is None:
                self._boot(nid)
        self.world.at(self.now, self._check_done)

    def _boot(self, nid: str) -> None:
        node = self.nodes[nid]
        node.epoch += 1
        svc = self.service_class(nid, self.addresses, node.store.load(),
                                 random.Random(self.rng.random()), self._local(node), self.cfg,
                                 identities=self.identities)
        svc.observe = self._applying
        node.svc = svc
        node.poll_pending, node.wake_at = False, None
        node.next_tick_ms = self._local(node)
        node.last_published = None
        self.oracle.booted(nid)
        self._poll_soon(node)

    # ---------------------------------------------------------------- the node loop

    def _poll_soon(self, node: _Node) -> None:
        if not node.poll_pending and node.disk.busy_until <= self.now:
            node.poll_pending = True
            self.world.at(self.now, self._poll, (node.id, node.epoch))

    def _poll(self, data: tuple[str, int]) -> None:
        nid, epoch = data
        node = self.nodes[nid]
        if node.epoch != epoch or node.svc is None:
            return
        node.poll_pending = False
        if node.disk.busy_until <= self.now:
            self._loop(node, node.svc)

    def _timer(self, data: tuple[str, int, int]) -> None:
        nid, epoch, at = data
        node = self.nodes[nid]
        if node.epoch == epoch and node.wake_at == at:
            node.wake_at = None
            self._poll_soon(node)

    def _loop(self, node: _Node, svc: ObservedService) -> None:
        """One turn of runtime/node.py's loop, with the disk taking simulated time."""
        now_l = self._local(node)
        inputs, node.inbox = node.inbox, []
        saves: list[Persist] = []
        sends: list[tuple[int, list[Outbound]]] = []
        try:
            for sender, body in inputs:
                if isinstance(body, dict):
                    svc.on_client(sender, body, now_l, ADMIN)
                else:
                    svc.on_peer(body, now_l, node_principal(sender))
            if svc.counters.rejected_peer:
                self._violate(f"{node.id} rejected a peer message that its member sent")
            if now_l >= node.next_tick_ms:
                svc.tick(now_l)
            svc.step(saves.append, lambda msgs: sends.append((len(saves), msgs)))
            replies, events = svc.take_outbox()
            next_tick = min(svc.next_timer_ms(), now_l + MAX_SLEEP_MS)
        except Exception as e:  # an assertion or a bug stopped the node: that is a finding
            self._violate(f"{node.id} raised {type(e).__name__}: {e}")
            self.crash(node.id)
            return
        self.stats["steps"] += 1
        # Saves run one after another, each taking its time; the node waits for them.
        w, epoch = self.world, node.epoch
        done_at = [node.disk.save(self._saved, (node.id, p), p.empty()) for p in saves]
        t = done_at[-1] if done_at else self.now
        for after, msgs in sends:
            if msgs:
                w.at(done_at[after - 1] if after else self.now, self._release, (node.id, epoch, msgs))
        if replies or events:
            w.at(t, self._answer, (node.id, epoch, replies, events))
        if t > self.now:
            w.at(t, self._poll, (node.id, epoch))
            node.poll_pending = True
        node.next_tick_ms = next_tick
        at = self._sim_time_of(node, next_tick)
        if node.wake_at is None or at < node.wake_at or node.wake_at <= self.now:
            node.wake_at = at
            w.at(at, self._timer, (node.id, epoch, at))

    def _saved(self, data: tuple[str, Persist]) -> None:
        nid, p = data
        node = self.nodes[nid]
        node.store.save(p)           # the durability point (a crash before it loses p)
        self.stats["saves"] += 1
        self.oracle.saved(nid, p)

    def _release(self, data: tuple[str, int, list[Outbound]]) -> None:
        nid, epoch, msgs = data
        if self.nodes[nid].epoch != epoch:
            return
        for o in msgs:
            self.net.send(nid, o.dst, self._deliver_peer, (o.dst, nid, o.msg))

    def _answer(self, data: tuple[str, int, list[tuple[Route, Payload]], list[Change]]) -> None:
        nid, epoch, replies, events = data
        if self.nodes[nid].epoch != epoch:
            return
        for route, reply in replies:     # a route is the client's name
            self.net.send(nid, str(route), self._deliver_reply, (str(route), requests.pack(reply)))
        self._published(self.nodes[nid], events)

    def _deliver_peer(self, data: tuple[str, str, Message]) -> None:
        nid, sender, msg = data
        node = self.nodes[nid]
        if node.svc is None:
            return
        self.stats["peer_messages"] += 1
        if isinstance(msg, SnapshotChunk):
            self.stats["snapshot_chunks"] += 1
        elif isinstance(msg, Promise) and msg.next_slot:
            self.stats["promise_chunks"] += 1
        self.world.note("peer", nid, type(msg).__name__, msg.src)
        node.inbox.append((sender, msg))
        self._poll_soon(node)

    def _deliver_request(self, data: tuple[str, str, bytes]) -> None:
        nid, client, body = data
        node = self.nodes[nid]
        if node.svc is None:
            return
        payload = requests.unpack(body)
        self.stats["client_requests"] += 1
        self.world.note("request", nid, client, payload.get("op"), payload.get("id"))
        node.inbox.append((client, payload))
        self._poll_soon(node)

    def _deliver_reply(self, data: tuple[str, bytes]) -> None:
        client, body = data
        try:
            reply = requests.unpack(body)
        except BadReply as e:
            self.protocol_violation(f"a reply to {client}: {e}")
            return
        self.world.note("reply", client, reply.get("id"), reply.get("ok"))
        self._clients[client].on_reply(reply)

    def transmit(self, client: SimClient, node: str, payload: Payload) -> None:
        self.net.send(client.name, node, self._deliver_request,
                      (node, client.name, requests.pack(payload)))

    # ---------------------------------------------------------------- what nodes apply

    def _applying(self, nid: str, ready: Ready) -> None:
        if ready.install is not None:
            self.stats["installs"] += 1
            self.oracle.installed(nid, ready.install.index)
            self.nodes[nid].last_published = None
        for slot, value in ready.committed:
            self.oracle.applied_entry(nid, slot, value)
            self.applied_at.setdefault(slot, self.now)
            for sid in self.reference.ended.get(slot, ()):
                self.lease_ended.setdefault(sid, self.now)

    def _published(self, node: _Node, events: list[Change]) -> None:
        """Each node publishes the log's changes in revision order, every change of a
        revision (a transaction's several) together and in the log's order."""
        ref = self.reference.events
        for e in events:
            group = ref.get(e.revision, ())
            last = node.last_published
            if last is not None and e.revision == last[0]:
                i = last[1]
            else:
                i = 0
                if last is not None and (e.revision != last[0] + 1
                                         or last[1] != len(ref.get(last[0], ()))):
                    self._violate(f"{node.id} published revision {e.revision} after {last[1]} "
                                  f"of the {len(ref.get(last[0], ()))} changes at {last[0]}")
            if i >= len(group) or group[i] != e:
                self._violate(f"{node.id} published {e}; the chosen log has {list(group)} at "
                              "that revision")
            node.last_published = (e.revision, i + 1)

    # ---------------------------------------------------------------- clients

    def _start_clients(self) -> None:
        p, wl = self.p, self.p.workload
        for i in range(p.workers):
            c = SimClient(self, f"c{i + 1}", i + 1, random.Random(self.rng.random()))
            self.workers.append(c)
        for i in range(len(p.watchers)):
            c = SimClient(self, f"w{i + 1}", 100 + i, random.Random(self.rng.random()))
            self.watchers.append(c)
        self._clients = {c.name: c for c in self.workers + self.watchers}
        for c in self.workers:
            c.spawn(worker(c, wl, self.record, self.history, lambda: self.faults.active), "worker")
        for c, (prefix, start_ms, from_now) in zip(self.watchers, p.watchers, strict=True):
            c.spawn(watcher(c, wl, self.record, prefix, start_ms, from_now), "watcher")

    # ---------------------------------------------------------------- running

    def run(self) -> Result:
        self._start_clients()
        for nid in self.ids:
            self._boot(nid)
        self.faults.start()
        end = self.p.safety_ms + self.p.heal_ms
        while not self.violations and not self.done and self.world.run_one(end):
            pass
        if not self.violations and not self.done:
            self._violate("after healing, no progress: " + "; ".join(self._stuck()))
        self._check_history()
        return Result(self.seed, self.p, self.mutation, self.violations, self.world.trace_hash(),
                      self._final_stats())

    def _check_done(self, _: Any) -> None:
        if self._finished():
            self.done = True
        else:
            self.world.at(self.now + DONE_CHECK_MS, self._check_done)

    def _finished(self) -> bool:
        if any(not t.done for c in self.workers for t in c.tasks if t.name == "worker"):
            return False
        target = self.reference.revision
        if len(self.record.watches) < len(self.watchers) or any(
                wl.fetched < target for wl in self.record.watches):
            return False
        top = max(self.oracle.chosen, default=0)
        return all(n.svc is not None and self.oracle.applied.get(n.id, 0) >= top
                   and n.svc.replica.status().voting for n in self.nodes.values())

    def _stuck(self) -> list[str]:
        out = [f"{c.name} still at {c.doing}" for c in self.workers for t in c.tasks
               if t.name == "worker" and not t.done]
        target = self.reference.revision
        out += [f"watcher {wl.client} ({wl.prefix!r}) fetched through {wl.fetched} of {target}"
                for wl in self.record.watches if wl.fetched < target]
        top = max(self.oracle.chosen, default=0)
        for n in self.nodes.values():
            st = None if n.svc is None else n.svc.replica.status()
            if st is None or self.oracle.applied.get(n.id, 0) < top or not st.voting:
                what = "down" if st is None else f"{st.role.value}, voting={st.voting}"
                out.append(f"{n.id} ({what}) applied {self.oracle.applied.get(n.id, 0)} of {top}")
        return out

    # ---------------------------------------------------------------- the checker

    def _check_history(self) -> None:
        ref = self.reference
        found: list[str] = list(ref.violations)
        lin = check_linearizable(self.history.ops(), step_budget(LINEARIZABILITY_POLLS),
                                 f"{LINEARIZABILITY_POLLS} polls")
        if not lin.ok:
            found.append(("linearizability checker out of budget: " if lin.timed_out else "")
                         + lin.explanation)
        found += checks.check_tenures(self._tenures("locks"), ref.grants)
        found += checks.check_semaphore(self._tenures("sems"), self.p.workload.sem_limit,
                                        ref.grants)
        found += checks.check_rwlocks(self._tenures("rws"), ref.grants)
        found += checks.check_fifo(ref.lock_steps)
        found += checks.check_lock_delays(ref.lock_steps, self.applied_at, max(self.p.drift))
        found += checks.check_locks_reads(self.record.locks_reads, self.record.gone_sessions)
        found += checks.check_answers({c.name: c.answers for c in self.workers}, ref.results)
        found += checks.check_ephemeral_reads(self.record.eph_reads, self.record.eph_values,
                                              self.lease_ended)
        expected = [WatchEvent(e.revision, e.key, e.type.value, e.value)
                    for _, group in sorted(ref.events.items()) for e in group]
        found += checks.check_unique_values(expected, "the chosen log")
        found += checks.check_txns(self.record.txns, ref.results, expected)
        watches = self.record.watches
        # A run that did not finish owes its watchers only what they fetched (the
        # missing rest is reported as no progress already).
        specs = [Watcher(w.prefix, w.after + 1, None if self.done else w.fetched) for w in watches]
        found += checks.check_watch(expected, [w.delivered for w in watches], specs)
        if self.done:
            found += self._machines_agree()
        for f in found:
            self._violate(f"history: {f}")

    def _tenures(self, which: str) -> list[Tenure]:
        """What the workers believed they held: of "locks" (and election terms), "sems"
        or "rws"."""
        out = []
        for c in self.workers:
            for lk in {"locks": c.locks, "sems": c.sems, "rws": c.rws}[which]:
                b = lk.belief(self.now)
                if b is not None:
                    out.append(Tenure(c.name, lk.name, lk.session_id, lk.token, b[0], b[1],
                                      lk.mode))
        return out

    def _machines_agree(self) -> list[str]:
        want = self.reference.machine.snapshot()
        out = []
        for n in self.nodes.values():
            if n.svc is not None and n.svc.replica.status().applied == self.reference.applied:
                if n.svc.machine.snapshot() != want:
                    out.append(f"{n.id}'s machine differs from the chosen log's after slot "
                               f"{self.reference.applied}")
        return out

    def _final_stats(self) -> dict[str, int]:
        history = self.history.ops()
        ops = summarize(history)
        txns = [op for op in history if op.kind == "txn" and op.status == "ok"]
        leaders = sum(1 for n in self.nodes.values()
                      if n.svc is not None and n.svc.replica.status().role is Role.LEADER)
        return {**self.stats, "dropped": self.net.dropped, "now_ms": self.now,
                "chosen": len(self.oracle.chosen), "revision": self.reference.revision,
                "ops_ok": ops.ok, "ops_fail": ops.fail, "ops_unknown": ops.unknown,
                "txns_succeeded": sum(op.output is True for op in txns),
                "txns_compare_failed": sum(op.output is False for op in txns),
                "lock_cycles": sum(len(c.locks) for c in self.workers),
                "grants_believed": len(self._tenures("locks")),
                "slots_believed": len(self._tenures("sems")),
                "rw_holds_believed": len(self._tenures("rws")),
                "lock_delays_begun": self.reference.delays_begun,
                "watch_events": sum(len(w.delivered) for w in self.record.watches),
                "locks_reads": len(self.record.locks_reads), "leaders": leaders}


def run(seed: int, mutation: str | None = None, nodes: int | None = None) -> Result:
    return NodeSim(seed, mutation, nodes).run()

