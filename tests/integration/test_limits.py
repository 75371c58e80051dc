"""Nothing a client sends or a peer claims can take a node down (issue 11, core and wire).

Real node processes on loopback, real SQLite files. Every value is at the documented
1 MiB limit; every process is stopped by PID (the ``LocalCluster`` fixture).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from coordsvc import Client
from coordsvc.core.commands import MAX_VALUE_BYTES
from coordsvc.core.messages import Accept, Heartbeat

from .harness import LocalCluster

pytestmark = pytest.mark.timeout(600)


def _value(tag: int) -> bytes:
    return hashlib.sha256(b"%d" % tag).digest() * (MAX_VALUE_BYTES // 32)


def _wait(what: str, cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _all_up(c: LocalCluster) -> None:
    dead = {n: p.poll() for n, p in c.procs.items() if p.poll() is not None}
    assert not dead, f"nodes exited: {dead}; logs in {c.root}"


def _caught_up(c: LocalCluster, nodes: list[str], slack: int = 0) -> bool:
    """Each node applied what the leader committed (within ``slack`` entries: while writes
    go on, a follower hears of the newest commits only with the next Accept or heartbeat)."""
    leader = c.leader()
    ls = c.probe.status(leader)
    if ls is None:
        return False
    for n in nodes:
        st = c.probe.status(n)
        if st is None or st["applied_index"] < ls["commit_index"] - slack:
            return False
    return True


def _readable_everywhere(c: LocalCluster, acked: dict[str, int], nodes: list[str]) -> None:
    """Every acknowledged write is on every node (stale reads: each node answers itself)."""
    for key, tag in sorted(acked.items()):
        want = _value(tag)
        for n in nodes:
            r = c.probe.call(n, "get", timeout=5.0, key=key, stale=True)
            assert r and r["ok"] and r["kv"] is not None, (n, key, r)
            assert r["kv"][1] == want, f"{n} has the wrong value for {key}"


@pytest.fixture
def big_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.close()


def test_eight_clients_writing_1_mib_values_at_once_take_no_node_down(
        big_cluster: LocalCluster) -> None:
    c = big_cluster
    c.leader()
    acked: dict[str, int] = {}
    errors: list[str] = []
    start = threading.Barrier(8)

    def writer(i: int) -> None:
        with Client(c.endpoints, timeout=30.0) as cl:
            start.wait()
            for j in range(3):
                key = f"big/{i}/{j}"
                try:
                    cl.put(key, _value(i * 3 + j))
                    acked[key] = i * 3 + j
                except Exception as e:   # any failure is reported below
                    errors.append(f"{key}: {e!r}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    _all_up(c)
    assert not errors and len(acked) == 24, errors[:3]
    _wait("every node to apply every write", lambda: _caught_up(c, c.ids), 30)
    _readable_everywhere(c, acked, c.ids)
    for n in c.ids:
        st = c.probe.status(n)
        assert st is not None and st["oversize_sends"] == 0, st


# --- the last line of defence: an oversize encode drops one message, not the node ----

def test_an_oversize_message_is_dropped_and_counted_and_the_client_hears_why(
        tmp_path: Path) -> None:
    from coordsvc import wire
    from coordsvc.core.messages import Outbound
    from coordsvc.core.types import Ballot
    from coordsvc.transport.zmq_transport import Transport

    c = LocalCluster(tmp_path)          # not started: this test drives n1's transport itself
    t = Transport(c.cluster, "n1")
    ctx = zmq.Context()
    try:
        huge = (b"x" * (wire.MAX_FRAME_BYTES + 1),)  # cannot happen by construction
        t.send([Outbound("n2", Accept("n1", Ballot(1, "n1"), 1, huge, 0)),
                Outbound("n2", Heartbeat("n1", Ballot(1, "n1"), 0, 1))])
        assert t.counters.oversize_sends == 1
        client = ctx.socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(c.cluster.node("n1").address)
        client.send(wire.encode_client(wire.CLIENT_REQUEST, {"id": 7, "op": "status"}))
        route = None
        deadline = time.monotonic() + 5
        while route is None:
            assert time.monotonic() < deadline, "the request never arrived"
            t.poll(100)
            for kind, _body, r in t.receive():
                if kind == "client":
                    route = r
        t.reply(route, {"id": 7, "ok": True, "blob": b"y" * wire.MAX_FRAME_BYTES})
        assert t.counters.oversize_sends == 2
        assert client.poll(5000), "no answer: the client would wait out its timeout"
        reply = wire.decode_client(client.recv(), wire.CLIENT_REPLY)
        assert reply["id"] == 7 and reply["ok"] is False and reply["error"] == "internal"
        client.close()
    finally:
        t.close()
        ctx.term()
        c.close()
