"""Membership as values in the log: configurations, the changes between them, config(s).

A **configuration** is the set of members that decides quorums: each member has an id,
an *incarnation* (the slot of the change that added it; 0 for the members of the
bootstrap configuration), whether it votes, and the addresses and public key the runtime
needs to reach it (opaque strings to the core). A node re-added, or replaced, under the
same id is a different member: votes carry the sender's incarnation and count only for
the member with that incarnation, so a stale vote of an earlier incarnation never stands
in for the acceptor that replaced it (whose disk does not hold what the old one promised).

A **change** is one log value, recognised by a marker no client command can start with
(``0xc1`` is the one byte msgpack never uses): it adds a learner, promotes a learner to
voter, or removes a member -- so every change adds or removes at most one voter, and any
majority of a configuration meets any majority of the next one.

**config(s)**, the configuration that decides the quorum of slot ``s``, is the bootstrap
configuration with every change chosen in slots ``< s`` applied: a function of the log
alone. A snapshot at index ``i`` carries config(i + 1), so compaction loses nothing.
:class:`ConfigHistory` holds that function for the slots a replica still cares about.

The safety argument (why one change at a time with the pipeline drained, and phase 1
needing a majority of every configuration in the recovered chain, keep one value per
slot) is in ``Replica``'s docstring and docs/DESIGN.md.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field, replace
from enum import Enum

import msgpack  # type: ignore[import-untyped]

from .types import MAX_NODE_ID_CHARS, MAX_SLOT, NodeId, ProtocolError, Slot, UsageError, Value

__all__ = [
    "CHANGE_MARKER",
    "ChangeKind",
    "ConfigHistory",
    "Member",
    "Membership",
    "MembershipChange",
    "change_in",
    "decode_membership",
    "encode_membership",
]

# A change's log value is one command starting with this marker. 0xc1 is never a valid
# msgpack type byte, and every client command is a msgpack array, so no command collides.
CHANGE_MARKER = b"\xc1coordsvc.membership\x00"
MAX_MEMBERS = 64              # a configuration lists at most this many members
MAX_FIELD_CHARS = 512         # addresses and keys: short strings


@dataclass(frozen=True, slots=True)
class Member:
    id: NodeId
    incarnation: Slot = 0         # the slot that added it; 0: bootstrap
    voting: bool = True
    address: str = ""             # ROUTER endpoint (the runtime's, opaque here)
    publish: str = ""             # PUB endpoint
    http: str = ""                # operations endpoint
    public_key: str = ""          # CURVE public key, Z85 ("" in an insecure cluster)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= MAX_NODE_ID_CHARS:
            raise ProtocolError(f"member id must be a str of 1..{MAX_NODE_ID_CHARS} characters")
        if (not isinstance(self.incarnation, int) or isinstance(self.incarnation, bool)
                or not 0 <= self.incarnation <= MAX_SLOT):
            raise ProtocolError(f"member incarnation must be an int in [0, 2**62], got "
                                f"{self.incarnation!r}")
        if not isinstance(self.voting, bool):
            raise ProtocolError("member voting must be a bool")
        for name in ("address", "publish", "http", "public_key"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > MAX_FIELD_CHARS:
                raise ProtocolError(f"member {name} must be a str of at most {MAX_FIELD_CHARS}")

    @property
    def key(self) -> tuple[NodeId, Slot]:
        """Who this member is: its id and incarnation."""
        return (self.id, self.incarnation)


@dataclass(frozen=True, slots=True)
class Membership:
    """One configuration: members sorted by id, ids unique."""

    members: tuple[Member, ...]
    # Derived once (the leader counts votes against them on every Accepted).
    voter_keys: frozenset[tuple[NodeId, Slot]] = field(init=False, repr=False, compare=False)
    quorum: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [m.id for m in self.members]
        if len(self.members) > MAX_MEMBERS:
            raise ProtocolError(f"a configuration has at most {MAX_MEMBERS} members")
        if ids != sorted(set(ids)):
            raise ProtocolError("configuration members must be sorted by id, each id once")
        keys = frozenset(m.key for m in self.members if m.voting)
        object.__setattr__(self, "voter_keys", keys)
        object.__setattr__(self, "quorum", len(keys) // 2 + 1)

    @staticmethod
    def bootstrap(ids: list[NodeId] | tuple[NodeId, ...]) -> Membership:
        return Membership(tuple(Member(i) for i in sorted(set(ids))))

    def get(self, node: NodeId) -> Member | None:
        for m in self.members:
            if m.id == node:
                return m
        return None

    @property
    def ids(self) -> tuple[NodeId, ...]:
        return tuple(m.id for m in self.members)

    @property
    def voters(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.voting)

    @property
    def learners(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if not m.voting)

    def votes(self, node: NodeId, incarnation: Slot) -> bool:
        """``node`` at ``incarnation`` is a voter here."""
        return (node, incarnation) in self.voter_keys

    def is_quorum(self, keys: set[tuple[NodeId, Slot]] | frozenset[tuple[NodeId, Slot]]) -> bool:
        """A majority of the voters, each at its own incarnation, is among ``keys``."""
        vk = self.voter_keys
        return bool(vk) and len(vk & keys) >= self.quorum

    def apply(self, change: MembershipChange, slot: Slot) -> Membership:
        """The configuration after ``change``, chosen at ``slot``. Raises ``UsageError``
        for a change that does not fit this configuration (and changes nothing)."""
        why = self.refuses(change)
        if why is not None:
            raise UsageError(why)
        m = change.member
        if change.kind is ChangeKind.ADD:
            new = replace(m, incarnation=slot, voting=False)
            return Membership(tuple(sorted(self.members + (new,), key=lambda x: x.id)))
        old = self.get(m.id)
        assert old is not None
        if change.kind is ChangeKind.PROMOTE:
            return Membership(tuple(replace(x, voting=True) if x.id == m.id else x
                                    for x in self.members))
        return Membership(tuple(x for x in self.members if x.id != m.id))

    def refuses(self, change: MembershipChange) -> str | None:
        """Why ``change`` cannot follow this configuration, or None."""
        m = change.member
        old = self.get(m.id)
        if change.kind is ChangeKind.ADD:
            if old is not None:
                return f"{m.id} is already a member (remove it first to replace it)"
            if len(self.members) >= MAX_MEMBERS:
                return f"a configuration has at most {MAX_MEMBERS} members"
            return None
        if old is None or old.incarnation != m.incarnation:
            return f"{m.id} (incarnation {m.incarnation}) is not a member"
        if change.kind is ChangeKind.PROMOTE and old.voting:
            return f"{m.id} already votes"
        if change.kind is ChangeKind.REMOVE and old.voting and len(self.voters) == 1:
            return f"{m.id} is the last voter"
        return None


class ChangeKind(str, Enum):
    ADD = "add"              # a new member, as a learner (its incarnation: the slot)
    PROMOTE = "promote"      # a learner starts voting
    REMOVE = "remove"        # a member (voter or learner) leaves


@dataclass(frozen=True, slots=True)
class MembershipChange:
    kind: ChangeKind
    member: Member           # for PROMOTE/REMOVE, id and incarnation name the member

    def value(self) -> Value:
        """The log value that carries this change."""
        m = self.member
        body = msgpack.packb([self.kind.value, m.id, m.incarnation, m.voting, m.address,
                              m.publish, m.http, m.public_key], use_bin_type=True)
        return (CHANGE_MARKER + body,)


def change_in(value: Value) -> MembershipChange | None:
    """The change a log value carries, or None for an ordinary batch.

    A value that carries the marker but does not decode is a ``ProtocolError``: only a
    leader builds such values, so one that does not decode is a bug, not input.
    """
    if len(value) != 1 or not value[0].startswith(CHANGE_MARKER):
        return None
    try:
        f = msgpack.unpackb(value[0][len(CHANGE_MARKER):], raw=False)
        if not isinstance(f, list) or len(f) != 8:
            raise ValueError("want 8 fields")
        member = Member(f[1], f[2], f[3], f[4], f[5], f[6], f[7])
        return MembershipChange(ChangeKind(f[0]), member)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"a membership value does not decode: {e}") from e


def encode_membership(c: Membership) -> bytes:
    rows = [[m.id, m.incarnation, m.voting, m.address, m.publish, m.http, m.public_key]
            for m in c.members]
    packed: bytes = msgpack.packb(rows, use_bin_type=True)
    return packed


def decode_membership(b: bytes) -> Membership:
    """A configuration from ``encode_membership``'s bytes, or ``ProtocolError``."""
    try:
        rows = msgpack.unpackb(b, raw=False)
        if not isinstance(rows, list):
            raise ValueError("want a list of members")
        return Membership(tuple(Member(*r) if isinstance(r, list) and len(r) == 7
                                else _bad_row() for r in rows))
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"a configuration does not decode: {e}") from e


def _bad_row() -> Member:
    raise ValueError("a member row has 7 fields")


class ConfigHistory:
    """config(s) for every slot from ``base`` on: a base configuration and the changes
    after it, each in force from the slot after the one that chose it.

    Holds committed changes only; a leader's or candidate's tentative ones live beside
    it (see ``Replica``). ``compact(i)`` forgets what slots ``<= i`` needed.
    """

    def __init__(self, first_slot: Slot, base: Membership) -> None:
        self._starts: list[Slot] = [first_slot]
        self._configs: list[Membership] = [base]

    def at(self, slot: Slot) -> Membership:
        i = bisect_right(self._starts, slot) - 1
        return self._configs[max(i, 0)]

    @property
    def latest(self) -> Membership:
        return self._configs[-1]

    @property
    def latest_start(self) -> Slot:
        return self._starts[-1]

    def add(self, slot: Slot, config: Membership) -> None:
        """``config`` was chosen at ``slot``: it decides slots ``> slot``."""
        if slot + 1 <= self._starts[-1]:
            raise UsageError(f"config change at {slot} is not after {self._starts[-1] - 1}")
        self._starts.append(slot + 1)
        self._configs.append(config)

    def compact(self, through: Slot) -> None:
        """Forget the configurations of slots ``<= through`` (keep the one in force after)."""
        while len(self._starts) > 1 and self._starts[1] <= through + 1:
            del self._starts[0]
            del self._configs[0]

    def reset(self, first_slot: Slot, base: Membership) -> None:
        self._starts, self._configs = [first_slot], [base]
