"""Profile the coordsvc leader process while the put_tp (or seq_put) workload runs.

    .venv/bin/python -m bench.profile_leader [--seconds 10] [--workload seq_put] [--follower]

Starts a fresh 3-node cluster, finds the leader's PID (``--follower``: a follower's), and
samples it with py-spy (from ``bench/.venv-anchors``; ``bench/anchors/install.sh`` installs
it) while put_tp (16 threads on one Client) or seq_put (one client, one put at a time: where
a single write's time goes, ``--idle`` samples included) runs. Prints the top 15 functions
by self and by cumulative samples and keeps the raw collapsed stacks
(``bench/results/profile-<workload>-<leader|follower>-<ts>.txt``, flamegraph-ready).
py-spy samples from outside, so the node runs unmodified and at full speed.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace

from .coord import CoordSystem
from .measure import CpuMeter, cpu_seconds
from .report import BENCH_DIR, REPO_DIR, RESULTS_DIR
from .workload import FULL, t_put_tp, t_seq_put

PYSPY = BENCH_DIR / ".venv-anchors" / "bin" / "py-spy"
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    fn, path = m.groups()
    for cut in ("/site-packages/", f"{REPO_DIR}/", "/lib/python3.11/"):
        if cut in path:
            path = path.split(cut, 1)[1]
    return f"{fn} ({path})"


def summarize(raw: str, top: int = 15) -> dict[str, list[tuple[str, int, float]]]:
    self_c: collections.Counter[str] = collections.Counter()
    cum_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [short(f) for f in stack.split(";")[1:]]   # [0] is the process/thread
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            cum_c[f] += count

    def rows(c: collections.Counter[str]) -> list[tuple[str, int, float]]:
        return [(f, n, round(100 * n / max(total, 1), 1)) for f, n in c.most_common(top)]

    return {"total_samples": [("", total, 100.0)], "self": rows(self_c), "cumulative": rows(cum_c)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--workload", choices=("put_tp", "seq_put"), default="put_tp")
    ap.add_argument("--follower", action="store_true", help="sample a follower instead")
    a = ap.parse_args()
    if not PYSPY.exists():
        print(f"{PYSPY} missing: run bench/anchors/install.sh", file=sys.stderr)
        return 2
    ts = time.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    who = "follower" if a.follower else "leader"
    name = f"profile-{a.workload}-{who}-{ts}"
    raw_path = RESULTS_DIR / f"{name}.txt"
    sysm = CoordSystem()
    spy: subprocess.Popen[bytes] | None = None
    try:
        leader = sysm.leader()
        assert leader is not None, "no leader"
        pids = sysm.node_pids()
        pid = next(p for n, p in sorted(pids.items()) if n != leader) if a.follower else pids[leader]
        spy = subprocess.Popen([str(PYSPY), "record", "--pid", str(pid), "--format", "raw",
                                "--function", "--rate", str(a.rate), "--duration",
                                str(int(a.seconds)), "--output", str(raw_path), "--nonblocking",
                                *(["--idle"] if a.workload == "seq_put" else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        c0 = cpu_seconds(pid)
        res: dict[str, object] = {}
        if a.workload == "seq_put":      # ~1,000 puts a second: a little less than the window
            def load() -> dict[str, object]:
                return t_seq_put(sysm, replace(FULL, seq_ops=int(800 * (a.seconds - 1.0))),
                                 CpuMeter({}))
        else:
            def load() -> dict[str, object]:
                return t_put_tp(sysm, replace(FULL, put_s=a.seconds - 1.0), CpuMeter({}))
        t = threading.Thread(target=lambda: res.update(load()))
        t.start()
        t.join()
        c1 = cpu_seconds(pid)
        _, err = spy.communicate(timeout=a.seconds + 60)
        if spy.returncode != 0:
            print(err.decode(errors="replace"), file=sys.stderr)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        sysm.close()
    s = summarize(raw_path.read_text())
    print(f"{a.workload} during the profile: {res.get('ops_per_s')} ops/s "
          f"(p50 {res.get('p50_ms', '-')} ms); {who} CPU "
          f"{(c1 or 0) - (c0 or 0):.1f} s in {a.seconds - 1:.0f} s; samples {s['total_samples'][0][1]}")
    for kind in ("self", "cumulative"):
        print(f"\ntop 15 by {kind} time (share of the {who}'s samples{', idle included' if a.workload == 'seq_put' else ' on CPU'}):")
        for f, n, p in s[kind]:
            print(f"  {p:5.1f}%  {n:6d}  {f}")
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(
        {a.workload: res, "summary": s, "raw": str(raw_path)}, indent=1) + "\n")
    print(f"\nraw stacks: {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
