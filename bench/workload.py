"""The workload of issue 7, written once against ``systems.System``/``Conn``/``WatchStream``.

Who shares what: where the table says "client threads" or "threads" (put_tp, get_tp) the
threads share ONE ``Conn``; where it says "clients" (seq_put, lock_1, lock_8x1, lock_8x8)
each has its own ``Conn``. watch_fanout: the writer has its own ``Conn``; the 50 watchers
share one ``Conn``, one watch stream and one thread each. lock_1_lib is lock_1 with the
client library's own one-call lock where that differs (etcd3: a lease per acquire).

``run_suite`` runs tests against a system and measures the CPU of every process of it
over each test's measured window (``measure.CpuMeter``: tests narrow the window to their
timed part), so the result carries CPU per operation. Every test has a hard wall-clock
bound. Standard library only: the anchors run this inside their own virtualenv (PySyncObj
even inside its leader process).
"""
from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .measure import CpuMeter, latency_fields, rss_mb
from .systems import System, WatchStream

VALUE_BYTES = 64
KEYS = 1000
TESTS = ("seq_put", "put_tp", "lock_1", "lock_1_lib", "lock_8x1", "lock_8x8", "get_tp",
         "watch_fanout")
# Issue 11's large-value row, run on request (``--tests large``): values at and below the
# 1 MiB limit, and one list answer of 100 MiB, with throughput and peak RSS per node.
LARGE_TESTS = ("put_64k", "put_1m", "list_100m")
# After the watch writer stops: an event still missing after WATCH_DRAIN_S is "late"; the
# drain goes on while deliveries progress (stall WATCH_STALL_S), up to WATCH_DRAIN_MAX_S.
WATCH_DRAIN_S = 5.0
WATCH_STALL_S = 3.0
WATCH_DRAIN_MAX_S = 60.0
# A worker still busy this long after its test's deadline is abandoned (counted as stuck).
JOIN_GRACE_S = 15.0


# -- parameters -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    seq_ops: int = 2000
    seq_warmup: int = 20
    put_threads: int = 16
    put_s: float = 10.0
    lock_1_s: float = 5.0
    lock_clients: int = 8
    lock_s: float = 5.0
    get_threads: int = 16
    get_s: float = 10.0
    watchers: int = 50
    watch_conns: int = 1          # the watchers share this many Conns (round robin)
    watch_rate: float = 500.0
    watch_s: float = 10.0
    large_threads: int = 4
    large_s: float = 10.0
    list_mib: int = 100
    list_rounds: int = 3

    def scaled(self, f: float) -> Params:
        return replace(self, seq_ops=max(50, int(self.seq_ops * f)), put_s=self.put_s * f,
                       lock_1_s=self.lock_1_s * f, lock_s=self.lock_s * f,
                       get_s=self.get_s * f, watch_s=self.watch_s * f, large_s=self.large_s * f)


FULL = Params()
# ~2 s of load in all (plus cluster start); every code path, every thread count.
SMOKE = replace(FULL, seq_ops=40, seq_warmup=5, put_s=0.3, lock_1_s=0.2, lock_s=0.3,
                get_s=0.3, watch_s=0.5, large_s=0.3, list_mib=4, list_rounds=1)


def value_now() -> bytes:
    """64 bytes whose head is the send time (perf_counter_ns, same process as the reader)."""
    return str(time.perf_counter_ns()).encode().ljust(VALUE_BYTES, b".")


def sent_ns(value: bytes) -> int | None:
    try:
        return int(value[:VALUE_BYTES].split(b".", 1)[0])
    except ValueError:
        return None


class Workers:
    """N threads looping ``body(i, stats)`` until a deadline, with per-thread stats; the
    CPU window of ``meter`` is the run's, from the start signal to the last join."""

    def __init__(self, n: int, duration_s: float, body: Callable[[int, dict[str, Any]], None],
                 meter: CpuMeter | None = None):
        self.n, self.duration_s, self.body, self.meter = n, duration_s, body, meter
        self.stats: list[dict[str, Any]] = [{"ops": 0, "errors": 0, "lat": [], "first_error": None}
                                            for _ in range(n)]

    def run(self) -> dict[str, Any]:
        start_evt = threading.Event()
        self.deadline = 0.0

        def loop(i: int) -> None:
            st = self.stats[i]
            start_evt.wait()
            while time.monotonic() < self.deadline:
                try:
                    self.body(i, st)
                except Exception as e:  # counted; a failing system must not hang the bench
                    st["errors"] += 1
                    if st["first_error"] is None:
                        st["first_error"] = f"{type(e).__name__}: {e}"[:300]
                    time.sleep(0.01)

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(self.n)]
        for t in threads:
            t.start()
        if self.meter is not None:
            self.meter.begin()
        t0 = time.monotonic()
        self.deadline = t0 + self.duration_s
        start_evt.set()
        for t in threads:
            t.join(max(0.0, self.deadline + JOIN_GRACE_S - time.monotonic()))
        wall = time.monotonic() - t0
        if self.meter is not None:
            self.meter.end()
        stuck = sum(t.is_alive() for t in threads)
        lat = [x for st in self.stats for x in st["lat"]]
        ops = sum(st["ops"] for st in self.stats)
        errs = [st["first_error"] for st in self.stats if st["first_error"]]
        return {"ops": ops, "ops_per_s": round(ops / self.duration_s, 1),
                "errors": sum(st["errors"] for st in self.stats),
                "first_error": errs[0] if errs else None, "stuck_threads": stuck,
                "wall_s": round(wall, 3), **latency_fields(lat)}

    def timed(self, st: dict[str, Any], fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        r = fn()
        if time.monotonic() < self.deadline:   # only ops that finished inside the window
            st["lat"].append(time.perf_counter() - t)
            st["ops"] += 1
        return r


# -- the workload ---------------------------------------------------------------------------

def t_seq_put(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """1 client, sequential puts of 64-byte values to k0..k999 round robin, after warm-up."""
    c = sysm.connect()
    try:
        for i in range(p.seq_warmup):
            c.put(f"k{i % KEYS}", value_now())
        lat = []
        meter.begin()
        t0 = time.perf_counter()
        for i in range(p.seq_ops):
            t = time.perf_counter()
            c.put(f"k{i % KEYS}", value_now())
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        meter.end()
    finally:
        c.close()
    return {"ops": p.seq_ops, "ops_per_s": round(p.seq_ops / wall, 1), "errors": 0,
            "wall_s": round(wall, 3), **latency_fields(lat)}


def t_put_tp(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """16 client threads sharing one client, random keys of 1,000, 64-byte values."""
    c = sysm.connect()
    rngs = [random.Random(i) for i in range(p.put_threads)]
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        key = f"k{rngs[i].randrange(KEYS)}"
        w.timed(st, lambda: c.put(key, value_now()))

    w = Workers(p.put_threads, p.put_s, body, meter)
    try:
        return w.run()
    finally:
        c.close()


def _lock_test(sysm: System, clients: int, same_lock: bool, duration_s: float, meter: CpuMeter,
               library: bool = False) -> dict[str, Any]:
    conns = [sysm.connect() for _ in range(clients)]
    tag = f"{random.getrandbits(32):08x}"
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        c = conns[i]
        acquire, release = ((c.library_lock_acquire, c.library_lock_release) if library
                            else (c.lock_acquire, c.lock_release))
        name = f"L{tag}" if same_lock else f"L{tag}-{i}"
        t = time.perf_counter()
        h = acquire(name, max(0.05, w.deadline - time.monotonic()) + 1.0)
        if h is None:
            return   # timed out at the end of the window: not a cycle, not an error
        release(h)
        if time.monotonic() < w.deadline:
            st["ops"] += 1
            st["lat"].append(time.perf_counter() - t)

    w = Workers(clients, duration_s, body, meter)
    try:
        res = w.run()
    finally:
        for c in conns:
            c.close()
    per = [st["ops"] / duration_s for st in w.stats]
    res["cycles_per_s"] = res.pop("ops_per_s")
    res["per_client_min"] = round(min(per), 1)
    res["per_client_max"] = round(max(per), 1)
    return res


def t_lock_1(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """1 client, acquire + release cycles on one lock."""
    return _lock_test(sysm, 1, True, p.lock_1_s, meter)


def t_lock_1_lib(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """lock_1 with the client library's own lock (etcd3: a lease per acquire)."""
    return _lock_test(sysm, 1, True, p.lock_1_s, meter, library=True)


def t_lock_8x1(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """8 clients contending on one lock (total cycles/s; per-client min/max for fairness)."""
    return _lock_test(sysm, p.lock_clients, True, p.lock_s, meter)


def t_lock_8x8(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """8 clients, each on its own lock."""
    return _lock_test(sysm, p.lock_clients, False, p.lock_s, meter)


def t_get_tp(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """16 threads sharing one client, linearizable gets of random existing keys."""
    c = sysm.connect()
    try:
        # Make every key exist (not timed); 16 threads so the preload is quick.
        todo = list(range(KEYS))
        mu = threading.Lock()

        def preload() -> None:
            while True:
                with mu:
                    if not todo:
                        return
                    k = todo.pop()
                c.put(f"k{k}", value_now())

        ts = [threading.Thread(target=preload, daemon=True) for _ in range(p.get_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        rngs = [random.Random(100 + i) for i in range(p.get_threads)]
        misses = [0]
        w: Workers

        def body(i: int, st: dict[str, Any]) -> None:
            key = f"k{rngs[i].randrange(KEYS)}"
            if w.timed(st, lambda: c.get(key)) is None:
                misses[0] += 1

        w = Workers(p.get_threads, p.get_s, body, meter)
        res = w.run()
        res["missing_keys_read"] = misses[0]
        return res
    finally:
        c.close()


def t_watch_fanout(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """1 writer at 500 puts/s, 50 watchers on the prefix: delivered/s, delivery p99, lost."""
    writer = sysm.connect()
    wconns = [sysm.connect() for _ in range(max(1, min(p.watch_conns, p.watchers)))]
    prefix = f"wf{random.getrandbits(32):08x}/"
    streams: list[WatchStream] = []
    try:
        for i in range(p.watchers):
            streams.append(wconns[i % len(wconns)].watch(prefix))
        got: list[set[str]] = [set() for _ in range(p.watchers)]
        dups = [0] * p.watchers
        lat: list[list[float]] = [[] for _ in range(p.watchers)]
        last_rx = [0.0] * p.watchers
        errors = [0] * p.watchers
        stop = threading.Event()

        def watcher(i: int) -> None:
            s, mine = streams[i], got[i]
            while not stop.is_set():
                try:
                    ev = s.next(0.2)
                except Exception:
                    errors[i] += 1
                    time.sleep(0.01)
                    continue
                if ev is None:
                    continue
                now = time.perf_counter_ns()
                key, value = ev
                if key in mine:
                    dups[i] += 1
                    continue
                mine.add(key)
                ns = sent_ns(value)
                if ns is not None:
                    lat[i].append((now - ns) / 1e9)
                last_rx[i] = time.monotonic()

        threads = [threading.Thread(target=watcher, args=(i,), daemon=True)
                   for i in range(p.watchers)]
        for t in threads:
            t.start()
        acked: list[str] = []
        write_errors = 0
        n = int(p.watch_rate * p.watch_s)
        meter.begin()
        t0 = time.monotonic()
        for i in range(n):
            due = t0 + i / p.watch_rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() > t0 + p.watch_s + JOIN_GRACE_S:
                break
            key = f"{prefix}{i:08d}"
            try:
                writer.put(key, value_now())
                acked.append(key)
            except Exception:
                write_errors += 1
        write_wall = time.monotonic() - t0
        want = set(acked)
        # Drain: wait while deliveries still progress (a slow client works off a backlog),
        # at most WATCH_DRAIN_MAX_S; "lost" is what never arrived, "late" what was still
        # missing WATCH_DRAIN_S after the writer stopped.
        drain_t0 = time.monotonic()
        late = None
        seen, seen_at = -1, drain_t0
        while True:
            now = time.monotonic()
            have = sum(len(g & want) for g in got)
            if have == len(want) * p.watchers:
                break
            if late is None and now - drain_t0 >= WATCH_DRAIN_S:
                late = len(want) * p.watchers - have
            if have != seen:
                seen, seen_at = have, now
            if now - seen_at > WATCH_STALL_S or now - drain_t0 > WATCH_DRAIN_MAX_S:
                break
            time.sleep(0.1)
        drain_s = time.monotonic() - drain_t0
        meter.end()
        stop.set()
        for t in threads:
            t.join(2.0)
        delivered = sum(len(g & want) for g in got)
        lost = sum(len(want - g) for g in got)
        end = max([x for x in last_rx if x] or [t0 + write_wall])
        flat = [x for ls in lat for x in ls]
        return {"writes": len(acked), "write_errors": write_errors,
                "write_rate": round(len(acked) / write_wall, 1),
                "watchers": p.watchers, "watch_conns": len(wconns), "delivered": delivered,
                "events_per_s": round(delivered / max(end - t0, 1e-9), 1),
                "lost": lost, "late_after_5s": late or 0, "drain_s": round(drain_s, 1),
                "duplicates": sum(dups), "watch_errors": sum(errors),
                "stuck_threads": sum(t.is_alive() for t in threads),
                "delivery_p50_ms": latency_fields(flat)["p50_ms"],
                "delivery_p99_ms": latency_fields(flat)["p99_ms"],
                "wall_s": round(time.monotonic() - t0, 3)}
    finally:
        for s in streams:
            try:
                s.close()
            except Exception:
                pass
        writer.close()
        for wc in wconns:
            wc.close()


def _put_large(sysm: System, p: Params, meter: CpuMeter, value_bytes: int,
               keys: int) -> dict[str, Any]:
    """``large_threads`` threads sharing one client, random keys of ``keys``."""
    c = sysm.connect()
    rngs = [random.Random(i) for i in range(p.large_threads)]
    blob = os.urandom(value_bytes)
    tag = f"{random.getrandbits(32):08x}"
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        key = f"large/{tag}/{rngs[i].randrange(keys)}"
        w.timed(st, lambda: c.put(key, blob))

    w = Workers(p.large_threads, p.large_s, body, meter)
    try:
        res = w.run()
    finally:
        c.close()
    res["mib_per_s"] = round(res["ops_per_s"] * value_bytes / 2**20, 1)
    return res


def t_put_64k(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """4 client threads sharing one client, 64 KiB values to 256 random keys."""
    return _put_large(sysm, p, meter, 64 * 1024, 256)


def t_put_1m(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """4 client threads sharing one client, 1 MiB values (the limit) to 16 random keys."""
    return _put_large(sysm, p, meter, 1024 * 1024, 16)


def t_list_100m(sysm: System, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """100 keys of 1 MiB under one prefix, then that prefix listed whole, list_rounds times."""
    c = sysm.connect()
    prefix = f"list100/{random.getrandbits(32):08x}/"
    try:
        blob = os.urandom(1024 * 1024)
        for i in range(p.list_mib):
            c.put(f"{prefix}{i:04d}", blob)
        lat = []
        meter.begin()
        for _ in range(p.list_rounds):
            t = time.perf_counter()
            keys, nbytes = c.list_prefix(prefix)
            lat.append(time.perf_counter() - t)
            if keys != p.list_mib or nbytes != p.list_mib * len(blob):
                raise RuntimeError(f"listed {keys} keys / {nbytes} bytes, wrote {p.list_mib} keys")
    finally:
        c.close()
    best = min(lat)
    return {"ops": len(lat), "ops_per_s": round(len(lat) / sum(lat), 2), "errors": 0,
            "mib_per_s": round(p.list_mib / best, 1), "list_s_best": round(best, 3),
            **latency_fields(lat)}


WORKLOAD: dict[str, Callable[[System, Params, CpuMeter], dict[str, Any]]] = {
    "seq_put": t_seq_put, "put_tp": t_put_tp, "lock_1": t_lock_1, "lock_1_lib": t_lock_1_lib,
    "lock_8x1": t_lock_8x1, "lock_8x8": t_lock_8x8, "get_tp": t_get_tp,
    "watch_fanout": t_watch_fanout, "put_64k": t_put_64k, "put_1m": t_put_1m,
    "list_100m": t_list_100m,
}


def done_ops(name: str, r: dict[str, Any]) -> float | None:
    """What CPU per operation divides by: operations, lock cycles, or (watch_fanout)
    events delivered to watchers."""
    v = r.get("delivered") if name == "watch_fanout" else r.get("ops")
    return v if isinstance(v, (int, float)) and v > 0 else None


def run_suite(sysm: System, p: Params, tests: list[str],
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every test in ``tests`` against ``sysm``, each with the CPU of every process over the
    test's measured window, and CPU per operation."""
    out: dict[str, Any] = {}
    for name in tests:
        if name in sysm.unsupported:
            out[name] = {"na": sysm.unsupported[name]}
            log(f"  {name:<13} n/a: {sysm.unsupported[name]}")
            continue
        pids = sysm.pids()
        meter = CpuMeter(pids)
        t0 = time.monotonic()
        try:
            res = WORKLOAD[name](sysm, p, meter)
        except Exception as e:
            res = {"failed": f"{type(e).__name__}: {e}"[:500]}
        wall = time.monotonic() - t0
        res.update(meter.result(done_ops(name, res)))
        res["loadavg_1m_end"] = os.getloadavg()[0]
        res["test_wall_s"] = round(wall, 3)
        res["peak_rss_mb"] = {k: rss_mb(pid, "VmHWM") for k, pid in pids.items()}
        out[name] = res
        log("  " + one_line(name, res))
    return out


def one_line(name: str, r: dict[str, Any]) -> str:
    if "na" in r:
        return f"{name:<13} n/a ({r['na']})"
    if "failed" in r:
        return f"{name:<13} FAILED {r['failed']}"
    cpu = " ".join(f"{k}={v}%" for k, v in r["cpu_pct_of_one_core"].items())
    if name == "watch_fanout":
        s = (f"{r['events_per_s']:>9} ev/s  writes {r['writes']} @ {r['write_rate']}/s  "
             f"p99 {r['delivery_p99_ms']} ms  lost {r['lost']}  late {r['late_after_5s']}  "
             f"dup {r['duplicates']}")
    elif name.startswith("lock"):
        s = (f"{r['cycles_per_s']:>9} cyc/s  per-client {r['per_client_min']}-"
             f"{r['per_client_max']}  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms")
    else:
        s = f"{r['ops_per_s']:>9} ops/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
    if name in LARGE_TESTS:
        peak = " ".join(f"{k}={v:.0f}" for k, v in r["peak_rss_mb"].items() if v is not None)
        s += f"  {r['mib_per_s']} MiB/s  peak RSS MiB {peak}"
    if r.get("server_cpu_us_per_op") is not None:
        per = "ev" if name == "watch_fanout" else "op"
        s += f"  servers {r['server_cpu_us_per_op']:.0f} µs CPU/{per}"
    if r.get("foreign_cpu_pct", 0) > 10:
        cpu += f" | OTHER PROCESSES {r['foreign_cpu_pct']}%"
    err = r.get("errors", 0) or r.get("write_errors", 0)
    if err:
        s += f"  errors {err} ({r.get('first_error')})"
    return f"{name:<13}{s}  | cpu {cpu}"
