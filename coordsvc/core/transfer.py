"""Catching up: what a follower has asked for, and the snapshots a node can serve.

A follower behind the leader asks for chosen entries (``CatchupRequest``); a follower
behind the leader's snapshot fetches the snapshot in chunks (``SnapshotRequest`` ->
``SnapshotChunk``), one chunk in flight, resuming from its offset after a drop. Both
ends keep their state here, as plain values the replica drives:

- :class:`Fetch` is the receiver's one request in flight: the peer it went to, what to
  resend, and a snapshot being assembled. A reply is taken only from that peer while
  the fetch exists (a forged or stale one changes nothing), a chunk only at the offset
  asked for, and the assembled bytes only if their sha256 is the one the sender named.
- :class:`Shelf` is the sender's side: the checksum of its current snapshot (computed
  once, when first asked), and at most one superseded snapshot kept while a follower
  is still fetching it, dropped after a quiet period, so a compaction mid-transfer does
  not restart a long transfer.

What travels is a snapshot's *payload*: a header holding its configuration
(config(index + 1), so a node that installs it knows the quorums that follow) and then
the state machine's bytes. The checksum covers both.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .membership import Membership, decode_membership, encode_membership
from .messages import CatchupRequest, SnapshotInfo, SnapshotRequest
from .types import NodeId, PayloadSink, ProtocolError, Snapshot, StoredPayload, UsageError

_HEAD_LEN = 4      # the payload starts with the configuration's length (0: none recorded)
_MAX_CONFIG_BYTES = 1 << 20


def checksum(data: bytes | bytearray) -> bytes:
    return hashlib.sha256(data).digest()


def head_for(config: Membership | None) -> bytes:
    """A payload's header: the configuration's length, then the configuration."""
    cfg = b"" if config is None else encode_membership(config)
    return len(cfg).to_bytes(_HEAD_LEN, "big") + cfg


def payload_head(s: Snapshot) -> bytes:
    return head_for(s.config)


def payload(s: Snapshot) -> bytes:
    """What travels for ``s``: its configuration header, then its data."""
    return read_payload(s, 0, payload_size(s))


def payload_size(s: Snapshot) -> int:
    d = s.data
    return len(payload_head(s)) + len(d) if isinstance(d, bytes) else d.size


def read_payload(s: Snapshot, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes of ``s``'s payload from ``offset``."""
    d = s.data
    if not isinstance(d, bytes):
        return d.read(offset, n)
    head = payload_head(s)
    if offset >= len(head):
        return d[offset - len(head):offset - len(head) + n]
    part = head[offset:offset + n]
    return part + d[:n - len(part)]


def state_size(s: Snapshot) -> int:
    """How many bytes the state machine's part of ``s`` holds."""
    d = s.data
    return len(d) if isinstance(d, bytes) else d.size - d.head


class StateReader:
    """The state machine's bytes of a snapshot as a stream (``Machine.restore_from``,
    backups): read from the stored payload a piece at a time, never all at once."""

    def __init__(self, s: Snapshot) -> None:
        self._data = s.data
        self._pos = 0 if isinstance(s.data, bytes) else s.data.head
        self._end = len(s.data) if isinstance(s.data, bytes) else s.data.size

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self._end - self._pos))
        d = self._data
        b = d[self._pos:self._pos + n] if isinstance(d, bytes) else d.read(self._pos, n)
        self._pos += len(b)
        return b


class MemorySink:
    """A payload assembled in memory (the simulator, tests, small states)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data

    def finish(self, head: int) -> bytes:
        return bytes(self.buf[head:])

    def discard(self) -> None:
        self.buf = bytearray()


def memory_sink(info: SnapshotInfo) -> PayloadSink:
    return MemorySink()


SinkFactory = Callable[[SnapshotInfo], PayloadSink]


@dataclass(slots=True)
class Fetch:
    """The receiver's request in flight (at most one)."""

    peer: NodeId
    request: CatchupRequest | SnapshotRequest
    sent_ms: int
    resends: int = 0
    snapshot: SnapshotInfo | None = None        # while assembling a snapshot
    received: int = 0                           # ... how many of its bytes arrived
    prefix: bytearray = field(default_factory=bytearray)   # ... its header, once complete
    sink: PayloadSink | None = None
    hasher: Any = None

    def next_chunk(self, src: NodeId) -> SnapshotRequest:
        if self.snapshot is None:
            raise UsageError("not fetching a snapshot")
        return SnapshotRequest(src, self.snapshot.index, self.received)

    def begin(self, info: SnapshotInfo, sinks: SinkFactory) -> None:
        """Start assembling ``info`` from its first byte (dropping any partial one)."""
        self.drop()
        self.snapshot, self.resends = info, 0
        self.sink, self.hasher = sinks(info), hashlib.sha256()

    def take(self, data: bytes) -> None:
        """The next chunk, in order."""
        assert self.sink is not None and self.hasher is not None
        self.sink.write(data)
        self.hasher.update(data)
        self.received += len(data)
        pos = 0
        while pos < len(data) and len(self.prefix) < self._head_len():
            k = self._head_len() - len(self.prefix)
            self.prefix += data[pos:pos + k]
            pos += k

    def _head_len(self) -> int:
        """How many bytes of header to keep: its length field, then the configuration."""
        if len(self.prefix) < _HEAD_LEN:
            return _HEAD_LEN
        return _HEAD_LEN + min(int.from_bytes(self.prefix[:_HEAD_LEN], "big"), _MAX_CONFIG_BYTES)

    def intact(self) -> bool:
        """Every byte arrived, and their sha256 is the one the sender named."""
        info = self.snapshot
        assert info is not None and self.hasher is not None
        return self.received == info.size and self.hasher.digest() == info.checksum

    def complete(self) -> Snapshot:
        """The snapshot assembled (check ``intact`` first); ``ProtocolError`` if its header
        does not parse (the caller starts over)."""
        info, sink = self.snapshot, self.sink
        assert info is not None and sink is not None
        n = int.from_bytes(self.prefix[:_HEAD_LEN], "big") if len(self.prefix) >= _HEAD_LEN else -1
        if n < 0 or n > _MAX_CONFIG_BYTES or _HEAD_LEN + n > len(self.prefix):
            raise ProtocolError("snapshot payload header runs past its end")
        cfg = decode_membership(bytes(self.prefix[_HEAD_LEN:_HEAD_LEN + n])) if n else None
        data = sink.finish(_HEAD_LEN + n)
        self.sink = None
        return Snapshot(info.index, data, cfg)

    def drop(self) -> None:
        """Forget a partial snapshot (its sink's bytes are discarded)."""
        if self.sink is not None:
            self.sink.discard()
        self.snapshot, self.sink, self.hasher = None, None, None
        self.received, self.prefix = 0, bytearray()


@dataclass(slots=True)
class _Kept:
    snapshot: Snapshot
    info: SnapshotInfo | None = None
    served_ms: int | None = None      # when a chunk of it was last sent

    @property
    def size(self) -> int:
        return payload_size(self.snapshot)

    def read(self, offset: int, size: int) -> bytes:
        return read_payload(self.snapshot, offset, size)


class Shelf:
    """The snapshots a node can serve: its current one and at most one superseded one."""

    def __init__(self, current: Snapshot, retain_ms: int) -> None:
        self._current = _Kept(current)
        self._older: _Kept | None = None
        self.retain_ms = retain_ms

    @property
    def retained_index(self) -> int | None:
        return None if self._older is None else self._older.snapshot.index

    def replace(self, new: Snapshot, now_ms: int) -> None:
        """``new`` became the current snapshot; keep the old one if it is being fetched."""
        old = self._current
        if old.snapshot is new:
            return
        if old.served_ms is not None and now_ms - old.served_ms < self.retain_ms:
            self._older = old         # a follower is fetching it: let it finish
        elif self._older is not None and not self._in_use(self._older, now_ms):
            self._older = None
        self._current = _Kept(new)

    def expire(self, now_ms: int) -> bool:
        """Drop the superseded snapshot once nobody fetched it for a while; True if so."""
        if self._older is not None and not self._in_use(self._older, now_ms):
            self._older = None
            return True
        return False

    def _in_use(self, k: _Kept, now_ms: int) -> bool:
        return k.served_ms is not None and now_ms - k.served_ms < self.retain_ms

    def info(self) -> SnapshotInfo:
        """The current snapshot's descriptor (its checksum is computed on first use)."""
        return self._info(self._current)

    def _info(self, k: _Kept) -> SnapshotInfo:
        if k.info is None:
            d = k.snapshot.data
            if isinstance(d, bytes):
                h = hashlib.sha256(payload_head(k.snapshot))
                h.update(d)
                digest = h.digest()
            else:
                digest = d.checksum      # computed once, by whoever wrote the file
            k.info = SnapshotInfo(k.snapshot.index, k.size, digest)
        return k.info

    def stored(self) -> list[StoredPayload]:
        """The snapshots kept here that live outside memory (the adapter keeps their files)."""
        return [k.snapshot.data for k in (self._current, self._older)
                if k is not None and not isinstance(k.snapshot.data, bytes)]

    def chunk(self, index: int, offset: int, size: int,
              now_ms: int) -> tuple[SnapshotInfo, int, bytes] | None:
        """Up to ``size`` bytes of snapshot ``index`` from ``offset``; None if not here."""
        for k in (self._current, self._older):
            if k is not None and k.snapshot.index == index and offset <= k.size:
                k.served_ms = now_ms
                return self._info(k), offset, k.read(offset, size)
        return None
