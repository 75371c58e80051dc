"""The benchmark's load generator runs end to end against a real cluster (no timing asserted).

Benchmarks are not tests (issue 7): this only checks that ``python -m bench.load --smoke``
drives every workload through ``coordsvc.Client`` to completion with CPU per operation,
and that the watch fan-out loses no event.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .harness import LocalCluster

REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke_completes_with_ops_and_no_lost_watch_events(cluster: LocalCluster,
                                                                  tmp_path: Path) -> None:
    cluster.leader()
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, "-m", "bench.load", "--smoke", "--cluster",
                        str(cluster.file), "--json", str(out)],
                       capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = json.loads(out.read_text())["tests"]
    assert set(tests) == {"seq_put", "put_tp", "lock_1", "lock_1_lib", "lock_8x1", "lock_8x8",
                          "get_tp", "watch_fanout"}
    for name, res in tests.items():
        assert "failed" not in res, (name, res)
        done = res.get("ops", res.get("delivered", 0))
        assert done > 0, (name, res)
        assert set(res["cpu_us_per_op"]) == {*cluster.ids, "client"}, (name, res)
    wf = tests["watch_fanout"]
    assert wf["writes"] > 0 and wf["lost"] == 0, wf


def test_the_load_generator_and_anchors_import_where_coordsvc_is_not_installed() -> None:
    # The anchors (etcd, PySyncObj) run bench.load from their own virtualenv, from the
    # repository root; -S leaves out every site-packages directory (coordsvc's editable
    # install too), so only the standard library and the repository's own tree import.
    probe = ("import bench.load, bench.anchors.etcd_bench, bench.anchors.pysyncobj_bench, random; "
             "from coordsvc.runtime import launch; "
             "print(launch.free_base_port(3, random.Random(), 26000, 29000))")
    r = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert 26000 <= int(r.stdout) < 29000
    r = subprocess.run([sys.executable, "-S", "-m", "bench.load", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and "--system" in r.stdout, r.stderr
