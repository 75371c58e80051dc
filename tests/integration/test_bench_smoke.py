"""The benchmark's load generator runs end to end against a real cluster (no timing asserted).

Benchmarks are not tests (issue 7): this only checks that ``bench/load.py --smoke`` drives
every workload through ``coordsvc.Client`` to completion, and that the watch fan-out loses
no event.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .harness import LocalCluster

LOAD = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def test_bench_smoke_completes_with_ops_and_no_lost_watch_events(cluster: LocalCluster,
                                                                  tmp_path: Path) -> None:
    cluster.leader()
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, str(LOAD), "--smoke", "--cluster", str(cluster.file),
                        "--json", str(out)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = json.loads(out.read_text())["tests"]
    assert set(tests) == {"seq_put", "put_tp", "lock_1", "lock_8x1", "lock_8x8", "get_tp",
                          "watch_fanout"}
    for name, res in tests.items():
        assert "failed" not in res, (name, res)
        done = res.get("ops", res.get("delivered", 0))
        assert done > 0, (name, res)
    wf = tests["watch_fanout"]
    assert wf["writes"] > 0 and wf["lost"] == 0, wf


def test_the_load_generator_runs_where_coordsvc_is_not_installed() -> None:
    # The anchors (etcd, PySyncObj) run load.py from their own virtualenv; -S leaves out
    # every site-packages directory, so only the standard library is importable.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import load; "
             "print(load.free_ports(3, 41000))")
    r = subprocess.run([sys.executable, "-S", "-c", probe, str(LOAD.parent)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 41000 <= int(r.stdout) < 61000
