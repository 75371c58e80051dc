"""etcd as a benchmark anchor: a 3-member cluster on 127.0.0.1, driven by the python etcd3
client (``etcd3==0.12.0`` with ``protobuf<4``, from ``bench/.venv-anchors``).

Started with the Debian ``etcd-server`` binary (3.4.x, default durability: the WAL is
fsynced before a write is acknowledged), one process per member, data under a temp dir,
through coordsvc's launcher (``coordsvc.runtime.launch``, standard library only, found
from the repository root) and stopped by PID. Clients connect to the leader's client port
(etcd's best case: a follower would forward every request to the leader).

Locks: ``lock_acquire`` is etcd's session lock, ``concurrency.Mutex`` on a
``concurrency.Session`` as Go users run it (``SessionLock`` below: one lease per client,
kept alive, reused by every acquire; waiters queue by create revision). The python
library's own ``client.lock()`` (a lease granted per acquire, waiters retry on a watch)
is ``library_lock_acquire``: the lock_1_lib row.
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


class SessionLock:
    """etcd's ``concurrency.Session`` + ``concurrency.Mutex`` (clientv3 3.4), in python.

    The session is one lease (``ttl_s``), kept alive every ttl/3 from a thread, as
    clientv3's keepalive loop does, and revoked on ``close``. ``acquire(name)`` is
    ``Mutex.Lock``: one transaction puts the waiter key ``<prefix><lease id>`` (if it is not
    there yet) and reads the oldest waiter; if that is not us, wait until every waiter
    created before us is deleted (a watch on the newest of them, repeated), as
    ``waitDeletes`` does. ``release`` is ``Mutex.Unlock``: delete our key. An uncontended
    cycle is two requests: the transaction and the delete.
    """

    PREFIX = "/session-locks/"

    def __init__(self, client: Any, ttl_s: int = 10) -> None:
        self.c = client
        self.lease_id: int = client.lease(ttl_s).id
        self._stop = threading.Event()
        self._ttl_s = ttl_s
        self._keeper = threading.Thread(target=self._keepalive, daemon=True,
                                        name=f"etcd-session-{self.lease_id:x}")
        self._keeper.start()

    def _keepalive(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            try:
                for _ in self.c.refresh_lease(self.lease_id):
                    pass
            except Exception:   # the next round retries; a lost lease shows as lost locks
                pass

    def _call(self, stub_method: Any, request: Any) -> Any:
        return stub_method(request, self.c.timeout, credentials=self.c.call_credentials,
                           metadata=self.c.metadata)

    def acquire(self, name: str, timeout_s: float) -> bytes | None:
        from etcd3 import etcdrpc, utils
        pfx = f"{self.PREFIX}{name}/".encode()
        end = utils.increment_last_byte(pfx)
        key = pfx + f"{self.lease_id:x}".encode()
        rr = etcdrpc.RangeRequest
        owner = etcdrpc.RequestOp(request_range=rr(
            key=pfx, range_end=end, sort_order=rr.ASCEND, sort_target=rr.CREATE, limit=1))
        txn = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(key=key, result=etcdrpc.Compare.EQUAL,
                                     target=etcdrpc.Compare.CREATE, create_revision=0)],
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
                key=key, value=b"", lease=self.lease_id)), owner],
            failure=[etcdrpc.RequestOp(request_range=rr(key=key)), owner])
        resp = self._call(self.c.kvstub.Txn, txn)
        my_rev = (resp.header.revision if resp.succeeded
                  else resp.responses[0].response_range.kvs[0].create_revision)
        kvs = resp.responses[1].response_range.kvs
        if not kvs or kvs[0].create_revision == my_rev:
            return key
        deadline = time.monotonic() + timeout_s
        # waitDeletes: until no waiter created before us is left
        while True:
            older = self._call(self.c.kvstub.Range, rr(
                key=pfx, range_end=end, sort_order=rr.DESCEND, sort_target=rr.CREATE,
                limit=1, max_create_revision=my_rev - 1))
            if not older.kvs:
                return key
            left = deadline - time.monotonic()
            if left <= 0:
                self.release(key)   # as Mutex.Lock does when its context ends
                return None
            self._wait_delete(older.kvs[0].key, older.header.revision, left)

    def _wait_delete(self, key: bytes, from_rev: int, timeout_s: float) -> None:
        """Until ``key`` is deleted at or after revision ``from_rev`` (or ``timeout_s``)."""
        from etcd3 import events, exceptions
        try:
            ev = self.c.watch_once(key, timeout=timeout_s, start_revision=from_rev)
        except exceptions.WatchTimedOut:
            return
        if not isinstance(ev, events.DeleteEvent):
            time.sleep(0.001)   # a put on a waiter key cannot happen; re-check anyway

    def release(self, key: bytes) -> None:
        self.c.delete(key)

    def close(self) -> None:
        self._stop.set()
        self._keeper.join(5)
        try:
            self.c.revoke_lease(self.lease_id)
        except Exception:
            pass


class _EtcdConn(Conn):
    def __init__(self, port: int) -> None:
        import etcd3
        self.c = etcd3.client(host="127.0.0.1", port=port, timeout=10)
        self._session: SessionLock | None = None   # opened on the first lock, then reused

    def put(self, key: str, value: bytes) -> None:
        self.c.put(key, value)

    def get(self, key: str) -> bytes | None:
        v, _meta = self.c.get(key)   # linearizable (serializable=False) by default
        return v

    def lock_acquire(self, name: str, timeout: float) -> Any:
        if self._session is None:
            self._session = SessionLock(self.c, ttl_s=10)
        return self._session.acquire(name, timeout)

    def lock_release(self, handle: Any) -> None:
        assert self._session is not None
        self._session.release(handle)

    def library_lock_acquire(self, name: str, timeout: float) -> Any:
        lk = self.c.lock(name, ttl=10)
        return lk if lk.acquire(timeout=timeout) else None

    def library_lock_release(self, handle: Any) -> None:
        handle.release()

    def watch(self, prefix: str) -> WatchStream:
        return _EtcdWatch(self.c, prefix)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self.c.close()


class EtcdSystem(System):
    name = "etcd"

    def __init__(self, nodes: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="etcdbench-"))
        base = launch.free_base_port(nodes, random.Random(), 26000, 29000)
        self.client_port = {f"e{i}": base + i for i in range(1, nodes + 1)}
        peer_port = {f"e{i}": base + 100 + i for i in range(1, nodes + 1)}
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peer_port.items())
        self.procs: dict[str, launch.Proc] = {}
        version = subprocess.run([ETCD_BIN, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[0]
        self.notes = (f"{version}; WAL fsync per commit (default); python etcd3 0.12 client "
                      "in the bench process, connected to the leader; locks: session lock "
                      "(concurrency.Mutex recipe, one lease per client), lock_1_lib: etcd3's "
                      "client.lock (a lease per acquire)")
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
