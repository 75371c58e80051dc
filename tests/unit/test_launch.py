"""The one launcher of local node processes (CLI `cluster up`, test harnesses, benchmarks)."""
from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import pytest

from coordsvc.runtime import launch

# Says it is up, then waits; exits 0 on SIGTERM (as a node does), or ignores it.
CHILD = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("up", sys.argv[2:], flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(60)
"""


def _wait_for(log: Path, text: str) -> None:
    for _ in range(500):
        if text in log.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never appeared in {log}")


def test_a_started_node_gets_the_cluster_and_node_flags_and_logs_both_streams(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    p = launch.start_node(tmp_path / "cluster.toml", "n1", log, "--log-format", "json",
                          command=[sys.executable, "-c", CHILD, "term"])
    try:
        _wait_for(log, "to stderr")
        assert f"['--cluster', '{tmp_path / 'cluster.toml'}', '--node', 'n1', '--log-format', 'json']" \
            in log.read_text()
    finally:
        launch.stop([p])
    assert p.returncode == 0


def test_stop_ends_a_paused_process_gracefully(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    p = launch.start([sys.executable, "-c", CHILD, "term"], log)
    _wait_for(log, "up")
    p.send_signal(signal.SIGSTOP)
    launch.stop([p], grace_s=10.0)
    assert p.returncode == 0   # SIGCONT first, so its SIGTERM handler ran


def test_stop_kills_what_ignores_sigterm_after_the_grace_and_says_which(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    p = launch.start([sys.executable, "-c", CHILD, "ignore"], log)
    _wait_for(log, "up")
    killed: list[int] = []
    launch.stop([p], grace_s=0.3, on_kill=lambda q: killed.append(q.pid))
    assert killed == [p.pid] and p.returncode == -signal.SIGKILL


def test_kill_reaps_and_tolerates_a_process_that_already_exited(tmp_path: Path) -> None:
    p = launch.start([sys.executable, "-c", "pass"], tmp_path / "x.log")
    p.wait()
    assert launch.kill(p) == 0


def test_free_base_port_leaves_every_port_of_the_layout_bindable() -> None:
    base = launch.free_base_port(3, random.Random(7))
    assert sorted(launch.node_ports(base, 3)) == sorted(
        base + off + i for off in (0, 100, 200) for i in (1, 2, 3))
    assert all(launch._port_free(p) for p in launch.node_ports(base, 3))


def test_free_base_port_stays_out_of_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port the kernel may give an outgoing connection can be taken between the check and
    # the node's bind (CI saw "Address already in use"), so no node port is ever one.
    monkeypatch.setattr(launch, "ephemeral_ports", lambda: range(10_000, 19_000))
    rng = random.Random(3)
    for _ in range(50):
        assert all(p >= 19_000 for p in launch.node_ports(launch.free_base_port(3, rng), 3))
    with pytest.raises(OSError, match="outside the ephemeral range 10000..18999"):
        launch.free_base_port(3, rng, 10_000, 18_000)


def test_the_ephemeral_range_is_the_kernels() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        first, last = (int(x) for x in f.read().split())
    assert launch.ephemeral_ports() == range(first, last + 1)
    ports = launch.node_ports(launch.free_base_port(3, random.Random(1)), 3)
    assert not any(first <= p <= last for p in ports)
