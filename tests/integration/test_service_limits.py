"""Issue 11, the service's half, on real node processes: answers larger than a frame are
paged and whole, quotas refuse what adds data and nothing else, one connection cannot
take the node, and a node survives what it is sent (a handler that raises, an oversize
frame) -- but stops, in one line, when its disk fails.

Every process is started here or by ``LocalCluster`` and stopped by PID.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from coordsvc import InvalidRequest, QuotaExceeded, wire
from coordsvc.core.commands import MAX_VALUE_BYTES, OpenAndAcquire, Request, encode_request
from coordsvc.core.service_parking import MAX_PARKED_PER_ROUTE
from coordsvc.runtime import launch

from .harness import LocalCluster, socket_to

pytestmark = pytest.mark.timeout(300)
COORDCTL = str(Path(sys.executable).parent / "coordctl")


def _value(i: int) -> bytes:
    return bytes([65 + i]) * MAX_VALUE_BYTES


def _wait(what: str, cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _all_up(c: LocalCluster) -> None:
    dead = {n: p.poll() for n, p in c.procs.items() if p.poll() is not None}
    assert not dead, f"nodes exited: {dead}; logs in {c.root}"


def _coordctl(c: LocalCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD")}
    if c.key is not None:
        env["COORD_KEY"] = str(c.key)     # CONTRACT §7: the key, when not given
    return subprocess.run([COORDCTL, *args, "--cluster", str(c.file)], capture_output=True,
                          text=True, timeout=timeout, env={**env, "COLUMNS": "250"})


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _with_limits(root: Path, nodes: int, **limits: int) -> LocalCluster:
    c = LocalCluster(root, nodes=nodes)
    c.file.write_text(c.file.read_text() + "\n[limits]\n"
                      + "".join(f"{k} = {v}\n" for k, v in limits.items()))
    return c


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.close()


# -- values at the limit --------------------------------------------------------------------

def _big_values(c: LocalCluster, n: int) -> None:
    """``n`` values of 1 MiB under big/ and six versions of one key: every answer whole."""
    c.leader()
    keys = [f"big/{i:03d}" for i in range(n)]
    with c.client(timeout=30.0) as cl:
        acked = {k: cl.put(k, _value(i % 50)) for i, k in enumerate(keys)}
        hist_revs = [cl.put("hist/k", _value(i)) for i in range(6)]
        lst = cl.list("big/")
        assert [e.key for e in lst] == keys and lst.revision == hist_revs[-1]
        assert all(e.value == _value(i % 50) and e.revision == acked[e.key] for i, e in enumerate(lst))
        hist = cl.history("hist/k")
        assert [ev.revision for ev in hist] == hist_revs
        assert [ev.value for ev in hist] == [_value(i) for i in range(6)]
        # From revision 1 (six values); a 100 MiB run starts where the 64 MiB window still is.
        watched = list(acked.items())[max(0, n - 50):]
        with cl.watch("big/", start_revision=watched[0][1]) as w:
            got = [w.next(30.0) for _ in watched]
        assert [(ev.key, ev.revision) for ev in got if ev is not None] == watched
        for node in c.ids:     # the stale list each node answers itself is whole too
            with c.client(timeout=30.0, endpoints=[c.cluster.node(node).address]) as one:
                assert [e.key for e in one.list("big/", stale=True)] == keys
    r = _coordctl(c, "config", "list", "big/", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["key"] for row in rows] == keys
    assert all(row["value"] == _value(i % 50).decode() for i, row in enumerate(rows))
    r = _coordctl(c, "config", "list", "big/", "--limit", "4")
    assert r.returncode == 0 and r.stdout.count("big/") == 4
    assert f"--start-after {keys[3]}" in _one_line(r.stderr)
    r = _coordctl(c, "config", "history", "hist/k", "--json")
    assert r.returncode == 0 and [row["revision"] for row in json.loads(r.stdout)] == hist_revs
    _all_up(c)
    for node in c.ids:        # every acknowledged write readable on every node
        for i, (key, rev) in enumerate(acked.items()):
            reply = c.probe.call(node, "get", timeout=5.0, key=key, stale=True)
            assert reply and reply["ok"] and reply["kv"][2] == rev and reply["kv"][1] == _value(i % 50)


def test_six_1_mib_values_are_listed_watched_and_their_history_read_whole_on_every_node(
        cluster3: LocalCluster) -> None:
    _big_values(cluster3, 6)


@pytest.mark.long
def test_a_100_mib_prefix_is_listed_watched_and_read_whole_on_every_node(
        cluster3: LocalCluster) -> None:
    _big_values(cluster3, 100)


# -- quotas ---------------------------------------------------------------------------------

def test_past_max_keys_puts_of_new_keys_fail_and_reads_deletes_releases_and_expiry_work(
        tmp_path: Path) -> None:
    c = _with_limits(tmp_path, 3, max_keys=5)
    c.start()
    try:
        c.leader()
        with c.client(timeout=10.0) as cl:
            for i in range(5):
                cl.put(f"q/{i}", "v")
            with cl.lock("q-lock", ttl=5.0, timeout=5.0):
                with pytest.raises(QuotaExceeded, match="max_keys"):
                    cl.put("q/5", "v")
            r = _coordctl(c, "config", "set", "q/5", "v")
            assert r.returncode == 1 and "max_keys" in _one_line(r.stderr)
            st = json.loads(_coordctl(c, "status", "--json").stdout)
            assert st["cluster"]["alarms"] == ["max_keys"]
            assert "alarms max_keys" in _coordctl(c, "status").stdout
            # A session nobody keeps alive still expires (the leader proposes it).
            raw = encode_request(Request("quota-test", 1, 1, OpenAndAcquire("orphan", 1000, True)))
            leader = c.leader()
            reply = c.probe.call(leader, "write", timeout=5.0, req=raw)
            assert reply and reply["result"][0] == "ok"
            _wait("the orphan session to expire", lambda: not [lk for lk in cl.locks()
                                                               if lk.name == "orphan"], 10)
            assert cl.get("q/0") is not None and len(cl.list("q/")) == 5
            cl.put("q/0", "overwritten")
            assert cl.delete("q/1")
            _wait("the alarm to clear", lambda: cl.status()["cluster"]["alarms"] == [], 10)
            cl.put("q/5", "v")
        _all_up(c)
    finally:
        c.close()


def test_past_max_db_bytes_every_put_fails_and_status_shows_the_alarm(tmp_path: Path) -> None:
    c = _with_limits(tmp_path, 1, max_db_bytes=4096)
    c.start()
    try:
        c.leader()
        with c.client(timeout=10.0) as cl:
            _wait("the alarm", lambda: cl.status()["cluster"]["alarms"] == ["max_db_bytes"], 10)
            with pytest.raises(QuotaExceeded, match="max_db_bytes"):
                cl.put("k", "v")
            assert cl.get("k") is None and cl.delete("k") is False
            with cl.lock("still-works", ttl=2.0, timeout=5.0) as lk:
                assert lk.token > 0
        _all_up(c)
    finally:
        c.close()


def test_a_bad_limits_table_is_refused_in_one_line(tmp_path: Path) -> None:
    c = _with_limits(tmp_path, 1, max_keys=0)
    try:
        r = _coordctl(c, "status")
        assert r.returncode == 2 and "max_keys" in _one_line(r.stderr)
    finally:
        c.close()


# -- one connection, one node ------------------------------------------------------------

def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], c: LocalCluster, node: str) -> zmq.Socket[bytes]:
    address = c.cluster.node(node).address
    s = socket_to(ctx, zmq.DEALER, c.cluster, address)   # with the admin key
    s.connect(address)
    return s


def _replies(s: zmq.Socket[bytes], n: int, timeout: float) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(out) < n and (left := deadline - time.monotonic()) > 0:
        if s.poll(int(left * 1000)):
            r = wire.decode_client(s.recv(), wire.CLIENT_REPLY)
            out[r["id"]] = r
    return out


def test_one_connection_cannot_park_more_than_its_share_and_others_still_park(
        tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    c.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        c.leader()
        greedy, polite = _dealer(ctx, c, "n1"), _dealer(ctx, c, "n1")
        for i in range(MAX_PARKED_PER_ROUTE + 1):
            greedy.send(wire.encode_client(wire.CLIENT_REQUEST, {
                "id": i, "op": "watch", "prefix": f"p/{i}/", "after": 0, "wait_ms": 20_000}))
        refused = _replies(greedy, 1, 10.0)
        assert list(refused) == [MAX_PARKED_PER_ROUTE]
        assert "max_parked_watches_per_connection" in refused[MAX_PARKED_PER_ROUTE]["message"]
        polite.send(wire.encode_client(wire.CLIENT_REQUEST, {
            "id": "p", "op": "watch", "prefix": "p/x", "after": 0, "wait_ms": 20_000}))
        _wait("both connections' watches to be parked",
              lambda: (st := c.probe.status("n1")) is not None
              and st["parked_watches"] == MAX_PARKED_PER_ROUTE + 1, 10)
        huge = _dealer(ctx, c, "n1")
        huge.send(wire.encode_client(wire.CLIENT_REQUEST, {
            "id": 1, "op": "watch", "prefix": "p" * 100 * 1024, "after": 0, "wait_ms": 1000}))
        assert _replies(huge, 1, 5.0)[1]["error"] == "bad_request"
    finally:
        ctx.destroy(linger=0)
        c.close()


def test_a_request_above_the_frame_cap_is_answered_bad_request_not_silence(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    c.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        c.leader()
        s = _dealer(ctx, c, "n1")
        body = bytes((wire.WIRE_VERSION, wire.CLIENT_REQUEST)) + __import__("msgpack").packb(
            {"op": "get", "pad": b"x" * (5 * 1024 * 1024), "id": 77}, use_bin_type=True)
        assert wire.MAX_FRAME_BYTES < len(body) < 2 * wire.MAX_FRAME_BYTES
        s.send(body)
        reply = _replies(s, 1, 10.0)[77]
        assert reply["error"] == "bad_request" and str(wire.MAX_FRAME_BYTES) in reply["message"]
        _all_up(c)
    finally:
        ctx.destroy(linger=0)
        c.close()


# -- what stops a node, and what does not ----------------------------------------------------

_INJECT_HANDLER = """
import sys
from coordsvc.core import protocol, service_ops
def boom(*args):
    raise RuntimeError("injected by the test")
service_ops.HANDLERS[protocol.HistoryRequest] = boom
from coordsvc.runtime.__main__ import main
sys.exit(main())
"""

_INJECT_DISK = """
import sqlite3, sys
from pathlib import Path
from coordsvc.storage import sqlite as store
real = store.SqliteStore.save
def save(self, p):
    if (Path(self.db_path).parent / "FAIL").exists():
        raise sqlite3.OperationalError("disk I/O error")
    return real(self, p)
store.SqliteStore.save = save
from coordsvc.runtime.__main__ import main
sys.exit(main())
"""


def _start_with(c: LocalCluster, node: str, script: str) -> None:
    """Start ``node`` as usual, with ``script`` patching it first (test-only code)."""
    c.procs[node] = launch.start_node(c.file, node, c.root / f"{node}.log",
                                      command=[sys.executable, "-c", script])


def test_a_handler_that_raises_in_a_real_node_is_answered_internal_and_logged_once(
        tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    _start_with(c, "n1", _INJECT_HANDLER)
    try:
        c.leader()
        with c.client(timeout=5.0) as cl:
            cl.put("k", "v")
            for _ in range(2):
                with pytest.raises(Exception, match="internal"):
                    cl.history("k")
            assert cl.get("k").value == b"v"     # type: ignore[union-attr]
        st = c.probe.status("n1")
        assert st is not None and st["internal_errors"] == 2
        _all_up(c)
        log = c.log("n1")
        assert log.count("answered internal: handling 'history'") == 2
        assert log.count("RuntimeError: injected by the test") == 2
    finally:
        c.close()


def test_a_failed_disk_write_stops_the_node_with_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    _start_with(c, "n1", _INJECT_DISK)
    try:
        c.leader()
        with c.client(timeout=5.0) as cl:
            cl.put("k", "v")
            (c.cluster.nodes[0].data_dir / "FAIL").touch()
            with pytest.raises(Exception):       # noqa: B017 - Unavailable: the node is gone
                cl.put("k", "w")
        assert c.procs["n1"].wait(10) == 74
        log = c.log("n1")
        assert "Traceback" not in log and "bug" not in log
        (line,) = [ln for ln in log.splitlines() if "CRITICAL" in ln]
        assert "stopping: writing" in line and "node.db failed: OperationalError: disk I/O error" in line
    finally:
        c.close()


def test_cli_inputs_out_of_range_exit_with_one_line_and_the_contract_codes(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    c.start()
    try:
        c.leader()
        cases = [
            (["lock", "run", "x", "--ttl", "inf"], 2), (["lock", "run", "x", "--wait", "inf"], 2),
            (["lock", "run", "x", "--ttl", "nan"], 2), (["lock", "run", "x", "--ttl", "1e300"], 2),
            (["lock", "run", "x", "--timeout", "inf"], 2),
            (["config", "watch", "p", "--from-revision", str(2**70)], 2),
            (["config", "get", "k", "--timeout", "inf"], 2), (["config", "get", ""], 2),
            (["config", "get", "k" * 513], 2), (["config", "history", ""], 2),
            (["config", "set", "k", "v", "--if-revision", str(2**70)], 2),
            (["config", "list", "p", "--limit", "0"], 2), (["config", "list", "\x01" * 600], 2),
        ]
        for args, code in cases:
            argv = [*args, "--cluster", str(c.file)]
            if args[:2] == ["lock", "run"]:
                argv += ["--", "true"]
            r = subprocess.run([COORDCTL, *argv], capture_output=True, text=True, timeout=30)
            assert r.returncode == code, (args, r.returncode, r.stderr)
            assert _one_line(r.stderr).startswith("coordctl: error: "), args
        with pytest.raises(InvalidRequest), c.client() as cl:
            cl.watch("p", start_revision=2**70)
        _all_up(c)
    finally:
        c.close()
