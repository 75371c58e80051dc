"""The benchmark load generator of issue 7: one workload, any system.

    python -m bench.load                       # coordsvc, full issue durations
    python -m bench.load --scale 0.2           # the same, every duration x0.2
    python -m bench.load --system etcd         # anchors run under bench/.venv-anchors/bin/python
    python -m bench.load --smoke               # ~2 s of every test (used by an integration test)
    python -m bench.load --cluster FILE        # attach to a running coordsvc cluster
    python -m bench.load --tests large         # the large-value row: put_64k, put_1m, list_100m

Run from the repository root (``python -m`` finds ``bench`` there). The workload is
``bench/workload.py``; ``bench/coord.py`` drives coordsvc through ``coordsvc.Client`` from
this (separate) process, and ``bench/anchors/`` holds the etcd and PySyncObj adapters.

The CPU time of every process (the nodes and this client process) is read from
``/proc/PID/stat`` around each test's measured window, and divided by its operations.
Nothing here talks to anything but 127.0.0.1, every test has a hard wall-clock bound, and
every process we start is stopped by its PID (``finally`` + SIGTERM handler), even when a
test fails.

This module imports with the standard library alone: the anchors run it from their own
virtualenv, and it imports a system's adapter only once that system is asked for.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .report import code_version, machine_info, write_result
from .systems import System
from .workload import FULL, LARGE_TESTS, SMOKE, TESTS, WORKLOAD, run_suite


def make_system(name: str, cluster_file: Path | None, insecure: bool = False) -> System:
    if name == "coordsvc":
        from .coord import CoordSystem
        return CoordSystem(cluster_file, insecure=insecure)
    if name == "etcd":
        from .anchors.etcd_bench import EtcdSystem
        return EtcdSystem()
    raise SystemExit(f"unknown system {name!r} (pysyncobj runs through bench.anchors.pysyncobj_bench)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load",
                                 description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--system", default="coordsvc", choices=["coordsvc", "etcd", "pysyncobj"])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every duration (and seq_put's count) by this")
    ap.add_argument("--smoke", action="store_true", help="~2 s of every test")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help=f"comma-separated; 'large' = {','.join(LARGE_TESTS)}")
    ap.add_argument("--cluster", type=Path, help="coordsvc: use this running cluster")
    ap.add_argument("--insecure", action="store_true",
                    help="coordsvc: start the cluster without CURVE keys (to measure their cost)")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/)")
    a = ap.parse_args(argv)
    tests = [t for name in a.tests.split(",") if name
             for t in (LARGE_TESTS if name == "large" else (name,))]
    bad = [t for t in tests if t not in WORKLOAD]
    if bad:
        ap.error(f"unknown tests {bad}; known: {', '.join(WORKLOAD)}")
    p = SMOKE if a.smoke else FULL.scaled(a.scale)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so `finally` stops nodes
    doc: dict[str, Any]
    if a.system == "pysyncobj":
        from .anchors.pysyncobj_bench import drive
        doc = drive(p, tests)
    else:
        t0 = time.monotonic()
        sysm = make_system(a.system, a.cluster, a.insecure)
        try:
            print(f"{sysm.name}: {sysm.notes}")
            results = run_suite(sysm, p, tests)
        finally:
            sysm.close()
        doc = {"system": sysm.name, "notes": sysm.notes, "unsupported": sysm.unsupported,
               "tests": results, "total_s": round(time.monotonic() - t0, 1)}
    doc.update({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "params": asdict(p),
                "scale": a.scale, "smoke": a.smoke, "machine": machine_info(),
                "code": code_version()})
    path = write_result(a.system, doc, a.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
