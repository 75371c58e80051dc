"""Peer-to-peer protocol messages: small frozen values, validated on construction.

Every number a message carries is range-checked here (slots, commit indexes and rounds
in ``[0, 2**62]``), so no message the core builds or accepts can hold a value it could
not store or increment. ``wire`` checks types and the remaining bounds (node ids, list
lengths, chunk sizes) before it builds one of these.

The size estimates at the end (``value_bytes`` and co.) are upper bounds of the msgpack
encoding ``wire`` produces: senders pack items against a byte budget with them, without
encoding anything twice (tests/unit/test_wire.py holds them against the real encoder).
"""
from __future__ import annotations

from dataclasses import dataclass

from .membership import Membership
from .types import (
    MAX_MESSAGE_ITEMS,
    MAX_RENEWED,
    MAX_SLOT,
    MAX_SNAPSHOT_BYTES,
    Ballot,
    LogEntry,
    NodeId,
    ProtocolError,
    Slot,
    Value,
)

CHECKSUM_BYTES = 32   # sha256 of a whole snapshot


def _check_slot(name: str, v: object, low: int = 0) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= MAX_SLOT:
        raise ProtocolError(f"{name} must be an int in [{low}, 2**62], got {v!r}")


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a for every slot >= from_slot.

    The same ballot again with a higher ``from_slot`` asks an acceptor that already
    promised for the next chunk of its accepted entries (see ``Promise.next_slot``).
    """

    src: NodeId
    ballot: Ballot
    from_slot: Slot

    def __post_init__(self) -> None:
        _check_slot("from_slot", self.from_slot)


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b: the acceptor promised ``ballot`` and reports what it accepted.

    ``snapshot_index`` tells the candidate that slots up to it are chosen but were
    compacted away (or left out) here: a candidate behind it must catch up before it leads.

    A promise lists the entries of slots ``>= from_slot`` within a byte budget. When they
    do not all fit, ``next_slot`` is the first slot left out and the candidate asks again
    (``Prepare`` at the same ballot from ``next_slot``); ``next_slot == 0`` marks the
    promise that completes the list.
    """

    src: NodeId
    ballot: Ballot
    from_slot: Slot
    accepted: tuple[LogEntry, ...]
    commit_index: Slot
    snapshot_index: Slot
    next_slot: Slot = 0
    incarnation: Slot = 0        # which member of ``src`` promised (see membership)

    def __post_init__(self) -> None:
        _check_slot("from_slot", self.from_slot)
        _check_slot("commit_index", self.commit_index)
        _check_slot("snapshot_index", self.snapshot_index)
        _check_slot("next_slot", self.next_slot)
        _check_slot("incarnation", self.incarnation)
        if len(self.accepted) > MAX_MESSAGE_ITEMS:
            raise ProtocolError(f"a promise lists at most {MAX_MESSAGE_ITEMS} entries")
        if self.next_slot:
            if self.next_slot <= self.from_slot or not self.accepted:
                raise ProtocolError("an unfinished promise lists entries and continues past them")
            if self.accepted[-1].slot >= self.next_slot:
                raise ProtocolError("an unfinished promise lists only slots below next_slot")


@dataclass(frozen=True, slots=True)
class Nack:
    """Refusal of a Prepare/Accept/Heartbeat at ``ballot``: ``promised`` is the one to beat."""

    src: NodeId
    ballot: Ballot
    promised: Ballot


@dataclass(frozen=True, slots=True)
class Accept:
    """Phase 2a for one slot; carries the leader's commit index."""

    src: NodeId
    ballot: Ballot
    slot: Slot
    value: Value
    commit_index: Slot

    def __post_init__(self) -> None:
        _check_slot("slot", self.slot, 1)   # slot 0 is reserved
        _check_slot("commit_index", self.commit_index)


@dataclass(frozen=True, slots=True)
class Accepted:
    """Phase 2b: ``src`` (its member ``incarnation``) accepted ``slot`` at ``ballot``, and
    it is on its disk."""

    src: NodeId
    ballot: Ballot
    slot: Slot
    incarnation: Slot = 0

    def __post_init__(self) -> None:
        # One test for the common case (the hot path: one Accepted per acceptor per slot).
        s, i = self.slot, self.incarnation
        if not (type(s) is int and type(i) is int and 0 <= s <= MAX_SLOT and 0 <= i <= MAX_SLOT):
            _check_slot("slot", s)
            _check_slot("incarnation", i)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader liveness, commit index, and a read-confirmation round number.

    ``renewed`` is no longer filled (a new leader restarts every session's clock, so it
    needs no renewal history) and is ignored when received. It stays on the wire, whose
    arrays have an exact arity, so that nodes before and after that change still decode
    each other's heartbeats; a later wire version may drop it.
    """

    src: NodeId
    ballot: Ballot
    commit_index: Slot
    round: int
    renewed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_slot("commit_index", self.commit_index)
        _check_slot("round", self.round)
        if len(self.renewed) > MAX_RENEWED:
            raise ProtocolError(f"a heartbeat renews at most {MAX_RENEWED} sessions")


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """``src`` (member ``incarnation``) follows ``ballot``; its commit index is progress
    the leader reads to promote a learner or hand over leadership."""

    src: NodeId
    ballot: Ballot
    round: int
    commit_index: Slot
    incarnation: Slot = 0

    def __post_init__(self) -> None:
        _check_slot("round", self.round)
        _check_slot("commit_index", self.commit_index)
        _check_slot("incarnation", self.incarnation)


@dataclass(frozen=True, slots=True)
class CatchupRequest:
    """A follower asks for chosen entries in [from_slot, to_slot]."""

    src: NodeId
    from_slot: Slot
    to_slot: Slot

    def __post_init__(self) -> None:
        _check_slot("from_slot", self.from_slot, 1)
        _check_slot("to_slot", self.to_slot, self.from_slot)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """Names one snapshot: its index, its size and the sha256 of its bytes."""

    index: Slot
    size: int
    checksum: bytes

    def __post_init__(self) -> None:
        _check_slot("snapshot index", self.index, 1)
        if not isinstance(self.size, int) or not 0 <= self.size <= MAX_SNAPSHOT_BYTES:
            raise ProtocolError(f"snapshot size must be in [0, 2**62], got {self.size!r}")
        if not isinstance(self.checksum, bytes) or len(self.checksum) != CHECKSUM_BYTES:
            raise ProtocolError(f"snapshot checksum must be {CHECKSUM_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class CatchupReply:
    """Chosen entries, or word that the requester is behind our snapshot.

    ``ballot`` is the sender's ballot at sending time; every value here is chosen,
    so the receiver may record it as accepted at that ballot. ``snapshot`` (instead
    of entries) says the requested slots are compacted into that snapshot here:
    fetch it with ``SnapshotRequest``. ``config`` is config(1), sent with the entries of a
    request from slot 1: a node added at runtime starts from it (it knows no
    configuration of its own).
    """

    src: NodeId
    ballot: Ballot
    chosen: tuple[tuple[Slot, Value], ...]
    snapshot: SnapshotInfo | None
    commit_index: Slot
    config: Membership | None = None

    def __post_init__(self) -> None:
        _check_slot("commit_index", self.commit_index)
        if len(self.chosen) > MAX_MESSAGE_ITEMS:
            raise ProtocolError(f"a catch-up reply carries at most {MAX_MESSAGE_ITEMS} entries")


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Ask for the bytes of snapshot ``index`` from ``offset`` on (one chunk)."""

    src: NodeId
    index: Slot
    offset: int

    def __post_init__(self) -> None:
        _check_slot("index", self.index, 1)
        if not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_SNAPSHOT_BYTES:
            raise ProtocolError(f"snapshot offset must be in [0, 2**62], got {self.offset!r}")


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """``data`` is the snapshot's bytes ``[offset, offset + len(data))``.

    A chunk carries data unless it is the (empty) end of an empty snapshot, so every
    chunk a receiver takes moves its transfer forward.
    """

    src: NodeId
    snapshot: SnapshotInfo
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        end = self.offset + len(self.data)
        if not isinstance(self.offset, int) or self.offset < 0 or end > self.snapshot.size:
            raise ProtocolError("snapshot chunk lies outside the snapshot")
        if not self.data and self.offset != self.snapshot.size:
            raise ProtocolError("an empty snapshot chunk may only end the snapshot")


@dataclass(frozen=True, slots=True)
class PreVote:
    """Would you promise a ballot of ``round`` if I prepared one? (Changes nothing.)

    Asked by a follower whose election timer ran out, before it raises its ballot.
    """

    src: NodeId
    round: int
    commit_index: Slot

    def __post_init__(self) -> None:
        _check_slot("round", self.round)
        _check_slot("commit_index", self.commit_index)


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    """The answer to ``PreVote`` ``round``: yes only if the replier heard no leader within
    the election timeout and the asker's commit index is not behind its own."""

    src: NodeId
    round: int
    granted: bool

    def __post_init__(self) -> None:
        _check_slot("round", self.round)
        if not isinstance(self.granted, bool):
            raise ProtocolError("granted must be a bool")


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """The leader of ``ballot`` hands over: campaign at once (no pre-vote, no timer)."""

    src: NodeId
    ballot: Ballot


Message = (
    Prepare | Promise | Nack | Accept | Accepted | Heartbeat | HeartbeatAck
    | CatchupRequest | CatchupReply | SnapshotRequest | SnapshotChunk
    | PreVote | PreVoteReply | TimeoutNow
)

# Wire tags follow this order (Prepare = 1): append new types, never reorder.
MESSAGE_TYPES: tuple[type, ...] = (
    Prepare, Promise, Nack, Accept, Accepted, Heartbeat, HeartbeatAck,
    CatchupRequest, CatchupReply, SnapshotRequest, SnapshotChunk,
    PreVote, PreVoteReply, TimeoutNow,
)


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message addressed to one peer (possibly ourselves)."""

    dst: NodeId
    msg: Message


# --- encoded-size estimates (upper bounds; see the module docstring) ------------------
# msgpack: an int is at most 9 bytes, a bin/str/array header at most 5, and a str of n
# characters at most 4n bytes of UTF-8.

COMMAND_OVERHEAD_BYTES = 5           # bin header of one command in a value
VALUE_OVERHEAD_BYTES = 5             # array header of a value
# Everything in a message besides its packed items: header, array, src, ballot, up to
# four ints, a snapshot descriptor, list headers.
ENVELOPE_BYTES = 1024


def value_bytes(v: Value) -> int:
    """Upper bound of the encoded size of a log value (a batch of commands)."""
    return VALUE_OVERHEAD_BYTES + sum(len(c) for c in v) + COMMAND_OVERHEAD_BYTES * len(v)


def entry_bytes(e: LogEntry) -> int:
    """Upper bound of an accepted entry in a Promise: [slot, [round, node], value]."""
    return 32 + 4 * len(e.ballot.node) + value_bytes(e.value)


def chosen_bytes(v: Value) -> int:
    """Upper bound of one chosen [slot, value] pair in a CatchupReply."""
    return 16 + value_bytes(v)
