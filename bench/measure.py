"""What a benchmark reads off the machine: CPU time and memory per process, percentiles.

Everything comes from ``/proc`` (Linux), so any process can be measured from outside,
whichever language or virtualenv it runs in. Standard library only.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT = "client"   # the label of the load process in ``System.pids()``; every other is a server


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


class CpuMeter:
    """CPU seconds of a set of processes (label -> PID) over one window, and of everything
    else on the machine in the same window.

    ``begin()`` (re)starts the window, ``end()`` closes it (a second ``end()`` is a no-op),
    so a test can narrow the window to its measured part and a runner can still close a
    window the test left open.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.begin()

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()
        self._c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._result: dict[str, Any] | None = None

    def end(self) -> None:
        if self._result is not None:
            return
        wall = max(time.monotonic() - self._t0, 1e-9)
        cpu: dict[str, float | None] = {}
        for k, pid in self.pids.items():
            a, b = self._c0[k], cpu_seconds(pid)
            cpu[k] = None if a is None or b is None else round(b - a, 3)
        ours = sum(v for v in cpu.values() if v is not None)
        self._result = {
            "cpu_window_s": round(wall, 3),
            "cpu_s": cpu,
            "cpu_pct_of_one_core": {k: (None if v is None else round(100 * v / wall, 1))
                                    for k, v in cpu.items()},
            # Everything else on the machine (other users' jobs): a run with much of this
            # is not a clean measurement. 100% = one core.
            "foreign_cpu_pct": round(100 * max(0.0, machine_busy_seconds() - self._busy0 - ours)
                                     / wall, 1),
        }

    def result(self, ops: float | None) -> dict[str, Any]:
        """The window's figures, with CPU per operation when ``ops`` is known: microseconds
        of CPU per op for each process, and for all server processes together."""
        self.end()
        assert self._result is not None
        out = dict(self._result)
        if ops:
            cpu = out["cpu_s"]
            out["cpu_us_per_op"] = {k: (None if v is None else round(1e6 * v / ops, 1))
                                    for k, v in cpu.items()}
            servers = [v for k, v in cpu.items() if k != CLIENT]
            out["server_cpu_us_per_op"] = (round(1e6 * sum(servers) / ops, 1)
                                           if servers and None not in servers else None)
        return out
