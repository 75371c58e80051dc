"""Where one sequential operation's time goes: the floors, then the cluster's ops.

    .venv/bin/python -m bench.breakdown [--ops 2000] [--insecure]

Floors, measured here with no cluster: one SQLite WAL commit of a 64-byte row with the
node's pragmas (``synchronous=FULL``) in the directory the cluster's data goes to, and one
ZeroMQ DEALER -> ROUTER -> DEALER round trip over loopback TCP, plain and CURVE; each with
the CPU it costs (this process's, its ZeroMQ I/O thread and the kernel's work included).

Then a fresh 3-node cluster (secure unless ``--insecure``), one ``Client``, each op run
sequentially ``--ops`` times after a warm-up, interleaved in batches of 100 so that noise
hits every op alike:

- ``get stale``: answered by the node the client talks to from its own state (one client
  round trip and the node's request handling, no consensus);
- ``get``: linearizable (a read index confirmed by a quorum's heartbeat acks);
- ``put``: one replicated, fsynced write;
- ``lock cycle``: acquire and release (two replicated writes).

Prints p50/p99 per op, the CPU each node spent per put, and the put's p50 split into the
client round trip (``get stale``) and the rest (replication: the leader's Accept to a
follower, both fsyncs overlapping, the Accepted back, applying). Writes
``bench/results/breakdown-<ts>.json`` and the printed lines as ``.txt``.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from .coord import CoordSystem
from .measure import cpu_seconds, latency_fields
from .report import RESULTS_DIR

VALUE = b"x" * 64


def _summary(lat_s: list[float], cpu_s: float | None = None) -> dict[str, float | None]:
    """``latency_fields`` of ``lat_s``; with ``cpu_s`` (this process's CPU over them, its
    threads' and the kernel's for it included) also the CPU per op."""
    out: dict[str, float | None] = latency_fields(lat_s)
    if cpu_s is not None:
        out["cpu_us"] = round(cpu_s / len(lat_s) * 1e6, 1)
    return out


def sqlite_commit(directory: Path, n: int) -> dict[str, float | None]:
    with tempfile.TemporaryDirectory(dir=directory) as d:
        conn = sqlite3.connect(Path(d) / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (slot INTEGER PRIMARY KEY, value BLOB)")
        lat = []
        cpu = time.process_time()
        for i in range(n):
            t = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (?, ?)", (i, VALUE))
            conn.execute("COMMIT")
            lat.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu
        conn.close()
    return _summary(lat, cpu)


def zmq_round_trip(n: int, curve: bool) -> dict[str, float | None]:
    ctx = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        if curve:
            spub, ssec = zmq.curve_keypair()
            cpub, csec = zmq.curve_keypair()
            server.curve_server = True
            server.curve_secretkey = ssec
            client.curve_serverkey = spub
            client.curve_publickey = cpub
            client.curve_secretkey = csec
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        lat = []
        for i in range(n + 100):
            if i == 100:
                cpu = time.process_time()
            t = time.perf_counter()
            client.send(VALUE)
            route, body = server.recv_multipart()
            server.send_multipart([route, body])
            client.recv()
            if i >= 100:
                lat.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu
    finally:
        server.close(0)
        client.close(0)
        ctx.term()
    return _summary(lat, cpu)


def cluster_ops(sysm: CoordSystem, n: int) -> tuple[dict[str, dict[str, float | None]], dict[str, float]]:
    c = sysm.client()
    try:
        c.put("bd/k", VALUE)

        def lock_cycle(i: int) -> None:
            c.acquire("bd/lock", ttl=10.0, timeout=5.0).release()

        ops: dict[str, Callable[[int], object]] = {
            "get stale": lambda i: c.get("bd/k", stale=True),
            "get": lambda i: c.get("bd/k"),
            "put": lambda i: c.put(f"bd/{i % 1000}", VALUE),
            "lock cycle": lock_cycle,
        }
        for op in ops.values():          # warm-up: connections, caches, the JIT-less paths
            for i in range(200):
                op(i)
        lat: dict[str, list[float]] = {name: [] for name in ops}
        put_cpu = dict.fromkeys(sysm.node_pids(), 0.0)
        for start in range(0, n, 100):
            for name, op in ops.items():
                if name == "put":
                    before = {nid: cpu_seconds(pid) or 0.0 for nid, pid in sysm.node_pids().items()}
                for i in range(start, min(n, start + 100)):
                    t = time.perf_counter()
                    op(i)
                    lat[name].append(time.perf_counter() - t)
                if name == "put":
                    for nid, pid in sysm.node_pids().items():
                        put_cpu[nid] += (cpu_seconds(pid) or 0.0) - before[nid]
    finally:
        c.close()
    return ({name: _summary(v) for name, v in lat.items()},
            {nid: round(s / n * 1e6, 1) for nid, s in put_cpu.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--insecure", action="store_true")
    a = ap.parse_args()
    floors = {"sqlite commit (WAL, FULL)": sqlite_commit(Path(tempfile.gettempdir()), a.ops),
              "zmq round trip": zmq_round_trip(a.ops, curve=False),
              "zmq round trip, CURVE": zmq_round_trip(a.ops, curve=True)}
    sysm = CoordSystem(insecure=a.insecure)
    try:
        leader = sysm.leader()
        ops, cpu = cluster_ops(sysm, a.ops)
    finally:
        sysm.close()
    lines = [f"floors ({a.ops} each):"]
    lines += [f"  {name:28s} p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  "
              f"CPU {s['cpu_us']} µs" for name, s in floors.items()]
    lines.append(f"3 nodes, {'insecure' if a.insecure else 'CURVE'}, one client, "
                 f"{a.ops} sequential ops each:")
    lines += [f"  {name:28s} p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms"
              for name, s in ops.items()]
    lines.append("  CPU per put, µs: " + ", ".join(
        f"{nid}{' (leader)' if nid == leader else ''} {us}" for nid, us in sorted(cpu.items())))
    put, rt = ops["put"]["p50_ms"], ops["get stale"]["p50_ms"]
    if put is not None and rt is not None:
        lines.append(f"  put p50 {put:.3f} ms = client round trip {rt:.3f} ms + "
                     f"replication {put - rt:.3f} ms")
    print("\n".join(lines))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"breakdown-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"floors": floors, "ops": ops, "put_cpu_us": cpu, "leader": leader,
                               "secure": not a.insecure}, indent=1) + "\n")
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"written: {out} (.txt: the lines above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
