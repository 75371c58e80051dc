"""The multi-Paxos acceptor: one promised ballot for every slot, one accepted entry per slot.

Pure state and transitions. Each handler returns the reply; the caller (the
replica) records what became dirty in the pending ``Persist`` and releases the
reply only after that ``Persist`` is reported saved.

A promise lists accepted entries within a byte budget; what does not fit is listed by
the next ``Prepare`` at the same ballot (see ``Replica`` for why the chunks add up to
one promise).
"""
from __future__ import annotations

from .messages import Accept, Accepted, Nack, Prepare, Promise, entry_bytes, value_bytes
from .types import (
    MAX_MESSAGE_ITEMS,
    ZERO_BALLOT,
    Ballot,
    Durable,
    LogEntry,
    Persist,
    SafetyViolation,
    Slot,
    Snapshot,
    Value,
)


class Acceptor:
    def __init__(self, node_id: str, durable: Durable, promise_window: int,
                 budget_bytes: int, ahead_budget: int = 2**62) -> None:
        self.node_id = node_id
        self.promised: Ballot = durable.promised
        self.log: dict[Slot, LogEntry] = {e.slot: e for e in durable.entries}
        self.snapshot: Snapshot = durable.snapshot
        self.commit_index: Slot = max(durable.commit_index, durable.snapshot.index)
        # A promise lists accepted entries only when the candidate is at most this
        # many slots behind our commit index; otherwise it must catch up first.
        self.promise_window = promise_window
        self.budget_bytes = budget_bytes
        # Stamped on every vote: which member of this id promised or accepted.
        self.incarnation = 0
        # What we hold for slots we cannot apply yet: the bytes of entries above the commit
        # index. An acceptor that is behind (fetching a snapshot for a minute while the
        # leader goes on) would otherwise hold every value written meanwhile; past the
        # budget it stops voting for new slots -- always safe, a vote may be withheld --
        # and the leader chooses them with the other members.
        self.ahead_budget = ahead_budget
        self.ahead_bytes = 0
        self._recount_ahead()

    def _recount_ahead(self) -> None:
        c = self.commit_index
        self.ahead_bytes = sum(value_bytes(e.value) for s, e in self.log.items() if s > c)

    def trim_tail(self, keep_from: Slot, max_bytes: int) -> None:
        """Drop entries the snapshot covers below ``keep_from``, and the oldest of the rest
        until they hold at most ``max_bytes``."""
        tail = sorted(s for s in self.log if s <= self.snapshot.index)
        held = sum(value_bytes(self.log[s].value) for s in tail if s >= keep_from)
        for s in tail:
            if s >= keep_from and held <= max_bytes:
                break
            if s >= keep_from:
                held -= value_bytes(self.log[s].value)
            del self.log[s]

    def set_commit(self, c: Slot) -> None:
        """The commit index moves up to ``c`` (the caller checked it is higher)."""
        for s in range(self.commit_index + 1, c + 1):
            e = self.log.get(s)
            if e is not None:
                self.ahead_bytes -= value_bytes(e.value)
        self.commit_index = c

    def _hold(self, e: LogEntry, old: LogEntry | None) -> None:
        """Store ``e`` in place of ``old``, keeping ``ahead_bytes``."""
        self.log[e.slot] = e
        if e.slot > self.commit_index:
            self.ahead_bytes += value_bytes(e.value) - (0 if old is None else value_bytes(old.value))

    @property
    def last_slot(self) -> Slot:
        return max(self.log, default=self.snapshot.index)

    def on_prepare(self, m: Prepare, persist: Persist) -> Promise | Nack:
        if m.ballot < self.promised:
            return Nack(self.node_id, m.ballot, self.promised)
        if m.ballot > self.promised:
            self.promised = m.ballot
            persist.promised = m.ballot
        # Slots up to `complete_through` are chosen here and left out of the
        # promise; the candidate must learn them by catch-up before leading.
        complete_through = self.snapshot.index
        if self.commit_index >= m.from_slot + self.promise_window:
            complete_through = self.commit_index
        if complete_through >= m.from_slot:
            # The candidate must learn slots through complete_through and prepare again
            # before it may lead: entries listed now would never be used.
            return Promise(self.node_id, m.ballot, m.from_slot, (), self.commit_index,
                           complete_through, 0, self.incarnation)
        accepted: list[LogEntry] = []
        used = 0
        next_slot = 0
        for s in sorted(s for s in self.log if s >= m.from_slot):
            e = self.log[s]
            cost = entry_bytes(e)
            if accepted and (used + cost > self.budget_bytes or len(accepted) >= MAX_MESSAGE_ITEMS):
                next_slot = s        # the rest follows when the candidate asks from here
                break
            accepted.append(e)
            used += cost
        return Promise(self.node_id, m.ballot, m.from_slot, tuple(accepted),
                       self.commit_index, complete_through, next_slot, self.incarnation)

    def on_accept(self, m: Accept, persist: Persist) -> Accepted | Nack | None:
        if m.ballot < self.promised:
            return Nack(self.node_id, m.ballot, self.promised)
        if m.ballot > self.promised:
            # Accepting implies promising: never lower, only raise.
            self.promised = m.ballot
            persist.promised = m.ballot
        if m.slot <= self.snapshot.index:
            # Chosen and compacted here. A leader at a ballot >= our promise proposes the
            # chosen value for it (a leader below the choosing ballot cannot gather a
            # quorum: every member of the choosing majority promised higher). Vouch, or a
            # new leader that re-proposes this slot would wait for us forever.
            return Accepted(self.node_id, m.ballot, m.slot, self.incarnation)
        old = self.log.get(m.slot)
        if m.slot <= self.commit_index:
            # Known chosen: never overwrite. Vouch only for the chosen value.
            if old is not None and old.value == m.value:
                return Accepted(self.node_id, m.ballot, m.slot, self.incarnation)
            return None
        if old is not None and old.ballot == m.ballot and old.value != m.value:
            raise SafetyViolation(
                f"two values for slot {m.slot} at ballot {m.ballot}: {old.value!r} vs {m.value!r}")
        if old is None and self.ahead_bytes + value_bytes(m.value) > self.ahead_budget:
            return None     # behind by more than we hold: no vote until we catch up
        if old is None or old.ballot != m.ballot:
            e = LogEntry(m.slot, m.ballot, m.value)
            self._hold(e, old)
            persist.entries.append(e)
        return Accepted(self.node_id, m.ballot, m.slot, self.incarnation)

    def learn_chosen(self, slot: Slot, ballot: Ballot, value: Value, persist: Persist) -> None:
        """Record a value known to be chosen (from a quorum or from catch-up)."""
        if slot <= self.snapshot.index:
            return
        old = self.log.get(slot)
        if old is not None and old.value == value:
            return
        if old is not None and slot <= self.commit_index:
            raise SafetyViolation(f"slot {slot} chosen twice: {old.value!r} vs {value!r}")
        e = LogEntry(slot, ballot if ballot > ZERO_BALLOT else self.promised, value)
        self._hold(e, old)
        persist.entries.append(e)

    def install_snapshot(self, snap: Snapshot, persist: Persist,
                         keep_from: Slot | None = None) -> None:
        """``snap`` replaces the log through its index. Entries from ``keep_from`` on stay
        in memory (a catch-up tail: chosen, covered by the snapshot, never saved again)."""
        self.snapshot = snap
        floor = snap.index + 1 if keep_from is None else keep_from
        for s in [s for s in self.log if s < floor]:
            del self.log[s]
        persist.snapshot = snap
        persist.entries = [e for e in persist.entries if e.slot > snap.index]
        if snap.index > self.commit_index:
            self.commit_index = snap.index
            persist.commit_index = snap.index
        self._recount_ahead()
