"""Values shared by every layer of the protocol core.

A ballot is ``(round, node)``, ordered as a tuple. ``ZERO_BALLOT`` is the explicit
"nothing promised yet" value: comparisons never meet ``None``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NodeId = str
Slot = int
# A log value is a batch of opaque, already-encoded client commands. The empty
# batch is the no-op a new leader uses to fill holes.
Value = tuple[bytes, ...]
NOOP: Value = ()


class ProtocolError(Exception):
    """A peer sent something that breaks the protocol (the peer misbehaved)."""


class UsageError(Exception):
    """The caller drove the core in a way it must not (we misbehaved)."""


class SafetyViolation(Exception):
    """A broken invariant: the node must stop rather than serve a wrong answer.

    Raised explicitly (never via ``assert``) so ``python -O`` cannot strip it.
    """


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    round: int
    node: NodeId

    def __post_init__(self) -> None:
        if not isinstance(self.round, int) or self.round < 0:
            raise ProtocolError(f"ballot round must be a non-negative int, got {self.round!r}")
        if not isinstance(self.node, str):
            raise ProtocolError(f"ballot node must be a str, got {self.node!r}")

    def next_for(self, node: NodeId) -> Ballot:
        """The smallest ballot owned by ``node`` that is greater than this one."""
        return Ballot(self.round + 1, node)

    def as_list(self) -> list[object]:
        return [self.round, self.node]


ZERO_BALLOT = Ballot(0, "")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One accepted log slot: the ballot it was accepted at and its value."""

    slot: Slot
    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State-machine state covering every slot up to and including ``index``."""

    index: Slot
    data: bytes


EMPTY_SNAPSHOT = Snapshot(0, b"")


@dataclass(frozen=True, slots=True)
class Config:
    """Timing and sizing knobs of one replica (all times in milliseconds)."""

    heartbeat_ms: int = 50
    election_timeout_ms: int = 600     # randomized in [t, 2t) per reset
    max_inflight_slots: int = 64        # uncommitted slots a leader keeps in flight
    max_batch_commands: int = 512       # commands packed into one log entry
    max_pending_commands: int = 10_000  # proposals queued while no slot is free
    catchup_batch: int = 256            # entries per catch-up reply
    snapshot_every: int = 10_000        # applied entries between snapshots


@dataclass(slots=True)
class Persist:
    """What must be durable before the messages of the same ``Ready`` leave.

    ``None``/empty fields mean "unchanged". Applied in this order: snapshot (which
    truncates the log through its index), then entries, then scalars.
    """

    promised: Ballot | None = None
    high_water_round: int | None = None
    entries: list[LogEntry] = field(default_factory=list)
    commit_index: Slot | None = None
    snapshot: Snapshot | None = None
    # A rebuilding replacement earned its vote: clear its marker with this save.
    rebuilt: bool = False

    def empty(self) -> bool:
        return (
            not self.rebuilt
            and self.promised is None
            and self.high_water_round is None
            and not self.entries
            and self.commit_index is None
            and self.snapshot is None
        )


@dataclass(frozen=True, slots=True)
class Durable:
    """Everything a replica recovers from disk on restart."""

    promised: Ballot = ZERO_BALLOT
    high_water_round: int = 0
    entries: tuple[LogEntry, ...] = ()
    commit_index: Slot = 0
    snapshot: Snapshot = EMPTY_SNAPSHOT
    rebuilding: bool = False   # a replacement for a lost disk that may not vote yet
