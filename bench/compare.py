"""``make bench-compare``: every system, 3 interleaved rounds, markdown tables of medians.

    .venv/bin/python -m bench.compare [--rounds 3] [--scale 1] [--systems coordsvc,etcd]

Round r runs the whole suite on each system in turn, each on a fresh 3-node cluster,
the order rotated every round (coordsvc, etcd, pysyncobj / etcd, pysyncobj, coordsvc / ...)
so drift on the machine does not favour one system. Each run is one ``python -m bench.load``
process from the repository root (the anchors under ``bench/.venv-anchors/bin/python``);
its JSON goes to ``bench/results/compare-<ts>/``, and the medians and tables to
``bench/results/compare-<ts>.json`` and ``.md``: the headline figures with the
coordsvc/etcd ratio and issue 17's targets, then CPU per operation of every system (the
server processes together, and the client process).

The lock rows use each system's lock as its users run it: for etcd the session lock (one
lease per client, ``concurrency.Mutex``); lock_1_lib is lock_1 with the python library's
own lock (etcd3: a lease per acquire), kept for comparison with earlier tables.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .report import BENCH_DIR, REPO_DIR, RESULTS_DIR
from .workload import TESTS

ANCHOR_PY = BENCH_DIR / ".venv-anchors" / "bin" / "python"
SYSTEMS = ("coordsvc", "etcd", "pysyncobj")
# (the figure the ratio is taken on, higher is better) per test
HEADLINE = {"seq_put": "ops_per_s", "put_tp": "ops_per_s", "lock_1": "cycles_per_s",
            "lock_1_lib": "cycles_per_s", "lock_8x1": "cycles_per_s", "lock_8x8": "cycles_per_s",
            "get_tp": "ops_per_s", "watch_fanout": "events_per_s"}
LABEL = {"lock_1": "lock_1 (etcd: session lock)", "lock_1_lib": "lock_1_lib (etcd3 lib lock)",
         "lock_8x1": "lock_8x1 (session lock)", "lock_8x8": "lock_8x8 (session lock)"}
# Issue 17's targets (the ratio is coordsvc / etcd in the same run).
TARGET = {"seq_put": "p50 ≤ 0.7 ms and ≥ 1.5×", "put_tp": "≥ 3×", "lock_1": "≥ 2×",
          "lock_8x8": "≥ 3×", "get_tp": "≥ 3×", "watch_fanout": "≥ 3×, 0 lost"}


def missing(system: str) -> str | None:
    """Why ``system`` cannot run here, or None."""
    if system == "coordsvc":
        return None
    if not ANCHOR_PY.exists():
        return "not installed (bench/.venv-anchors missing: run bench/anchors/install.sh)"
    mod = {"etcd": "etcd3", "pysyncobj": "pysyncobj"}[system]
    r = subprocess.run([str(ANCHOR_PY), "-c", f"import {mod}"], capture_output=True, timeout=60)
    if r.returncode != 0:
        return f"not installed (python package {mod} missing in bench/.venv-anchors)"
    if system == "etcd" and not (shutil.which("etcd") or Path("/usr/bin/etcd").exists()):
        return "not installed (no etcd binary: apt-get install etcd-server)"
    return None


def run_one(system: str, scale: float, out: Path, timeout_s: float) -> dict[str, Any] | None:
    py = sys.executable if system == "coordsvc" else str(ANCHOR_PY)
    cmd = [py, "-m", "bench.load", "--system", system, "--scale", str(scale),
           "--json", str(out)]
    print(f"$ {' '.join(cmd)}", flush=True)
    p = subprocess.Popen(cmd, cwd=REPO_DIR)
    try:
        rc = p.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"{system}: over {timeout_s:.0f} s, stopping it (pid {p.pid})", flush=True)
        p.send_signal(signal.SIGTERM)   # bench.load stops its nodes on SIGTERM
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        return None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if rc != 0 or not out.exists():
        print(f"{system}: exit {rc}", flush=True)
        return None
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def med(vals: list[Any]) -> float | None:
    xs = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(xs) if xs else None


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """test -> {figure: median over runs}, plus total CPU % and n/a reasons."""
    out: dict[str, dict[str, Any]] = {}
    for t in TESTS:
        rs = [r["tests"][t] for r in runs if t in r.get("tests", {})]
        if not rs:
            continue
        if all("na" in r for r in rs):
            out[t] = {"na": rs[0]["na"]}
            continue
        ok = [r for r in rs if "failed" not in r and "na" not in r]
        if not ok:
            out[t] = {"failed": rs[0].get("failed", "?")}
            continue
        keys = {k for r in ok for k, v in r.items() if isinstance(v, (int, float))}
        m: dict[str, Any] = {k: med([r.get(k) for r in ok]) for k in sorted(keys)}
        m["cpu_total_pct"] = med([sum(v for v in r["cpu_pct_of_one_core"].values() if v)
                                  for r in ok])
        m["client_cpu_us_per_op"] = med([(r.get("cpu_us_per_op") or {}).get("client")
                                         for r in ok])
        m["runs"] = len(ok)
        out[t] = m
    return out


def fmt(n: float | None, digits: int = 0) -> str:
    if n is None:
        return "–"
    return f"{n:,.{digits}f}"


def cell(t: str, m: dict[str, Any] | None, why: str | None) -> str:
    if why:
        return why
    if m is None:
        return "did not run"
    if "na" in m:
        return f"n/a ({m['na']})"
    if "failed" in m:
        return f"failed ({m['failed'][:60]})"
    v = fmt(m.get(HEADLINE[t]))
    if t == "seq_put":
        v += f" [{fmt(m.get('p50_ms'), 2)}]"
    elif t == "lock_8x1":
        v += f" ({fmt(m.get('per_client_min'))}–{fmt(m.get('per_client_max'))})"
    elif t == "watch_fanout":
        v += (f" [p99 {fmt(m.get('delivery_p99_ms'), 1)} ms, lost {fmt(m.get('lost'))}, "
              f"writes {fmt(m.get('write_rate'))}/s]")
    if m.get("errors"):
        v += f" ⚠{fmt(m['errors'])} err"
    return f"{v} · {fmt(m.get('cpu_total_pct'))}%"


def table(meds: dict[str, dict[str, dict[str, Any]]], why: dict[str, str | None]) -> str:
    head = ("| test | " + " | ".join(SYSTEMS) + " | coordsvc / etcd | target |\n"
            "|---|" + "---|" * (len(SYSTEMS) + 2) + "\n")
    rows = []
    for t in TESTS:
        cells = [cell(t, meds.get(s, {}).get(t) if s in meds else None, why.get(s))
                 for s in SYSTEMS]
        c, e = meds.get("coordsvc", {}).get(t, {}), meds.get("etcd", {}).get(t, {})
        a, b = c.get(HEADLINE[t]), e.get(HEADLINE[t])
        ratio = f"{a / b:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and b > 0 else "–"
        if t == "seq_put" and isinstance(c.get("p50_ms"), (int, float)):
            ratio += f" (p50 {c['p50_ms']:.2f} ms)"
        if t == "watch_fanout" and "lost" in c:
            ratio += f" (lost {fmt(c['lost'])})"
        rows.append(f"| {LABEL.get(t, t)} | " + " | ".join(cells)
                    + f" | {ratio} | {TARGET.get(t, '')} |")
    return head + "\n".join(rows) + "\n"


def cpu_table(meds: dict[str, dict[str, dict[str, Any]]], systems: list[str]) -> str:
    """Microseconds of CPU per operation: every server process together [the client]."""
    head = ("| test | " + " | ".join(systems) + " |\n|---|" + "---|" * len(systems) + "\n")
    rows = []
    for t in TESTS:
        cells = []
        for s in systems:
            m = meds.get(s, {}).get(t)
            if not m or "na" in m or "failed" in m:
                cells.append("–")
                continue
            cells.append(f"{fmt(m.get('server_cpu_us_per_op'))} [{fmt(m.get('client_cpu_us_per_op'))}]")
        rows.append(f"| {LABEL.get(t, t)} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare",
                                 description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    a = ap.parse_args()
    systems = [s for s in a.systems.split(",") if s]
    ts = time.strftime("%Y%m%d-%H%M%S")
    outdir = RESULTS_DIR / f"compare-{ts}"
    outdir.mkdir(parents=True, exist_ok=True)
    why = {s: missing(s) for s in SYSTEMS}
    for s in SYSTEMS:
        if s not in systems:
            why[s] = why[s] or "not selected"
    runnable = [s for s in systems if why[s] is None]
    for s, w in why.items():
        if w:
            print(f"{s}: {w}", flush=True)
    # a bound per run: the suite's own length plus cluster starts and drains
    timeout_s = 75 * a.scale + 300
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in runnable}
    t0 = time.monotonic()
    for r in range(a.rounds):
        order = runnable[r % max(1, len(runnable)):] + runnable[:r % max(1, len(runnable))]
        for s in order:
            print(f"\n== round {r + 1}/{a.rounds}: {s} ==", flush=True)
            doc = run_one(s, a.scale, outdir / f"{s}-r{r + 1}.json", timeout_s)
            if doc is not None:
                runs[s].append(doc)
    meds = {s: medians(rs) for s, rs in runs.items() if rs}
    for s in runnable:
        if not runs[s]:
            why[s] = "every run failed (see the log above)"
    md = table(meds, why)
    any_doc = next((d for rs in runs.values() for d in rs), {})
    mach = any_doc.get("machine", {})
    header = (f"Medians of {a.rounds} interleaved rounds, scale {a.scale} "
              f"({mach.get('cpus')} CPUs, {mach.get('cpu_model')}, Python {mach.get('python')}). "
              "Cells: headline figure · CPU of all processes (nodes + client) as % of one core.\n"
              "seq_put: ops/s [p50 ms]; put_tp, get_tp: ops/s; lock_*: cycles/s (lock_8x1: "
              "per-client min–max); watch_fanout: events delivered/s [delivery p99, lost].\n")
    foreign = {s: med([r["tests"][t].get("foreign_cpu_pct") for r in rs for t in TESTS
                       if t in r.get("tests", {})]) for s, rs in runs.items() if rs}
    header += ("CPU used by OTHER processes on the machine during the tests (median, % of one "
               "core): " + ", ".join(f"{s} {fmt(v)}%" for s, v in foreign.items())
               + (" — NOT a quiet machine: treat the figures as indicative.\n"
                  if any((v or 0) > 10 for v in foreign.values()) else "\n"))
    notes = "\n".join(f"- {s}: {rs[0].get('notes', '')}" for s, rs in runs.items() if rs)
    cpu = ("\nCPU per operation, µs (median over rounds): all server processes of the system "
           "together [the client process]. Operations are puts, gets, lock cycles, or "
           "(watch_fanout) events delivered. PySyncObj runs its load inside the leader, so its "
           "server figure includes the load and its client is idle.\n\n"
           + cpu_table(meds, [s for s in SYSTEMS if s in meds]))
    text = header + "\n" + md + cpu + "\n" + notes + "\n"
    print("\n" + text)
    summary = {"timestamp": ts, "rounds": a.rounds, "scale": a.scale, "machine": mach,
               "unavailable": {s: w for s, w in why.items() if w}, "medians": meds,
               "runs": {s: [str(outdir / f"{s}-r{i + 1}.json") for i in range(a.rounds)]
                        for s in runs}, "table_md": text,
               "total_s": round(time.monotonic() - t0, 1)}
    (RESULTS_DIR / f"compare-{ts}.json").write_text(json.dumps(summary, indent=1) + "\n")
    (RESULTS_DIR / f"compare-{ts}.md").write_text(text)
    print(f"results: bench/results/compare-{ts}.json (.md), runs in {outdir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
