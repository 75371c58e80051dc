"""A process that holds N coordsvc locks, kept alive, until SIGTERM (for ``bench.scale``).

    python -m bench.holders --cluster FILE --prefix P --first 0 --locks N --rate R --ready FILE

Acquires locks ``P<first>`` .. ``P<first+N-1>`` (ttl 10 s) with one client per
``LOCKS_PER_CLIENT`` locks, ``ACQUIRE_THREADS`` at a time and at most ``R`` a second (a
lock's first keepalive, ttl/3 after its grant, connects a new socket: a burst of grants
is a burst of CURVE handshakes 3.3 s later, which a busy 2-core machine does not finish
before the keepalives' deadline), then writes
``{"held": n, "errors": e}`` to the ready file and idles while the client library keeps
every lock alive (one keepalive per lock every ttl/3, as any holder would), writing the
number of locks lost so far (keepalives that failed) to ``<ready>.lost`` every second.
SIGTERM ends the process at once: nothing is released, the sessions expire.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from coordsvc import Client, CoordError, Lock

# Each held lock's keepalive thread opens its own DEALER sockets, and a ZeroMQ context (one
# per Client) allows 1,023: past that a keepalive fails with "Too many open files" and its
# lock is lost. Measured with 2,000 locks in one process: 500 per client lost 1,307 of
# them, 300 per client lost 5, 100 per client none.
LOCKS_PER_CLIENT = 100
ACQUIRE_THREADS = 16
TTL_S = 10.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.holders")
    ap.add_argument("--cluster", type=Path, required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--locks", type=int, required=True)
    ap.add_argument("--rate", type=float, default=200.0, help="locks acquired per second, at most")
    ap.add_argument("--ready", type=Path, required=True)
    a = ap.parse_args(argv)
    threading.stack_size(256 * 1024)   # thousands of keepalive threads; they need little stack
    held: list[Lock] = []

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        os._exit(0)   # no release, no orderly shutdown of thousands of threads

    signal.signal(signal.SIGTERM, on_term)
    clients = [Client.from_cluster_file(a.cluster, timeout=30.0)
               for _ in range(-(-a.locks // LOCKS_PER_CLIENT))]
    todo = iter(range(a.locks))
    mu = threading.Lock()
    errors = [0]
    t0 = time.monotonic()

    def worker() -> None:
        while True:
            with mu:
                i = next(todo, None)
            if i is None:
                return
            time.sleep(max(0.0, t0 + i / a.rate - time.monotonic()))
            for _ in range(5):
                try:
                    lk = clients[i // LOCKS_PER_CLIENT].acquire(
                        f"{a.prefix}{a.first + i}", ttl=TTL_S, timeout=30.0)
                except CoordError:
                    errors[0] += 1
                    time.sleep(0.1)
                    continue
                with mu:
                    held.append(lk)
                break

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(ACQUIRE_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _write(a.ready, {"held": len(held), "errors": errors[0]})
    lost = Path(f"{a.ready}.lost")
    while True:
        _write(lost, {"lost": sum(lk.lost for lk in held)})
        time.sleep(1.0)


def _write(path: Path, doc: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
