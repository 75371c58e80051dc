"""An in-memory harness for driving replicas by hand, message by message."""
from __future__ import annotations

import random

from coordsvc.core.leadership import External, Functional
from coordsvc.core.messages import Message, Outbound
from coordsvc.core.replica import Ready, Replica
from coordsvc.core.types import Config, Durable
from coordsvc.storage.memory import MemoryStore

CFG = Config(heartbeat_ms=50, election_timeout_ms=500)
IDS = ["n1", "n2", "n3"]


def make(node: str = "n1", durable: Durable | None = None, now: int = 0,
         external: bool = False, seed: int = 1, cfg: Config = CFG,
         prevote: bool = False) -> Replica:
    """A replica of IDS. The phase-1 rule tests campaign at the election timeout itself
    (``prevote=False``); the pre-vote tests and the ``Net`` ask first, as production does."""
    leadership = External() if external else Functional(prevote=prevote)
    return Replica(node, IDS, durable or Durable(), random.Random(seed), now, cfg,
                   leadership=leadership)


def drain(r: Replica, store: MemoryStore | None = None) -> Ready:
    """Take one Ready, 'save' it, and advance; return it."""
    ready = r.ready()
    if store is not None:
        store.save(ready.persist)
    r.advance()
    return ready


def sent(ready: Ready, kind: type, dst: str | None = None) -> list[Message]:
    return [o.msg for o in ready.messages
            if isinstance(o.msg, kind) and (dst is None or o.dst == dst)]


class Net:
    """Three replicas joined in memory; deliver everything until quiet."""

    def __init__(self, external: bool = False) -> None:
        self.stores = {i: MemoryStore() for i in IDS}
        self.reps = {i: make(i, external=external, seed=k, prevote=True)
                     for k, i in enumerate(IDS)}
        self.down: set[str] = set()
        self.cut: set[tuple[str, str]] = set()      # (src, dst) links that drop everything
        self.applied: dict[str, list[tuple[int, tuple[bytes, ...]]]] = {i: [] for i in IDS}
        self.reads: dict[str, list[object]] = {i: [] for i in IDS}
        self.now = 0

    def stabilize(self, max_rounds: int = 200) -> None:
        for _ in range(max_rounds):
            queue: list[tuple[str, Outbound]] = []
            for i, r in self.reps.items():
                if i in self.down or not r.has_ready():
                    continue
                ready = drain(r, self.stores[i])
                self.applied[i].extend(ready.committed)
                self.reads[i].extend(ready.reads)
                queue.extend((i, o) for o in ready.messages)
            if not queue:
                return
            for src, o in queue:
                if o.dst not in self.down and (src, o.dst) not in self.cut:
                    self.reps[o.dst].receive(o.msg, self.now)
        raise AssertionError("did not stabilize")

    def isolate(self, node: str) -> None:
        self.cut |= {(a, b) for a in IDS for b in IDS if a != b and node in (a, b)}

    def tick(self, ms: int) -> None:
        self.now += ms
        for i, r in self.reps.items():
            if i not in self.down:
                r.tick(self.now)
        self.stabilize()
