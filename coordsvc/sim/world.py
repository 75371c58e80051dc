"""What every simulation shares: simulated time, one RNG, a faulty network and fault timers.

One ``random.Random(seed)`` drives everything, and events at the same millisecond run in
the order they were scheduled, so a seed replays exactly. The trace hash covers every
event a simulation notes; the same seed must give the same hash.

The network loses, duplicates and delays messages and obeys partitions (a blocked pair
``(src, dst)`` is one direction, so partitions may be asymmetric); endpoints are plain
names, nodes and clients alike. A node's ``Disk`` completes saves one after another, each
taking a random time, and a crash loses every save not yet completed. ``Faults`` crashes
and restarts nodes (sometimes with a lost disk) and redraws partitions during the safety
phase, then heals everything.
Simulations differ in what a node is (a bare replica, a whole ``Service``) and say so
through the small ``Host`` interface.
"""
from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Disk", "Faults", "Host", "Network", "PARTITIONS", "World"]

Handler = Callable[[Any], None]

PARTITIONS = ("none", "isolate", "split", "asym", "bridge")


class World:
    """Simulated milliseconds, the event queue, the RNG and the trace hash."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 0
        self._queue: list[tuple[int, int, Handler, Any]] = []
        self._seq = 0
        self._trace = hashlib.blake2b(digest_size=16)

    def at(self, t: int, handler: Handler, data: Any = None) -> None:
        """Run ``handler(data)`` at time ``t`` (after everything already due then)."""
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, handler, data))

    def run_one(self, end: int) -> bool:
        """Run the next event if it is due by ``end``; False when there is none."""
        if not self._queue or self._queue[0][0] > end:
            return False
        t, _, handler, data = heapq.heappop(self._queue)
        self.now = t
        handler(data)
        return True

    def note(self, *parts: object) -> None:
        self._trace.update(repr((self.now,) + parts).encode())

    def trace_hash(self) -> str:
        return self._trace.hexdigest()


class Network:
    """Lossy, duplicating, reordering links between named endpoints, with partitions."""

    def __init__(self, world: World, loss: float, dup: float, max_delay_ms: int) -> None:
        self.world = world
        self.loss = loss
        self.dup = dup
        self.max_delay_ms = max_delay_ms
        self.blocked: set[tuple[str, str]] = set()
        self.faults = True
        self.dropped = 0

    def send(self, src: str, dst: str, deliver: Handler, data: Any,
             on_the_wire: Callable[[Any], Any] | None = None) -> None:
        """Deliver ``data`` to ``deliver`` later (zero, one or two times) unless cut off.
        ``on_the_wire(data)``, if given, sees what survived loss and returns what arrives
        (every copy of it): a simulation may count or damage messages there."""
        w = self.world
        if src == dst:
            w.at(w.now, deliver, data)
            return
        if self.faults and ((src, dst) in self.blocked or w.rng.random() < self.loss):
            self.dropped += 1
            return
        if on_the_wire is not None:
            data = on_the_wire(data)
        copies = 2 if self.faults and w.rng.random() < self.dup else 1
        for _ in range(copies):
            w.at(w.now + w.rng.randint(0, self.max_delay_ms), deliver, data)

    def cut(self, a: str, b: str, both_ways: bool = True) -> None:
        self.blocked.add((a, b))
        if both_ways:
            self.blocked.add((b, a))

    def repartition(self, ids: Sequence[str]) -> str:
        """Replace every cut by a fresh partition of ``ids``; the kind drawn."""
        rng = self.world.rng
        self.blocked.clear()
        kind = rng.choice(PARTITIONS)
        ids = list(ids)
        rng.shuffle(ids)
        if kind == "isolate":
            for b in ids[1:]:
                self.cut(ids[0], b)
        elif kind == "split":
            k = rng.randint(1, len(ids) - 1)
            for a in ids[:k]:
                for b in ids[k:]:
                    self.cut(a, b)
        elif kind == "asym":
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                self.cut(a, b, both_ways=False)
        elif kind == "bridge":
            # ids[0] hears both halves, which cannot hear each other.
            rest = ids[1:]
            half = len(rest) // 2
            for a in rest[:half]:
                for b in rest[half:]:
                    self.cut(a, b)
        return kind

    def heal(self) -> None:
        self.faults = False
        self.blocked.clear()


class Disk:
    """One node's disk: each save completes 0..disk_ms after the previous one did (or
    at once when there is nothing to write); ``crash`` loses every save not completed --
    its ``durable`` callback never runs."""

    def __init__(self, world: World, disk_ms: int) -> None:
        self.world = world
        self.disk_ms = disk_ms
        self.busy_until = 0
        self._epoch = 0

    def save(self, durable: Handler, data: Any, empty: bool = False) -> int:
        """Start a save; ``durable(data)`` runs when it completes. Returns that time."""
        w = self.world
        done = max(w.now, self.busy_until)
        if not empty:
            done += w.rng.randint(0, self.disk_ms)
        self.busy_until = done
        w.at(done, self._completed, (self._epoch, durable, data))
        return done

    def _completed(self, item: tuple[int, Handler, Any]) -> None:
        epoch, durable, data = item
        if epoch == self._epoch:
            durable(data)

    def crash(self) -> None:
        self._epoch += 1
        self.busy_until = 0


class Host(Protocol):
    """What ``Faults`` needs from a simulation's nodes."""

    def is_up(self, nid: str) -> bool: ...

    def crash(self, nid: str) -> None:
        """Stop the node now: whatever its disk had not finished saving is lost."""

    def restart(self, nid: str, wipe: bool) -> None:
        """Boot the node from its disk, or from a blank replacement disk if ``wipe``."""

    def may_wipe(self, nid: str) -> bool: ...

    def repartitioned(self, kind: str) -> None: ...

    def healed(self) -> None:
        """Faults are over: restart whatever is down."""


class Faults:
    """Crash/restart and partition timers, active until ``safety_ms``, then heal.

    The mean time between crashes and between partitions are parameters of the run
    (drawn from the seed, like every fault rate). Never more than all-but-one node is down.
    """

    def __init__(self, world: World, net: Network, host: Host, ids: Sequence[str],
                 crash_every_ms: int, partition_every_ms: int, disk_loss: float,
                 safety_ms: int) -> None:
        self.world = world
        self.net = net
        self.host = host
        self.ids = list(ids)
        self.crash_every_ms = crash_every_ms
        self.partition_every_ms = partition_every_ms
        self.disk_loss = disk_loss
        self.safety_ms = safety_ms
        self.active = True

    def start(self) -> None:
        w = self.world
        w.at(w.now + self.crash_every_ms, self._crash_timer)
        w.at(w.now + self.partition_every_ms, self._partition_timer)
        w.at(w.now + self.safety_ms, self._heal)

    def _crash_timer(self, _: Any) -> None:
        if not self.active:
            return
        self.crash_or_restart()
        w = self.world
        w.at(w.now + w.rng.randint(1, 2 * self.crash_every_ms), self._crash_timer)

    def crash_or_restart(self) -> None:
        rng, host = self.world.rng, self.host
        nid = rng.choice(self.ids)
        if host.is_up(nid):
            down = sum(1 for i in self.ids if not host.is_up(i))
            if down + 1 < len(self.ids):
                host.crash(nid)
        else:
            host.restart(nid, rng.random() < self.disk_loss and host.may_wipe(nid))

    def _partition_timer(self, _: Any) -> None:
        if not self.active:
            return
        self.host.repartitioned(self.net.repartition(self.ids))
        w = self.world
        w.at(w.now + w.rng.randint(1, 2 * self.partition_every_ms), self._partition_timer)

    def _heal(self, _: Any) -> None:
        self.active = False
        self.net.heal()
        self.host.healed()
