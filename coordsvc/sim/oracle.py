"""The per-slot agreement oracle: what Paxos promises, checked at every durable save.

It sees each save at the moment it becomes durable and never forgets: a value is chosen
for a slot once a quorum has it on disk at one ballot, and from then on

- no other value is ever chosen for that slot;
- no acceptor's promise goes down (unless its disk was lost);
- every node applies exactly the chosen values, slot after slot, with no gap, and a
  snapshot it installs covers the same prefix as everyone else's (a rolling hash).

Violations are reported through ``violate`` with the step that caused them, so the
failing seed points at the moment things went wrong rather than at a symptom later.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..core.types import Ballot, Persist, Slot, Value

__all__ = ["SlotOracle", "chain_hash"]


def chain_hash(prev: str, slot: Slot, value: Value) -> str:
    """The rolling hash of an applied prefix, extended by ``slot``."""
    d = hashlib.blake2b(prev.encode(), digest_size=8)
    d.update(str(slot).encode())
    for c in value:
        d.update(len(c).to_bytes(4, "big"))
        d.update(c)
    return d.hexdigest()


class SlotOracle:
    def __init__(self, quorum: int, violate: Callable[[str], None],
                 on_chosen: Callable[[Slot, Value], None] | None = None,
                 promises_may_regress: bool = False) -> None:
        self.quorum = quorum
        self.violate = violate
        self.on_chosen = on_chosen
        # Only a known-bad variant (a restarted acceptor forgetting its promise) may.
        self.promises_may_regress = promises_may_regress
        self.votes: dict[tuple[Slot, Ballot], set[str]] = {}
        self.vote_value: dict[tuple[Slot, Ballot], Value] = {}
        self.chosen: dict[Slot, Value] = {}
        self.chain_at: dict[Slot, str] = {0: ""}
        self.max_promised: dict[str, Ballot] = {}
        # Per node: the last slot it applied and the hash of its applied prefix.
        self.applied: dict[str, Slot] = {}
        self.chain: dict[str, str] = {}

    def booted(self, nid: str) -> None:
        """A node (re)started: it applies its log again from its snapshot."""
        self.applied[nid], self.chain[nid] = 0, ""

    def disk_lost(self, nid: str) -> None:
        """A replacement disk: the promises on the lost one are legitimately forgotten."""
        self.max_promised.pop(nid, None)

    def saved(self, nid: str, p: Persist) -> None:
        """``p`` is now durable on ``nid``."""
        if p.promised is not None:
            self._promised(nid, p.promised)
        for e in p.entries:
            key = (e.slot, e.ballot)
            self._accepted(key, e.value)
            voters = self.votes.setdefault(key, set())
            voters.add(nid)
            if len(voters) >= self.quorum:
                self._chosen(e.slot, e.value)

    def _promised(self, nid: str, promised: Ballot) -> None:
        prev = self.max_promised.get(nid)
        if prev is not None and promised < prev and not self.promises_may_regress:
            self.violate(f"{nid} promised ballot went down {prev} -> {promised}")
        if prev is None or promised > prev:
            self.max_promised[nid] = promised

    def _accepted(self, key: tuple[Slot, Ballot], value: Value) -> None:
        if key in self.vote_value and self.vote_value[key] != value:
            self.violate(f"two values accepted for slot {key[0]} at {key[1]}")
        self.vote_value[key] = value

    def _chosen(self, slot: Slot, value: Value) -> None:
        old = self.chosen.get(slot)
        if old is not None and old != value:
            self.violate(f"slot {slot} chosen twice: {old!r} then {value!r}")
            return
        if old is None:
            self.chosen[slot] = value
            if self.on_chosen is not None:
                self.on_chosen(slot, value)

    def applied_entry(self, nid: str, slot: Slot, value: Value) -> None:
        """``nid`` applied ``value`` at ``slot`` to its state machine."""
        applied = self.applied.get(nid, 0)
        if slot != applied + 1:
            self.violate(f"{nid} applied slot {slot} after {applied}")
        if self.chosen.get(slot) != value:
            self.violate(f"{nid} applied {value!r} at slot {slot}; chosen is {self.chosen.get(slot)!r}")
        self.applied[nid] = slot
        chain = self.chain[nid] = chain_hash(self.chain.get(nid, ""), slot, value)
        known = self.chain_at.setdefault(slot, chain)
        if known != chain:
            self.violate(f"{nid} applied prefix through {slot} differs from another node's")

    def installed(self, nid: str, index: Slot, chain: str | None = None) -> None:
        """``nid`` installed a snapshot through ``index``; ``chain`` is the prefix hash it
        claims to cover, if the snapshot carries one."""
        known = self.chain_at.get(index)
        if chain is not None and known is not None and known != chain:
            self.violate(f"{nid} installed a snapshot whose prefix differs at {index}")
        if known is None and chain is None:
            self.violate(f"{nid} installed a snapshot through {index}, a prefix no node applied")
        self.applied[nid] = index
        self.chain[nid] = chain if chain is not None else known or ""
