"""An in-memory harness for driving replicas by hand, message by message."""
from __future__ import annotations

import random

from coordsvc.core.leadership import External, Functional
from coordsvc.core.membership import ChangeKind, Member, MembershipChange
from coordsvc.core.messages import Message, Outbound
from coordsvc.core.replica import Ready, Replica, Role
from coordsvc.core.types import Config, Durable, Value
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


# --- membership: nodes that join, leave and restart -------------------------------------

MCFG = Config(heartbeat_ms=50, election_timeout_ms=500)
BOOT = ["n1", "n2", "n3"]


def add(node: str) -> MembershipChange:
    return MembershipChange(ChangeKind.ADD, Member(node, address=f"tcp://127.0.0.1:71{node[1:]}"))


def remove(m: Member) -> MembershipChange:
    return MembershipChange(ChangeKind.REMOVE, m)


class MNet:
    """Replicas joined in memory; nodes can join (blank, learning their membership), be
    cut off, crash and restart from their stores."""

    def __init__(self, ids: list[str] = BOOT, prevote: bool = True,
                 classes: dict[str, type[Replica]] | None = None) -> None:
        self.boot = list(ids)
        self.prevote = prevote
        self.classes = classes or {}
        self.stores: dict[str, MemoryStore] = {}
        self.reps: dict[str, Replica] = {}
        self.down: set[str] = set()
        self.now = 0
        self.applied: dict[str, list[tuple[int, Value]]] = {}
        for k, i in enumerate(ids):
            self.stores[i] = MemoryStore()
            self.reps[i] = self._make(i, k)
            self.applied[i] = []

    def _make(self, i: str, seed: int) -> Replica:
        cls = self.classes.get(i, Replica)
        return cls(i, self.boot, self.stores[i].load(), random.Random(seed), self.now, MCFG,
                   leadership=Functional(prevote=self.prevote))

    def join(self, i: str) -> Replica:
        """A node added at runtime: a blank store that knows no configuration."""
        st = MemoryStore()
        st.incarnation = None
        self.stores[i] = st
        self.reps[i] = self._make(i, len(self.reps))
        self.applied[i] = []
        return self.reps[i]

    def restart(self, i: str) -> Replica:
        self.reps[i] = self._make(i, 100 + len(self.applied[i]))
        self.applied[i] = []
        return self.reps[i]

    def stabilize(self, max_rounds: int = 400, must_settle: bool = True) -> None:
        for _ in range(max_rounds):
            queue: list[Outbound] = []
            for i, r in list(self.reps.items()):
                if i in self.down or not r.has_ready():
                    continue
                ready = r.ready()
                self.stores[i].save(ready.persist)
                r.advance()
                self.applied[i].extend(ready.committed)
                queue.extend(ready.messages)
            if not queue:
                return
            for o in queue:
                if o.dst not in self.down and o.dst in self.reps:
                    self.reps[o.dst].receive(o.msg, self.now)
        if must_settle:
            raise AssertionError("did not stabilize")

    def tick(self, ms: int, times: int = 1) -> None:
        for _ in range(times):
            self.now += ms
            for i, r in list(self.reps.items()):
                if i not in self.down:
                    r.tick(self.now)
            self.stabilize()

    def leader(self) -> Replica:
        leaders = [r for i, r in self.reps.items() if r.role is Role.LEADER and i not in self.down]
        assert len(leaders) == 1, [r.id for r in leaders]
        return leaders[0]

    def write(self, n: int = 1) -> None:
        for k in range(n):
            assert self.leader().propose(f"w{self.now}-{k}".encode())
        self.stabilize()

    def elect(self) -> Replica:
        for _ in range(60):
            self.tick(100)
            leaders = [r for i, r in self.reps.items()
                       if r.role is Role.LEADER and i not in self.down]
            if len(leaders) == 1 and leaders[0].serving:
                return leaders[0]
        raise AssertionError("no leader")

    def change(self, c: MembershipChange) -> None:
        lead = self.leader()
        why = lead.request_change(c)
        assert why is None, why
        self.stabilize()
        self.tick(50)


