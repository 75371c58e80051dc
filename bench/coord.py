"""coordsvc as a system under test: a cluster started with the project's own launcher
(``coordsvc.runtime.launch``, as `coordctl cluster up` and the tests start nodes), driven
through ``coordsvc.Client`` from the benchmark's own process.

Clusters started here live under a temp directory on 127.0.0.1, are secure (CURVE, like
``cluster init``) unless asked otherwise, and are stopped by PID, also on failure.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from coordsvc import Client, LockTimeout, Watch, __version__, clusterfile, keys
from coordsvc.runtime import launch
from coordsvc.storage.datadir import init_data_dir

from .measure import CLIENT
from .systems import Conn, System, WatchStream

REPO_DIR = Path(__file__).resolve().parent.parent


class _CoordWatch(WatchStream):
    def __init__(self, w: Watch) -> None:
        self._w = w

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        ev = self._w.next(timeout)
        if ev is None or ev.type != "put":
            return None
        return ev.key, ev.value

    def close(self) -> None:
        self._w.close()


class CoordConn(Conn):
    """One ``coordsvc.Client`` (a secure cluster: the admin key beside its file)."""

    def __init__(self, cluster: clusterfile.Cluster, timeout_s: float = 10.0) -> None:
        self.c = Client(cluster, timeout=timeout_s)

    def put(self, key: str, value: bytes) -> None:
        self.c.put(key, value)

    def get(self, key: str) -> bytes | None:
        e = self.c.get(key)
        return None if e is None else e.value

    def lock_acquire(self, name: str, timeout: float) -> Any:
        try:
            return self.c.acquire(name, ttl=10.0, timeout=timeout)
        except LockTimeout:
            return None

    def lock_release(self, handle: Any) -> None:
        handle.release()

    def watch(self, prefix: str) -> WatchStream:
        return _CoordWatch(self.c.watch(prefix))

    def list_prefix(self, prefix: str) -> tuple[int, int]:
        entries = self.c.list(prefix)
        return len(entries), sum(len(e.value) for e in entries)

    def close(self) -> None:
        self.c.close()


class CoordSystem(System):
    """A coordsvc cluster of ``nodes`` nodes started here, or an existing one
    (``cluster_file``: node PIDs found by their command line).

    ``tuning`` and ``limits`` go to the new cluster file's ``[tuning]`` and ``[limits]``."""

    name = "coordsvc"

    def __init__(self, cluster_file: Path | None = None, nodes: int = 3, insecure: bool = False,
                 tuning: dict[str, int] | None = None,
                 limits: dict[str, int] | None = None) -> None:
        self.procs: dict[str, launch.Proc] = {}
        self.root: Path | None = None
        if cluster_file is None:
            self.root = Path(tempfile.mkdtemp(prefix="coordbench-"))
            try:
                self.cluster = self._init(nodes, insecure, tuning, limits)
                for n in self.cluster.nodes:
                    self.start(n.id)
                self.wait_ready()
            except BaseException:
                self.close()
                raise
        else:
            self.cluster = clusterfile.load(cluster_file)
            self._found = _pids_by_cmdline(str(cluster_file), self.cluster.ids)
            self.wait_ready()
        self.notes = (f"coordsvc {__version__}: SQLite WAL synchronous=FULL (fsync per "
                      "acknowledged write batch); client = coordsvc.Client in the bench process; "
                      f"security {self.cluster.security}")

    def _init(self, nodes: int, insecure: bool, tuning: dict[str, int] | None,
              limits: dict[str, int] | None) -> clusterfile.Cluster:
        assert self.root is not None
        ck = None if insecure else keys.ClusterKeys.generate(f"n{i}" for i in range(1, nodes + 1))
        base = launch.free_base_port(nodes, random.Random(), 20000, 26000)
        c = clusterfile.write_new(self.root, nodes, base_port=base, tuning=tuning, cluster_keys=ck)
        if limits:
            with open(self.root / clusterfile.FILE_NAME, "a") as f:
                f.write("\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))
            c = clusterfile.load(self.root / clusterfile.FILE_NAME)
        for n in c.nodes:
            init_data_dir(n.data_dir, c.id, n.id)
        if ck is not None:
            clusterfile.write_keys(c, ck)
        return c

    @property
    def file(self) -> Path:
        assert self.cluster.path is not None
        return self.cluster.path

    def start(self, node_id: str) -> launch.Proc:
        """Start (or restart) one node of a cluster started here."""
        assert self.root is not None, "nodes of an existing cluster are not ours to start"
        p = launch.start_node(self.file, node_id, self.root / f"{node_id}.log", cwd=REPO_DIR)
        self.procs[node_id] = p
        return p

    def stop(self, node_id: str, grace_s: float = 10.0) -> None:
        """Stop one node gracefully (SIGTERM), by its PID."""
        launch.stop([self.procs.pop(node_id)], grace_s)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until a write is acknowledged (a leader with a quorum)."""
        with Client(self.cluster, timeout=timeout_s) as c:
            c.put("bench/ready", b"1")

    def node_pids(self) -> dict[str, int]:
        if self.root is None:
            return dict(self._found)
        return {nid: p.pid for nid, p in self.procs.items()}

    def leader(self) -> str | None:
        """The id of the node that leads now (after a write, so one does)."""
        with Client(self.cluster, timeout=10.0) as c:
            c.put("bench/ready", b"1")
            ep = c.leader
        return next((n.id for n in self.cluster.nodes if n.address == ep), None)

    def leader_pid(self) -> int | None:
        nid = self.leader()
        return None if nid is None else self.node_pids().get(nid)

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.cluster, timeout=timeout_s)

    def connect(self) -> CoordConn:
        return CoordConn(self.cluster)

    def pids(self) -> dict[str, int]:
        return {**self.node_pids(), CLIENT: os.getpid()}

    def close(self) -> None:
        launch.stop(self.procs.values())
        self.procs.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _pids_by_cmdline(cluster_file: str, ids: list[str]) -> dict[str, int]:
    """The node processes of an existing cluster: ``--cluster FILE --node ID`` in cmdline."""
    found: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in args]
        if "--cluster" in argv and "--node" in argv:
            i, j = argv.index("--cluster"), argv.index("--node")
            if i + 1 < len(argv) and j + 1 < len(argv) and \
                    os.path.realpath(argv[i + 1]) == os.path.realpath(cluster_file) and \
                    argv[j + 1] in ids:
                found[argv[j + 1]] = int(d.name)
    return found
