"""The node process: one poll loop around the pure Service.

    inputs (sockets, timers) -> service -> save (one SQLite transaction) -> send -> reply

No threads, no busy waiting: the loop sleeps in zmq poll until a socket is readable
or the next timer is due. The CURVE handshakes of a secure cluster are authenticated in
this same loop (the transport's ZAP handler).

Members come from the log: the cluster file bootstraps the first configuration (recorded
in the data directory at the first start) and every chosen change after it connects the
transport to members added and drops members removed, their keys with them (the ZAP
handler asks the service, whose key table follows the configuration). A node that applies
a configuration without itself stops, says why, and its data directory refuses to start.
Member keys in the cluster file are still re-read when it changes (checked once a second):
a replaced node's new public key takes effect on every member without a restart.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .. import clusterfile
from ..clusterfile import Cluster, ClusterFileError
from ..core.identity import INSECURE, Identities
from ..core.membership import Member, Membership
from ..core.replica import Role
from ..core.service import Service
from ..core.types import Config, SafetyViolation
from ..keys import KeyFileError, KeyPair, read_node_key
from ..storage.datadir import DataDirError
from ..storage.sqlite import SqliteStore
from ..transport.zmq_transport import Transport, TransportError

log = logging.getLogger("coordsvc.node")
MAX_SLEEP_MS = 250
RELOAD_EVERY_MS = 1000


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def bootstrap(cluster: Cluster) -> Membership:
    """config(1) from the cluster file: its members but those added at runtime."""
    return Membership(tuple(Member(n.id, 0, True, n.address, n.publish, "", n.public_key or "")
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


class Node:
    def __init__(self, cluster: Cluster, node_id: str, config: Config = Config()) -> None:
        spec = cluster.node(node_id)
        # The data directory first: its refusals (another node's, empty) say more.
        self.store = SqliteStore.open(spec.data_dir, cluster.id, node_id)
        try:
            key: KeyPair | None = None
            if cluster.secure:
                key = read_node_key(spec.key_file, node_id, spec.public_key)
            # The ZAP handler runs only inside receive(), once the service below exists.
            self.transport = Transport(cluster, node_id, key,
                                       lambda public: self.service.principal_for_key(public))
        except BaseException:
            self.store.close()
            raise
        addresses = {n.id: n.address for n in cluster.nodes}
        self.service = Service(node_id, addresses, self.store.load(), random.Random(),
                               _now_ms(), config, identities=identities(cluster),
                               bootstrap=bootstrap(cluster))
        self.transport.set_peers(peer_specs(cluster, self.service.replica.config)
                                 if self.service.replica.config.members
                                 else list(cluster.nodes))
        self.id = node_id
        self.cluster = cluster
        self._file_seen = _file_signature(cluster)
        self._next_reload_ms = _now_ms() + RELOAD_EVERY_MS
        self.stopping = False
        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self.service.extra_status = self._extra_status

    def run(self) -> None:
        svc, tr, store = self.service, self.transport, self.store
        next_tick = _now_ms()
        while not self.stopping:
            tr.poll(max(0, next_tick - _now_ms()))
            now = _now_ms()
            for kind, body, route, principal in tr.receive():
                if kind == "peer":
                    svc.on_peer(body, now, principal)
                elif principal is not None:   # the transport names every client
                    svc.on_client(route, body, now, principal)
            if now >= next_tick:
                svc.tick(now)
            svc.step(store.save, tr.send)
            changed = svc.take_config()
            if changed is not None:
                log.info("configuration: %s", ", ".join(
                    f"{m.id}{'' if m.voting else ' (learner)'}" for m in changed.members))
                tr.set_peers(peer_specs(self.cluster, changed))
            if svc.removed:
                log.error("stopping: %s; this node will not start again", svc.removed)
                self.stopping = True
            replies, events = svc.take_outbox()
            for route, payload in replies:
                tr.reply(route, payload)
            if events:
                tr.publish(events)
            store.maintain()
            tr.maintain(now)
            if now >= self._next_reload_ms:
                self._next_reload_ms = now + RELOAD_EVERY_MS
                self._reload_keys()
            self._log_changes()
            next_tick = min(svc.next_timer_ms(), _now_ms() + MAX_SLEEP_MS)

    def _log_changes(self) -> None:
        r = self.service.replica
        if r.role is not self._role or r.leader != self._leader:
            log.info("role %s leader %s ballot %s commit %d", r.role.value, r.leader,
                     list(r.promised.as_list()), r.commit_index)
            self._role, self._leader = r.role, r.leader

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
        self.cluster = dataclasses.replace(old, nodes=nodes)
        self.service.identities = identities(self.cluster)
        for spec in rekeyed:
            log.info("new public key for %s in %s; reconnecting", spec.id, path)
            self.transport.rekey(spec)

    def _extra_status(self) -> dict[str, Any]:
        return {"db_bytes": self.store.db_bytes(),
                "fsync_p99_ms": round(self.store.save_p99_ms(), 3),
                "bad_frames": self.transport.counters.bad_frames,
                "dropped_sends": self.transport.counters.dropped_sends,
                "oversize_sends": self.transport.counters.oversize_sends,
                "rejected_keys": self.transport.counters.rejected_keys}

    def close(self) -> None:
        self.transport.close()
        self.store.close()


def _layout(c: Cluster) -> tuple[object, ...]:
    """Everything in a cluster file but the members' keys."""
    return (c.name, c.id, c.security, c.admin_public_key,
            [(n.id, n.address, n.publish, n.data_dir) for n in c.nodes])


def _file_signature(cluster: Cluster) -> tuple[int, int, int] | None:
    if cluster.path is None:
        return None
    try:
        st = os.stat(cluster.path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def serve(cluster: Cluster, node_id: str, config: Config = Config()) -> int:
    """Run node ``node_id`` in the foreground until SIGTERM/SIGINT. Returns the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {node_id} %(levelname)s %(message)s")
    try:
        node = Node(cluster, node_id, config)
    except (DataDirError, TransportError, ClusterFileError, KeyFileError) as e:
        print(f"coordctl serve: {node_id}: {e}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        node.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving at %s (cluster %s, %d members)", cluster.node(node_id).address,
             cluster.name, len(cluster.nodes))
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
        log.critical("stopping: %s", e)
        return 70
    finally:
        node.close()
    log.info("stopped")
    return 0
