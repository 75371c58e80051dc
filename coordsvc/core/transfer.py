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
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .messages import CatchupRequest, SnapshotInfo, SnapshotRequest
from .types import NodeId, Snapshot, UsageError


def checksum(data: bytes | bytearray) -> bytes:
    return hashlib.sha256(data).digest()


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
            s = k.snapshot
            k.info = SnapshotInfo(s.index, len(s.data), checksum(s.data))
        return k.info

    def chunk(self, index: int, offset: int, size: int,
              now_ms: int) -> tuple[SnapshotInfo, int, bytes] | None:
        """Up to ``size`` bytes of snapshot ``index`` from ``offset``; None if not here."""
        for k in (self._current, self._older):
            if k is not None and k.snapshot.index == index and offset <= len(k.snapshot.data):
                k.served_ms = now_ms
                return self._info(k), offset, k.snapshot.data[offset:offset + size]
        return None
