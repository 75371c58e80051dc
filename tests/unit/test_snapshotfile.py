"""Backup files (coordsvc/snapshotfile.py): written whole or not at all, every byte checked."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from coordsvc import snapshotfile
from coordsvc.core.commands import Acquire, OpenSession, Put, Request, encode_request
from coordsvc.core.export import Export, ExportPoint, apply_value
from coordsvc.core.machine import Machine
from coordsvc.core.types import Snapshot
from coordsvc.snapshotfile import SnapshotFileError


def _point(puts: int = 30, tail: int = 8) -> tuple[ExportPoint, Machine]:
    """A state as a snapshot at slot ``puts`` plus ``tail`` slots after it, and that state."""
    m = Machine()
    for i in range(1, puts + 1):
        m.apply(i, Request("c", i, i, Put(f"k{i % 11}", f"v{i}".encode())))
    m.apply(puts, Request("c", puts + 1, puts + 1, OpenSession(5_000)))
    m.apply(puts, Request("c", puts + 2, puts + 2, Acquire("deploy", 1, False)))
    snap = Snapshot(puts, m.snapshot())
    entries = []
    for j in range(tail):
        slot = puts + 1 + j
        value = (encode_request(Request("d", j + 1, j + 1, Put(f"t{j}", b"x" * j))),) if j % 3 else ()
        entries.append((slot, value))
        apply_value(m, slot, value)
    return ExportPoint(puts + tail, m.revision, m.key_count, snap, tuple(entries)), m


def write(path: Path, point: ExportPoint, chunk_bytes: int = 100, **meta: int | str) -> snapshotfile.Header:
    ex = Export(1, point, 0, chunk_bytes=chunk_bytes)
    fields: dict[str, int | str | None] = {
        "index": ex.index, "revision": ex.revision, "keys": ex.keys, "created_ms": 1_700_000_000_000,
        "snapshot_index": ex.snapshot_index, "snapshot_bytes": ex.snapshot_bytes,
        "entries": ex.entries, "body_bytes": ex.body_bytes, "cluster": "test", **meta}
    with snapshotfile.Writer(path, fields) as w:
        offset = 0
        while True:
            c = ex.chunk(offset, 0)
            assert c is not None
            w.write(c.data)
            offset += len(c.data)
            if c.done:
                return w.commit(c.sha256)


def test_a_file_written_in_chunks_loads_back_to_the_same_state(tmp_path: Path) -> None:
    point, live = _point()
    path = tmp_path / "b.snap"
    h = write(path, point)
    assert h == snapshotfile.verify(path)
    assert (h.index, h.revision, h.keys, h.cluster) == (point.index, point.revision, point.keys, "test")
    assert h.file_bytes == path.stat().st_size
    got_h, m = snapshotfile.load(path)
    assert got_h == h
    assert (m.revision, m.key_count) == (point.revision, point.keys)
    assert [kv for kv in m.list("")] == [kv for kv in live.list("")]
    assert all(m.history(k.key) == live.history(k.key) for k in live.list(""))
    assert m.snapshot() == live.snapshot()
    assert list(tmp_path.iterdir()) == [path]        # no temporary file left


def test_every_truncation_and_every_flipped_byte_is_refused_in_one_line(tmp_path: Path) -> None:
    point, _ = _point(puts=6, tail=3)
    good = tmp_path / "good.snap"
    write(good, point)
    data = good.read_bytes()
    bad = tmp_path / "bad.snap"
    rng = random.Random(11)
    print("seed 11")
    cases = [data[:n] for n in range(len(data))]
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    for case in cases:
        bad.write_bytes(case)
        for read in (snapshotfile.verify, snapshotfile.load):
            with pytest.raises(SnapshotFileError) as e:
                read(bad)
            assert "\n" not in str(e.value) and str(bad) in str(e.value)
        got = snapshotfile.inspect(bad)
        assert got.problem is not None


def test_a_truncated_file_is_reported_as_truncated_and_a_flipped_one_as_a_checksum_mismatch(
        tmp_path: Path) -> None:
    point, _ = _point()
    path = tmp_path / "b.snap"
    h = write(path, point)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(SnapshotFileError, match="truncated"):
        snapshotfile.load(path)
    got = snapshotfile.inspect(path)
    assert got.header == h and got.problem is not None and "truncated" in got.problem
    flipped = bytearray(data)
    flipped[h.body_offset + 5] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(SnapshotFileError, match="checksum mismatch"):
        snapshotfile.load(path)
    path.write_bytes(b"")
    with pytest.raises(SnapshotFileError, match="truncated"):
        snapshotfile.verify(path)
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(SnapshotFileError, match="not a coordsvc snapshot"):
        snapshotfile.verify(path)
    with pytest.raises(SnapshotFileError, match="does not exist"):
        snapshotfile.verify(tmp_path / "missing.snap")
    with pytest.raises(SnapshotFileError, match="is a directory"):
        snapshotfile.verify(tmp_path)


def test_a_header_that_does_not_match_its_state_is_refused_even_with_a_good_checksum(
        tmp_path: Path) -> None:
    point, _ = _point()
    path = tmp_path / "b.snap"
    lying = ExportPoint(point.index, point.revision + 1, point.keys, point.snapshot, point.entries)
    write(path, lying)
    snapshotfile.verify(path)        # the bytes are as written ...
    with pytest.raises(SnapshotFileError, match="inconsistent"):
        snapshotfile.load(path)      # ... but not the state they claim


def test_a_file_of_a_newer_format_is_refused_saying_so(tmp_path: Path) -> None:
    point, _ = _point()
    path = tmp_path / "b.snap"
    write(path, point)
    data = bytearray(path.read_bytes())
    data[9] = 2
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotFileError, match="format version 2"):
        snapshotfile.verify(path)


def test_the_writer_keeps_nothing_when_the_leader_hash_differs_or_too_much_arrives(
        tmp_path: Path) -> None:
    point, _ = _point()
    path = tmp_path / "b.snap"
    ex = Export(1, point, 0)
    c = ex.chunk(0, 0)
    assert c is not None and c.done
    meta: dict[str, int | str | None] = {
        "index": ex.index, "revision": ex.revision, "keys": ex.keys, "created_ms": 0,
        "snapshot_index": ex.snapshot_index, "snapshot_bytes": ex.snapshot_bytes,
        "entries": ex.entries, "body_bytes": ex.body_bytes}
    with pytest.raises(SnapshotFileError, match="sha256 mismatch"), snapshotfile.Writer(path, meta) as w:
        w.write(c.data)
        w.commit(hashlib.sha256(b"other").digest())
    with pytest.raises(SnapshotFileError, match="more than"), snapshotfile.Writer(path, meta) as w:
        w.write(c.data + b"!")
    with pytest.raises(SnapshotFileError, match="ended after"), snapshotfile.Writer(path, meta) as w:
        w.write(c.data[:-1])
        w.commit(c.sha256)
    with pytest.raises(KeyboardInterrupt), snapshotfile.Writer(path, meta) as w:
        w.write(c.data[:5])
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_by_a_complete_one(tmp_path: Path) -> None:
    point, _ = _point()
    path = tmp_path / "b.snap"
    path.write_bytes(b"the previous backup")
    with pytest.raises(RuntimeError), snapshotfile.Writer(path, {
            "index": 0, "revision": 0, "keys": 0, "created_ms": 0, "snapshot_index": 0,
            "snapshot_bytes": 0, "entries": 0, "body_bytes": 10}) as w:
        w.write(b"12345")
        raise RuntimeError("the cluster went away")
    assert path.read_bytes() == b"the previous backup"
    write(path, point)
    snapshotfile.verify(path)
