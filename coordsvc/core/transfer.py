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
from dataclasses import dataclass, field

from .membership import decode_membership, encode_membership
from .messages import CatchupRequest, SnapshotInfo, SnapshotRequest
from .types import NodeId, ProtocolError, Snapshot, UsageError

_HEAD_LEN = 4      # the payload starts with the configuration's length (0: none recorded)


def checksum(data: bytes | bytearray) -> bytes:
    return hashlib.sha256(data).digest()


def payload_head(s: Snapshot) -> bytes:
    cfg = b"" if s.config is None else encode_membership(s.config)
    return len(cfg).to_bytes(_HEAD_LEN, "big") + cfg


def payload(s: Snapshot) -> bytes:
    """What travels for ``s``: its configuration header, then its data."""
    return payload_head(s) + s.data


def snapshot_from_payload(index: int, data: bytes | bytearray) -> Snapshot:
    """The snapshot a checked payload describes; ``ProtocolError`` if it is malformed."""
    if len(data) < _HEAD_LEN:
        raise ProtocolError("snapshot payload shorter than its header")
    n = int.from_bytes(data[:_HEAD_LEN], "big")
    if _HEAD_LEN + n > len(data):
        raise ProtocolError("snapshot payload header runs past its end")
    cfg = decode_membership(bytes(data[_HEAD_LEN:_HEAD_LEN + n])) if n else None
    return Snapshot(index, bytes(data[_HEAD_LEN + n:]), cfg)


@dataclass(slots=True)
class Fetch:
    """The receiver's request in flight (at most one)."""

    peer: NodeId
    request: CatchupRequest | SnapshotRequest
    sent_ms: int
    resends: int = 0
    snapshot: SnapshotInfo | None = None        # while assembling a snapshot
    data: bytearray = field(default_factory=bytearray)

    def next_chunk(self, src: NodeId) -> SnapshotRequest:
        if self.snapshot is None:
            raise UsageError("not fetching a snapshot")
        return SnapshotRequest(src, self.snapshot.index, len(self.data))


@dataclass(slots=True)
class _Kept:
    snapshot: Snapshot
    info: SnapshotInfo | None = None
    served_ms: int | None = None      # when a chunk of it was last sent
    head: bytes = b""

    def __post_init__(self) -> None:
        self.head = payload_head(self.snapshot)

    @property
    def size(self) -> int:
        return len(self.head) + len(self.snapshot.data)

    def read(self, offset: int, size: int) -> bytes:
        head, data = self.head, self.snapshot.data
        if offset >= len(head):
            return data[offset - len(head):offset - len(head) + size]
        part = head[offset:offset + size]
        return part + data[:size - len(part)]


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

    def expire(self, now_ms: int) -> None:
        if self._older is not None and not self._in_use(self._older, now_ms):
            self._older = None

    def _in_use(self, k: _Kept, now_ms: int) -> bool:
        return k.served_ms is not None and now_ms - k.served_ms < self.retain_ms

    def info(self) -> SnapshotInfo:
        """The current snapshot's descriptor (its checksum is computed on first use)."""
        return self._info(self._current)

    def _info(self, k: _Kept) -> SnapshotInfo:
        if k.info is None:
            h = hashlib.sha256(k.head)
            h.update(k.snapshot.data)
            k.info = SnapshotInfo(k.snapshot.index, k.size, h.digest())
        return k.info

    def chunk(self, index: int, offset: int, size: int,
              now_ms: int) -> tuple[SnapshotInfo, int, bytes] | None:
        """Up to ``size`` bytes of snapshot ``index`` from ``offset``; None if not here."""
        for k in (self._current, self._older):
            if k is not None and k.snapshot.index == index and offset <= k.size:
                k.served_ms = now_ms
                return self._info(k), offset, k.read(offset, size)
        return None
