"""Many held locks per Client on a real cluster: one keepalive thread per Client renews
them all (issue 16 item 1, issue 17), so socket and thread counts do not grow with locks."""
from __future__ import annotations

import threading
import time

from coordsvc import Lock

from .harness import LocalCluster

CLIENTS = 3
LOCKS_PER_CLIENT = 500
TTL_S = 4.0


def test_1500_locks_on_3_clients_outlive_two_ttls_with_one_keepalive_thread_each(
        cluster: LocalCluster) -> None:
    cluster.leader()
    baseline = threading.active_count()
    clients = [cluster.client(timeout=10.0) for _ in range(CLIENTS)]
    lost: list[Lock] = []
    held: list[list[Lock]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []

    def acquire_all(i: int) -> None:
        try:
            for n in range(LOCKS_PER_CLIENT):
                held[i].append(clients[i].acquire(f"scale/{i}/{n}", ttl=TTL_S, timeout=0,
                                                  on_lost=lost.append))
        except BaseException as e:
            errors.append(e)

    try:
        workers = [threading.Thread(target=acquire_all, args=(i,)) for i in range(CLIENTS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert sum(len(h) for h in held) == CLIENTS * LOCKS_PER_CLIENT
        time.sleep(2.5 * TTL_S)     # every lock needs several keepalives to live this long
        assert lost == []
        assert all(lk.held for h in held for lk in h)
        names = [t.name for t in threading.enumerate()]
        # One keepalive thread per Client, and no thread per lock.
        assert names.count("coordsvc-keepalive") == CLIENTS
        assert threading.active_count() <= baseline + 2 * CLIENTS + 2, names
        info = {lk.name for lk in clients[0].locks() if lk.name.startswith("scale/")}
        assert len(info) == CLIENTS * LOCKS_PER_CLIENT
    finally:
        for c in clients:
            c.close()
    assert [t for t in threading.enumerate() if t.name == "coordsvc-keepalive"] == []
    with cluster.client() as c:
        assert [lk for lk in c.locks() if lk.name.startswith("scale/")] == []
