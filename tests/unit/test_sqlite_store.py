"""SqliteStore: MemoryStore's semantics on real files, durability, and the data-dir refusals."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordsvc.core.commands import Put, Request
from coordsvc.core.machine import Machine
from coordsvc.core.membership import Member, Membership
from coordsvc.core.types import (
    ZERO_BALLOT,
    Ballot,
    Durable,
    LogEntry,
    Persist,
    ProtocolError,
    SafetyViolation,
    Snapshot,
    UsageError,
)
from coordsvc.storage import sqlite as sqlite_mod
from coordsvc.storage.datadir import SCHEMA_VERSION
from coordsvc.storage.memory import MemoryStore
from coordsvc.storage.sqlite import DataDirError, SqliteStore, init_data_dir

CLUSTER = "c-abc"
REPO = Path(__file__).resolve().parents[2]


def fresh(path: Path, cluster: str = CLUSTER, node: str = "n1") -> SqliteStore:
    init_data_dir(path, cluster, node)
    return SqliteStore.open(path, cluster, node)


def entry(slot: int, rnd: int = 1, node: str = "n1", *cmds: bytes) -> LogEntry:
    return LogEntry(slot, Ballot(rnd, node), tuple(cmds) or (f"cmd{slot}".encode(),))


def machine_snapshot(keys: int) -> bytes:
    """A real state-machine snapshot (``open`` checks that a stored one restores)."""
    m = Machine()
    for i in range(keys):
        m.apply(i + 1, Request("c", i + 1, 0, Put(f"k{i}", b"v", None, None)))
    return m.snapshot()


SNAPS = [machine_snapshot(n) for n in range(4)]


# ---------------------------------------------------------------- semantics


def test_fresh_store_loads_the_zero_state(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        assert s.load() == Durable()
        assert s.load().promised == ZERO_BALLOT


def test_every_persist_field_round_trips(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        snap = Snapshot(3, SNAPS[3])
        s.save(Persist(
            promised=Ballot(7, "n2"),
            high_water_round=9,
            entries=[entry(4, 7, "n2", b"a", b"", b"\x00" * 100), LogEntry(5, Ballot(7, "n2"), ())],
            commit_index=4,
            snapshot=snap,
        ))
        d = s.load()
    assert d.promised == Ballot(7, "n2")
    assert d.high_water_round == 9
    assert d.commit_index == 4
    assert d.snapshot == snap
    assert d.entries == (entry(4, 7, "n2", b"a", b"", b"\x00" * 100), LogEntry(5, Ballot(7, "n2"), ()))


def test_none_fields_leave_state_unchanged(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        s.save(Persist(promised=Ballot(2, "n1"), high_water_round=2, commit_index=1,
                       entries=[entry(1)]))
        before = s.load()
        s.save(Persist(entries=[entry(2)]))
        after = s.load()
    assert after.promised == before.promised
    assert after.high_water_round == before.high_water_round
    assert after.commit_index == before.commit_index
    assert after.entries == (entry(1), entry(2))


def test_empty_persist_is_skipped(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        s.save(Persist())
        assert s.load() == Durable()
        assert s.save_p99_ms() == 0.0  # no transaction ran


def test_later_entry_for_a_slot_overwrites_the_earlier(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        s.save(Persist(entries=[entry(1, 1, "n1", b"old")]))
        s.save(Persist(entries=[entry(1, 2, "n2", b"new"), entry(1, 3, "n3", b"newest")]))
        assert s.load().entries == (entry(1, 3, "n3", b"newest"),)


def test_snapshot_truncates_the_log_through_its_index(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        s.save(Persist(entries=[entry(i) for i in range(1, 11)]))
        s.save(Persist(snapshot=Snapshot(6, SNAPS[2]), entries=[entry(5), entry(11)]))
        d = s.load()
        assert d.snapshot == Snapshot(6, SNAPS[2])
        assert [e.slot for e in d.entries] == [7, 8, 9, 10, 11]
        # Entries at or below the snapshot are dropped in later saves too.
        s.save(Persist(entries=[entry(2), entry(12)]))
        assert [e.slot for e in s.load().entries] == [7, 8, 9, 10, 11, 12]
    with SqliteStore.open(tmp_path / "d", CLUSTER, "n1") as s:
        # ... and after a reopen, where the snapshot index comes from disk.
        s.save(Persist(entries=[entry(6), entry(13)]))
        assert [e.slot for e in s.load().entries] == [7, 8, 9, 10, 11, 12, 13]


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        for i in range(1, 40):
            s.save(Persist(promised=Ballot(i, "n1"), high_water_round=i, entries=[entry(i)],
                           commit_index=i - 1, snapshot=Snapshot(i - 5, SNAPS[1]) if i % 10 == 0 else None))
        want = s.load()
    init_data_dir(d, CLUSTER, "n1")  # idempotent: must not disturb anything
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        assert s.load() == want


def test_wal_mode_and_synchronous_full_are_set(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        conn = s._live()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.isolation_level is None


def test_meta_records_identity_and_schema_version(tmp_path: Path) -> None:
    init_data_dir(tmp_path / "d", CLUSTER, "n2")
    conn = sqlite3.connect(tmp_path / "d" / "node.db")
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()
    assert meta["cluster_id"] == CLUSTER and meta["node_id"] == "n2"
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["created_at"]


def test_timing_and_size_figures(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        for i in range(1, 1100):
            s.save(Persist(entries=[entry(i)]))
        assert len(s._save_s) == 1024
        assert 0.0 < s.save_p99_ms() < 10_000
        assert s.db_bytes() >= (tmp_path / "d" / "node.db").stat().st_size > 0


# ---------------------------------------------------------------- atomicity


def test_a_failed_save_leaves_nothing_and_poisons_the_store(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(promised=Ballot(1, "n1"), entries=[entry(i) for i in range(1, 6)]))
        before = s.load()
        # The snapshot UPDATE and log DELETE run, then the entry insert overflows
        # SQLite's 64-bit integer: the whole transaction must roll back.
        with pytest.raises(OverflowError):
            s.save(Persist(promised=Ballot(2, "n1"), snapshot=Snapshot(4, SNAPS[1]),
                           entries=[LogEntry(2**70, Ballot(2, "n1"), (b"x",))], commit_index=5))
        assert s.load() == before
        with pytest.raises(SafetyViolation):
            s.save(Persist(commit_index=1))
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        assert s.load() == before
        s.save(Persist(commit_index=1))  # a restarted store works again


def test_a_malformed_value_is_a_usage_error_that_touches_nothing(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        bad = LogEntry(1, Ballot(1, "n1"), ("not bytes",))  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            s.save(Persist(commit_index=3, entries=[bad]))
        assert s.load() == Durable()
        s.save(Persist(commit_index=3))  # not poisoned: nothing was attempted
        assert s.load().commit_index == 3


def _durable_commit_index(s: SqliteStore) -> int:
    """What another process would read from disk right now."""
    with sqlite3.connect(s.db_path) as other:
        return int(other.execute("SELECT commit_index FROM acceptor WHERE id = 0").fetchone()[0])


def test_the_commit_index_waits_for_a_scalar_write_not_for_entries(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        s.save(Persist(commit_index=7))
        assert _durable_commit_index(s) == 0          # no transaction on the write path
        s.save(Persist(entries=[entry(8)], commit_index=8))
        assert _durable_commit_index(s) == 0          # an entry save writes log pages only
        s.save(Persist(promised=Ballot(3, "n2")))
        assert _durable_commit_index(s) == 8          # rode along with the promise


def test_a_failed_save_notes_no_commit_index(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        bad = LogEntry(2, Ballot(1, "n1"), ("not bytes",))  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            s.save(Persist(commit_index=2, entries=[bad], promised=Ballot(1, "n1")))
        assert s.load().commit_index == 0


def test_maintain_writes_a_deferred_commit_index_once_it_is_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh(tmp_path / "d") as s:
        s.save(Persist(commit_index=3))
        s.maintain()
        assert _durable_commit_index(s) == 0
        monkeypatch.setattr(sqlite_mod, "COMMIT_FLUSH_S", 0.0)
        s.maintain()
        assert _durable_commit_index(s) == 3


def test_close_and_load_see_a_deferred_commit_index(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(commit_index=4))
        s.save(Persist(commit_index=5))
        assert s.load().commit_index == 5
        s.save(Persist(commit_index=6))
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        assert s.load().commit_index == 6


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    s = fresh(tmp_path / "d")
    s.close()
    s.close()
    with pytest.raises(UsageError):
        s.load()


# What a replica can produce: rounds and slots up to 2**62, a node id in every ballot
# but the zero one, log slots from 1, snapshots of the state machine.
CONFIGS = [Membership.bootstrap(["n1", "n2", "n3"]),
           Membership((Member("n1"), Member("n4", 17, False, "tcp://127.0.0.1:7104")))]
_nodes = st.sampled_from(["n1", "n2", "n3"])
_ballots = st.builds(Ballot, st.integers(1, 2**62) | st.integers(1, 5), _nodes) | st.just(ZERO_BALLOT)
_slots = st.integers(1, 20)
_values = st.lists(st.binary(max_size=12), max_size=3).map(tuple)
_entries = st.builds(LogEntry, _slots, _ballots, _values)
_persists = st.builds(
    Persist,
    promised=st.none() | _ballots,
    high_water_round=st.none() | st.integers(0, 2**62),
    entries=st.lists(_entries, max_size=6),
    commit_index=st.none() | _slots,
    snapshot=st.none() | st.builds(Snapshot, _slots, st.sampled_from(SNAPS),
                                   st.none() | st.sampled_from(CONFIGS)),
    incarnation=st.none() | st.integers(0, 2**62),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_persists, max_size=8))
def test_sqlite_store_matches_memory_store_on_any_save_sequence(batches: list[Persist]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "d"
        memory = MemoryStore()
        with fresh(d) as s:
            for p in batches:
                memory.save(p)
                s.save(p)
                assert s.load() == memory.load()
        with SqliteStore.open(d, CLUSTER, "n1") as s:
            assert s.load() == memory.load()


# ---------------------------------------------------------------- refusals


def test_open_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        SqliteStore.open(tmp_path / "nope", CLUSTER, "n1")
    assert not (tmp_path / "nope").exists()  # and creates nothing


def test_open_refuses_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DataDirError, match="is empty.*lost its promises") as ei:
        SqliteStore.open(tmp_path / "d", CLUSTER, "n1")
    assert "\n" not in str(ei.value)
    assert list((tmp_path / "d").iterdir()) == []


def test_open_refuses_a_directory_without_node_db(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "stray.txt").write_text("hello")
    with pytest.raises(DataDirError, match="has no node.db.*lost its promises"):
        SqliteStore.open(d, CLUSTER, "n1")
    assert not (d / "node.db").exists()


@pytest.mark.parametrize("keep_header", [False, True])
def test_open_refuses_garbage_bytes_over_node_db(tmp_path: Path, keep_header: bool) -> None:
    d = tmp_path / "d"
    fresh(d).close()
    db = d / "node.db"
    # With the header kept, the garbage gets past the magic check and SQLite must catch it.
    head = db.read_bytes()[:100] if keep_header else b""
    db.write_bytes(head + os.urandom(8192 - len(head)))
    with pytest.raises(DataDirError, match="corrupt") as ei:
        SqliteStore.open(d, CLUSTER, "n1")
    assert "\n" not in str(ei.value)


def test_open_refuses_a_truncated_node_db(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        for i in range(1, 60):
            s.save(Persist(entries=[entry(i, 1, "n1", os.urandom(3000))], commit_index=i))
    db = d / "node.db"
    assert not Path(f"{db}-wal").exists()  # closed cleanly: everything is in node.db
    size = db.stat().st_size
    assert size > 100_000
    os.truncate(db, size // 2)
    with pytest.raises(DataDirError, match="corrupt"):
        SqliteStore.open(d, CLUSTER, "n1")


def test_open_refuses_a_zero_length_node_db(tmp_path: Path) -> None:
    d = tmp_path / "d"
    fresh(d).close()
    os.truncate(d / "node.db", 0)
    with pytest.raises(DataDirError, match="corrupt.*0 bytes"):
        SqliteStore.open(d, CLUSTER, "n1")
    with pytest.raises(DataDirError, match="corrupt.*0 bytes"):
        init_data_dir(d, CLUSTER, "n1")
    assert (d / "node.db").stat().st_size == 0  # refused, and left exactly as found


def test_open_refuses_another_clusters_directory(tmp_path: Path) -> None:
    fresh(tmp_path / "d", cluster="abc", node="n1").close()
    with pytest.raises(DataDirError, match="belongs to node n1 of cluster abc, not n1 of cluster def"):
        SqliteStore.open(tmp_path / "d", "def", "n1")


def test_open_refuses_another_nodes_directory(tmp_path: Path) -> None:
    fresh(tmp_path / "d", node="n2").close()
    with pytest.raises(DataDirError, match=f"belongs to node n2 of cluster {CLUSTER}, not n1"):
        SqliteStore.open(tmp_path / "d", CLUSTER, "n1")


def test_open_refuses_a_directory_held_by_another_store(tmp_path: Path) -> None:
    with fresh(tmp_path / "d"):
        with pytest.raises(DataDirError, match="in use by another process"):
            SqliteStore.open(tmp_path / "d", CLUSTER, "n1")
    SqliteStore.open(tmp_path / "d", CLUSTER, "n1").close()  # released on close


def _tamper(d: Path, sql: str, *args: object) -> None:
    """Change node.db behind the store's back (as a disk error or a careless edit would)."""
    conn = sqlite3.connect(d / "node.db")
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def _refused_in_one_line(d: Path, *words: str) -> None:
    with pytest.raises(DataDirError) as ei:
        SqliteStore.open(d, CLUSTER, "n1")
    msg = str(ei.value)
    assert "\n" not in msg and "corrupt" in msg, msg
    for w in words:
        assert w in msg, msg
    # The refused open let go of the directory: a second try gives the same reason.
    with pytest.raises(DataDirError) as again:
        SqliteStore.open(d, CLUSTER, "n1")
    assert str(again.value) == msg


@pytest.mark.parametrize("column,value,words", [
    ("promised_round", 2**63 - 1, ["promised ballot round"]),
    ("promised_round", -1, ["promised ballot round"]),
    ("promised_node", "n" * 65, ["promised ballot node"]),
    ("promised_node", "", ["promised ballot node"]),          # round 7, nobody's ballot
    ("high_water_round", 2**62 + 1, ["high-water round"]),
    ("commit_index", -3, ["commit index"]),
])
def test_open_refuses_an_acceptor_row_out_of_range(tmp_path: Path, column: str, value: object,
                                                   words: list[str]) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(promised=Ballot(7, "n2")))
    _tamper(d, f"UPDATE acceptor SET {column} = ? WHERE id = 0", value)
    _refused_in_one_line(d, *words)


def test_open_refuses_a_snapshot_that_does_not_restore(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(snapshot=Snapshot(5, SNAPS[2]), commit_index=5))
    _tamper(d, "UPDATE snapshot SET data = ? WHERE id = 0", SNAPS[2][:-7])
    _refused_in_one_line(d, "snapshot at index 5 does not decode")


@pytest.mark.parametrize("sql,args,words", [
    ("UPDATE log SET value = ? WHERE slot = 3", (b"\xc1not msgpack",), ["log slot 3"]),
    ("UPDATE log SET value = ? WHERE slot = 3", (b"\x92\x01\x02",), ["log slot 3"]),
    ("UPDATE log SET ballot_round = ? WHERE slot = 4", (2**63 - 1,), ["log slot 4"]),
    ("UPDATE log SET ballot_node = '' WHERE slot = 4", (), ["log slot 4"]),
    ("UPDATE log SET slot = 0 WHERE slot = 2", (), ["log slot"]),
])
def test_open_refuses_a_log_row_it_could_not_use(tmp_path: Path, sql: str, args: tuple[object, ...],
                                                 words: list[str]) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(snapshot=Snapshot(1, SNAPS[1]), entries=[entry(i) for i in range(2, 6)]))
    _tamper(d, sql, *args)
    _refused_in_one_line(d, *words)


def test_log_rows_a_snapshot_covers_are_ignored_then_trimmed_a_few_megabytes_a_turn(
        tmp_path: Path) -> None:
    d = tmp_path / "d"
    big = [LogEntry(i, Ballot(1, "n1"), (bytes([i]) * (1 << 20),)) for i in range(1, 13)]
    with fresh(d) as s:
        s.save(Persist(entries=big, commit_index=12))
        s.save(Persist(snapshot=Snapshot(10, SNAPS[1]), commit_index=12))   # one row moves
        assert [e.slot for e in s.load().entries] == [11, 12]
        rows = lambda: [r[0] for r in s._live().execute("SELECT slot FROM log ORDER BY slot")]  # noqa: E731
        assert rows() == list(range(1, 13))          # not deleted by the snapshot's save
        s.maintain()
        assert rows() == list(range(4, 13))          # what fits 4 MiB per turn: 3 rows
        for _ in range(3):
            s.maintain()
        assert rows() == [11, 12]
    with SqliteStore.open(d, CLUSTER, "n1") as s:     # untrimmed rows are no corruption
        assert [e.slot for e in s.load().entries] == [11, 12]


def test_a_sound_database_with_everything_in_it_opens(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(promised=Ballot(2**62, "n3"), high_water_round=2**62,
                       snapshot=Snapshot(9, SNAPS[3]), entries=[entry(i) for i in range(10, 20)],
                       commit_index=12))
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        assert s.load().promised == Ballot(2**62, "n3")


def test_the_store_never_persists_a_round_it_could_not_increment(tmp_path: Path) -> None:
    with fresh(tmp_path / "d") as s:
        with pytest.raises(UsageError):
            s.save(Persist(high_water_round=2**62 + 1))
        s.save(Persist(high_water_round=2**62))     # not poisoned: nothing was attempted
    with pytest.raises(ProtocolError):
        Ballot(2**62 + 1, "n1")


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """Paths made immutable with chattr +i (root ignores mode bits, not this); undone after."""
    done: list[Path] = []
    yield done
    for path in done:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def _chattr_immutable(path: Path, done: list[Path]) -> None:
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {r.stderr.strip()}")
    done.append(path)


def test_open_refuses_a_read_only_node_db_in_one_line(tmp_path: Path, immutable: list[Path]) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(promised=Ballot(3, "n2")))
    _chattr_immutable(d / "node.db", immutable)
    with pytest.raises(DataDirError, match="is not writable: attempt to write a readonly database") as ei:
        SqliteStore.open(d, CLUSTER, "n1")
    assert "\n" not in str(ei.value)


def test_init_is_idempotent_for_the_same_identity(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(promised=Ballot(5, "n3")))
    init_data_dir(d, CLUSTER, "n1")
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        assert s.load().promised == Ballot(5, "n3")


def test_init_refuses_a_directory_of_another_identity(tmp_path: Path) -> None:
    init_data_dir(tmp_path / "d", "abc", "n2")
    with pytest.raises(DataDirError, match="belongs to node n2 of cluster abc"):
        init_data_dir(tmp_path / "d", "abc", "n1")
    with pytest.raises(DataDirError, match="belongs to node n2 of cluster abc"):
        init_data_dir(tmp_path / "d", "xyz", "n2")


def test_init_refuses_to_overwrite_a_corrupt_node_db(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "node.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(DataDirError, match="corrupt"):
        init_data_dir(d, CLUSTER, "n1")
    assert (d / "node.db").read_bytes() == b"garbage" * 1000


# ---------------------------------------------------------------- SIGKILL


SNAP_FOR_CRASH_TESTS = Machine().snapshot()


def persist_for(i: int) -> Persist:
    """The i-th save of the crash tests (i >= 1); a snapshot every 25 saves."""
    return Persist(
        promised=Ballot(i, "n1"),
        high_water_round=i,
        entries=[LogEntry(i, Ballot(i, "n1"), (i.to_bytes(4, "big") * 25,))],
        commit_index=i - 1,
        snapshot=Snapshot(i - 10, SNAP_FOR_CRASH_TESTS) if i % 25 == 0 else None,
    )


def expected_after(n: int) -> Durable:
    m = MemoryStore()
    for i in range(1, n + 1):
        m.save(persist_for(i))
    return m.load()


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_sqlite_store import persist_for
    from coordsvc.storage.sqlite import SqliteStore
    store = SqliteStore.open(Path({d!r}), {cluster!r}, "n1")
    kill_at = {kill_at}
    i = 0
    while True:
        i += 1
        store.save(persist_for(i))
        print(i, flush=True)
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
""")


def _run_child(d: Path, kill_at: int) -> subprocess.Popen[str]:
    src = _CHILD.format(tests=str(Path(__file__).parent), d=str(d), cluster=CLUSTER,
                        kill_at=kill_at)
    return subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)


def test_sigkill_after_acknowledged_saves_loses_none_of_them(tmp_path: Path) -> None:
    d = tmp_path / "d"
    init_data_dir(d, CLUSTER, "n1")
    child = _run_child(d, kill_at=137)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    acked = [int(x) for x in out.split()]
    assert acked == list(range(1, 138))
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        assert s.load() == expected_after(137)


@pytest.mark.parametrize("delay_s", [0.15, 0.4, 0.7])
def test_sigkill_mid_save_leaves_a_prefix_with_every_acknowledged_save(
    tmp_path: Path, delay_s: float
) -> None:
    d = tmp_path / "d"
    init_data_dir(d, CLUSTER, "n1")
    child = _run_child(d, kill_at=-1)  # saves forever; we kill it from outside
    assert child.stdout is not None
    first = child.stdout.readline()  # the store is open and saving
    assert first.strip() == "1"
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=60)
    acked = [1] + [int(x) for x in rest.split()]
    last = acked[-1]
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        loaded = s.load()
    # The save in flight at the kill may or may not have committed; nothing else.
    n = loaded.high_water_round
    assert n in (last, last + 1), (last, n)
    assert loaded == expected_after(n)


def test_a_commit_index_only_save_is_lazy_and_restores_full_sync(tmp_path: Path) -> None:
    from coordsvc.core.types import Ballot, LogEntry, Persist
    init_data_dir(tmp_path / "d", "c", "n1")
    store = SqliteStore.open(tmp_path / "d", "c", "n1")
    store.save(Persist(entries=[LogEntry(1, Ballot(1, "n1"), (b"x",))]))
    store.save(Persist(commit_index=1))
    assert store._live().execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL again
    store.close()
    again = SqliteStore.open(tmp_path / "d", "c", "n1")
    assert again.load().commit_index == 1
    again.close()


def test_the_wal_is_checkpointed_by_maintain_not_inside_commits(tmp_path: Path) -> None:
    from coordsvc.core.types import Ballot, LogEntry, Persist
    from coordsvc.storage.sqlite import CHECKPOINT_EVERY_SAVES
    init_data_dir(tmp_path / "d", "c", "n1")
    store = SqliteStore.open(tmp_path / "d", "c", "n1")
    assert store._live().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(CHECKPOINT_EVERY_SAVES):
        store.save(Persist(entries=[LogEntry(i + 1, Ballot(1, "n1"), (b"x" * 100,))]))
    db = tmp_path / "d" / "node.db"
    before = db.stat().st_size          # commits went to the WAL only
    store.maintain()
    assert db.stat().st_size > before + 100 * CHECKPOINT_EVERY_SAVES // 2
    store.close()


# ---------------------------------------------------------------- membership


def test_a_schema_1_database_is_migrated_and_keeps_its_state(tmp_path: Path) -> None:
    from coordsvc.storage import datadir
    d = tmp_path / "d"
    d.mkdir()
    conn = datadir.connect(d / "node.db", create=True)
    import sqlite_utils
    db = sqlite_utils.Database(conn, execute_plugins=False)
    with db.atomic():
        datadir.MIGRATIONS[1](db)
        db.table("meta").upsert_all([{"key": "schema_version", "value": "1"},
                                     {"key": "cluster_id", "value": CLUSTER},
                                     {"key": "node_id", "value": "n1"}], pk="key")
        conn.execute("UPDATE acceptor SET promised_round = 4, promised_node = 'n2'")
    conn.close()
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        got = s.load()
        assert got.promised == Ballot(4, "n2")
        assert got.snapshot.config is None and got.incarnation == 0 and got.removed == ""
    conn = sqlite3.connect(d / "node.db")
    assert dict(conn.execute("SELECT key, value FROM meta"))["schema_version"] == str(SCHEMA_VERSION)
    conn.close()


def test_configuration_incarnation_and_removal_survive_a_restart(tmp_path: Path) -> None:
    d = tmp_path / "d"
    cfg = CONFIGS[1]
    with fresh(d) as s:
        s.save(Persist(snapshot=Snapshot(0, b"", cfg), incarnation=17))
    with SqliteStore.open(d, CLUSTER, "n1") as s:
        got = s.load()
        assert got.snapshot.config == cfg and got.incarnation == 17
        s.save(Persist(removed="removed at slot 40"))


def test_a_removed_node_refuses_to_start_again(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with fresh(d) as s:
        s.save(Persist(removed="n1 was removed by the change chosen at slot 40"))
    with pytest.raises(DataDirError, match="removed from the cluster and will not start again"):
        SqliteStore.open(d, CLUSTER, "n1")


def test_a_node_added_at_runtime_starts_without_knowing_which_member_it_is(tmp_path: Path) -> None:
    d = tmp_path / "d"
    init_data_dir(d, CLUSTER, "n4", joining=True)
    with SqliteStore.open(d, CLUSTER, "n4") as s:
        got = s.load()
        assert got.incarnation is None and got.snapshot.config is None
        s.save(Persist(incarnation=12))
        assert s.load().incarnation == 12


def test_open_refuses_a_configuration_that_does_not_decode(tmp_path: Path) -> None:
    d = tmp_path / "d"
    fresh(d).close()
    conn = sqlite3.connect(d / "node.db")
    conn.execute("UPDATE snapshot SET config = ?", (b"\xc1garbage",))
    conn.commit()
    conn.close()
    with pytest.raises(DataDirError, match="configuration does not decode"):
        SqliteStore.open(d, CLUSTER, "n1")
