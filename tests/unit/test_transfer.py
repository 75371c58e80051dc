"""The sender's snapshot shelf: what it can serve while followers fetch in chunks."""
from __future__ import annotations

from coordsvc.core.membership import Membership
from coordsvc.core.transfer import Shelf, checksum, payload, snapshot_from_payload
from coordsvc.core.types import Snapshot

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
    assert snapshot_from_payload(10, got) == A and snapshot_from_payload(10, got).config == CFG


def test_a_snapshot_without_a_recorded_configuration_travels_as_before() -> None:
    legacy = Snapshot(5, b"xyz")
    assert snapshot_from_payload(5, payload(legacy)) == legacy
