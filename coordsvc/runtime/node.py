"""The node process: one poll loop around the pure Service.

    inputs (sockets, timers) -> service -> save (one SQLite transaction) -> send -> reply

No busy waiting: the loop sleeps in zmq poll until a socket is readable or the next
timer is due. The CURVE handshakes of a secure cluster are authenticated in this same
loop (the transport's ZAP handler). The one other thread family is the HTTP listener
(``http.py``: metrics, health, dashboard), which reads only the frozen picture the loop
publishes twice a second (``observe.py``) and never touches the core.

Members come from the log: the cluster file bootstraps the first configuration (recorded
in the data directory at the first start) and every chosen change after it connects the
transport to members added and drops members removed, their keys with them (the ZAP
handler asks the service, whose key table follows the configuration). A node copying
history it was behind on follows only the configuration it ends at, not the older ones on
the way (they name keys replaced since: ``Service._release_config``). A node that applies
a configuration without itself stops, says why, and its data directory refuses to start.
Member keys in the cluster file are still re-read when it changes (checked once a second):
a replaced node's new public key takes effect on every member without a restart (a node
outside the configuration just then gets its key from the change that adds it back).

What stops a node once it serves: a signal (exit 0), a detected ``SafetyViolation``
(exit 70), a failed disk write (exit 74, one line naming the database and the error:
the store refuses every later save, see ``storage.sqlite``), or a chosen configuration
without this node (exit 0, after saying so). A request whose handling raised was
answered ``internal`` by the service; it is logged here once, with its traceback.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .. import clusterfile
from ..clusterfile import Cluster, ClusterFileError
from ..core.identity import INSECURE, Identities
from ..core.membership import Member, Membership
from ..core.service import Service
from ..core.types import Config, Persist, SafetyViolation
from ..keys import KeyFileError, KeyPair, read_node_key
from ..storage.datadir import DataDirError
from ..storage.snapfiles import ForkedSnapshots
from ..storage.sqlite import SqliteStore
from ..transport.zmq_transport import Transport, TransportError
from . import logs
from .http import HttpError, HttpServer, parse_bind
from .logs import event
from .observe import Observer, Shared

log = logging.getLogger("coordsvc.node")
MAX_SLEEP_MS = 250
RELOAD_EVERY_MS = 1000
# How often the database size the quotas see is measured (three PRAGMAs, ~10 us).
DB_MEASURE_MS = 1_000
# Snapshot files nothing refers to any more (superseded, a transfer or a backup done) are
# deleted this often.
PRUNE_EVERY_MS = 2_000
EXIT_SAFETY = 70
EXIT_DISK = 74   # EX_IOERR


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def bootstrap(cluster: Cluster) -> Membership:
    """config(1) from the cluster file: its members but those added at runtime."""
    return Membership(tuple(Member(n.id, 0, True, n.address, n.publish, n.http or "",
                                   n.public_key or "")
                            for n in sorted(cluster.nodes, key=lambda n: n.id) if not n.added))


def peer_specs(cluster: Cluster, config: Membership) -> list[clusterfile.NodeSpec]:
    """Whom to connect to: the configuration's members, addressed as it says."""
    specs = []
    for m in config.members:
        known = next((n for n in cluster.nodes if n.id == m.id), None)
        if m.address and m.publish:
            key = (m.public_key or (known.public_key if known else None)) or None
            specs.append(clusterfile.NodeSpec(
                m.id, m.address, m.publish,
                known.data_dir if known is not None else Path(m.id),   # not used for peers
                key if cluster.secure else None))
        elif known is not None:
            specs.append(known)
    return specs


def identities(cluster: Cluster) -> Identities:
    """The keys of a cluster file, as the core knows them."""
    if not cluster.secure:
        return INSECURE
    return Identities(secure=True,
                      members={n.id: n.public_key for n in cluster.nodes if n.public_key},
                      admin_key=cluster.admin_public_key)


def http_bind(cluster: Cluster, node_id: str, override: str | None = None) -> tuple[str, int] | None:
    """Where node ``node_id`` serves HTTP: ``override`` (``--http``), else the cluster
    file's ``http_bind``, else loopback on the port of its ``http`` address; None without
    either (a cluster file from before HTTP)."""
    spec = cluster.node(node_id)
    if override is not None:
        return parse_bind(override)
    if spec.http_bind is not None:
        return parse_bind(spec.http_bind)
    if spec.http is None:
        return None
    return "127.0.0.1", parse_bind(spec.http.removeprefix("http://"))[1]


class Node:
    def __init__(self, cluster: Cluster, node_id: str, config: Config = Config(),
                 http: tuple[str, int] | None = None) -> None:
        spec = cluster.node(node_id)
        # The data directory first: its refusals (another node's, empty) say more.
        self.store = SqliteStore.open(spec.data_dir, cluster.id, node_id)
        self.http: HttpServer | None = None
        try:
            key: KeyPair | None = None
            if cluster.secure:
                key = read_node_key(spec.key_file, node_id, spec.public_key)
            # The ZAP handler runs only inside receive(), once the service below exists.
            self.transport = Transport(cluster, node_id, key,
                                       lambda public: self.service.principal_for_key(public),
                                       lambda principal: self.service.may_subscribe(principal))
        except BaseException:
            self.store.close()
            raise
        addresses = {n.id: n.address for n in cluster.nodes}
        # Compaction writes the state from a forked child; fetched snapshots go to files.
        self.snapshots = ForkedSnapshots(self.store.files)
        self.service = Service(node_id, addresses, self.store.load(), random.Random(),
                               _now_ms(), config, identities=identities(cluster),
                               bootstrap=bootstrap(cluster), quotas=cluster.limits,
                               snapshotter=self.snapshots, sinks=self.store.files.sink)
        self.transport.set_peers(peer_specs(cluster, self.service.replica.config)
                                 if self.service.replica.config.members
                                 else list(cluster.nodes))
        self.id = node_id
        self.cluster = cluster
        self._file_seen = _file_signature(cluster)
        self._next_reload_ms = _now_ms() + RELOAD_EVERY_MS
        self.stopping = False
        self.stop_reason = "stopped"
        self.service.extra_status = self._extra_status
        self.shared = Shared()
        self.observer = Observer(node_id, self.shared, self._transport_counters)
        self.store.on_sync = self.observer.synced
        if http is not None:
            try:
                server = HttpServer(http, cluster, node_id, self.shared, key)
                server.start()
            except BaseException:
                self.transport.close()
                self.store.close()
                raise
            self.http = server

    def run(self) -> None:
        svc, tr, store, obs = self.service, self.transport, self.store, self.observer
        next_tick = _now_ms()
        perf = time.perf_counter

        def save(p: Persist) -> None:
            store.save(p)
            if p.entries:
                obs.saved(p.entries)

        next_measure = next_prune = 0
        while not self.stopping:
            tr.poll(max(0, next_tick - _now_ms()))
            now = _now_ms()
            arrived = perf()
            for kind, body, route, principal in tr.receive():
                if kind == "peer":
                    svc.on_peer(body, now, principal)
                elif principal is not None:   # the transport names every client
                    obs.request_in(route, body, arrived)
                    svc.on_client(route, body, now, principal)
            if self.snapshots.busy:
                self._snapshot_written()
            if now >= next_tick:
                if now >= next_measure:
                    svc.observe_db_bytes(store.db_bytes_in_use())
                    next_measure = now + DB_MEASURE_MS
                svc.tick(now)
            svc.step(save, tr.send)
            changed = svc.take_config()
            if changed is not None:
                log.info("configuration: %s", ", ".join(
                    f"{m.id}{'' if m.voting else ' (learner)'}" for m in changed.members))
                tr.set_peers(peer_specs(self.cluster, changed))
            if svc.removed:
                log.error("stopping: %s; this node will not start again", svc.removed)
                self.stop_reason = f"removed: {svc.removed}"
                self.stopping = True
            replies, events = svc.take_outbox()
            if replies:
                answered = perf()
                for route, payload in replies:
                    tr.reply(route, payload)
                    obs.reply_out(route, payload, answered)
            removed = svc.take_removed_subscribers()
            if removed:
                event(log, logging.INFO, "subscribers_dropped",
                      f"{', '.join(removed)} removed; ending every PUB subscription so that "
                      "only keys still allowed come back", removed=removed)
                tr.drop_subscribers()
            if events:
                tr.publish(events)
                obs.changes(events)
            for what, exc in svc.take_incidents():
                log.error("answered internal: %s", what, exc_info=exc)
            store.maintain()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_MS
                store.prune(svc.stored_snapshots())
            tr.maintain(now)
            if now >= self._next_reload_ms:
                self._next_reload_ms = now + RELOAD_EVERY_MS
                self._reload_keys()
            obs.after_turn(svc, now)
            next_tick = min(svc.next_timer_ms(), _now_ms() + MAX_SLEEP_MS)

    def _snapshot_written(self) -> None:
        done = self.snapshots.poll()
        if done is None:
            return
        index, got = done
        if isinstance(got, str):
            event(log, logging.ERROR, "snapshot_failed",
                  f"writing the snapshot at index {index} failed: {got}; the log is kept "
                  "and the snapshot tried again later", index=index, reason=got)
            self.service.snapshot_failed(index)
        else:
            self.service.snapshot_written(index, got)

    def _reload_keys(self) -> None:
        """Take new public keys of members from the cluster file, if it changed."""
        path, old = self.cluster.path, self.cluster
        seen = _file_signature(old)
        if path is None or seen is None or seen == self._file_seen:
            return
        self._file_seen = seen
        try:
            new = clusterfile.load(path)
        except ClusterFileError as e:
            log.warning("not reloading the cluster file: %s", e)
            return
        if _layout(new) != _layout(old):
            log.warning("%s changed beyond member keys; not applied (that needs a restart)", path)
            return
        if new.node(self.id).public_key != old.node(self.id).public_key:
            log.warning("%s names another key for %s; this node keeps its own until restarted",
                        path, self.id)
        nodes = tuple(o if o.id == self.id else n for n, o in zip(new.nodes, old.nodes, strict=True))
        rekeyed = [n for n, o in zip(nodes, old.nodes, strict=True) if n.public_key != o.public_key]
        if not rekeyed:
            return
        why = self.service.take_file_keys({n.id: n.public_key for n in rekeyed if n.public_key})
        if why is not None:     # kept as they were, so a corrected file is compared afresh
            log.warning("not taking the member keys of %s: %s", path, why)
            return
        self.cluster = dataclasses.replace(old, nodes=nodes)
        for spec in rekeyed:
            # A node outside the configuration (removed, and perhaps about to be added
            # back with this key) is not connected: the change that adds it connects it.
            connected = self.transport.rekey(spec)
            event(log, logging.INFO, "member_rekeyed",
                  f"new public key for {spec.id} in {path}"
                  + ("; reconnecting" if connected else " (not a member now)"),
                  member=spec.id, public_key=spec.public_key)

    def _extra_status(self) -> dict[str, Any]:
        return {"db_bytes": self.store.db_bytes(),
                "fsync_p99_ms": round(self.store.save_p99_ms(), 3),
                "bad_frames": self.transport.counters.bad_frames,
                "dropped_sends": self.transport.counters.dropped_sends,
                "oversize_sends": self.transport.counters.oversize_sends,
                "rejected_keys": self.transport.counters.rejected_keys,
                "subscriber_drops": self.transport.counters.subscriber_drops,
                "http": self.cluster.node(self.id).http,
                "cluster_name": self.cluster.name}

    def _transport_counters(self) -> dict[str, int]:
        c = self.transport.counters
        return {"bad_frames": c.bad_frames, "dropped_sends": c.dropped_sends,
                "oversize_sends": c.oversize_sends, "rejected_keys": c.rejected_keys,
                "peer_handshake_failures": c.peer_handshake_failures,
                "subscriber_drops": c.subscriber_drops}

    def close(self) -> None:
        self.snapshots.close()
        if self.http is not None:
            self.http.close()
        self.transport.close()
        self.store.close()


def _layout(c: Cluster) -> tuple[object, ...]:
    """Everything in a cluster file but the members' keys."""
    return (c.name, c.id, c.security, c.admin_public_key,
            [(n.id, n.address, n.publish, n.http, n.http_bind, n.bind, n.publish_bind, n.data_dir)
             for n in c.nodes])


def _file_signature(cluster: Cluster) -> tuple[int, int, int] | None:
    if cluster.path is None:
        return None
    try:
        st = os.stat(cluster.path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def serve(cluster: Cluster, node_id: str, config: Config = Config(), log_level: str = "info",
          log_format: str = "text", http: str | None = None) -> int:
    """Run node ``node_id`` in the foreground until SIGTERM/SIGINT. Returns the exit code.

    ``http`` (HOST:PORT) overrides where the node serves HTTP (``http_bind`` in the cluster
    file, else loopback on its ``http`` port)."""
    logs.setup(node_id, log_level, log_format)
    try:
        bind = http_bind(cluster, node_id, http)
        node = Node(cluster, node_id, config, bind)
    except (DataDirError, TransportError, ClusterFileError, KeyFileError, HttpError) as e:
        # One line on stderr (CONTRACT §2), not a log line besides it.
        print(f"coordctl serve: {node_id}: {e}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        node.stopping = True
        node.stop_reason = f"signal {signal.Signals(signum).name}"

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    spec = cluster.node(node_id)
    listening = "" if spec.listen == spec.address else f", listening on {spec.listen}"
    event(log, logging.INFO, "start",
          f"serving at {spec.address}{listening} (cluster {cluster.name}, {len(cluster.nodes)} members)",
          address=spec.address, publish=spec.publish, bind=spec.listen,
          publish_bind=spec.publish_listen, cluster=cluster.name,
          members=len(cluster.nodes), pid=os.getpid())
    if node.http is not None:
        host, port = node.http.address
        event(log, logging.INFO, "http", f"HTTP on {host}:{port} (/metrics /healthz /readyz, "
              f"dashboard at /); advertised as {spec.http}", bind=f"{host}:{port}",
              advertised=spec.http)
    else:
        event(log, logging.WARNING, "http", f"no HTTP: {cluster.path} gives {node_id} no http "
              "address (files from before HTTP); add http = \"http://HOST:PORT\" or pass --http")
    if cluster.secure:
        log.info("security: curve (every connection encrypted; peers and clients "
                 "authenticated by key)")
    else:
        log.warning("security: INSECURE (plain TCP: no encryption, no authentication; anyone "
                    "who reaches the ports can read and write); create clusters without "
                    "--insecure to get CURVE keys")
    try:
        node.run()
    except SafetyViolation as e:
        event(log, logging.CRITICAL, "stop", f"stopping: {e}", reason=f"safety violation: {e}")
        return EXIT_SAFETY
    except (sqlite3.Error, OSError) as e:
        # Only the store does file I/O in the loop (sockets raise zmq errors): a write
        # failed, and nothing acknowledged may depend on it, so stop (see storage.sqlite).
        why = f"writing {node.store.db_path} failed: {type(e).__name__}: {' '.join(str(e).split())}"
        event(log, logging.CRITICAL, "stop", f"stopping: {why}", reason=why)
        return EXIT_DISK
    except Exception as e:
        # Anything else escaping the loop is a bug (requests that raise are answered
        # ``internal`` by the service): say so, then let the traceback out.
        event(log, logging.CRITICAL, "stop", f"stopping: {type(e).__name__}: {e}",
              reason=f"{type(e).__name__}: {e}")
        raise
    finally:
        node.close()
    event(log, logging.INFO, "stop", f"stopped ({node.stop_reason})", reason=node.stop_reason)
    return 0
