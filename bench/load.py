#!/usr/bin/env python3
"""The benchmark load generator of issue 7: one workload, any system, one adapter each.

    python bench/load.py                       # coordsvc, full issue durations
    python bench/load.py --scale 0.2           # the same, every duration x0.2
    python bench/load.py --system etcd         # anchors run under bench/.venv-anchors/bin/python
    python bench/load.py --smoke               # ~2 s of every test (used by an integration test)
    python bench/load.py --cluster FILE        # attach to a running coordsvc cluster
    python bench/load.py --tests large         # the large-value row: put_64k, put_1m, list_100m

The workload (issue 7's table) is written once, against ``System``/``Conn``/``WatchStream``
below; ``CoordSystem`` drives coordsvc through ``coordsvc.Client`` from this (separate)
process, and ``bench/anchors/`` holds the etcd and PySyncObj adapters.

Who shares what: where the table says "client threads" or "threads" (put_tp, get_tp) the
threads share ONE ``Conn`` (one ``coordsvc.Client``); where it says "clients" (seq_put,
lock_1, lock_8x1, lock_8x8) each has its own ``Conn``. watch_fanout: the writer has its
own ``Conn``; the 50 watchers share one ``Conn``, one watch stream and one thread each.

The CPU time of every process (the nodes and this client process) is read from
``/proc/PID/stat`` before and after each test. Nothing here talks to anything but
127.0.0.1, every test has a hard wall-clock bound, and every process we start is stopped
by its PID (``finally`` + SIGTERM handler), even when a test fails.

This file must import with any Python >= 3.11 and without coordsvc installed: the anchors
run it from their own virtualenv.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VALUE_BYTES = 64
KEYS = 1000
TESTS = ("seq_put", "put_tp", "lock_1", "lock_8x1", "lock_8x8", "get_tp", "watch_fanout")
# Issue 11's large-value row, run on request (``--tests large``): values at and below the
# 1 MiB limit, and one list answer of 100 MiB, with throughput and peak RSS per node.
LARGE_TESTS = ("put_64k", "put_1m", "list_100m")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# After the watch writer stops: an event still missing after WATCH_DRAIN_S is "late"; the
# drain goes on while deliveries progress (stall WATCH_STALL_S), up to WATCH_DRAIN_MAX_S.
WATCH_DRAIN_S = 5.0
WATCH_STALL_S = 3.0
WATCH_DRAIN_MAX_S = 60.0
# A worker still busy this long after its test's deadline is abandoned (counted as stuck).
JOIN_GRACE_S = 15.0


# -- the adapter interface ----------------------------------------------------------------

class NotSupported(Exception):
    """The system has no such operation (the table then says n/a, with the reason)."""


class WatchStream(ABC):
    @abstractmethod
    def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next (key, value) put under the prefix, or None after ``timeout`` seconds."""

    @abstractmethod
    def close(self) -> None: ...


class Conn(ABC):
    """One client of a system: what the workload table calls "a client"."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """A linearizable read."""

    @abstractmethod
    def lock_acquire(self, name: str, timeout: float) -> Any:
        """Block until lock ``name`` is held (return a handle) or ``timeout`` passes (None)."""

    @abstractmethod
    def lock_release(self, handle: Any) -> None: ...

    @abstractmethod
    def watch(self, prefix: str) -> WatchStream:
        """A stream of every put under ``prefix`` that happens after this call returns."""

    def list_prefix(self, prefix: str) -> tuple[int, int]:
        """Every key under ``prefix`` in one linearizable read: (keys, value bytes)."""
        raise NotSupported("no list")

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters need none
        pass


class System(ABC):
    """A running 3-node cluster of one system, and how to reach it."""

    name: str = "?"
    #: test -> why it cannot run on this system (reported as n/a)
    unsupported: dict[str, str] = {}
    #: free text for the report (version, durability, where the load runs)
    notes: str = ""

    @abstractmethod
    def connect(self) -> Conn: ...

    @abstractmethod
    def pids(self) -> dict[str, int]:
        """Every process whose CPU counts: label -> PID (nodes and the load process)."""

    @abstractmethod
    def close(self) -> None: ...


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


# -- measuring ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()   # field 3 (state) is rest[0]
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """The process's resident set (``VmHWM``: its peak so far) in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pct(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    i = min(len(sorted_ms) - 1, max(0, int(round(q * (len(sorted_ms) - 1)))))
    return round(sorted_ms[i], 3)


def latency_fields(lat_s: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in lat_s)
    return {"p50_ms": pct(ms, 0.50), "p99_ms": pct(ms, 0.99), "max_ms": pct(ms, 1.0)}


def value_now() -> bytes:
    """64 bytes whose head is the send time (perf_counter_ns, same process as the reader)."""
    return str(time.perf_counter_ns()).encode().ljust(VALUE_BYTES, b".")


def sent_ns(value: bytes) -> int | None:
    try:
        return int(value[:VALUE_BYTES].split(b".", 1)[0])
    except ValueError:
        return None


class Workers:
    """N threads looping ``body(i, stats)`` until a deadline, with per-thread stats."""

    def __init__(self, n: int, duration_s: float, body: Callable[[int, dict[str, Any]], None]):
        self.n, self.duration_s, self.body = n, duration_s, body
        self.stats = [{"ops": 0, "errors": 0, "lat": [], "first_error": None} for _ in range(n)]

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
        t0 = time.monotonic()
        self.deadline = t0 + self.duration_s
        start_evt.set()
        for t in threads:
            t.join(max(0.0, self.deadline + JOIN_GRACE_S - time.monotonic()))
        wall = time.monotonic() - t0
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

def t_seq_put(sysm: System, p: Params) -> dict[str, Any]:
    """1 client, sequential puts of 64-byte values to k0..k999 round robin, after warm-up."""
    c = sysm.connect()
    try:
        for i in range(p.seq_warmup):
            c.put(f"k{i % KEYS}", value_now())
        lat = []
        t0 = time.perf_counter()
        for i in range(p.seq_ops):
            t = time.perf_counter()
            c.put(f"k{i % KEYS}", value_now())
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    finally:
        c.close()
    return {"ops": p.seq_ops, "ops_per_s": round(p.seq_ops / wall, 1), "errors": 0,
            "wall_s": round(wall, 3), **latency_fields(lat)}


def t_put_tp(sysm: System, p: Params) -> dict[str, Any]:
    """16 client threads sharing one client, random keys of 1,000, 64-byte values."""
    c = sysm.connect()
    rngs = [random.Random(i) for i in range(p.put_threads)]
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        key = f"k{rngs[i].randrange(KEYS)}"
        w.timed(st, lambda: c.put(key, value_now()))

    w = Workers(p.put_threads, p.put_s, body)
    try:
        return w.run()
    finally:
        c.close()


def _lock_test(sysm: System, clients: int, same_lock: bool, duration_s: float) -> dict[str, Any]:
    conns = [sysm.connect() for _ in range(clients)]
    tag = f"{random.getrandbits(32):08x}"
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        name = f"L{tag}" if same_lock else f"L{tag}-{i}"
        t = time.perf_counter()
        h = conns[i].lock_acquire(name, timeout=max(0.05, w.deadline - time.monotonic()) + 1.0)
        if h is None:
            return   # timed out at the end of the window: not a cycle, not an error
        conns[i].lock_release(h)
        if time.monotonic() < w.deadline:
            st["ops"] += 1
            st["lat"].append(time.perf_counter() - t)

    w = Workers(clients, duration_s, body)
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


def t_lock_1(sysm: System, p: Params) -> dict[str, Any]:
    """1 client, acquire + release cycles on one lock."""
    return _lock_test(sysm, 1, True, p.lock_1_s)


def t_lock_8x1(sysm: System, p: Params) -> dict[str, Any]:
    """8 clients contending on one lock (total cycles/s; per-client min/max for fairness)."""
    return _lock_test(sysm, p.lock_clients, True, p.lock_s)


def t_lock_8x8(sysm: System, p: Params) -> dict[str, Any]:
    """8 clients, each on its own lock."""
    return _lock_test(sysm, p.lock_clients, False, p.lock_s)


def t_get_tp(sysm: System, p: Params) -> dict[str, Any]:
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

        w = Workers(p.get_threads, p.get_s, body)
        res = w.run()
        res["missing_keys_read"] = misses[0]
        return res
    finally:
        c.close()


def t_watch_fanout(sysm: System, p: Params) -> dict[str, Any]:
    """1 writer at 500 puts/s, 50 watchers on the prefix: delivered/s, delivery p99, lost."""
    writer = sysm.connect()
    wconn = sysm.connect()
    prefix = f"wf{random.getrandbits(32):08x}/"
    streams: list[WatchStream] = []
    try:
        for _ in range(p.watchers):
            streams.append(wconn.watch(prefix))
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
        stop.set()
        for t in threads:
            t.join(2.0)
        delivered = sum(len(g & want) for g in got)
        lost = sum(len(want - g) for g in got)
        end = max([x for x in last_rx if x] or [t0 + write_wall])
        flat = [x for ls in lat for x in ls]
        return {"writes": len(acked), "write_errors": write_errors,
                "write_rate": round(len(acked) / write_wall, 1),
                "watchers": p.watchers, "delivered": delivered,
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
        wconn.close()


def _put_large(sysm: System, p: Params, value_bytes: int, keys: int) -> dict[str, Any]:
    """``large_threads`` threads sharing one client, random keys of ``keys``."""
    c = sysm.connect()
    rngs = [random.Random(i) for i in range(p.large_threads)]
    blob = os.urandom(value_bytes)
    tag = f"{random.getrandbits(32):08x}"
    w: Workers

    def body(i: int, st: dict[str, Any]) -> None:
        key = f"large/{tag}/{rngs[i].randrange(keys)}"
        w.timed(st, lambda: c.put(key, blob))

    w = Workers(p.large_threads, p.large_s, body)
    try:
        res = w.run()
    finally:
        c.close()
    res["mib_per_s"] = round(res["ops_per_s"] * value_bytes / 2**20, 1)
    return res


def t_put_64k(sysm: System, p: Params) -> dict[str, Any]:
    """4 client threads sharing one client, 64 KiB values to 256 random keys."""
    return _put_large(sysm, p, 64 * 1024, 256)


def t_put_1m(sysm: System, p: Params) -> dict[str, Any]:
    """4 client threads sharing one client, 1 MiB values (the limit) to 16 random keys."""
    return _put_large(sysm, p, 1024 * 1024, 16)


def t_list_100m(sysm: System, p: Params) -> dict[str, Any]:
    """100 keys of 1 MiB under one prefix, then that prefix listed whole, list_rounds times."""
    c = sysm.connect()
    prefix = f"list100/{random.getrandbits(32):08x}/"
    try:
        blob = os.urandom(1024 * 1024)
        for i in range(p.list_mib):
            c.put(f"{prefix}{i:04d}", blob)
        lat = []
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


WORKLOAD: dict[str, Callable[[System, Params], dict[str, Any]]] = {
    "seq_put": t_seq_put, "put_tp": t_put_tp, "lock_1": t_lock_1, "lock_8x1": t_lock_8x1,
    "lock_8x8": t_lock_8x8, "get_tp": t_get_tp, "watch_fanout": t_watch_fanout,
    "put_64k": t_put_64k, "put_1m": t_put_1m, "list_100m": t_list_100m,
}


def run_suite(sysm: System, p: Params, tests: list[str],
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every test in ``tests`` against ``sysm``, each with the CPU of every process."""
    out: dict[str, Any] = {}
    for name in tests:
        if name in sysm.unsupported:
            out[name] = {"na": sysm.unsupported[name]}
            log(f"  {name:<13} n/a: {sysm.unsupported[name]}")
            continue
        pids = sysm.pids()
        before = {k: cpu_seconds(v) for k, v in pids.items()}
        busy0 = machine_busy_seconds()
        t0 = time.monotonic()
        try:
            res = WORKLOAD[name](sysm, p)
        except Exception as e:
            res = {"failed": f"{type(e).__name__}: {e}"[:500]}
        wall = time.monotonic() - t0
        cpu = {}
        for k, pid in pids.items():
            a, b = before[k], cpu_seconds(pid)
            cpu[k] = None if a is None or b is None else round(b - a, 2)
        res["cpu_s"] = cpu
        # Everything else on the machine (other users' jobs): a run with much of this is
        # not a clean measurement. 100% = one core.
        ours = sum(v for v in cpu.values() if v is not None)
        res["foreign_cpu_pct"] = round(100 * max(0.0, machine_busy_seconds() - busy0 - ours)
                                       / wall, 1)
        res["loadavg_1m_end"] = os.getloadavg()[0]
        res["cpu_pct_of_one_core"] = {k: (None if v is None else round(100 * v / wall, 1))
                                      for k, v in cpu.items()}
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
    if r.get("foreign_cpu_pct", 0) > 10:
        cpu += f" | OTHER PROCESSES {r['foreign_cpu_pct']}%"
    err = r.get("errors", 0) or r.get("write_errors", 0)
    if err:
        s += f"  errors {err} ({r.get('first_error')})"
    return f"{name:<13}{s}  | cpu {cpu}"


# -- coordsvc -------------------------------------------------------------------------------

def free_ports(n: int, start: int) -> int:
    """A base port b such that b+1..b+n, b+101..b+100+n and b+201..b+200+n (HTTP) are
    free on 127.0.0.1.

    Stdlib only, unlike ``coordsvc.clusterfile.free_base_port`` (same layout): the
    anchors run this file where coordsvc is not installed.
    """
    import socket
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(start, start + 20000)
        try:
            for port in [base + off + i for off in (0, 100, 200) for i in range(1, n + 1)]:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no free block of ports for {n} nodes from {start}")


def stop_pids(procs: dict[str, subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM each process we started (by its PID), then SIGKILL what is left."""
    for p in procs.values():
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


class _CoordWatch(WatchStream):
    def __init__(self, w: Any) -> None:
        self._w = w

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        ev = self._w.next(timeout)
        if ev is None or ev.type != "put":
            return None
        return ev.key, ev.value

    def close(self) -> None:
        self._w.close()


class _CoordConn(Conn):
    def __init__(self, cluster: Any) -> None:
        from coordsvc import Client
        self.c = Client(cluster, timeout=10.0)   # a secure cluster: admin.key beside its file

    def put(self, key: str, value: bytes) -> None:
        self.c.put(key, value)

    def get(self, key: str) -> bytes | None:
        e = self.c.get(key)
        return None if e is None else e.value

    def lock_acquire(self, name: str, timeout: float) -> Any:
        from coordsvc import LockTimeout
        try:
            return self.c.acquire(name, ttl=10.0, timeout=timeout)
        except LockTimeout:
            return None

    def lock_release(self, handle: Any) -> None:
        handle.release()

    def watch(self, prefix: str) -> WatchStream:
        return _CoordWatch(self.c.watch(prefix))

    def list_prefix(self, prefix: str) -> tuple[int, int]:
        entries = self.c.list(prefix)
        return len(entries), sum(len(e.value) for e in entries)

    def close(self) -> None:
        self.c.close()


class CoordSystem(System):
    """A 3-node coordsvc cluster started here (``python -m coordsvc.runtime`` per node),
    or an existing one (``--cluster FILE``: node PIDs found by their command line).

    Clusters started here are secure (CURVE, like ``cluster init``) unless ``insecure``."""

    name = "coordsvc"

    def __init__(self, cluster_file: Path | None = None, nodes: int = 3,
                 insecure: bool = False) -> None:
        from coordsvc import __version__, clusterfile, keys
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.root: Path | None = None
        if cluster_file is None:
            from coordsvc.storage.datadir import init_data_dir
            self.root = Path(tempfile.mkdtemp(prefix="coordbench-"))
            ck = None if insecure else keys.ClusterKeys.generate(f"n{i}" for i in range(1, nodes + 1))
            self.cluster = clusterfile.write_new(self.root, nodes, base_port=free_ports(nodes, 21000),
                                                 cluster_keys=ck)
            for n in self.cluster.nodes:
                init_data_dir(n.data_dir, self.cluster.id, n.id)
            if ck is not None:
                clusterfile.write_keys(self.cluster, ck)
            try:
                for n in self.cluster.nodes:
                    with open(self.root / f"{n.id}.log", "ab") as log:
                        self.procs[n.id] = subprocess.Popen(
                            [sys.executable, "-m", "coordsvc.runtime", "--cluster",
                             str(self.root / clusterfile.FILE_NAME), "--node", n.id],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO_DIR)
                self._node_pids = {nid: p.pid for nid, p in self.procs.items()}
                self._wait_ready()
            except BaseException:
                self.close()
                raise
        else:
            self.cluster = clusterfile.load(cluster_file)
            self._node_pids = _pids_by_cmdline(str(cluster_file), self.cluster.ids)
            self._wait_ready()
        self.notes = (f"coordsvc {__version__}: SQLite WAL synchronous=FULL (fsync per "
                      "acknowledged write batch); client = coordsvc.Client in the bench process; "
                      f"security {self.cluster.security}")

    def _wait_ready(self) -> None:
        from coordsvc import Client
        with Client(self.cluster, timeout=30.0) as c:
            c.put("bench/ready", b"1")

    def leader_pid(self) -> int | None:
        from coordsvc import Client
        with Client(self.cluster, timeout=10.0) as c:
            c.put("bench/ready", b"1")
            ep = c.leader
        for n in self.cluster.nodes:
            if n.address == ep:
                return self._node_pids.get(n.id)
        return None

    def connect(self) -> Conn:
        return _CoordConn(self.cluster)

    def pids(self) -> dict[str, int]:
        return {**self._node_pids, "client": os.getpid()}

    def close(self) -> None:
        stop_pids(self.procs)
        self.procs.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _pids_by_cmdline(cluster_file: str, ids: list[str]) -> dict[str, int]:
    """The node processes of an existing cluster: ``--cluster FILE --node ID`` in cmdline."""
    found: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in args]
        if "--cluster" in argv and "--node" in argv:
            i, j = argv.index("--cluster"), argv.index("--node")
            if i + 1 < len(argv) and j + 1 < len(argv) and \
                    os.path.realpath(argv[i + 1]) == os.path.realpath(cluster_file) and \
                    argv[j + 1] in ids:
                found[argv[j + 1]] = int(d.name)
    return found


# -- main -----------------------------------------------------------------------------------

def make_system(name: str, cluster_file: Path | None, insecure: bool = False) -> System:
    if name == "coordsvc":
        return CoordSystem(cluster_file, insecure=insecure)
    sys.path.insert(0, str(BENCH_DIR))
    if name == "etcd":
        from anchors.etcd_bench import EtcdSystem
        return EtcdSystem()
    raise SystemExit(f"unknown system {name!r} (pysyncobj runs through anchors/pysyncobj_bench.py)")


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "host": platform.node()}


def code_version() -> dict[str, Any]:
    """The commit, and a digest of uncommitted changes under coordsvc/ (others edit it
    concurrently: two runs compare only if these match)."""
    import hashlib
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "coordsvc"], cwd=REPO_DIR,
                              capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"head": head, "coordsvc_dirty": bool(diff),
            "coordsvc_diff_sha1": hashlib.sha1(diff).hexdigest()[:12] if diff else None}


def write_result(system: str, doc: dict[str, Any], path: Path | None) -> Path:
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{system}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def params_from_args(a: argparse.Namespace) -> Params:
    return SMOKE if a.smoke else FULL.scaled(a.scale)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--system", default="coordsvc", choices=["coordsvc", "etcd", "pysyncobj"])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every duration (and seq_put's count) by this")
    ap.add_argument("--smoke", action="store_true", help="~2 s of every test")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--cluster", type=Path, help="coordsvc: use this running cluster")
    ap.add_argument("--insecure", action="store_true",
                    help="coordsvc: start the cluster without CURVE keys (to measure their cost)")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/)")
    a = ap.parse_args(argv)
    tests = [t for name in a.tests.split(",") if name
             for t in (LARGE_TESTS if name == "large" else (name,))]
    bad = [t for t in tests if t not in WORKLOAD]
    if bad:
        ap.error(f"unknown tests {bad}; known: {', '.join(TESTS)}")
    p = params_from_args(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so `finally` stops nodes
    if a.system == "pysyncobj":
        sys.path.insert(0, str(BENCH_DIR))
        from anchors.pysyncobj_bench import drive
        doc = drive(p, tests, a.scale, a.smoke)
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
