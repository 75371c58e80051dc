"""Backups on real clusters: save from one, restore as a new one, compare everything.

Clusters are real node processes on loopback (secure); saves and restores go through the
installed ``coordctl`` as an operator runs them, or ``Client.snapshot_save``.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from coordsvc import Client, CompareFailed, clusterfile, snapshotfile

from .harness import LocalCluster, RawWriter, free_base_port

COORDCTL = [sys.executable, "-m", "coordctl"]


def coordctl(*args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COORDCTL, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class Restored:
    """The cluster `snapshot restore` made in ``directory``, run by `coordctl cluster up`
    (one process, which stops its nodes on SIGTERM)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.file = directory / "cluster.toml"
        self.cluster = clusterfile.load(self.file)
        self.proc = subprocess.Popen([*COORDCTL, "cluster", "up", "--dir", str(directory)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def client(self, timeout: float = 10.0) -> Client:
        return Client.from_cluster_file(self.file, timeout=timeout)

    def wait_for_leader(self, limit_s: float = 20.0) -> None:
        deadline = time.monotonic() + limit_s
        with self.client(timeout=1.0) as c:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"cluster up exited; logs in {self.dir}/logs"
                st = c.status()
                if st["cluster"]["leader"] and st["cluster"]["quorum"]:
                    return
                time.sleep(0.1)
        raise AssertionError(f"restored cluster has no leader; logs in {self.dir}/logs")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def restored() -> Iterator[Callable[[Path], Restored]]:
    started: list[Restored] = []

    def start(directory: Path) -> Restored:
        r = Restored(directory)
        started.append(r)
        r.wait_for_leader()
        return r
    yield start
    for r in started:
        r.close()


def restore(file: Path, directory: Path, *extra: str) -> dict[str, Any]:
    r = coordctl("snapshot", "restore", file, "--nodes", "3", "--dir", directory,
                 "--base-port", str(free_base_port(3)), "--json", *extra)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def everything(c: Client, keys: list[str]) -> tuple[dict[str, tuple[bytes, int]], dict[str, list[Any]]]:
    """Every key's value and revision, and every named key's history, read in parallel."""
    values = {e.key: (e.value, e.revision) for e in c.list("")}
    with ThreadPoolExecutor(6) as pool:
        histories = dict(zip(keys, pool.map(c.history, keys), strict=True))
    return values, histories


def test_save_restore_round_trips_10000_keys_with_history_locks_and_revisions(
        tmp_path: Path, restored: Callable[[Path], Restored]) -> None:
    # A snapshot every 300 slots: the save is a compaction snapshot *and* log entries.
    a = LocalCluster(tmp_path / "a", snapshot_every=300)
    a.start()
    try:
        a.leader()
        keys = [f"app/{i:05d}" for i in range(10_000)]
        for n, (subset, tag) in enumerate([(keys, b"v1"), (keys[::3], b"v2"), (keys[::10], b"v3")]):
            w = RawWriter(a.cluster, f"filler-{n}")
            w.put_all([(k, tag + b":" + k.encode()) for k in subset], time.monotonic() + 120)
            assert not w.unknown, f"{len(w.unknown)} writes unacknowledged"
            w.close()
        with a.client() as c:
            for k in keys[5::50]:
                assert c.delete(k)
            # b's leader grants this session a fresh ttl when it takes over; the test reads
            # the lock table first thing, well within it.
            held = c.acquire("deploy", ttl=6.0)
            released = c.acquire("batch", ttl=3.0)
            released.release()
            saved = coordctl("snapshot", "save", tmp_path / "a.snap", "--cluster", a.file, "--json")
            assert saved.returncode == 0, saved.stderr
            header = json.loads(saved.stdout)
            before = everything(c, keys)
            assert c.revision() == header["revision"]     # nothing was written since
            locks_before = {lk.name: (lk.holder_session, lk.token) for lk in c.locks()}
            held.release()
    finally:
        a.close()          # the backup is all that is left of cluster a
    assert header["keys"] == len(before[0]) == 10_000 - len(keys[5::50])
    assert header["snapshot_index"] > 0 and header["entries"] > 0, header
    assert locks_before == {"deploy": (locks_before["deploy"][0], held.token)}

    info = coordctl("snapshot", "info", tmp_path / "a.snap", "--json")
    assert info.returncode == 0, info.stderr
    assert {k: json.loads(info.stdout)[k] for k in ("revision", "keys", "index", "checksum")} == {
        "revision": header["revision"], "keys": header["keys"], "index": header["index"],
        "checksum": "ok"}

    made = restore(tmp_path / "a.snap", tmp_path / "b")
    b = restored(tmp_path / "b")
    assert made["cluster_id"] != a.cluster.id and b.cluster.secure
    assert (tmp_path / "b" / "admin.key").read_text() != (tmp_path / "a" / "admin.key").read_text()
    with b.client() as c:
        # The lock table first: its holder's session runs out ttl seconds after b's leader
        # took over, and reading 10,000 histories may take longer than that on a busy machine.
        assert {lk.name: (lk.holder_session, lk.token) for lk in c.locks()} == locks_before
        after = everything(c, keys)
        assert after[0] == before[0]            # every key's value and revision
        assert after[1] == before[1]            # every key's history, deleted keys' too
        # The restored holder is gone: its lock is released after its ttl, and the next
        # grant gets a larger token than any the backup holds.
        with c.lock("deploy", ttl=5.0, timeout=30.0) as lk:
            assert lk.token > released.token > held.token
        assert c.put("after/restore", "x") == header["revision"] + 1


def test_a_save_while_writes_continue_is_one_point_in_time(tmp_path: Path) -> None:
    a = LocalCluster(tmp_path / "a", snapshot_every=200)
    a.start()
    stop = threading.Event()
    acked: list[tuple[str, bytes, int]] = []      # (key, value, revision) of every write
    errors: list[BaseException] = []
    mu = threading.Lock()

    def record(key: str, value: bytes, rev: int) -> None:
        with mu:
            acked.append((key, value, rev))

    def pair(c: Client) -> None:
        # A counter and its mirror, each written by compare-and-set: at any one point in
        # time the mirror equals the counter or trails it by one.
        ra = rb = 0
        k = 0
        while not stop.is_set():
            k += 1
            v = str(k).encode()
            ra = c.put("pair/a", v, if_revision=ra)
            record("pair/a", v, ra)
            rb = c.put("pair/b", v, if_revision=rb)
            record("pair/b", v, rb)

    def spray(c: Client, name: str) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            key, v = f"spray/{name}/{i % 97}", f"{name}-{i}".encode()
            record(key, v, c.put(key, v))

    def guard(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as e:   # reported by the test thread
            errors.append(e)

    try:
        a.leader()
        with a.client(timeout=20.0) as c:
            big = b"x" * 1_000_000        # a few MiB: the save takes many chunks
            for i in range(6):
                record(f"big/{i}", big, c.put(f"big/{i}", big))
            threads = [threading.Thread(target=guard, args=(pair, c)),
                       threading.Thread(target=guard, args=(spray, c, "s1")),
                       threading.Thread(target=guard, args=(spray, c, "s2"))]
            for t in threads:
                t.start()
            while len(acked) < 300 and not errors:
                time.sleep(0.01)
            h = c.snapshot_save(tmp_path / "live.snap")
            at_save = len(acked)
            while len(acked) < at_save + 300 and not errors:
                time.sleep(0.01)
            stop.set()
            for t in threads:
                t.join(30)
    finally:
        stop.set()
        a.close()
    assert not errors, errors
    _, m = snapshotfile.load(tmp_path / "live.snap")
    assert m.revision == h.revision
    revs = sorted(rev for _, _, rev in acked)
    assert revs == list(range(1, len(revs) + 1))     # every revision is one of ours
    assert revs[0] < h.revision < revs[-1], "writes went on before and after the save"
    expect: dict[str, tuple[bytes, int]] = {}
    for key, value, rev in sorted(acked, key=lambda x: x[2]):
        if rev <= h.revision:
            expect[key] = (value, rev)
    got = {kv.key: (kv.value, kv.revision) for kv in m.list("")}
    assert got == expect          # exactly the state at the saved revision, nothing torn
    a_, b_ = int(got["pair/a"][0]), int(got["pair/b"][0])
    assert a_ - b_ in (0, 1), (a_, b_)


def _max_rss_kib(argv: list[str]) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``argv`` under a fresh Python whose only child it is; (child's peak RSS, result).
    ``ru_maxrss`` is in KiB on Linux."""
    probe = ("import json, resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "r.returncode, r.stdout, r.stderr]))")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                         timeout=300, check=True)
    rss, code, stdout, stderr = json.loads(out.stdout)
    return int(rss), subprocess.CompletedProcess(argv, code, stdout, stderr)


def _streams(tmp_path: Path, mib: int, nodes: int, timeout_s: int, **tuning: int) -> None:
    """Save a state of ``mib`` values of 1 MB through `coordctl snapshot save`; its peak RSS
    must stay within 24 MiB of `coordctl status`'s, whatever the state's size."""
    a = LocalCluster(tmp_path / "a", nodes=nodes, **tuning)
    a.start()
    try:
        a.leader()
        with a.client(timeout=float(timeout_s)) as c:
            for i in range(mib):
                c.put(f"blob/{i:04d}", bytes([i % 256]) * 1_000_000)
        baseline, st = _max_rss_kib([*COORDCTL, "status", "--cluster", str(a.file)])
        assert st.returncode == 0, st.stderr
        peak, saved = _max_rss_kib([*COORDCTL, "snapshot", "save", str(tmp_path / "big.snap"),
                                    "--cluster", str(a.file), "--timeout", str(timeout_s)])
        assert saved.returncode == 0, saved.stderr
    finally:
        a.close()
    size = (tmp_path / "big.snap").stat().st_size
    assert size > mib * 1_000_000
    # The client held about one chunk at a time: its peak stays far below the state's size.
    print(f"coordctl status peak RSS {baseline} KiB, snapshot save {peak} KiB, file {size} bytes")
    assert peak - baseline < 24 * 1024, (baseline, peak)
    verified = snapshotfile.verify(tmp_path / "big.snap")
    assert verified.keys == mib


def test_a_state_of_tens_of_mib_streams_through_a_client_that_holds_one_chunk(
        tmp_path: Path) -> None:
    _streams(tmp_path, 48, 3, 20)       # a dozen times the 4 MiB frame cap (wire.MAX_FRAME_BYTES)
    h, m = snapshotfile.load(tmp_path / "big.snap")
    assert h.keys == 48 and all(m.get(f"blob/{i:04d}").value == bytes([i]) * 1_000_000  # type: ignore[union-attr]
                                for i in range(48))


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_a_1_gib_state_streams_through_a_client_that_holds_one_chunk(tmp_path: Path) -> None:
    # Issue 15: "a 1 GiB state without 1 GiB of RAM". One node (the client is measured, and
    # three nodes would each hold the state twice: machine and compaction snapshot). One
    # compaction snapshot, at 800 entries, so the body is a snapshot and log records; the
    # node's loop stalls while it saves that snapshot (slow_fsync logged 3.3 s at 300 MB
    # and 5.7 s at 600 MB in one run; 20 s was not enough at 900), hence the long timeout.
    _streams(tmp_path, 1100, 1, 300, snapshot_every=800)


def test_restore_with_insecure_makes_a_cluster_without_keys(
        tmp_path: Path, restored: Callable[[Path], Restored]) -> None:
    a = LocalCluster(tmp_path / "a", secure=False)
    a.start()
    try:
        a.leader()
        with a.client() as c:
            c.put("k", "v")
            with pytest.raises(CompareFailed):
                c.put("k", "w", if_revision=0)
            h = c.snapshot_save(tmp_path / "a.snap")
    finally:
        a.close()
    made = restore(tmp_path / "a.snap", tmp_path / "b", "--insecure")
    assert made["security"] == "insecure" and not (tmp_path / "b" / "admin.key").exists()
    b = restored(tmp_path / "b")
    with b.client() as c:
        assert c.status()["cluster"]["security"] == "insecure"
        e = c.get("k")
        assert e is not None and (e.value, e.revision) == (b"v", h.revision)
