"""`coordctl status` and `coordctl cluster up` against real nodes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import COORDCTL, LocalCluster, clean_env, free_base_port, run, stop_process

CLUSTER_FIELDS = {"name", "leader", "quorum", "members", "healthy", "commit_index", "revision"}
NODE_FIELDS = {"id", "address", "reachable", "role", "leader", "ballot", "commit_index",
               "applied_index", "lag", "db_bytes", "uptime_s", "sessions", "locks_held", "keys"}


def _check_schema(st: dict[str, Any]) -> None:
    assert set(st) >= {"cluster", "nodes"}
    assert set(st["cluster"]) >= CLUSTER_FIELDS
    for n in st["nodes"]:
        assert set(n) >= NODE_FIELDS, sorted(NODE_FIELDS - set(n))
        if n["reachable"]:
            assert n["role"] in {"leader", "follower", "candidate"}
            assert isinstance(n["ballot"], list) and len(n["ballot"]) == 2
            for f in ("commit_index", "applied_index", "lag", "db_bytes", "sessions",
                      "locks_held", "keys"):
                assert isinstance(n[f], int), (f, n[f])
            assert isinstance(n["uptime_s"], (int, float))
        else:
            assert all(n[f] is None for f in NODE_FIELDS - {"id", "address", "reachable"}), n


def test_status_json_follows_contract_section_5(cluster: LocalCluster) -> None:
    r = run("status", "--json", *cluster.args())
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    _check_schema(st)
    c = st["cluster"]
    assert c["quorum"] is True and c["members"] == 3 and c["healthy"] == 3
    assert c["leader"] in {"n1", "n2", "n3"}
    assert [n["id"] for n in st["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["reachable"] for n in st["nodes"])
    roles = [n["role"] for n in st["nodes"]]
    assert roles.count("leader") == 1
    assert {n["address"] for n in st["nodes"]} == {
        f"tcp://127.0.0.1:{cluster.base_port + i}" for i in (1, 2, 3)}


def test_status_table_has_a_header_and_one_row_per_node(cluster: LocalCluster) -> None:
    r = run("status", *cluster.args())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "quorum yes" in lines[0] and "healthy 3/3" in lines[0] and "can lose 1 of 3" in lines[0]
    header = next(ln for ln in lines if ln.lstrip().startswith("id"))
    for col in ("address", "reachable", "role", "ballot", "commit", "applied", "lag",
                "last contact", "db size", "sessions", "locks", "keys", "bad frames",
                "fsync p99"):
        assert col in header
    rows = [ln for ln in lines if ln.lstrip().startswith(("n1 ", "n2 ", "n3 "))]
    assert len(rows) == 3
    assert sum("leader" in row.split()[3] for row in rows) == 1


def test_status_watch_refreshes_until_interrupted(cluster: LocalCluster) -> None:
    proc = subprocess.Popen([COORDCTL, "status", "--watch", "--json", *cluster.args()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert first["cluster"]["members"] == second["cluster"]["members"] == 3
    assert proc.returncode == 0, err


def test_a_killed_node_shows_as_unreachable(fresh_cluster: LocalCluster) -> None:
    st = fresh_cluster.wait_for_leader()
    victim = next(n["id"] for n in st["nodes"] if n["role"] != "leader")
    fresh_cluster.kill(victim)  # SIGKILL
    r = run("status", "--json", "--timeout", "2", *fresh_cluster.args())
    assert r.returncode == 0, r.stderr  # a quorum is left
    st = json.loads(r.stdout)
    _check_schema(st)
    by_id = {n["id"]: n for n in st["nodes"]}
    assert by_id[victim]["reachable"] is False
    assert by_id[victim]["role"] is None and by_id[victim]["commit_index"] is None
    assert st["cluster"]["quorum"] is True and st["cluster"]["healthy"] == 2
    table = run("status", "--timeout", "2", *fresh_cluster.args())
    assert table.returncode == 0
    row = next(ln for ln in table.stdout.splitlines() if ln.lstrip().startswith(victim + " "))
    assert "unreachable" in row
    assert "can lose 0 of 3" in table.stdout


def _serving(cluster_file: Path) -> list[int]:
    """PIDs of `coordctl serve` processes of this cluster file (read-only pgrep)."""
    r = subprocess.run(["pgrep", "-f", f"serve --cluster {cluster_file} --node"],
                       capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cluster_up_starts_every_node_and_stops_them_all(tmp_path: Path, sig: int) -> None:
    base = free_base_port()
    d = tmp_path / "up"
    proc = subprocess.Popen([COORDCTL, "cluster", "up", "--dir", str(d), "--base-port", str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Ctrl-C stops every node" in line:
                break
        text = "".join(out)
        assert "Ctrl-C stops every node" in text, text
        assert f"tcp://127.0.0.1:{base + 1}" in text
        assert "coordctl config set" in text  # copy-paste examples
        st = json.loads(run("status", "--json", "--cluster", d / "cluster.toml").stdout)
        assert st["cluster"]["leader"] and st["cluster"]["healthy"] == 3
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert _serving(d / "cluster.toml") == [], "a node outlived `cluster up`"


def test_cluster_up_reports_a_node_that_dies(tmp_path: Path) -> None:
    base = free_base_port()
    d = tmp_path / "up"
    proc = subprocess.Popen(
        [COORDCTL, "cluster", "up", "--dir", str(d), "--base-port", str(base), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert doc["endpoints"][0] == f"tcp://127.0.0.1:{base + 1}"
        n1 = next(n for n in doc["status"]["nodes"] if n["id"] == "n1")
        assert n1["reachable"] is True
        # kill n1 behind cluster up's back: find it by its port
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", base + 1)) == 0
        r = subprocess.run(["pgrep", "-f", f"serve --cluster {d / 'cluster.toml'} --node n1"],
                           capture_output=True, text=True)
        pids = [int(p) for p in r.stdout.split()]
        assert len(pids) == 1
        lines: list[str] = []
        reported = threading.Event()

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if "node n1" in line and "exited" in line:
                    reported.set()
        reader = threading.Thread(target=read_stderr)
        reader.start()
        os.kill(pids[0], signal.SIGKILL)  # a node started (indirectly) by this test
        assert reported.wait(15), "".join(lines)   # cluster up looks every 0.5 s
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        reader.join()
    finally:
        stop_process(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == 0
    assert _serving(d / "cluster.toml") == []


# --- exit codes (CONTRACT §9) ------------------------------------------------------------

def test_status_exits_0_with_a_leader_and_a_quorum(cluster: LocalCluster) -> None:
    r = run("status", *cluster.args())
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_status_exits_1_when_nodes_answer_but_no_leader_can_be_elected(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    try:
        c.start("n1")            # one of three: it answers, but can never win an election
        deadline = time.monotonic() + 10
        while True:
            r = run("status", "--json", "--timeout", "1", *c.args())
            st = json.loads(r.stdout)
            if st["cluster"]["healthy"] == 1 or time.monotonic() > deadline:
                break
        assert st["cluster"]["healthy"] == 1 and st["cluster"]["leader"] is None, st
        assert st["cluster"]["quorum"] is False
        assert r.returncode == 1, r.stderr
        assert "no leader" in r.stderr and "1 of 3" in r.stderr
        table = run("status", "--timeout", "1", *c.args())
        assert table.returncode == 1 and "quorum no" in table.stdout
    finally:
        c.stop()


def test_status_exits_1_when_a_majority_is_lost_even_if_a_leader_still_answers(
        fresh_cluster: LocalCluster) -> None:
    st = fresh_cluster.wait_for_leader()
    followers = [n["id"] for n in st["nodes"] if n["role"] != "leader"]
    for victim in followers:
        fresh_cluster.kill(victim)   # SIGKILL, by PID
    r = run("status", "--json", "--timeout", "1", *fresh_cluster.args())
    st = json.loads(r.stdout)
    assert st["cluster"]["healthy"] == 1 and st["cluster"]["quorum"] is False, st
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
