"""Snapshot files beside node.db: written durably (here or by a forked child), named by the
snapshot row with their size and sha256, checked whole at open, reclaimed when unused."""
from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordsvc.core.commands import Put, Request
from coordsvc.core.machine import Machine
from coordsvc.core.membership import Membership
from coordsvc.core.messages import SnapshotInfo
from coordsvc.core.transfer import StateReader, head_for
from coordsvc.core.types import Persist, Snapshot
from coordsvc.storage.snapfiles import ForkedSnapshots, SnapshotFile
from coordsvc.storage.sqlite import DataDirError, SqliteStore, init_data_dir

CLUSTER = "c-files"
CFG = Membership.bootstrap(["n1", "n2", "n3"])


def _machine(keys: int, value_bytes: int = 100) -> Machine:
    m = Machine()
    for i in range(keys):
        m.apply(i + 1, Request("c", i + 1, 0, Put(f"k{i}", bytes([i % 251]) * value_bytes)))
    return m


def _store(d: Path) -> SqliteStore:
    if not d.exists():
        init_data_dir(d, CLUSTER, "n1")
    return SqliteStore.open(d, CLUSTER, "n1")


def test_a_written_file_holds_the_payload_and_restores(tmp_path: Path) -> None:
    m = _machine(50)
    with _store(tmp_path / "d") as s:
        f = s.files.write(50, m, CFG)
    blob = f.path.read_bytes()
    assert blob == head_for(CFG) + m.snapshot()
    assert (f.size, f.head, f.checksum) == (len(blob), len(head_for(CFG)),
                                            hashlib.sha256(blob).digest())
    assert f.read(f.head, 10) == m.snapshot()[:10]
    assert Machine.restore_from(StateReader(Snapshot(50, f, CFG))).snapshot() == m.snapshot()
    assert not list(f.path.parent.glob("*.part"))


def test_a_file_snapshot_survives_a_restart_and_the_superseded_one_is_reclaimed(
        tmp_path: Path) -> None:
    d = tmp_path / "d"
    with _store(d) as s:
        first = s.files.write(10, _machine(10), CFG)
        s.save(Persist(snapshot=Snapshot(10, first, CFG), commit_index=10))
        second = s.files.write(20, _machine(20), CFG)
        s.save(Persist(snapshot=Snapshot(20, second, CFG), commit_index=20))
        assert first.path.exists()                   # until pruned
        assert s.prune([]) == [first.name]
        assert s.db_bytes_in_use() > second.size
    with _store(d) as s:
        got = s.load().snapshot
        assert isinstance(got.data, SnapshotFile) and got.data.name == second.name
        assert (got.index, got.config, got.data.checksum) == (20, CFG, second.checksum)


def test_an_orphan_or_half_written_file_is_deleted_at_open(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with _store(d) as s:
        orphan = s.files.write(5, _machine(5), CFG)      # a crash before the row named it
        (s.files.path / "snap-00000000000000000009-abcd.part").write_bytes(b"half")
    with _store(d) as s:
        assert list(s.files.path.iterdir()) == []
    assert not orphan.path.exists()


@pytest.mark.parametrize("damage", ["missing", "flipped", "short"])
def test_a_damaged_or_missing_snapshot_file_refuses_the_data_directory_in_one_line(
        tmp_path: Path, damage: str) -> None:
    d = tmp_path / "d"
    with _store(d) as s:
        f = s.files.write(10, _machine(10), CFG)
        s.save(Persist(snapshot=Snapshot(10, f, CFG), commit_index=10))
    if damage == "missing":
        f.path.unlink()
    elif damage == "flipped":
        b = bytearray(f.path.read_bytes())
        b[len(b) // 2] ^= 0x20
        f.path.write_bytes(bytes(b))
    else:
        f.path.write_bytes(f.path.read_bytes()[:-3])
    with pytest.raises(DataDirError) as e:
        _store(d)
    assert "snapshot file" in str(e.value) and "\n" not in str(e.value)


def test_an_inline_snapshot_from_before_snapshot_files_still_loads(tmp_path: Path) -> None:
    d = tmp_path / "d"
    data = _machine(7).snapshot()
    with _store(d) as s:
        s.save(Persist(snapshot=Snapshot(7, data, CFG), commit_index=7))
    conn = sqlite3.connect(d / "node.db")
    assert conn.execute("SELECT file FROM snapshot").fetchone() == (None,)
    conn.close()
    with _store(d) as s:
        assert s.load().snapshot == Snapshot(7, data, CFG)


def test_a_fetched_snapshot_is_assembled_in_a_file_or_discarded(tmp_path: Path) -> None:
    payload = head_for(CFG) + _machine(30).snapshot()
    info = SnapshotInfo(30, len(payload), hashlib.sha256(payload).digest())
    with _store(tmp_path / "d") as s:
        sink = s.files.sink(info)
        for i in range(0, len(payload), 1000):
            sink.write(payload[i:i + 1000])
        f = sink.finish(len(head_for(CFG)))
        assert f.path.read_bytes() == payload and f.checksum == info.checksum
        dropped = s.files.sink(info)
        dropped.write(payload[:10])
        dropped.discard()
        assert sorted(p.name for p in s.files.path.iterdir()) == [f.name]


def test_a_forked_child_writes_the_state_as_of_the_fork_and_pruning_meanwhile_spares_it(
        tmp_path: Path) -> None:
    m = _machine(200, 2000)
    want = m.snapshot()
    with _store(tmp_path / "d") as s:
        w = ForkedSnapshots(s.files)
        w.start(200, m, CFG)
        m.apply(201, Request("c", 201, 0, Put("after", b"the fork")))   # the parent goes on
        assert w.child is not None            # wait for the child's exit, not reaping it
        os.waitid(os.P_PID, w.child.pid, os.WEXITED | os.WNOWAIT)
        assert s.prune([]) == []              # the node prunes before it polls: nothing
        index, f = _outcome(w)                # the parent publishes what the child wrote
        assert index == 200 and isinstance(f, SnapshotFile)
    files = list((tmp_path / "d" / "snapshots").iterdir())
    assert files == [f.path] and f.path.read_bytes() == head_for(CFG) + want


class _Broken(Machine):
    def snapshot_pieces(self, piece_bytes: int = 0) -> Iterator[bytes]:
        yield b"\x80"
        raise RuntimeError("the disk said no")


def _outcome(w: ForkedSnapshots) -> tuple[int, SnapshotFile | str]:
    while True:
        got = w.poll()
        if got is not None:
            return got
        assert w.child is not None     # wait for the exit without reaping it: poll does
        os.waitid(os.P_PID, w.child.pid, os.WEXITED | os.WNOWAIT)


def test_the_writer_reports_the_file_through_poll_and_a_failure_as_a_reason(
        tmp_path: Path) -> None:
    with _store(tmp_path / "d") as s:
        w = ForkedSnapshots(s.files)
        w.start(3, _machine(3), CFG)
        index, f = _outcome(w)
        assert index == 3 and isinstance(f, SnapshotFile)
        assert f.path.read_bytes()[f.head:] == _machine(3).snapshot()
        w.start(4, _Broken(), CFG)
        assert _outcome(w) == (4, "RuntimeError: the disk said no")
        assert [p.name for p in s.files.path.iterdir()] == [f.name]   # no .part left


class _Stuck(Machine):
    """A writer whose disk stops answering after the first piece."""

    def snapshot_pieces(self, piece_bytes: int = 0) -> Iterator[bytes]:
        yield b"\x80"
        signal.pause()       # until killed


def test_a_writer_still_writing_past_its_timeout_is_stopped_and_reported_and_its_part_removed(
        tmp_path: Path) -> None:
    with _store(tmp_path / "d") as s:
        w = ForkedSnapshots(s.files, timeout_s=0.0)
        w.start(5, _Stuck(), CFG)
        assert w.child is not None
        part, pid = w.child.part, w.child.pid
        deadline = time.monotonic() + 30
        while not part.exists():             # the child has begun writing: then it hangs
            assert time.monotonic() < deadline, "the child never began writing"
            time.sleep(0.01)
        index, why = w.poll() or (0, "")
        assert index == 5 and isinstance(why, str) and "still writing after 0 s" in why
        assert not w.busy and not part.exists()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)        # reaped, not left a zombie
        w.start(6, _machine(6), CFG)          # and the next snapshot goes ahead
        w.timeout_s = 60.0
        index, f = _outcome(w)
        assert index == 6 and isinstance(f, SnapshotFile)
