"""Identities as replicated state on real nodes: key rotation from the Python client, the
PUB stream of a removed admin, and the identity table across snapshots and restarts."""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from coordsvc import Client, PermissionDenied, keys
from coordsvc.core.commands import OpenAndAcquire

from ..integration.harness import LocalCluster
from .test_acl import add_key

Ctx = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # Snapshots every few entries, so the identity table travels in them.
    c = LocalCluster(tmp_path, election_timeout_ms=3000, snapshot_every=8)
    c.start()
    try:
        c.leader(timeout=20)
        yield c
    finally:
        c.close()


def test_rotation_the_old_key_is_refused_at_once_and_its_connection_and_watch_end(
        cluster: LocalCluster, tmp_path: Path) -> None:
    with cluster.client() as admin:
        old = add_key(cluster, admin, tmp_path, "web1", read=["app/"], write=["app/web/"])
        with Client(cluster.endpoints, timeout=5.0, key=old) as web:
            rev = admin.put("app/x", "1")
            w = web.watch("app/", start_revision=rev)
            assert w.next(5.0) is not None                # open and delivering
            assert web.get("app/x") is not None           # an open connection
            new = add_key(cluster, admin, tmp_path, "web2", read=["app/"], write=["app/web/"])
            admin.auth_remove("web1")
            with pytest.raises(PermissionDenied, match="removed"):
                w.next(5.0)
            with pytest.raises(PermissionDenied):
                web.get("app/x")                           # the same open connection
            with pytest.raises(PermissionDenied):
                web.put("app/web/y", "2")
        t0 = time.monotonic()
        with Client(cluster.endpoints, timeout=5.0, key=old) as again:
            with pytest.raises(PermissionDenied, match="rejected this client's key"):
                again.get("app/x")
        assert time.monotonic() - t0 < 3.0
        with Client(cluster.endpoints, timeout=5.0, key=new) as web2:
            assert web2.put("app/web/y", "2") > rev
        assert admin.get("app/web/y").value == b"2"  # type: ignore[union-attr]


def _sub(cluster: LocalCluster, ctx: Ctx, address: str, key: Path | None) -> tuple[
        zmq.Socket[bytes], zmq.Socket[bytes]]:
    s = cluster.socket(ctx, zmq.SUB, address, key)
    monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    s.setsockopt(zmq.SUBSCRIBE, b"kpub/")
    s.connect(address)
    return s, monitor


def _hear(admin: Client, subs: list[zmq.Socket[bytes]], what: str) -> None:
    """Put values until every one of ``subs`` heard one (subscriptions arrive asynchronously)."""
    deadline = time.monotonic() + 10
    waiting = set(subs)
    while waiting:
        assert time.monotonic() < deadline, f"a subscriber never heard {what}"
        admin.put("pub/k", what)
        for s in list(waiting):
            if s.poll(50):
                waiting.discard(s)


def test_a_removed_admins_pub_subscription_ends_and_it_cannot_subscribe_again(
        cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.cluster.node(cluster.leader())
    ctx: Ctx = zmq.Context()
    try:
        with cluster.client() as admin:
            ops_key = add_key(cluster, admin, tmp_path, "ops", admin=True)
            ops, ops_events = _sub(cluster, ctx, leader.publish, ops_key)
            control, _ = _sub(cluster, ctx, leader.publish, None)   # the bootstrap admin
            _hear(admin, [ops, control], "before")
            admin.auth_remove("ops")
            seen = []
            deadline = time.monotonic() + 10
            while zmq.EVENT_HANDSHAKE_FAILED_AUTH not in seen:
                assert time.monotonic() < deadline, f"ops was not cut off: {seen}"
                if ops_events.poll(100):
                    frames = ops_events.recv_multipart()
                    seen.append(int.from_bytes(frames[0][:2], "little"))
            assert seen[0] == zmq.EVENT_DISCONNECTED      # cut off, then refused by ZAP
            while ops.poll(0):
                ops.recv_multipart()                      # what it heard while it could
            _hear(admin, [control], "after")              # members and admins come back
            assert ops.poll(200) == 0, "a removed admin still hears the values written"
        st = cluster.probe.status(leader.id)
        assert st is not None and st["subscriber_drops"] == 1
    finally:
        ctx.destroy(linger=0)


def test_the_identity_table_survives_snapshots_a_restart_and_a_catch_up_by_snapshot(
        cluster: LocalCluster, tmp_path: Path) -> None:
    behind = [n for n in cluster.ids if n != cluster.leader()][0]
    cluster.stop(behind)
    with cluster.client() as admin:
        alice = add_key(cluster, admin, tmp_path, "alice", read=["app/"], lock=["jobs/"])
        bob = add_key(cluster, admin, tmp_path, "bob", write=["app/"])
        admin.auth_remove("bob")
        with Client(cluster.endpoints, timeout=5.0, key=alice) as a:
            # A session the client does not track (close() would end it): it outlives it.
            assert a._write(OpenAndAcquire("jobs/kept", 60_000, False)).code == "ok"
        table = admin.auth_list()
        for i in range(40):                       # several snapshots past the changes
            admin.put(f"app/{i}", str(i))
        commit = max(st["commit_index"] for st in (cluster.probe.status(n) for n in cluster.ids)
                     if st is not None)
    for n in list(cluster.procs):
        cluster.kill(n)                           # SIGKILL every node, then bring all back
    cluster.start()
    cluster.leader(timeout=20)
    for n in cluster.ids:
        deadline = time.monotonic() + 20
        while True:
            st = cluster.probe.status(n)
            if st is not None and st["snapshot_index"] >= commit - 8 and st["applied_index"] >= commit:
                break
            assert time.monotonic() < deadline, f"{n} did not catch up: {st}"
            time.sleep(0.05)
    with cluster.client() as admin:
        assert admin.auth_list() == table
        (info,) = [i for i in admin.locks() if i.name == "jobs/kept"]
        assert info.holder == "alice"
    # The node that was down learned the table from a snapshot: ask it alone.
    only = [cluster.cluster.node(behind).address]
    with Client(only, timeout=5.0, key=alice) as a:
        assert a.get("app/1", stale=True).value == b"1"  # type: ignore[union-attr]
        with pytest.raises(PermissionDenied):
            a.put("app/1", "x")
    with Client(only, timeout=5.0, key=bob) as b:
        with pytest.raises(PermissionDenied, match="rejected"):
            b.get("app/1", stale=True)
    assert keys.read_client_key(alice).name == "alice"


def _dashboard_admin(url: str, secret: str) -> bool:
    req = urllib.request.Request(url + "/api/whoami", headers={"X-Coord-Admin-Key": secret})
    with urllib.request.urlopen(req, timeout=5) as r:
        return bool(json.loads(r.read())["admin"])


def _eventually(what: str, check: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():      # the loop publishes the identity table to HTTP every 0.5 s
        assert time.monotonic() < deadline, f"not within {limit_s} s: {what}"
        time.sleep(0.05)


def test_the_dashboard_shows_values_to_the_tables_admins_and_not_to_a_removed_one(
        cluster: LocalCluster, tmp_path: Path) -> None:
    url = cluster.http(cluster.ids[0])
    assert cluster.key is not None
    bootstrap = keys.read_client_key(cluster.key).pair.secret
    with cluster.client() as admin:
        ops = keys.read_client_key(add_key(cluster, admin, tmp_path, "ops", admin=True)).pair.secret
        reader = keys.read_client_key(add_key(cluster, admin, tmp_path, "r", read=[""])).pair.secret
        _eventually("ops is an admin to the dashboard", lambda: _dashboard_admin(url, ops))
        assert _dashboard_admin(url, bootstrap) and not _dashboard_admin(url, reader)
    with Client(cluster.endpoints, timeout=5.0, key=tmp_path / "ops.key") as by_ops:
        by_ops.auth_remove("admin")
    _eventually("admin.key is refused", lambda: not _dashboard_admin(url, bootstrap))
    assert _dashboard_admin(url, ops)
