"""Playing the outsider of issue 12 against real secure clusters: every message is built
with the project's own encoder and names a real member as its sender. Each attack must
change nothing (keys, revision, leader and ballot, commit index) and leave every node up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from coordsvc import PermissionDenied, keys, wire
from coordsvc.core.commands import Put, Request, encode_request
from coordsvc.core.machine import Machine
from coordsvc.core.messages import (
    Accept,
    CatchupReply,
    Heartbeat,
    Message,
    Prepare,
    SnapshotChunk,
    SnapshotInfo,
)
from coordsvc.core.types import Ballot

from ..integration.harness import LocalCluster

# A long election timeout: a leader change during a test must be the attack's doing,
# never a slow machine's.
QUIET = {"election_timeout_ms": 3000}
Ctx = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("secure"), **QUIET)
    c.start()
    try:
        c.leader(timeout=20)
        with c.client() as cl:
            for i in range(5):
                cl.put(f"real/{i}", f"v{i}")
        yield c
    finally:
        c.close()


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    context: Ctx = zmq.Context()
    yield context
    context.destroy(linger=0)


def stranger_key(cluster: LocalCluster, tmp_path: Path, name: str = "mallory") -> Path:
    """A well-formed client key file the cluster has never heard of."""
    admin = keys.read_client_key(cluster.key)  # type: ignore[arg-type]
    path = tmp_path / f"{name}.key"
    keys.write_client_key(path, dataclasses.replace(admin, name=name, pair=keys.KeyPair.generate()))
    return path


def snapshot_of(cluster: LocalCluster) -> dict[str, Any]:
    """What must not change: every node's view and the whole key space, once followers
    have heard the leader's last commit (they learn it with the next heartbeat)."""
    deadline = time.monotonic() + 5
    while True:
        views = {}
        for nid in cluster.ids:
            st = cluster.probe.status(nid)
            assert st is not None, f"{nid} stopped answering"
            views[nid] = (st["role"], st["leader"], tuple(st["ballot"]), st["commit_index"],
                          st["revision"], st["keys"])
        if len({v[1:] for v in views.values()}) == 1 or time.monotonic() > deadline:
            break   # converged (or not: then the comparison shows how)
        time.sleep(0.02)
    with cluster.client() as c:
        data = {e.key: (e.value, e.revision) for e in c.list("")}
    return {"views": views, "data": data}


def counters(cluster: LocalCluster, field: str) -> dict[str, int]:
    out = {}
    for nid in cluster.ids:
        st = cluster.probe.status(nid)
        assert st is not None
        out[nid] = st[field]
    return out


def forged_messages(cluster: LocalCluster, target: str) -> list[Message]:
    """What the issue's outsider sent: each names a member (not ``target``) as its sender."""
    st = cluster.probe.status(target)
    assert st is not None
    leader = st["leader"]
    src = leader if leader != target else next(n for n in cluster.ids if n != target)
    rnd, owner = st["ballot"]
    commit = st["commit_index"]
    forged_put = encode_request(Request("forger", 1, 1, Put("secret/db_password", b"forged", None, None)))
    m = Machine()   # a whole state holding one forged key, as a snapshot
    m.apply(1, Request("forger", 1, 1, Put("only", b"forged", None, None)))
    data = m.snapshot()
    info = SnapshotInfo(commit + 10, len(data), hashlib.sha256(data).digest())
    return [
        Heartbeat(src, Ballot(rnd + 1, src), commit + 5, 1),
        Prepare(src, Ballot(rnd + 1000, src), 1),
        Accept(src, Ballot(rnd, owner), commit + 1, (forged_put,), commit + 1),
        CatchupReply(src, Ballot(rnd, owner), ((commit + 1, (forged_put,)),), None, commit + 1),
        CatchupReply(src, Ballot(rnd, owner), (), info, commit + 10),
        SnapshotChunk(src, info, 0, data),
    ]


def monitored(sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                   | zmq.EVENT_HANDSHAKE_SUCCEEDED)


def wait_handshake(monitor: zmq.Socket[bytes], timeout_s: float = 5.0) -> int:
    """The first handshake outcome the monitor reports (an EVENT_HANDSHAKE_* value)."""
    from zmq.utils.monitor import recv_monitor_message
    assert monitor.poll(int(timeout_s * 1000)), "no handshake outcome reported"
    return int(recv_monitor_message(monitor)["event"])


def wait_until(what: str, check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def attack(cluster: LocalCluster, ctx: Ctx, key_file: Path | None, *, secure_socket: bool,
           expect: int) -> None:
    """Send every forged message to every node from a socket with ``key_file``."""
    for target in cluster.ids:
        address = cluster.cluster.node(target).address
        if secure_socket:
            s = cluster.socket(ctx, zmq.DEALER, address, key_file)
        else:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
        mon = monitored(s)
        s.connect(address)
        for msg in forged_messages(cluster, target):
            try:
                s.send(wire.encode_peer(msg), zmq.NOBLOCK)
            except zmq.Again:
                pass   # refused: the connection is gone, nothing can be queued for it
        assert wait_handshake(mon) == expect
        s.disable_monitor()
        mon.close()
        s.close()


def barrier(cluster: LocalCluster) -> None:
    """Every node has taken in what was sent before: a heartbeat round trip per node."""
    before = counters(cluster, "commit_index")
    with cluster.client() as c:
        c.get("real/0")   # a linearizable read: the leader confirmed with a quorum
    assert counters(cluster, "commit_index") == before


# -- forged peer traffic ------------------------------------------------------------------

def test_forged_peer_messages_without_a_key_never_get_past_the_handshake(
        cluster: LocalCluster, ctx: Ctx) -> None:
    before = snapshot_of(cluster)
    attack(cluster, ctx, None, secure_socket=False, expect=zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    barrier(cluster)
    assert snapshot_of(cluster) == before
    assert all(p.poll() is None for p in cluster.procs.values())


def test_forged_peer_messages_from_an_unknown_key_are_refused_at_the_handshake(
        cluster: LocalCluster, ctx: Ctx, tmp_path: Path) -> None:
    before = snapshot_of(cluster)
    refused = counters(cluster, "rejected_keys")
    attack(cluster, ctx, stranger_key(cluster, tmp_path), secure_socket=True,
           expect=zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    barrier(cluster)
    assert snapshot_of(cluster) == before
    after = counters(cluster, "rejected_keys")
    assert all(after[n] >= refused[n] + 1 for n in cluster.ids), (refused, after)
    assert all(p.poll() is None for p in cluster.procs.values())


def test_forged_peer_messages_over_a_valid_client_key_are_dropped_and_counted(
        cluster: LocalCluster, ctx: Ctx) -> None:
    before = snapshot_of(cluster)
    rejected = counters(cluster, "rejected_peer")
    attack(cluster, ctx, cluster.key, secure_socket=True, expect=zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sent = len(forged_messages(cluster, cluster.ids[0]))
    wait_until("every forged message counted",
               lambda: all(v >= rejected[n] + sent
                           for n, v in counters(cluster, "rejected_peer").items()))
    barrier(cluster)
    assert snapshot_of(cluster) == before
    assert all(p.poll() is None for p in cluster.procs.values())


def test_a_member_cannot_speak_for_another_member(cluster: LocalCluster, ctx: Ctx,
                                                  tmp_path: Path) -> None:
    # n3's own key (as if n3 were compromised) sending messages that claim to be n2's.
    n3 = cluster.cluster.node("n3")
    pair = keys.read_node_key(n3.key_file, "n3")
    as_n3 = tmp_path / "n3-as-client.key"
    keys.write_client_key(as_n3, keys.ClientKey("n3", pair, ()))
    before = snapshot_of(cluster)
    rejected = counters(cluster, "rejected_peer")
    s = cluster.socket(ctx, zmq.DEALER, cluster.cluster.node("n1").address, as_n3)
    s.connect(cluster.cluster.node("n1").address)
    st = cluster.probe.status("n1")
    assert st is not None
    s.send(wire.encode_peer(Prepare("n2", Ballot(st["ballot"][0] + 1000, "n2"), 1)))
    wait_until("the claim counted", lambda: counters(cluster, "rejected_peer")["n1"] > rejected["n1"])
    s.close()
    barrier(cluster)
    assert snapshot_of(cluster) == before


# -- eavesdropping ------------------------------------------------------------------------

def test_nobody_without_a_members_or_admins_key_hears_the_values_written(
        cluster: LocalCluster, ctx: Ctx, tmp_path: Path) -> None:
    node = cluster.cluster.node(cluster.leader())
    plain = ctx.socket(zmq.SUB)
    plain.setsockopt(zmq.LINGER, 0)
    stranger = cluster.socket(ctx, zmq.SUB, node.publish, stranger_key(cluster, tmp_path))
    admin = cluster.socket(ctx, zmq.SUB, node.publish)   # the positive control
    outsiders = {"no key": plain, "unknown key": stranger}
    monitors = {name: monitored(s) for name, s in outsiders.items()}
    for s in (plain, stranger):
        s.setsockopt(zmq.SUBSCRIBE, b"")         # everything: heartbeats and values
    admin.setsockopt(zmq.SUBSCRIBE, b"ksecret/")
    for s in (plain, stranger, admin):
        s.connect(node.publish)
    assert wait_handshake(monitors["no key"]) == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    assert wait_handshake(monitors["unknown key"]) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    with cluster.client() as c:
        deadline = time.monotonic() + 10
        heard = None
        i = 0
        while heard is None:   # a subscription reaches the node asynchronously
            assert time.monotonic() < deadline, "the admin never heard a value"
            i += 1
            c.put("secret/db_password", f"hunter{i}")
            if admin.poll(100):
                heard = admin.recv_multipart()
    assert heard[0] == b"ksecret/db_password"
    for name, s in outsiders.items():
        assert s.poll(0) == 0, f"an eavesdropper with {name} heard something"
    for s in (plain, stranger):
        s.disable_monitor()
    for s in (*monitors.values(), plain, stranger, admin):
        s.close()


# -- rejected client keys -----------------------------------------------------------------

@pytest.mark.parametrize("op", ["get", "put", "status", "watch"])
def test_a_rejected_key_fails_fast_with_permission_denied(cluster: LocalCluster, tmp_path: Path,
                                                         op: str) -> None:
    from coordsvc import Client
    before = snapshot_of(cluster)
    with Client(cluster.endpoints, timeout=10.0, key=stranger_key(cluster, tmp_path)) as c:
        t0 = time.monotonic()
        with pytest.raises(PermissionDenied, match="rejected this client's key"):
            if op == "get":
                c.get("real/0")
            elif op == "put":
                c.put("secret/x", "y")
            elif op == "status":
                c.status()
            else:
                c.watch("real/", start_revision=1).next(timeout=5)
        assert time.monotonic() - t0 < 3.0
    assert snapshot_of(cluster) == before


def test_a_client_without_a_key_is_told_the_cluster_is_secure(cluster: LocalCluster) -> None:
    from coordsvc import Client
    with Client(cluster.endpoints, timeout=10.0) as c:
        t0 = time.monotonic()
        with pytest.raises(PermissionDenied, match="no key"):
            c.get("real/0")
        assert time.monotonic() - t0 < 3.0
