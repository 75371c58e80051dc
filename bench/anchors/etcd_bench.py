"""etcd as a benchmark anchor: a 3-member cluster on 127.0.0.1, driven by the python etcd3
client (``etcd3==0.12.0`` with ``protobuf<4``, from ``bench/.venv-anchors``).

Started with the Debian ``etcd-server`` binary (3.4.x, default durability: the WAL is
fsynced before a write is acknowledged), one process per member, data under a temp dir,
through coordsvc's launcher (``coordsvc.runtime.launch``, standard library only, found
from the repository root) and stopped by PID. Clients connect to the leader's client port
(etcd's best case: a follower would forward every request to the leader).
"""
from __future__ import annotations

import os
import queue
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from coordsvc.runtime import launch

from ..measure import CLIENT
from ..systems import Conn, System, WatchStream

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"

_default_hook = threading.excepthook


def _quiet_closed_watch(args: threading.ExceptHookArgs) -> None:
    """etcd3 0.12's watch thread re-opens its stream forever and dies with "Channel
    closed" once its client is closed: expected at teardown, not a benchmark error."""
    if (args.thread is not None and args.thread.name.startswith("etcd3_watch")
            and isinstance(args.exc_value, ValueError) and "closed" in str(args.exc_value)):
        return
    _default_hook(args)


threading.excepthook = _quiet_closed_watch


class _EtcdWatch(WatchStream):
    def __init__(self, client: Any, prefix: str) -> None:
        self._q: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._client = client
        self._id = client.add_watch_prefix_callback(prefix, self._on)

    def _on(self, resp: Any) -> None:
        for ev in getattr(resp, "events", ()):   # an exception object has none
            if type(ev).__name__ == "PutEvent":
                self._q.put((ev.key.decode(), ev.value))

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        try:
            self._client.cancel_watch(self._id)
        except Exception:
            pass


class _EtcdConn(Conn):
    def __init__(self, port: int) -> None:
        import etcd3
        self.c = etcd3.client(host="127.0.0.1", port=port, timeout=10)

    def put(self, key: str, value: bytes) -> None:
        self.c.put(key, value)

    def get(self, key: str) -> bytes | None:
        v, _meta = self.c.get(key)   # linearizable (serializable=False) by default
        return v

    def lock_acquire(self, name: str, timeout: float) -> Any:
        lk = self.c.lock(name, ttl=10)
        return lk if lk.acquire(timeout=timeout) else None

    def lock_release(self, handle: Any) -> None:
        handle.release()

    def watch(self, prefix: str) -> WatchStream:
        return _EtcdWatch(self.c, prefix)

    def close(self) -> None:
        self.c.close()


class EtcdSystem(System):
    name = "etcd"

    def __init__(self, nodes: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="etcdbench-"))
        base = launch.free_base_port(nodes, random.Random(), 41000, 61000)
        self.client_port = {f"e{i}": base + i for i in range(1, nodes + 1)}
        peer_port = {f"e{i}": base + 100 + i for i in range(1, nodes + 1)}
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peer_port.items())
        self.procs: dict[str, launch.Proc] = {}
        version = subprocess.run([ETCD_BIN, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[0]
        self.notes = (f"{version}; WAL fsync per commit (default); python etcd3 0.12 client "
                      "in the bench process, connected to the leader")
        try:
            for n in self.client_port:
                cu = f"http://127.0.0.1:{self.client_port[n]}"
                pu = f"http://127.0.0.1:{peer_port[n]}"
                self.procs[n] = launch.start(
                    [ETCD_BIN, "--name", n, "--data-dir", str(self.root / n),
                     "--listen-client-urls", cu, "--advertise-client-urls", cu,
                     "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"bench-{base}"],
                    self.root / f"{n}.log")
            self.leader_port = self._wait_leader()
        except BaseException:
            self.close()
            raise

    def _wait_leader(self, timeout_s: float = 30.0) -> int:
        import etcd3
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            for port in self.client_port.values():
                try:
                    c = etcd3.client(host="127.0.0.1", port=port, timeout=2)
                    try:
                        st = c.status()
                        leader_urls = st.leader.client_urls if st.leader else []
                        c.put("bench/ready", "1")
                    finally:
                        c.close()
                    for u in leader_urls:
                        return int(u.rsplit(":", 1)[1])
                except Exception as e:   # not up yet
                    last = e
            time.sleep(0.2)
        raise RuntimeError(f"etcd: no leader within {timeout_s}s ({last}); logs in {self.root}")

    def connect(self) -> Conn:
        return _EtcdConn(self.leader_port)

    def pids(self) -> dict[str, int]:
        return {**{n: p.pid for n, p in self.procs.items()}, CLIENT: os.getpid()}

    def close(self) -> None:
        launch.stop(self.procs.values())
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
