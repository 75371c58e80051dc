"""In-memory Store for core tests and the simulation."""
from __future__ import annotations

from ..core.types import EMPTY_SNAPSHOT, ZERO_BALLOT, Ballot, Durable, LogEntry, Persist, Slot, Snapshot


class MemoryStore:
    def __init__(self) -> None:
        self.promised: Ballot = ZERO_BALLOT
        self.high_water_round = 0
        self.entries: dict[Slot, LogEntry] = {}
        self.commit_index: Slot = 0
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        self.saves = 0
        self.rebuilding = False
        self.incarnation: int | None = 0
        self.removed = ""

    def load(self) -> Durable:
        return Durable(
            promised=self.promised,
            high_water_round=self.high_water_round,
            entries=tuple(self.entries[s] for s in sorted(self.entries)),
            commit_index=self.commit_index,
            snapshot=self.snapshot,
            rebuilding=self.rebuilding,
            incarnation=self.incarnation,
            removed=self.removed,
        )

    def save(self, p: Persist) -> None:
        self.saves += 1
        if p.snapshot is not None:
            self.snapshot = p.snapshot
            for s in [s for s in self.entries if s <= p.snapshot.index]:
                del self.entries[s]
        for e in p.entries:
            if e.slot > self.snapshot.index:
                self.entries[e.slot] = e
        if p.promised is not None:
            self.promised = p.promised
        if p.high_water_round is not None:
            self.high_water_round = p.high_water_round
        if p.commit_index is not None:
            self.commit_index = p.commit_index
        if p.rebuilt:
            self.rebuilding = False
        if p.incarnation is not None:
            self.incarnation = p.incarnation
        if p.removed is not None:
            self.removed = p.removed

    def close(self) -> None:
        pass
