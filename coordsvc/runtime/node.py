"""The node process: one poll loop around the pure Service.

    inputs (sockets, timers) -> service -> save (one SQLite transaction) -> send -> reply

No threads, no busy waiting: the loop sleeps in zmq poll until a socket is readable
or the next timer is due.

What stops a node once it serves: a signal (exit 0), a detected ``SafetyViolation``
(exit 70), or a failed disk write (exit 74, one line naming the database and the error:
the store refuses every later save, see ``storage.sqlite``). A request whose handling
raised was answered ``internal`` by the service; it is logged here once, with its
traceback.
"""
from __future__ import annotations

import logging
import random
import signal
import sqlite3
import sys
import time
from types import FrameType
from typing import Any

from ..clusterfile import Cluster, ClusterFileError
from ..core.replica import Role
from ..core.service import Service
from ..core.types import Config, SafetyViolation
from ..storage.datadir import DataDirError
from ..storage.sqlite import SqliteStore
from ..transport.zmq_transport import Transport, TransportError

log = logging.getLogger("coordsvc.node")
MAX_SLEEP_MS = 250
# How often the database size the quotas see is measured (three PRAGMAs, ~10 us).
DB_MEASURE_MS = 1_000
EXIT_SAFETY = 70
EXIT_DISK = 74   # EX_IOERR


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Node:
    def __init__(self, cluster: Cluster, node_id: str, config: Config = Config()) -> None:
        spec = cluster.node(node_id)
        self.store = SqliteStore.open(spec.data_dir, cluster.id, node_id)
        try:
            self.transport = Transport(cluster, node_id)
        except BaseException:
            self.store.close()
            raise
        addresses = {n.id: n.address for n in cluster.nodes}
        self.service = Service(node_id, addresses, self.store.load(), random.Random(),
                               _now_ms(), config, quotas=cluster.limits)
        self.id = node_id
        self.stopping = False
        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self.service.extra_status = self._extra_status

    def run(self) -> None:
        svc, tr, store = self.service, self.transport, self.store
        next_tick = _now_ms()
        next_measure = 0
        while not self.stopping:
            tr.poll(max(0, next_tick - _now_ms()))
            now = _now_ms()
            for kind, body, route in tr.receive():
                if kind == "peer":
                    svc.on_peer(body, now)
                else:
                    svc.on_client(route, body, now)
            if now >= next_tick:
                if now >= next_measure:
                    svc.observe_db_bytes(store.db_bytes_in_use())
                    next_measure = now + DB_MEASURE_MS
                svc.tick(now)
            svc.step(store.save, tr.send)
            replies, events = svc.take_outbox()
            for route, payload in replies:
                tr.reply(route, payload)
            if events:
                tr.publish(events)
            for what, exc in svc.take_incidents():
                log.error("answered internal: %s", what, exc_info=exc)
            store.maintain()
            self._log_changes()
            next_tick = min(svc.next_timer_ms(), _now_ms() + MAX_SLEEP_MS)

    def _log_changes(self) -> None:
        r = self.service.replica
        if r.role is not self._role or r.leader != self._leader:
            log.info("role %s leader %s ballot %s commit %d", r.role.value, r.leader,
                     list(r.promised.as_list()), r.commit_index)
            self._role, self._leader = r.role, r.leader

    def _extra_status(self) -> dict[str, Any]:
        return {"db_bytes": self.store.db_bytes(),
                "fsync_p99_ms": round(self.store.save_p99_ms(), 3),
                "bad_frames": self.transport.counters.bad_frames,
                "dropped_sends": self.transport.counters.dropped_sends,
                "oversize_sends": self.transport.counters.oversize_sends}

    def close(self) -> None:
        self.transport.close()
        self.store.close()


def serve(cluster: Cluster, node_id: str, config: Config = Config()) -> int:
    """Run node ``node_id`` in the foreground until SIGTERM/SIGINT. Returns the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {node_id} %(levelname)s %(message)s")
    try:
        node = Node(cluster, node_id, config)
    except (DataDirError, TransportError, ClusterFileError) as e:
        print(f"coordctl serve: {node_id}: {e}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        node.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving at %s (cluster %s, %d members)", cluster.node(node_id).address,
             cluster.name, len(cluster.nodes))
    try:
        node.run()
    except SafetyViolation as e:
        log.critical("stopping: %s", e)
        return EXIT_SAFETY
    except (sqlite3.Error, OSError) as e:
        # Only the store does file I/O in the loop (sockets raise zmq errors): a write
        # failed, and nothing acknowledged may depend on it, so stop (see storage.sqlite).
        log.critical("stopping: writing %s failed: %s: %s", node.store.db_path,
                     type(e).__name__, " ".join(str(e).split()))
        return EXIT_DISK
    finally:
        node.close()
    log.info("stopped")
    return 0
