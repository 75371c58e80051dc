"""PySyncObj as a benchmark anchor: 3 node processes on 127.0.0.1, load INSIDE the leader.

PySyncObj is a library, not a server: a replicated object lives inside the application's
process and has no client protocol. As in the issue's reference figures, the workload
therefore runs in the leader's own process (threads calling ``ReplDict.set(sync=True)``
and ``ReplLockManager.tryAcquire(sync=True)``): no client hop, and the load's CPU is
the leader's CPU. No journal file is configured, so nothing is fsynced (PySyncObj's
default), and ``appendEntriesUseBatch=False`` (else every command waits for a 50 ms tick). Linearizable reads and watches do not exist in PySyncObj: get_tp and
watch_fanout are n/a.

    drive(...)        the driver (python -m bench.load --system pysyncobj): starts the nodes
                      with coordsvc's launcher, asks the leader to run the suite, stops
                      the nodes by PID
    python -m bench.anchors.pysyncobj_bench node --self ADDR --partners A,B --id ID
                      one node, taking commands on stdin (run from the repository root)
"""
from __future__ import annotations

import argparse
import json
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coordsvc.runtime import launch

from ..systems import Conn, NotSupported, System, WatchStream
from ..workload import Params, run_suite

REPO_DIR = Path(__file__).resolve().parents[2]

LOCK_MANAGERS = 9          # one per concurrent "client" (8) + spare; same on every node
AUTO_UNLOCK_S = 10.0


# -- inside a node --------------------------------------------------------------------------

class _PsoConn(Conn):
    def __init__(self, d: Any, mgr: Any) -> None:
        self.d, self.mgr = d, mgr

    def put(self, key: str, value: bytes) -> None:
        self.d.set(key, value, sync=True, timeout=10)

    def get(self, key: str) -> bytes | None:
        raise NotSupported("no linearizable read")

    def lock_acquire(self, name: str, timeout: float) -> Any:
        # ReplLockManager has no waiting: retry tryAcquire (each try is a replicated command).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mgr.tryAcquire(name, sync=True, timeout=10):
                return name
        return None

    def lock_release(self, handle: Any) -> None:
        self.mgr.release(handle, sync=True, timeout=10)

    def watch(self, prefix: str) -> WatchStream:
        raise NotSupported("no watches")


class _PsoLocal(System):
    name = "pysyncobj"
    unsupported = {"get_tp": "no linearizable reads in PySyncObj",
                   "watch_fanout": "no watches in PySyncObj"}

    def __init__(self, d: Any, mgrs: list[Any], pids: dict[str, int]) -> None:
        self.d, self.mgrs, self._pids = d, mgrs, pids
        self._next = 0

    def connect(self) -> Conn:
        m = self.mgrs[self._next % len(self.mgrs)]
        self._next += 1
        return _PsoConn(self.d, m)

    def pids(self) -> dict[str, int]:
        return self._pids

    def close(self) -> None:
        pass


def node_main(self_addr: str, partners: list[str], node_id: str) -> int:
    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict, ReplLockManager
    d = ReplDict()
    mgrs = [ReplLockManager(AUTO_UNLOCK_S, selfID=f"client{i}") for i in range(LOCK_MANAGERS)]
    # appendEntriesUseBatch=False wakes the loop per command (a pipe notifier) instead of
    # waiting for the next 50 ms tick; commands queued meanwhile still go out together.
    obj = SyncObj(self_addr, partners, consumers=[d, *mgrs],
                  conf=SyncObjConf(appendEntriesUseBatch=False))
    out = sys.stdout
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "status":
            st = obj.getStatus()
            out.write(json.dumps({"leader": bool(obj._isLeader()), "ready": bool(obj.isReady()),
                                  "has_quorum": bool(st.get("has_quorum"))}) + "\n")
        elif cmd == "run":
            req = json.loads(arg)
            sysm = _PsoLocal(d, mgrs, {k: int(v) for k, v in req["pids"].items()})
            res = run_suite(sysm, Params(**req["params"]), req["tests"],
                            log=lambda s: print(s, file=sys.stderr, flush=True))
            out.write(json.dumps({"tests": res}) + "\n")
        elif cmd == "quit":
            break
        out.flush()
    obj.destroy()
    return 0


# -- the driver -----------------------------------------------------------------------------

def _ask(p: subprocess.Popen[str], cmd: str, timeout_s: float) -> dict[str, Any] | None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(cmd + "\n")
    p.stdin.flush()
    r, _, _ = select.select([p.stdout], [], [], timeout_s)
    if not r:
        return None
    line = p.stdout.readline()
    return json.loads(line) if line else None


def drive(p: Params, tests: list[str]) -> dict[str, Any]:
    import pysyncobj
    t0 = time.monotonic()
    base = launch.free_base_port(3, random.Random(), 29000, 32000)
    addrs = {f"p{i}": f"127.0.0.1:{base + i}" for i in range(1, 4)}
    root = Path(tempfile.mkdtemp(prefix="psobench-"))
    procs: dict[str, subprocess.Popen[str]] = {}
    ok = False   # on failure the node logs stay in ``root``
    notes = (f"PySyncObj {getattr(pysyncobj, '__version__', '0.3.x')}: no journal, no fsync; "
             "load runs inside the leader process (no client hop), its CPU is the leader's")
    try:
        for nid, addr in addrs.items():
            partners = ",".join(a for n, a in addrs.items() if n != nid)
            # Not launch.start: the driver talks to each node over its stdin and stdout.
            with open(root / f"{nid}.log", "a") as log:
                procs[nid] = subprocess.Popen(
                    [sys.executable, "-m", "bench.anchors.pysyncobj_bench", "node", "--self",
                     addr, "--partners", partners, "--id", nid],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                    bufsize=1, cwd=REPO_DIR)
        leader = None
        deadline = time.monotonic() + 30
        while leader is None and time.monotonic() < deadline:
            for nid, proc in procs.items():
                st = _ask(proc, "status", 2.0)
                if st and st["leader"] and st["ready"] and st["has_quorum"]:
                    leader = nid
                    break
            time.sleep(0.2)
        if leader is None:
            raise RuntimeError(f"pysyncobj: no leader within 30 s; logs in {root}")
        pids = {(f"{n}+load" if n == leader else n): pr.pid for n, pr in procs.items()}
        print(f"pysyncobj: {notes}; leader {leader}")
        budget = (p.put_s + 2 * p.lock_1_s + 2 * p.lock_s + p.get_s + p.watch_s
                  + p.seq_ops / 100 + 120)
        proc = procs[leader]
        res = _ask(proc, "run " + json.dumps({"params": p.__dict__, "tests": tests,
                                              "pids": pids}), budget)
        if res is None:
            raise RuntimeError(f"pysyncobj: the leader gave no result within {budget:.0f} s")
        for line in (root / f"{leader}.log").read_text().splitlines():
            if line.startswith("  "):
                print(line)
        doc = {"system": "pysyncobj", "notes": notes, "unsupported": _PsoLocal.unsupported,
               "tests": res["tests"], "total_s": round(time.monotonic() - t0, 1)}
        ok = True
        return doc
    finally:
        for proc in procs.values():
            try:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        launch.stop(procs.values(), grace_s=3.0)   # type: ignore[arg-type]
        if ok:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["node"])
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", required=True)
    ap.add_argument("--id", required=True)
    a = ap.parse_args()
    return node_main(a.self_addr, a.partners.split(","), a.id)


if __name__ == "__main__":
    sys.exit(main())
