"""RSS of each coordsvc node holding 100,000 keys with 64-byte values (issue 7: < 150 MB).

    .venv/bin/python -m bench.memory [--keys 100000] [--threads 64]

Starts a fresh 3-node cluster (``bench.coord.CoordSystem``), writes the keys through
``coordsvc.Client`` (many threads on one client, so the leader batches), waits for the
followers to apply, then prints VmRSS and VmHWM of every node from /proc/PID/status and
writes ``bench/results/memory-<ts>.json``. Nodes are stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from .coord import CoordSystem
from .measure import rss_mb
from .report import RESULTS_DIR, machine_info, stamp


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-bytes", type=int, default=64)
    ap.add_argument("--threads", type=int, default=64)
    a = ap.parse_args()
    sysm = CoordSystem()
    try:
        nodes = sysm.node_pids()
        before = {k: rss_mb(p) for k, p in nodes.items()}
        conn = sysm.connect()
        value = b"v" * a.value_bytes
        nxt = iter(range(a.keys))
        mu = threading.Lock()
        errors = [0]

        def writer() -> None:
            while True:
                with mu:
                    i = next(nxt, None)
                if i is None:
                    return
                for _ in range(5):
                    try:
                        conn.put(f"m/{i:06d}", value)
                        break
                    except Exception:
                        errors[0] += 1
                        time.sleep(0.05)

        t0 = time.monotonic()
        ts = [threading.Thread(target=writer, daemon=True) for _ in range(a.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(1200)
        load_s = time.monotonic() - t0
        check = conn.get("m/000000"), conn.get(f"m/{a.keys - 1:06d}")
        conn.close()
        time.sleep(3.0)   # followers apply the tail; let any snapshot finish
        after = {k: {"rss_mb": round(rss_mb(p) or 0, 1),
                     "hwm_mb": round(rss_mb(p, "VmHWM") or 0, 1)} for k, p in nodes.items()}
        db = {}
        if sysm.root is not None:
            for d in sorted(sysm.root.iterdir()):
                if d.is_dir():
                    db[d.name] = round(sum(f.stat().st_size for f in d.rglob("*")
                                           if f.is_file()) / 2**20, 1)
        doc = {"keys": a.keys, "value_bytes": a.value_bytes, "key_example": "m/000000",
               "load_s": round(load_s, 1), "puts_per_s": round(a.keys / load_s, 1),
               "put_retries": errors[0], "readback_ok": all(c is not None for c in check),
               "rss_before_mb": before, "after": after, "data_dir_mb": db,
               "limit_mb": 150, "machine": machine_info(),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    finally:
        sysm.close()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"memory-{stamp()}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
