"""The sender's snapshot shelf: what it can serve while followers fetch in chunks."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from coordsvc.core.membership import Membership
from coordsvc.core.messages import SnapshotInfo, SnapshotRequest
from coordsvc.core.transfer import (
    Fetch,
    MemorySink,
    Shelf,
    StateReader,
    checksum,
    memory_sink,
    payload,
    state_size,
)
from coordsvc.core.types import ProtocolError, Snapshot

CFG = Membership.bootstrap(["n1", "n2", "n3"])
A, B, C = (Snapshot(10, b"a" * 100, CFG), Snapshot(20, b"b" * 100, CFG),
           Snapshot(30, b"c" * 100, CFG))
PA = payload(A)      # what travels: the configuration, then the data
RETAIN_MS = 1_000


def test_a_snapshot_being_fetched_stays_available_after_the_sender_compacts_again() -> None:
    shelf = Shelf(A, RETAIN_MS)
    got = shelf.chunk(10, 0, 40, now_ms=0)
    assert got is not None and got[2] == PA[:40]
    shelf.replace(B, now_ms=100)                  # compacted mid-transfer
    got = shelf.chunk(10, 40, 40, now_ms=200)     # the transfer goes on
    assert got is not None and got[0].index == 10 and got[1:] == (40, PA[40:80])
    assert shelf.info().index == 20               # new requests are told of the new one


def test_a_superseded_snapshot_is_dropped_after_a_quiet_period() -> None:
    shelf = Shelf(A, RETAIN_MS)
    shelf.chunk(10, 0, 40, now_ms=0)
    shelf.replace(B, now_ms=100)
    shelf.expire(now_ms=RETAIN_MS - 1)
    assert shelf.retained_index == 10
    shelf.expire(now_ms=RETAIN_MS)                 # no chunk of it asked for since t=0
    assert shelf.retained_index is None and shelf.chunk(10, 40, 40, now_ms=RETAIN_MS) is None


def test_a_snapshot_nobody_fetches_is_not_kept() -> None:
    shelf = Shelf(A, RETAIN_MS)
    shelf.replace(B, now_ms=0)
    assert shelf.retained_index is None


def test_at_most_one_older_snapshot_is_kept() -> None:
    shelf = Shelf(A, RETAIN_MS)
    shelf.chunk(10, 0, 40, now_ms=0)
    shelf.replace(B, now_ms=10)
    shelf.chunk(20, 0, 40, now_ms=20)             # someone fetches B too
    shelf.replace(C, now_ms=30)
    assert shelf.retained_index == 20             # B replaced A on the shelf
    assert shelf.chunk(10, 0, 40, now_ms=40) is None


def test_the_descriptor_names_size_and_sha256_and_is_computed_once() -> None:
    shelf = Shelf(A, RETAIN_MS)
    info = shelf.info()
    assert (info.index, info.size, info.checksum) == (10, len(PA), checksum(PA))
    assert shelf.info() is info


def test_a_chunk_past_the_end_of_the_snapshot_is_not_served() -> None:
    shelf = Shelf(A, RETAIN_MS)
    assert shelf.chunk(10, len(PA) + 1, 40, now_ms=0) is None
    got = shelf.chunk(10, len(PA) - 10, 40, now_ms=0)
    assert got is not None and got[2] == b"a" * 10


def test_a_snapshot_travels_with_its_configuration() -> None:
    shelf = Shelf(A, RETAIN_MS)
    got, offset = b"", 0
    while offset < shelf.info().size:
        chunk = shelf.chunk(10, offset, 7, now_ms=0)
        assert chunk is not None
        got += chunk[2]
        offset += len(chunk[2])
    assert checksum(got) == shelf.info().checksum
    assert _assemble(shelf.info(), got, 7) == A and _assemble(shelf.info(), got, 7).config == CFG


def test_a_snapshot_without_a_recorded_configuration_travels_as_before() -> None:
    legacy = Snapshot(5, b"xyz")
    p = payload(legacy)
    assert _assemble(SnapshotInfo(5, len(p), checksum(p)), p, 2) == legacy


def _assemble(info: SnapshotInfo, data: bytes, chunk: int) -> Snapshot:
    f = Fetch("n2", SnapshotRequest("n1", info.index, 0), 0)
    f.begin(info, memory_sink)
    for i in range(0, len(data), chunk):
        f.take(data[i:i + chunk])
    if not f.intact():
        raise ProtocolError("checksum mismatch")
    return f.complete()


def test_a_damaged_or_short_payload_is_refused_and_its_bytes_discarded() -> None:
    info = Shelf(A, RETAIN_MS).info()
    bad = PA[:50] + bytes([PA[50] ^ 1]) + PA[51:]
    with pytest.raises(ProtocolError, match="checksum"):
        _assemble(info, bad, 30)
    with pytest.raises(ProtocolError, match="checksum"):
        _assemble(info, PA[:-1], 30)
    f = Fetch("n2", SnapshotRequest("n1", 10, 0), 0)
    f.begin(info, memory_sink)
    f.take(PA[:20])
    sink = f.sink
    assert isinstance(sink, MemorySink) and len(sink.buf) == 20
    f.drop()
    assert (f.snapshot, f.received, sink.buf) == (None, 0, bytearray())


@dataclass
class _File:
    """A stored payload as an adapter keeps one (here in memory), counting its reads."""

    blob: bytes
    head: int
    reads: int = 0

    @property
    def size(self) -> int:
        return len(self.blob)

    @property
    def checksum(self) -> bytes:
        return checksum(self.blob)

    def read(self, offset: int, n: int) -> bytes:
        self.reads += 1
        return self.blob[offset:offset + n]


def test_a_stored_snapshot_is_served_and_read_a_piece_at_a_time() -> None:
    stored = _File(PA, len(PA) - 100)
    s = Snapshot(10, stored, CFG)
    shelf = Shelf(s, RETAIN_MS)
    assert shelf.info() == Shelf(A, RETAIN_MS).info()     # the same payload, the same name
    assert shelf.stored() == [stored]
    got = shelf.chunk(10, 5, 40, now_ms=0)
    assert got is not None and got[2] == PA[5:45] and stored.reads == 1
    assert state_size(s) == 100
    r = StateReader(s)
    assert r.read(60) + r.read(60) + r.read(60) == b"a" * 100
