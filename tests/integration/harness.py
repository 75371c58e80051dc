"""Real clusters for tests: node processes on loopback, real SQLite files, cleanup by PID.

Clusters are secure (CURVE) unless a test asks for ``secure=False``: tests reach them with
the admin key ``cluster.key`` (``cluster.client()``, ``cluster.socket()``), like a user.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import zmq

from coordsvc import Client, keys, wire
from coordsvc.clusterfile import Cluster, load, mark_added, write_keys, write_new
from coordsvc.runtime import launch
from coordsvc.storage.datadir import init_data_dir

_ports = random.Random(os.getpid())


def free_base_port(nodes: int) -> int:
    """A base port whose node ports (base+i, base+100+i, base+200+i) are all free right now."""
    return launch.free_base_port(nodes, _ports)


def socket_to(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, cluster: Cluster, address: str,
              key_file: Path | None = None) -> zmq.Socket[bytes]:
    """An unconnected socket of ``kind`` for ``address`` (a node's ROUTER or PUB): in a
    secure cluster a CURVE client with ``key_file`` (default: the admin key), pinning the
    node's public key as the cluster file says *now* (a replaced node has a new one)."""
    s: zmq.Socket[bytes] = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if cluster.secure and cluster.path is not None:
        current = load(cluster.path)
        servers = {**{n.publish: n.public_key for n in current.nodes}, **current.server_keys()}
        ck = keys.read_client_key(key_file or current.admin_key_file)  # type: ignore[arg-type]
        s.setsockopt(zmq.CURVE_PUBLICKEY, ck.pair.public.encode())
        s.setsockopt(zmq.CURVE_SECRETKEY, ck.pair.secret.encode())
        s.setsockopt(zmq.CURVE_SERVERKEY, servers[address].encode())  # type: ignore[union-attr]
    return s


class Probe:
    """A minimal protocol speaker (one DEALER per node) for status checks in tests."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ctx = zmq.Context()
        self.rid = 0

    def call(self, node_id: str, op: str, timeout: float = 1.0, **fields: Any) -> dict[str, Any] | None:
        address = self.cluster.node(node_id).address
        s = socket_to(self.ctx, zmq.DEALER, self.cluster, address)
        try:
            s.connect(address)
            self.rid += 1
            s.send(wire.encode_client(wire.CLIENT_REQUEST, {"id": self.rid, "op": op, **fields}))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if s.poll(int(left * 1000)):
                    reply = wire.decode_client(s.recv(), wire.CLIENT_REPLY)
                    if reply.get("id") == self.rid:
                        return reply
            return None
        finally:
            s.close()

    def status(self, node_id: str) -> dict[str, Any] | None:
        r = self.call(node_id, "status", timeout=0.5)
        return r["status"] if r and r.get("ok") else None

    def close(self) -> None:
        self.ctx.destroy(linger=0)


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3, distinct_hosts: bool = False,
                 secure: bool = True, host: str = "127.0.0.1", bind_host: str | None = None,
                 **tuning: int) -> None:
        self.root = root
        cluster_keys = keys.ClusterKeys.generate(f"n{i}" for i in range(1, nodes + 1)) if secure else None
        self.cluster = write_new(root, nodes, host=host, base_port=free_base_port(nodes),
                                 tuning=tuning, distinct_hosts=distinct_hosts,
                                 cluster_keys=cluster_keys, bind_host=bind_host)
        for n in self.cluster.nodes:
            init_data_dir(n.data_dir, self.cluster.id, n.id)
        if cluster_keys is not None:
            write_keys(self.cluster, cluster_keys)
        #: The admin client key file (None for an insecure cluster).
        self.key: Path | None = self.cluster.admin_key_file if secure else None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.probe = Probe(self.cluster)
        self.file = root / "cluster.toml"

    def client(self, timeout: float = 10.0, endpoints: list[str] | None = None) -> Client:
        """A Client with the admin key (plain TCP when the cluster is insecure), pinning
        the nodes' public keys as the cluster file names them now (a replaced node has a
        new one)."""
        return Client(endpoints or load(self.file), timeout=timeout, key=self.key)

    def socket(self, ctx: zmq.Context[zmq.Socket[bytes]], kind: int, address: str,
               key_file: Path | None = None) -> zmq.Socket[bytes]:
        """A raw socket for ``address`` with the admin key (or ``key_file``); not connected."""
        return socket_to(ctx, kind, self.cluster, address, key_file)

    @property
    def ids(self) -> list[str]:
        return self.cluster.ids

    @property
    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    def start(self, node_id: str | None = None, *args: str) -> None:
        """Start one node (or all), with extra ``serve`` flags (``--log-format json``)."""
        for nid in [node_id] if node_id else self.ids:
            self.procs[nid] = launch.start_node(self.file, nid, self.root / f"{nid}.log", *args)

    def new_machine(self, node_id: str) -> str | None:
        """The machine of removed member ``node_id`` replaced: its data directory wiped, a
        new key pair (secure cluster), and the cluster file marking it added under that key.
        Its new public key (None: insecure). ``add_back`` then adds and starts it."""
        spec = self.cluster.node(node_id)
        shutil.rmtree(spec.data_dir)
        public = None
        if self.cluster.secure:
            pair = keys.KeyPair.generate()
            keys.write_node_key(spec.key_file, node_id, pair)
            public = pair.public
        self.cluster = mark_added(self.cluster, node_id, public)
        return public

    def add_back(self, client: Client, node_id: str, public: str | None) -> None:
        """Add ``node_id`` (after ``new_machine``) as a learner through ``client``, then
        start it on a joining data directory: it copies the state and is promoted."""
        spec = self.cluster.node(node_id)
        client.member_add(node_id, spec.address, publish=spec.publish, http=spec.http or "",
                          public_key=public or "")
        init_data_dir(spec.data_dir, self.cluster.id, node_id, joining=True)
        self.start(node_id)

    def http(self, node_id: str) -> str:
        """The base URL of a node's HTTP endpoints (metrics, health, dashboard)."""
        url = self.cluster.node(node_id).http
        assert url is not None
        return url

    def signal(self, node_id: str, sig: int) -> None:
        self.procs[node_id].send_signal(sig)

    def kill(self, node_id: str) -> None:
        launch.kill(self.procs.pop(node_id))

    def stop(self, node_id: str) -> int:
        p = self.procs.pop(node_id)
        launch.stop([p], grace_s=10.0)
        return p.returncode

    def leader(self, timeout: float = 10.0, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for nid in self.ids:
                if nid in exclude or nid not in self.procs:
                    continue
                st = self.probe.status(nid)
                if st and st["role"] == "leader" and st["commit_index"] >= 0:
                    return nid
            time.sleep(0.02)
        raise AssertionError(f"no leader within {timeout}s; logs in {self.root}")

    def wait_up(self, timeout: float = 30.0) -> None:
        """Until every started node answers ``status``: its ROUTER and its HTTP listener
        are bound before its loop runs. (A leader is elected by two of three, so a third
        slow to start is not up yet when ``leader()`` returns.)"""
        deadline = time.monotonic() + timeout
        for nid in list(self.procs):
            while self.probe.status(nid) is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{nid} did not answer within {timeout}s; logs in {self.root}")
                time.sleep(0.02)

    def log(self, node_id: str) -> str:
        return (self.root / f"{node_id}.log").read_text(errors="replace")

    def close(self) -> None:
        for nid in list(self.procs):
            launch.kill(self.procs.pop(nid))
        self.probe.close()


class RawWriter:
    """Pipelined puts straight over the protocol, retried with the same (client_id, seq).

    Used where a test needs load the Client would serialise: many writes in flight on
    one socket, so the leader batches them into few log entries.
    """

    def __init__(self, cluster: Cluster, client_id: str, window: int = 64) -> None:
        from coordsvc.core.commands import Put, Request, encode_request
        self._Put, self._Request, self._encode = Put, Request, encode_request
        self.cluster = cluster
        self.client_id = client_id
        self.window = window
        self.ctx = zmq.Context()
        self.acked: dict[str, int] = {}
        self.unknown: set[str] = set()
        self._target = 0

    def _socket(self) -> zmq.Socket[bytes]:
        address = self.cluster.endpoints[self._target % len(self.cluster.endpoints)]
        s = socket_to(self.ctx, zmq.DEALER, self.cluster, address)
        s.connect(address)
        return s

    def put_all(self, items: list[tuple[str, bytes]], deadline: float,
                stop: Any = None) -> None:
        """Write every item (key unique per item) until acked or the deadline passes."""
        seqs = {i + 1: kv for i, kv in enumerate(items)}
        todo = sorted(seqs)
        inflight: dict[int, tuple[int, float]] = {}   # rid -> (seq, sent_at)
        s = self._socket()
        rid = 0
        done: set[int] = set()
        lowest = 1
        try:
            while (todo or inflight) and time.monotonic() < deadline:
                if stop is not None and stop.is_set():
                    break
                while todo and len(inflight) < self.window:
                    seq = todo.pop(0)
                    key, value = seqs[seq]
                    while lowest in done:
                        lowest += 1
                    first = lowest   # we may still retry anything not yet acknowledged
                    req = self._encode(self._Request(self.client_id, seq, first,
                                                     self._Put(key, value, None, None)))
                    rid += 1
                    s.send(wire.encode_client(wire.CLIENT_REQUEST, {"id": rid, "op": "write", "req": req}))
                    inflight[rid] = (seq, time.monotonic())
                if s.poll(50):
                    r = wire.decode_client(s.recv(), wire.CLIENT_REPLY)
                    got = inflight.pop(r.get("id"), None)  # type: ignore[arg-type]
                    if got is None:
                        continue
                    seq = got[0]
                    if r.get("ok") and r["result"][0] == "ok":
                        done.add(seq)
                        self.acked[seqs[seq][0]] = r["result"][2]["revision"]
                    else:
                        if r.get("error") == "not_leader" and r.get("leader_address"):
                            self._target = self.cluster.endpoints.index(r["leader_address"])
                        elif r.get("error") == "not_leader":
                            self._target += 1
                        todo.insert(0, seq)
                        s.close()
                        s = self._socket()
                        todo.extend(q for q, _ in inflight.values())
                        todo.sort()
                        inflight.clear()
                        time.sleep(0.02)
                now = time.monotonic()
                if any(now - t > 1.0 for _, t in inflight.values()):
                    for q, _ in inflight.values():
                        todo.insert(0, q)
                    inflight.clear()
                    s.close()
                    self._target += 1
                    s = self._socket()
                    todo.sort()
        finally:
            s.close()
        self.unknown = {seqs[q][0] for q in seqs if q not in done}

    def close(self) -> None:
        self.ctx.destroy(linger=0)
