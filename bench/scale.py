"""``make bench-scale``: how coordsvc's cost grows with load and with state (issue 17, item 3).

    .venv/bin/python -m bench.scale                   # every sweep over its full range
    .venv/bin/python -m bench.scale --quick           # every sweep over a small range
    .venv/bin/python -m bench.scale --sweeps keys,locks [--quick] [--points N] [--out DIR]
    .venv/bin/python -m bench.scale --replot          # scale.md and the PNGs from scale.json

Sweeps (each on fresh clusters of 3 nodes on 127.0.0.1, secure like ``cluster init``,
started with the project's launcher and stopped by PID):

- clients: 1..256 clients, each its own ``Client`` and thread, putting 64-byte values to
  1,000 keys: ops/s, p50/p99, CPU per op.
- values: 64 B..1 MiB values, 4 threads sharing one client, 16 keys per size: ops/s, MiB/s,
  p50/p99, node RSS.
- keys: 10k..1M keys of 64 B stored (loaded by 64 threads on one client): RSS per node,
  database size, the write stall while the leader takes a snapshot (a sequential writer's
  slowest put around the snapshot, less its median), and the restart of a follower
  (SIGTERM, start: seconds until it answers, and until it has applied what was committed
  before it stopped).
- watchers: 1..1,000 watchers of one prefix (spread over at most 100 clients), one writer
  at 100 puts/s: events delivered/s, delivery p50/p99, lost events, CPU per event.
- locks: 0..10,000 held locks, each kept alive by the client library (ttl 10 s: a keepalive
  per lock every 3.3 s) from holder processes (``bench.holders``): CPU of the leader, the
  followers and the holders over an idle interval.
- nodes: 3 vs 5 nodes: seq_put, put_tp and get_tp of the issue-7 workload.

Targets (printed beside the figures, never asserted): 1M keys of 64 B under 600 MB RSS per
node; a node with 1M keys restarts in under 10 s; 10,000 held locks cost the leader under
20 % of a core at idle.

Output, names stable so the README can link them: ``<out>/scale.json`` (every sweep's
points; git ignores it), ``<out>/scale.md`` (the summary) and ``<out>/scale-<sweep>.png``
(matplotlib; skipped with a note if it is not installed), ``<out>`` defaulting to
``bench/results``. A run of some sweeps replaces those sweeps in ``scale.json`` and keeps
the others, each labelled with its own mode, time, commit and how busy the machine was.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from coordsvc import Client
from coordsvc.runtime import launch

from .coord import CoordConn, CoordSystem
from .measure import CLIENT, CpuMeter, cpu_seconds, rss_mb
from .report import REPO_DIR, RESULTS_DIR, code_version, machine_info
from .scale_report import write_outputs
from .workload import FULL, Workers, run_suite, t_watch_fanout, value_now

SWEEPS = ("clients", "values", "keys", "watchers", "locks", "nodes")
MAX_WATCH_CLIENTS = 100
HOLDER_MAX_LOCKS = 2000      # locks per holder process (bench.holders: 100 per client)
LOCK_TTL_S = 10.0            # bench.holders.TTL_S
LOCK_GRANTS_PER_S = 250.0    # all holders together (see bench.holders on bursts)
Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one mode measures."""

    mode: str
    clients: tuple[int, ...]
    values: tuple[int, ...]
    keys: tuple[int, ...]
    watchers: tuple[int, ...]
    locks: tuple[int, ...]
    point_s: float                 # load per point of the clients and values sweeps
    watch_s: float                 # writer time per point of the watchers sweep
    watch_rate: float              # the writer's puts/s
    idle_s: float                  # the locks sweep's idle interval (a multiple of ttl/3)
    warmup_s: float                # from the last grant to the idle interval (see sweep_locks)
    snapshot_every: int | None     # [tuning] of the keys cluster; None: the default
    probe_s: float                 # how long the keys sweep waits for one snapshot
    nodes_scale: float             # the nodes sweep's workload durations (Params.scaled)

    def first(self, n: int | None) -> Plan:
        """The same plan with at most ``n`` points per sweep (smallest first)."""
        if n is None:
            return self
        return replace(self, clients=self.clients[:n], values=self.values[:n],
                       keys=self.keys[:n], watchers=self.watchers[:n], locks=self.locks[:n])


FULL_PLAN = Plan(
    mode="full", clients=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    values=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
    keys=(10_000, 100_000, 300_000, 1_000_000), watchers=(1, 10, 100, 1000),
    locks=(0, 1, 10, 100, 1000, 10_000), point_s=5.0, watch_s=10.0, watch_rate=100.0,
    idle_s=3 * LOCK_TTL_S / 3, warmup_s=2 * LOCK_TTL_S / 3 + 2.0, snapshot_every=None, probe_s=60.0, nodes_scale=0.5)
# Seconds per point: the machinery of every sweep, not a measurement worth plotting.
QUICK_PLAN = Plan(
    mode="quick", clients=(1, 4, 16), values=(64, 4096, 65536), keys=(1000, 5000),
    watchers=(1, 10, 50), locks=(0, 10, 100), point_s=1.0, watch_s=1.0, watch_rate=100.0,
    idle_s=LOCK_TTL_S / 3, warmup_s=LOCK_TTL_S / 3 + 0.5, snapshot_every=500, probe_s=10.0, nodes_scale=0.05)


# -- clients and values --------------------------------------------------------------------

def _timed_puts(sysm: CoordSystem, conns: list[CoordConn], threads: int, duration_s: float,
                key: Callable[[random.Random], str], value: Callable[[], bytes]) -> dict[str, Any]:
    """``threads`` threads (thread i on ``conns[i % len(conns)]``) putting for ``duration_s``:
    the Workers figures and CPU per op of every process."""
    rngs = [random.Random(i) for i in range(threads)]
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        conn, k = conns[i % len(conns)], key(rngs[i])
        w.timed(st, lambda: conn.put(k, value()))

    meter = CpuMeter(sysm.pids())
    w = Workers(threads, duration_s, body, meter)
    res = w.run()
    res.update(meter.result(res["ops"]))
    return res


def _keys_of(prefix: str, n: int) -> Callable[[random.Random], str]:
    return lambda rng: f"{prefix}{rng.randrange(n)}"


def _always(value: bytes) -> Callable[[], bytes]:
    return lambda: value


def sweep_clients(plan: Plan, log: Log) -> list[dict[str, Any]]:
    sysm = CoordSystem()
    points = []
    try:
        for n in plan.clients:
            conns = [sysm.connect() for _ in range(n)]
            try:
                for c in conns:   # connect (and the CURVE handshake) outside the window
                    c.put("warm", b"1")
                res = _timed_puts(sysm, conns, n, plan.point_s, _keys_of("c/", 1000), value_now)
            finally:
                for c in conns:
                    c.close()
            points.append({"clients": n, **res})
            log(f"  clients {n:>4}: {res['ops_per_s']:>8} ops/s  p50 {res['p50_ms']} ms  "
                f"p99 {res['p99_ms']} ms  {_cpu_op(res)}")
    finally:
        sysm.close()
    return points


def sweep_values(plan: Plan, log: Log) -> list[dict[str, Any]]:
    sysm = CoordSystem()
    points = []
    try:
        for size in plan.values:
            conn = sysm.connect()
            blob = os.urandom(size)
            try:
                conn.put(f"v/{size}/warm", blob)
                res = _timed_puts(sysm, [conn], 4, plan.point_s, _keys_of(f"v/{size}/", 16),
                                  _always(blob))
            finally:
                conn.close()
            res["mib_per_s"] = round(res["ops_per_s"] * size / 2**20, 2)
            res["rss_mb"] = _node_rss(sysm)
            points.append({"value_bytes": size, **res})
            log(f"  value {size:>8} B: {res['ops_per_s']:>8} ops/s  {res['mib_per_s']} MiB/s  "
                f"p99 {res['p99_ms']} ms  {_cpu_op(res)}")
    finally:
        sysm.close()
    return points


# -- stored keys: memory, snapshots, restart -----------------------------------------------

def sweep_keys(plan: Plan, log: Log) -> list[dict[str, Any]]:
    tuning = {"snapshot_every": plan.snapshot_every} if plan.snapshot_every else None
    # the default quota is 1,000,000 keys; leave room for the probe's keys
    sysm = CoordSystem(tuning=tuning, limits={"max_keys": 2 * max(plan.keys) + 10_000})
    points = []
    loaded = 0
    try:
        for n in plan.keys:
            meter = CpuMeter(sysm.pids())
            load_s, retries = _load_keys(sysm, loaded, n)
            meter.end()
            added, loaded = n - loaded, n
            status = _wait_applied(sysm, 60.0)
            point: dict[str, Any] = {
                "keys": n, "load_s": round(load_s, 1),
                "load_puts_per_s": round(added / max(load_s, 1e-9), 1),
                "load_retries": retries, "rss_mb": _node_rss(sysm),
                "db_mb": {nd["id"]: round((nd.get("db_bytes") or 0) / 2**20, 1)
                          for nd in status.get("nodes", [])},
                "keys_on_leader": next((nd.get("keys") for nd in status.get("nodes", [])
                                        if nd.get("role") == "leader"), None),
                "foreign_cpu_pct": meter.result(None)["foreign_cpu_pct"],
            }
            point.update(_snapshot_stall(sysm, plan.probe_s))
            point.update(_restart_follower(sysm, 120.0))
            points.append(point)
            rss = " ".join(f"{k}={v:.0f}" for k, v in point["rss_mb"].items() if v is not None)
            log(f"  keys {n:>8}: RSS MiB {rss}  snapshot stall {point['snapshot_stall_ms']} ms  "
                f"restart: serving {point['restart_serving_s']} s, caught up "
                f"{point['restart_caught_up_s']} s")
    finally:
        sysm.close()
    return points


def _load_keys(sysm: CoordSystem, start: int, end: int, threads: int = 64) -> tuple[float, int]:
    """Put keys ``start``..``end - 1`` (64-byte values) with many threads on one client."""
    todo = iter(range(start, end))
    mu = threading.Lock()
    retries = [0]
    value = b"v" * 64
    with sysm.client(timeout_s=30.0) as c:
        def writer() -> None:
            while True:
                with mu:
                    i = next(todo, None)
                if i is None:
                    return
                for _ in range(10):
                    try:
                        c.put(f"k/{i:07d}", value)
                        break
                    except Exception:
                        retries[0] += 1
                        time.sleep(0.05)

        t0 = time.monotonic()
        ts = [threading.Thread(target=writer, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.monotonic() - t0, retries[0]


def _wait_applied(sysm: CoordSystem, limit_s: float) -> dict[str, Any]:
    """``status`` once every node has applied the leader's commit index (or at the limit)."""
    deadline = time.monotonic() + limit_s
    with sysm.client() as c:
        while True:
            st: dict[str, Any] = c.status()
            nodes = st.get("nodes", [])
            commit = max((nd.get("commit_index") or 0) for nd in nodes)
            if all((nd.get("applied_index") or -1) >= commit for nd in nodes) \
                    or time.monotonic() > deadline:
                return st
            time.sleep(0.2)


def _snapshot_index(c: Client, node_id: str) -> int | None:
    for nd in c.status().get("nodes", []):
        if nd.get("id") == node_id:
            v = nd.get("snapshot_index")
            return v if isinstance(v, int) else None
    return None


def _snapshot_stall(sysm: CoordSystem, limit_s: float) -> dict[str, Any]:
    """A sequential writer until the leader's next snapshot: the slowest put in the batch
    of puts during which the snapshot was taken, less the median put (the loop is busy
    with the snapshot meanwhile)."""
    leader = sysm.leader()
    batch = 25
    with sysm.client() as c:
        assert leader is not None
        first = _snapshot_index(c, leader)
        lat: list[float] = []
        window: list[float] = []
        deadline = time.monotonic() + limit_s
        i = 0
        while time.monotonic() < deadline:
            window = []
            for _ in range(batch):
                t = time.perf_counter()
                c.put(f"probe/{i % 100}", b"p" * 64)
                window.append(time.perf_counter() - t)
                i += 1
            lat += window
            if _snapshot_index(c, leader) != first:
                break
        else:
            return {"snapshot_stall_ms": None, "snapshot_probe_puts": i}
    med = statistics.median(lat)
    return {"snapshot_stall_ms": round(1000 * (max(window) - med), 1),
            "snapshot_probe_puts": i, "probe_put_p50_ms": round(1000 * med, 3)}


def _restart_follower(sysm: CoordSystem, limit_s: float) -> dict[str, Any]:
    """Stop a follower (SIGTERM), start it again: seconds from its start until it answers
    ``status`` and until it has applied the commit index the leader had before the stop."""
    leader = sysm.leader()
    follower = next(n for n in sysm.cluster.ids if n != leader)
    with sysm.client() as c:
        commit = max((nd.get("commit_index") or 0) for nd in c.status().get("nodes", []))
    sysm.stop(follower)
    spec = sysm.cluster.node(follower)
    t0 = time.monotonic()
    sysm.start(follower)
    serving = caught_up = None
    with Client([spec.address], timeout=0.5, key=sysm.cluster.admin_key_file) as one:
        while time.monotonic() - t0 < limit_s:
            nd: dict[str, Any] = next(iter(one.status().get("nodes", [])), {})
            if nd.get("reachable"):
                serving = serving or time.monotonic() - t0
                if (nd.get("applied_index") or -1) >= commit:
                    caught_up = time.monotonic() - t0
                    break
            time.sleep(0.05)
    pid = sysm.node_pids()[follower]
    return {"restart_node": follower, "restart_serving_s": _r(serving, 2),
            "restart_caught_up_s": _r(caught_up, 2), "restart_rss_mb": _r(rss_mb(pid), 1)}


# -- watchers ------------------------------------------------------------------------------

def sweep_watchers(plan: Plan, log: Log) -> list[dict[str, Any]]:
    sysm = CoordSystem()
    points = []
    try:
        for n in plan.watchers:
            p = replace(FULL, watchers=n, watch_conns=min(n, MAX_WATCH_CLIENTS),
                        watch_rate=plan.watch_rate, watch_s=plan.watch_s)
            meter = CpuMeter(sysm.pids())
            res = t_watch_fanout(sysm, p, meter)
            res.update(meter.result(res.get("delivered") or None))
            points.append(res)
            log(f"  watchers {n:>5} on {res['watch_conns']} clients: {res['events_per_s']:>9} ev/s  "
                f"p99 {res['delivery_p99_ms']} ms  lost {res['lost']}  {_cpu_op(res, 'ev')}")
    finally:
        sysm.close()
    return points


# -- held locks ----------------------------------------------------------------------------

def sweep_locks(plan: Plan, log: Log) -> list[dict[str, Any]]:
    sysm = CoordSystem()
    holders: list[launch.Proc] = []
    tmp = Path(tempfile.mkdtemp(prefix="coordbench-holders-"))
    points = []
    ok = False
    try:
        held = 0
        for n in sorted(plan.locks):
            t0 = time.monotonic()
            adding = n - held
            while held < n:   # the grant rate shared in proportion, so all finish together
                batch = min(HOLDER_MAX_LOCKS, n - held)
                holders.append(_start_holder(sysm, tmp, len(holders), held, batch,
                                             LOCK_GRANTS_PER_S * batch / adding))
                held += batch
            errors = _wait_holders(tmp, len(holders), limit_s=120 + n / 10)
            acquire_s = time.monotonic() - t0
            # A lock's first keepalive, ttl/3 after its grant, starts its keepalive thread and
            # connects that thread's socket (a CURVE handshake with the leader): thousands
            # at once take a while on 2 cores. The idle interval starts after them.
            if n:
                time.sleep(plan.warmup_s)
            leader = sysm.leader()
            node_pids = sysm.node_pids()
            pids = {**{f"{k} (leader)" if k == leader else k: v for k, v in node_pids.items()},
                    **{f"holder{i}": p.pid for i, p in enumerate(holders)}}
            meter = CpuMeter(pids)
            time.sleep(plan.idle_s)
            r = meter.result(None)
            time.sleep(1.1)   # the holders' lost counts are a second old at most
            lost = _holders_lost(tmp, len(holders))
            pct = r["cpu_pct_of_one_core"]
            lead = next(v for k, v in pct.items() if k.endswith("(leader)"))
            followers = [v for k, v in pct.items() if k in node_pids and k != leader]
            point = {"held_locks": n, "acquire_s": round(acquire_s, 1), "acquire_errors": errors,
                     "lost_locks": lost,
                     "leader_cpu_pct": lead,
                     "follower_cpu_pct": max(followers) if followers else None,
                     "holders_cpu_pct": round(sum(v or 0 for k, v in pct.items()
                                                  if k.startswith("holder")), 1),
                     "holder_processes": len(holders), "idle_s": plan.idle_s,
                     "leader_rss_mb": _r(rss_mb(node_pids[leader]) if leader in node_pids
                                         else None, 1),
                     **r}
            points.append(point)
            log(f"  locks {n:>6}: leader {lead}% of a core, follower {point['follower_cpu_pct']}%, "
                f"holders {point['holders_cpu_pct']}% over {plan.idle_s:.1f} s idle"
                + (f"  ({lost} LOCKS LOST: keepalives failed)" if lost else ""))
        ok = True
    finally:
        launch.stop(holders)
        sysm.close()
        if ok:   # else the holders' logs stay for the report
            shutil.rmtree(tmp, ignore_errors=True)
    return points


def _start_holder(sysm: CoordSystem, tmp: Path, i: int, first: int, n: int,
                  rate: float) -> launch.Proc:
    return launch.start([sys.executable, "-m", "bench.holders", "--cluster", str(sysm.file),
                         "--prefix", "held/", "--first", str(first), "--locks", str(n),
                         "--rate", str(rate), "--ready", str(tmp / f"holder{i}.ready")],
                        tmp / f"holder{i}.log", cwd=REPO_DIR)


def _wait_holders(tmp: Path, count: int, limit_s: float) -> int:
    """Until every holder has written its ready file; their acquire errors in all."""
    deadline = time.monotonic() + limit_s
    while True:
        ready = [tmp / f"holder{i}.ready" for i in range(count)]
        if all(p.exists() for p in ready):
            return sum(int(json.loads(p.read_text())["errors"]) for p in ready)
        if time.monotonic() > deadline:
            raise RuntimeError(f"holders not ready within {limit_s:.0f} s (logs in {tmp})")
        time.sleep(0.2)


def _holders_lost(tmp: Path, count: int) -> int | None:
    """How many of the holders' locks have been lost (failed keepalives), as they last said."""
    files = [tmp / f"holder{i}.ready.lost" for i in range(count)]
    if not all(p.exists() for p in files):
        return None
    return sum(int(json.loads(p.read_text())["lost"]) for p in files)


# -- 3 vs 5 nodes --------------------------------------------------------------------------

def sweep_nodes(plan: Plan, log: Log) -> list[dict[str, Any]]:
    points = []
    p = FULL.scaled(plan.nodes_scale)
    for n in (3, 5):
        sysm = CoordSystem(nodes=n)
        try:
            log(f"  {n} nodes:")
            res = run_suite(sysm, p, ["seq_put", "put_tp", "get_tp"],
                            log=lambda s: log("  " + s))
        finally:
            sysm.close()
        points.append({"nodes": n, "tests": res})
    return points


# -- helpers and main ----------------------------------------------------------------------

def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _node_rss(sysm: CoordSystem) -> dict[str, float | None]:
    return {k: _r(rss_mb(p), 1) for k, p in sorted(sysm.node_pids().items())}


def _cpu_op(r: dict[str, Any], per: str = "op") -> str:
    v = r.get("server_cpu_us_per_op")
    cl = (r.get("cpu_us_per_op") or {}).get(CLIENT)
    return (f"servers {v:.0f} µs CPU/{per} (client {cl:.0f})" if v is not None and cl is not None
            else "")


RUNNERS: dict[str, Callable[[Plan, Log], list[dict[str, Any]]]] = {
    "clients": sweep_clients, "values": sweep_values, "keys": sweep_keys,
    "watchers": sweep_watchers, "locks": sweep_locks, "nodes": sweep_nodes,
}


def foreign_pct(points: list[dict[str, Any]]) -> float | None:
    """The median CPU other processes used during a sweep's measurements (% of a core)."""
    vals = [p["foreign_cpu_pct"] for p in points if isinstance(p.get("foreign_cpu_pct"), (int, float))]
    vals += [t["foreign_cpu_pct"] for p in points for t in (p.get("tests") or {}).values()
             if isinstance(t.get("foreign_cpu_pct"), (int, float))]
    return round(statistics.median(vals), 1) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale",
                                 description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="small ranges: seconds per sweep")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated of {','.join(SWEEPS)}")
    ap.add_argument("--points", type=int, help="at most this many points per sweep (smallest first)")
    ap.add_argument("--replot", action="store_true",
                    help="measure nothing: write scale.md and the plots from scale.json")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR,
                    help="where scale.json, scale.md and scale-*.png go (default bench/results)")
    a = ap.parse_args(argv)
    sweeps = [s for s in a.sweeps.split(",") if s]
    bad = [s for s in sweeps if s not in RUNNERS]
    if bad:
        ap.error(f"unknown sweeps {bad}; known: {', '.join(SWEEPS)}")
    plan = (QUICK_PLAN if a.quick else FULL_PLAN).first(a.points)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so `finally` stops nodes
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "scale.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("sweeps", {})
    failed = []
    for name in [] if a.replot else sweeps:
        print(f"== {name} ({plan.mode})", flush=True)
        t0 = time.monotonic()
        busy0 = cpu_seconds(os.getpid())
        try:
            points = RUNNERS[name](plan, lambda s: print(s, flush=True))
        except Exception as e:   # one broken sweep must not cost the others
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            failed.append(name)
            continue
        doc["sweeps"][name] = {
            "points": points,
            "meta": {"mode": plan.mode, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "seconds": round(time.monotonic() - t0, 1), "code": code_version(),
                     "machine": machine_info(), "foreign_cpu_pct": foreign_pct(points),
                     "bench_cpu_s": _r((cpu_seconds(os.getpid()) or 0) - (busy0 or 0), 1),
                     "plan": asdict(plan)},
        }
        path.write_text(json.dumps(doc, indent=1) + "\n")   # after each sweep: keep what we have
    written = write_outputs(doc, a.out)
    for p in written:
        print(f"wrote {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
