"""Values shared by every layer of the protocol core.

A ballot is ``(round, node)``, ordered as a tuple. ``ZERO_BALLOT`` is the explicit
"nothing promised yet" value: comparisons never meet ``None``.

The limits below are the protocol's own: every message a node builds stays within them
by construction, and ``wire`` refuses any decoded field outside them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:   # membership imports this module; the annotation only names the type
    from .membership import Membership

NodeId = str
Slot = int
# A log value is a batch of opaque, already-encoded client commands. The empty
# batch is the no-op a new leader uses to fill holes.
Value = tuple[bytes, ...]
NOOP: Value = ()

# Ballot rounds and slots never exceed 2**62, so ``x + 1`` always fits SQLite's
# signed 64-bit INTEGER (and msgpack's int64) with room to spare: a node never
# persists a number it could not increment.
MAX_ROUND = 2**62
MAX_SLOT = 2**62
# Node ids are short strings (cluster files name them n1..n15).
MAX_NODE_ID_CHARS = 64

MiB = 1024 * 1024
# Byte budgets (docs/WAVE2.md §2). A sender packs items (commands into an Accept, entries
# into a Promise or a catch-up reply) while the estimated encoded total stays within the
# budget, always taking at least one item; so a message is at most
# max(budget, one item) + envelope, below wire.MAX_FRAME_BYTES (4 MiB).
MESSAGE_BUDGET_BYTES = 2 * MiB
SNAPSHOT_CHUNK_BYTES = 1 * MiB
# One replicated command (an encoded commands.Request) is at most a key (512 B) plus a
# value (1 MiB) plus its framing (client id <= 64 chars, ints, a fence): 8 KiB covers
# the framing many times over (tests/unit/test_wire.py holds the bound).
MAX_COMMAND_BYTES = 1 * MiB + 8 * 1024
# Count bounds on lists in one message (their bytes are bounded anyway; these keep a
# peer from making us build millions of tiny objects from one frame).
MAX_BATCH_COMMANDS = 65_536
MAX_MESSAGE_ITEMS = 65_536
MAX_RENEWED = 4_096
# A snapshot is transferred in chunks; its total size is a 64-bit offset space.
MAX_SNAPSHOT_BYTES = 2**62


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
        if not isinstance(self.round, int) or not 0 <= self.round <= MAX_ROUND:
            raise ProtocolError(f"ballot round must be an int in [0, 2**62], got {self.round!r}")
        if not isinstance(self.node, str) or len(self.node) > MAX_NODE_ID_CHARS:
            raise ProtocolError(f"ballot node must be a str of at most {MAX_NODE_ID_CHARS} "
                                f"characters, got {self.node!r:.80}")

    def next_for(self, node: NodeId) -> Ballot:
        """The smallest ballot owned by ``node`` that is greater than this one.

        Raises ``ProtocolError`` when the round space is exhausted (round 2**62).
        """
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


class StoredPayload(Protocol):
    """A snapshot kept outside memory by a storage adapter (a file): its whole *payload*
    (see ``transfer``) -- the configuration header, ``head`` bytes, then the state
    machine's bytes -- read a piece at a time. Written once and never changed; whoever
    wrote it computed ``checksum``, the sha256 of all ``size`` bytes."""

    @property
    def size(self) -> int: ...

    @property
    def head(self) -> int: ...

    @property
    def checksum(self) -> bytes: ...

    def read(self, offset: int, n: int) -> bytes: ...


class PayloadSink(Protocol):
    """Where a snapshot fetched from a peer is assembled, chunk by chunk, in order."""

    def write(self, data: bytes) -> None: ...

    def finish(self, head: int) -> bytes | StoredPayload:
        """Every byte arrived and checked: the state machine's bytes (those after the
        ``head`` bytes of header), in memory or kept by the adapter."""
        ...

    def discard(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State-machine state covering every slot up to and including ``index``, and the
    configuration in force after it (config(index + 1)).

    ``data`` is the state machine's bytes, or a ``StoredPayload`` that holds them after
    its header (a large state lives in a file, not in memory).

    ``config`` is None only where no configuration was ever recorded (a data directory
    from before membership was replicated, a fresh ``MemoryStore``): the replica then
    starts from the bootstrap members it is given.
    """

    index: Slot
    data: bytes | StoredPayload
    config: Membership | None = None


EMPTY_SNAPSHOT = Snapshot(0, b"")


@dataclass(frozen=True, slots=True)
class Config:
    """Timing and sizing knobs of one replica (times in milliseconds, sizes in bytes).

    Every knob is a positive int; the byte budgets may be lowered (the simulator uses
    tiny ones so that every message splits) but never raised above the protocol's
    limits, or a message could outgrow the frame cap.
    """

    heartbeat_ms: int = 50
    election_timeout_ms: int = 600     # randomized in [t, 2t) per reset
    max_inflight_slots: int = 64        # uncommitted slots a leader keeps in flight
    max_inflight_bytes: int = 64 * MiB  # ... and their values' bytes (plus one batch)
    max_batch_commands: int = 512       # commands packed into one log entry
    max_batch_bytes: int = MESSAGE_BUDGET_BYTES   # ... and their encoded bytes (one Accept)
    max_pending_commands: int = 10_000  # proposals queued while no slot is free
    max_pending_bytes: int = 64 * MiB   # ... and their bytes; past either, propose refuses
    # An acceptor holding this many bytes of entries above its commit index (it is behind:
    # fetching a snapshot, missing a slot) votes for no new slot until it has caught up.
    # Well above what a leader keeps in flight, so a follower in step never meets it.
    max_ahead_bytes: int = 256 * MiB
    # After a compaction, the entries after a snapshot a follower is still fetching stay in
    # memory up to this many bytes, so that it can catch up from them.
    max_catchup_tail_bytes: int = 512 * MiB
    catchup_batch: int = 256            # entries per catch-up reply
    message_budget_bytes: int = MESSAGE_BUDGET_BYTES  # entries per Promise / catch-up reply
    snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES  # one SnapshotChunk's data
    snapshot_retain_ms: int = 10_000    # keep a superseded snapshot this long after its last chunk
    snapshot_every: int = 10_000        # applied entries between snapshots

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Config.{f.name} must be a positive int, got {v!r}")
        caps = {"max_batch_bytes": MESSAGE_BUDGET_BYTES,
                "message_budget_bytes": MESSAGE_BUDGET_BYTES,
                "snapshot_chunk_bytes": SNAPSHOT_CHUNK_BYTES,
                "max_batch_commands": MAX_BATCH_COMMANDS,
                "catchup_batch": MAX_MESSAGE_ITEMS}
        for name, cap in caps.items():
            if getattr(self, name) > cap:
                raise ValueError(f"Config.{name} must be at most {cap}, got {getattr(self, name)}")


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
    # A joining node learned which member it is (the slot that added it).
    incarnation: int | None = None
    # This node applied a configuration without itself: it must never serve again.
    removed: str | None = None

    def empty(self) -> bool:
        return (
            not self.rebuilt
            and self.incarnation is None
            and self.removed is None
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
    # Which member this node is: the slot of the change that added it (0: a bootstrap
    # member); None while a node added at runtime has not yet learned it (joining).
    incarnation: int | None = 0
    removed: str = ""          # why this node was removed ("": it was not)
