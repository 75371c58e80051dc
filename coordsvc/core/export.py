"""Backups, the leader's half: a point-in-time copy of the state, served without a copy.

A ``snapshot_save`` is answered at a linearizable point, exactly like a ``get`` (the read
index: the leader confirms with a heartbeat round that it still leads, then waits until
everything committed when the request arrived is applied). At that point the state
machine equals its latest compaction snapshot plus the chosen log values after it,
through the applied index -- and the leader already holds both: the snapshot as one
immutable ``bytes`` (kept for followers that catch up) and the values in the acceptor's
log. So a save *pins* them (references, not copies: a later compaction drops the
replica's references, the save keeps its own until it is done) and streams

    body = snapshot data || one record per log slot after it

in chunks of ``SNAPSHOT_CHUNK_BYTES``, hashing what it serves. Building a fresh
``Machine.snapshot()`` instead would cost a second full copy of the state per save on
the leader (and a pause of the loop to build it); the price of pinning is that while a
save is in progress, a compaction keeps the superseded snapshot alive until the save
ends or sits idle for ``EXPORT_IDLE_MS`` -- at most ``MAX_EXPORTS`` of them.

A record is ``slot (u64) | n (u32) | n x (length (u32) | command bytes)``, big-endian.
Whoever restores replays the records onto the snapshot with :func:`apply_value`, the
same decode-and-apply that ``Service`` runs on every chosen value, so the result is the
state the leader had at the point (``tests/unit/test_export.py`` holds the two equal).
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .commands import decode_request
from .machine import Machine
from .transfer import StateReader, state_size
from .types import (
    MAX_BATCH_COMMANDS,
    MAX_COMMAND_BYTES,
    MESSAGE_BUDGET_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    ProtocolError,
    Slot,
    Snapshot,
    StoredPayload,
    UsageError,
    Value,
)

__all__ = [
    "EXPORT_IDLE_MS", "MAX_EXPORTS", "MAX_RECORD_BYTES", "BodyDecoder", "Chunk", "Export",
    "ExportPoint", "Exports", "apply_value", "record_bytes",
]

MAX_EXPORTS = 4
EXPORT_IDLE_MS = 60_000
_RECORD = struct.Struct(">QI")    # slot, number of commands
_LEN = struct.Struct(">I")        # one command's length
# A log value is one batch within the batch budget, or a single command beyond it
# (the replica always packs at least one): anything larger in a file is damage.
MAX_RECORD_BYTES = _RECORD.size + MESSAGE_BUDGET_BYTES + MAX_COMMAND_BYTES + _LEN.size * MAX_BATCH_COMMANDS


def record_bytes(value: Value) -> int:
    """The encoded size of one record (computed, not encoded: sizing a save copies nothing)."""
    return _RECORD.size + sum(_LEN.size + len(c) for c in value)


def apply_value(machine: Machine, slot: Slot, value: Value) -> None:
    """Apply one chosen log value as every replica does: each command decoded and applied
    in order; bytes that do not decode are skipped (every replica skips the same ones,
    which is what keeps skipping deterministic -- membership changes are such values)."""
    for raw in value:
        try:
            request = decode_request(raw)
        except ProtocolError:
            continue
        machine.apply(slot, request)


@dataclass(frozen=True, slots=True)
class ExportPoint:
    """What a save pinned: the state at log index ``index`` (revision ``revision``, ``keys``
    keys) as ``snapshot`` plus the chosen values of the slots after it."""

    index: Slot
    revision: int
    keys: int
    snapshot: Snapshot
    entries: tuple[tuple[Slot, Value], ...]

    def __post_init__(self) -> None:
        want = self.snapshot.index + 1
        for slot, _ in self.entries:
            if slot != want:
                raise UsageError(f"export entries must follow the snapshot slot by slot: "
                                 f"expected {want}, got {slot}")
            want += 1
        if want - 1 != self.index:
            raise UsageError(f"export entries end at {want - 1}, not at index {self.index}")

    @property
    def body_bytes(self) -> int:
        return state_size(self.snapshot) + sum(record_bytes(v) for _, v in self.entries)


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    data: bytes
    done: bool
    sha256: bytes    # of the whole body, with the last chunk; b"" before


class Export:
    """One save in progress: serves the body in order, chunk by chunk.

    Chunks are asked for by offset: the next one, or the last one again (its reply was
    lost and the client retried). Any other offset is refused (``None``): the client
    starts over. The pins are dropped as soon as the last chunk is served.
    """

    def __init__(self, export_id: int, point: ExportPoint, now_ms: int,
                 chunk_bytes: int = SNAPSHOT_CHUNK_BYTES) -> None:
        if not 0 < chunk_bytes <= SNAPSHOT_CHUNK_BYTES:
            raise UsageError(f"chunk_bytes must be in (0, {SNAPSHOT_CHUNK_BYTES}]")
        self.id = export_id
        self.index, self.revision, self.keys = point.index, point.revision, point.keys
        self.snapshot_index = point.snapshot.index
        self.snapshot_bytes = state_size(point.snapshot)
        self._pinned: Snapshot | None = point.snapshot     # until the body is out
        self.entries = len(point.entries)
        self.body_bytes = point.body_bytes
        self.last_used_ms = now_ms
        self._chunk_bytes = chunk_bytes
        self._pieces: Iterator[memoryview | bytes] | None = _pieces(point, chunk_bytes)
        self._carry: memoryview | bytes | None = None
        self._next = 0
        self._last: Chunk | None = None
        self._sha = hashlib.sha256()

    @property
    def done(self) -> bool:
        return self._last is not None and self._last.done

    def chunk(self, offset: int, now_ms: int) -> Chunk | None:
        """The chunk at ``offset`` (the next, or the last again), or None."""
        last = self._last
        if last is not None and offset == last.offset:
            self.last_used_ms = now_ms
            return last
        if offset != self._next or self.done:
            return None
        self.last_used_ms = now_ms
        data = self._take()
        self._sha.update(data)
        self._next += len(data)
        done = self._next >= self.body_bytes
        if done:
            self._pieces = self._carry = self._pinned = None   # drop the pins: the body is out
        self._last = Chunk(offset, data, done, self._sha.digest() if done else b"")
        return self._last

    def stored(self) -> StoredPayload | None:
        """The pinned snapshot, if it lives outside memory (its file must stay)."""
        p = self._pinned
        return None if p is None or isinstance(p.data, bytes) else p.data

    def _take(self) -> bytes:
        out: list[memoryview | bytes] = []
        room = self._chunk_bytes
        while room > 0 and self._pieces is not None:
            piece = self._carry
            if piece is None:
                piece = next(self._pieces, None)
                if piece is None:
                    break
            if len(piece) <= room:
                out.append(piece)
                room -= len(piece)
                self._carry = None
            else:
                out.append(piece[:room])
                self._carry = piece[room:]
                room = 0
        return b"".join(out)


def _pieces(point: ExportPoint, size: int) -> Iterator[memoryview | bytes]:
    """The body as a sequence of views and small headers: nothing big is copied."""
    if isinstance(point.snapshot.data, bytes):
        data = memoryview(point.snapshot.data)
        for i in range(0, len(data), size):
            yield data[i:i + size]
    else:
        reader = StateReader(point.snapshot)      # a stored snapshot: a piece at a time
        while piece := reader.read(size):
            yield piece
    for slot, value in point.entries:
        yield _RECORD.pack(slot, len(value))
        for cmd in value:
            yield _LEN.pack(len(cmd))
            yield cmd


class Exports:
    """The saves a node is serving: at most ``limit``, each dropped after ``idle_ms``
    without a request (or once done and idle), so a vanished client pins nothing for long."""

    def __init__(self, limit: int = MAX_EXPORTS, idle_ms: int = EXPORT_IDLE_MS) -> None:
        self.limit = limit
        self.idle_ms = idle_ms
        self._by_id: dict[int, Export] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def full(self) -> bool:
        return len(self._by_id) >= self.limit

    def open(self, point: ExportPoint, now_ms: int) -> Export:
        if self.full():
            raise UsageError("no room for another export")
        self._seq += 1
        ex = self._by_id[self._seq] = Export(self._seq, point, now_ms)
        return ex

    def stored(self) -> list[StoredPayload]:
        """The stored snapshots the saves being served pin."""
        return [s for ex in self._by_id.values() if (s := ex.stored()) is not None]

    def get(self, export_id: int) -> Export | None:
        return self._by_id.get(export_id)

    def expire(self, now_ms: int) -> None:
        for eid in [eid for eid, ex in self._by_id.items()
                    if now_ms - ex.last_used_ms >= self.idle_ms]:
            del self._by_id[eid]


class BodyDecoder:
    """The records of a body, decoded from bytes fed in pieces of any size.

    Every length is checked before it is used: slots must follow ``first_slot`` one by
    one, a record holds at most ``MAX_BATCH_COMMANDS`` commands of at most
    ``MAX_COMMAND_BYTES`` and ``MAX_RECORD_BYTES`` in all, and there are exactly
    ``entries`` records. Anything else is a ``ProtocolError``; nothing is buffered beyond
    one record.
    """

    def __init__(self, first_slot: Slot, entries: int) -> None:
        self.next_slot = first_slot
        self.remaining = entries
        self._buf = bytearray()
        self._slot = 0
        self._want = 0                     # commands left in the current record
        self._record_bytes = 0
        self._value: list[bytes] = []
        self._in_record = False

    def feed(self, data: bytes | memoryview) -> list[tuple[Slot, Value]]:
        self._buf += data
        out: list[tuple[Slot, Value]] = []
        buf = self._buf
        pos = 0
        while True:
            if not self._in_record:
                if len(buf) - pos < _RECORD.size:
                    break
                if self.remaining == 0:
                    raise ProtocolError("bytes after the last record")
                slot, n = _RECORD.unpack_from(buf, pos)
                pos += _RECORD.size
                if slot != self.next_slot:
                    raise ProtocolError(f"record for slot {slot} where slot {self.next_slot} belongs")
                if n > MAX_BATCH_COMMANDS:
                    raise ProtocolError(f"record of slot {slot} claims {n} commands "
                                        f"(at most {MAX_BATCH_COMMANDS})")
                self._slot, self._want, self._value = slot, n, []
                self._record_bytes = _RECORD.size
                self._in_record = True
            if self._want == 0:
                out.append((self._slot, tuple(self._value)))
                self._value = []
                self._in_record = False
                self.next_slot += 1
                self.remaining -= 1
                continue
            if len(buf) - pos < _LEN.size:
                break
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_COMMAND_BYTES:
                raise ProtocolError(f"a command of slot {self._slot} claims {size} bytes "
                                    f"(at most {MAX_COMMAND_BYTES})")
            if self._record_bytes + _LEN.size + size > MAX_RECORD_BYTES:
                raise ProtocolError(f"record of slot {self._slot} exceeds {MAX_RECORD_BYTES} bytes")
            if len(buf) - pos - _LEN.size < size:
                break
            pos += _LEN.size
            self._value.append(bytes(buf[pos:pos + size]))
            pos += size
            self._record_bytes += _LEN.size + size
            self._want -= 1
        del buf[:pos]
        return out

    def finish(self) -> None:
        """Raise unless every record arrived whole and nothing followed."""
        if self.remaining == 0 and self._buf:
            raise ProtocolError(f"{len(self._buf)} bytes after the last record")
        if self._buf or self._in_record or self.remaining:
            raise ProtocolError(f"the body ends inside its records ({self.remaining} of them "
                                "missing or cut short)")
