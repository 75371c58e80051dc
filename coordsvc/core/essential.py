"""A teaching module: single-decree Paxos as three small, network-free classes.

The replica does not use this module. It is the bare algorithm that ``replica.py``
generalises to a log, kept because it is the clearest statement of the rules; the unit
tests check each rule here before checking its multi-slot form. It speaks the replica's
vocabulary -- ``Prepare``/``Promise``/``Accept``/``Accepted``/``Nack`` -- with one slot
instead of a log, so these are *not* the peer messages of ``messages.py`` (those carry a
slot, a commit index and byte-bounded batches) and never travel on the wire.

What the replica adds on top: a log of slots with one promise for all of them (phase 1
once per leadership), a leadership strategy (``leadership.py``), durability before every
reply, catch-up and snapshots, and membership (the quorum of a slot is a majority of the
configuration in force for it).
"""
from __future__ import annotations

from dataclasses import dataclass

from .types import ZERO_BALLOT, Ballot, NodeId, SafetyViolation


@dataclass(frozen=True, slots=True)
class Prepare:
    src: NodeId
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    src: NodeId
    ballot: Ballot
    accepted_ballot: Ballot
    accepted_value: object | None


@dataclass(frozen=True, slots=True)
class Accept:
    src: NodeId
    ballot: Ballot
    value: object


@dataclass(frozen=True, slots=True)
class Accepted:
    src: NodeId
    ballot: Ballot
    value: object


@dataclass(frozen=True, slots=True)
class Nack:
    """A NACK: the acceptor promised ``promised``, which is higher than ``ballot``."""

    src: NodeId
    ballot: Ballot
    promised: Ballot


class SingleAcceptor:
    def __init__(self, node_id: NodeId) -> None:
        self.id = node_id
        self.promised = ZERO_BALLOT
        self.accepted_ballot = ZERO_BALLOT
        self.accepted_value: object | None = None

    def receive_prepare(self, m: Prepare) -> Promise | Nack:
        if m.ballot < self.promised:
            return Nack(self.id, m.ballot, self.promised)
        self.promised = m.ballot
        return Promise(self.id, m.ballot, self.accepted_ballot, self.accepted_value)

    def receive_accept(self, m: Accept) -> Accepted | Nack:
        if m.ballot < self.promised:
            return Nack(self.id, m.ballot, self.promised)
        if m.ballot == self.accepted_ballot and m.value != self.accepted_value:
            raise SafetyViolation(f"two values proposed at ballot {m.ballot}")
        self.promised = m.ballot
        self.accepted_ballot, self.accepted_value = m.ballot, m.value
        return Accepted(self.id, m.ballot, m.value)


class SingleProposer:
    def __init__(self, node_id: NodeId, quorum: int) -> None:
        self.id = node_id
        self.quorum = quorum
        self.ballot = ZERO_BALLOT
        self.value: object | None = None       # what we want chosen
        self.highest_accepted = ZERO_BALLOT
        self.promised_by: set[NodeId] = set()
        self.refused_by: set[NodeId] = set()
        self.highest_refusal = ZERO_BALLOT
        self.leader = False

    def propose(self, value: object) -> None:
        if self.value is None:
            self.value = value

    def prepare(self) -> Prepare:
        top = max(self.ballot, self.highest_refusal)
        self.ballot = top.next_for(self.id)
        self.promised_by.clear()
        self.refused_by.clear()
        self.highest_accepted = ZERO_BALLOT
        self.leader = False
        return Prepare(self.id, self.ballot)

    def receive_promise(self, m: Promise) -> Accept | None:
        if m.ballot != self.ballot or m.src in self.promised_by:
            return None
        self.promised_by.add(m.src)
        if m.accepted_value is not None and m.accepted_ballot > self.highest_accepted:
            # Adopt the value of the highest ballot any acceptor accepted.
            self.highest_accepted, self.value = m.accepted_ballot, m.accepted_value
        if len(self.promised_by) == self.quorum and not self.leader:
            self.leader = True
            if self.value is not None:
                return Accept(self.id, self.ballot, self.value)
        return None

    def receive_nack(self, m: Nack) -> bool:
        """Record a NACK; True when a quorum refused and we should prepare again later."""
        if m.promised > self.highest_refusal:
            self.highest_refusal = m.promised
        if m.ballot != self.ballot:
            return False
        self.refused_by.add(m.src)
        if len(self.refused_by) >= self.quorum:
            self.leader = False
            return True
        return False


class SingleLearner:
    def __init__(self, quorum: int) -> None:
        self.quorum = quorum
        self.votes: dict[Ballot, set[NodeId]] = {}
        self.latest: dict[NodeId, Ballot] = {}
        self.value_at: dict[Ballot, object] = {}
        self.chosen: object | None = None

    def receive_accepted(self, m: Accepted) -> object | None:
        if self.chosen is not None:
            return self.chosen
        last = self.latest.get(m.src, ZERO_BALLOT)
        if m.ballot < last:
            return None                          # stale vote
        if m.ballot > last and last in self.votes:
            self.votes[last].discard(m.src)      # an acceptor's newer vote replaces the old
        self.latest[m.src] = m.ballot
        self.value_at.setdefault(m.ballot, m.value)
        voters = self.votes.setdefault(m.ballot, set())
        voters.add(m.src)                        # a duplicate vote changes nothing
        if len(voters) >= self.quorum:
            self.chosen = self.value_at[m.ballot]
        return self.chosen
