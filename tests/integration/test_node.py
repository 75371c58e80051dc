"""Real node processes on loopback: election, failover, pauses, crashes, catch-up, bad starts."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordsvc.core.commands import Put, Request, encode_request

from .harness import LocalCluster, RawWriter


def _put(c: LocalCluster, node: str, key: str, value: bytes, seq: int) -> dict | None:  # type: ignore[type-arg]
    req = encode_request(Request("t-" + key, seq, seq, Put(key, value, None, None)))
    return c.probe.call(node, "write", timeout=2.0, req=req)


def _write_via_any(c: LocalCluster, key: str, value: bytes, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for nid in list(c.procs):
            r = _put(c, nid, key, value, 1)
            if r and r.get("ok"):
                return nid
        time.sleep(0.02)
    raise AssertionError(f"write of {key} did not succeed within {timeout}s")


def test_a_leader_is_elected_within_two_seconds(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    try:
        t0 = time.monotonic()
        c.start()
        c.leader(timeout=2.0)
        assert time.monotonic() - t0 < 2.0
    finally:
        c.close()


def test_sigkill_of_the_leader_gives_a_new_leader_and_writes_within_three_seconds(cluster: LocalCluster) -> None:
    old = cluster.leader()
    _write_via_any(cluster, "before", b"1", 5)
    t0 = time.monotonic()
    cluster.kill(old)
    new = cluster.leader(timeout=3.0, exclude={old})
    _write_via_any(cluster, "after", b"2", 3.0 - (time.monotonic() - t0))
    assert new != old and time.monotonic() - t0 < 3.0
    r = cluster.probe.call(new, "get", key="before")
    assert r and r["kv"][1] == b"1"


def test_a_paused_leader_steps_down_and_never_answers_from_a_stale_view(cluster: LocalCluster) -> None:
    old = cluster.leader()
    assert _put(cluster, old, "k", b"old", 1)["ok"]  # type: ignore[index]
    cluster.signal(old, signal.SIGSTOP)
    new = cluster.leader(timeout=5.0, exclude={old})
    r = _put(cluster, new, "k", b"new", 2)
    assert r and r["ok"]
    time.sleep(max(0.0, 5.0 - 1.5))   # the scenario itself: a 5 s pause
    cluster.signal(old, signal.SIGCONT)
    # Straight after waking, the old leader must not serve the value it had. A slow answer
    # (the node is draining 5 s of backlog) is fine; a stale one never is.
    replies = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(replies) < 20:
        r = cluster.probe.call(old, "get", timeout=1.0, key="k")
        if r is not None:
            replies.append(r)
            assert not r.get("ok") or r["kv"][1] == b"new", r
    assert replies, f"{old} answered nothing within 5 s of SIGCONT"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = cluster.probe.status(old)
        if st and st["role"] == "follower" and st["leader"] not in (None, old):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"{old} did not step down: {cluster.probe.status(old)}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_of_every_node_under_load_loses_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    print(f"seed={seed}")
    c = LocalCluster(tmp_path)
    c.start()
    writer = RawWriter(c.cluster, f"w{seed}")
    try:
        c.leader()
        items = [(f"k{i:05d}", f"v{i}".encode()) for i in range(3000)]
        stop = threading.Event()
        t = threading.Thread(target=writer.put_all, args=(items, time.monotonic() + 30, stop))
        t.start()
        for nid in rng.sample(c.ids, len(c.ids)):
            time.sleep(rng.uniform(0.05, 0.6))
            c.kill(nid)
        time.sleep(rng.uniform(0.0, 0.3))
        c.start()
        t.join(40)
        assert not t.is_alive()
        leader = c.leader()
        r = c.probe.call(leader, "list", timeout=5.0, prefix="k")
        assert r and r["ok"]
        present = {kv[0]: kv[1] for kv in r["kvs"]}
        missing = [k for k in writer.acked if k not in present]
        assert not missing, f"seed={seed}: acknowledged writes lost: {missing[:5]}"
        assert all(present[k] == dict(items)[k] for k in present)
        # Each applied put takes one revision: a put applied twice would show as extra.
        assert r["revision"] == len(present), f"seed={seed}: {r['revision']} revisions for {len(present)} keys"
        assert len(writer.acked) > 0
    finally:
        writer.close()
        c.close()


def test_a_follower_stopped_while_20000_entries_commit_catches_up_by_snapshot(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, snapshot_every=2000, max_batch_commands=1)
    c.start()
    writer = RawWriter(c.cluster, "bulk", window=256)
    try:
        leader = c.leader()
        lagger = next(n for n in c.ids if n != leader)
        c.kill(lagger)
        items = [(f"b{i:05d}", b"x" * 16) for i in range(20000)]
        writer.put_all(items, time.monotonic() + 120)
        assert not writer.unknown
        st = c.probe.status(leader)
        assert st and st["commit_index"] >= 2000 and st["snapshot_index"] > 0
        c.start(lagger)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lst = c.probe.status(lagger)
            if lst and lst["applied_index"] >= st["commit_index"] and lst["keys"] == 20000:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{lagger} did not catch up: {c.probe.status(lagger)}")
        assert lst["snapshot_index"] > 0  # it took the snapshot path
    finally:
        writer.close()
        c.close()


def _serve(cluster_file: Path, node: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordsvc.runtime", "--cluster", str(cluster_file),
                           "--node", node], capture_output=True, text=True, timeout=20)


def _one_line_reason(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_nodes_started_with_each_others_data_dirs_refuse_to_start(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    d1, d2 = (n.data_dir for n in c.cluster.nodes[:2])
    tmp = d1.with_name("swap")
    d1.rename(tmp)
    d2.rename(d1)
    tmp.rename(d2)
    _one_line_reason(_serve(c.file, "n1"), "n2")
    _one_line_reason(_serve(c.file, "n2"), "n1")
    c.close()


def test_a_corrupt_database_makes_the_node_refuse_to_start(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    db = c.cluster.nodes[0].data_dir / "node.db"
    data = bytearray(db.read_bytes())
    data[100:4000] = os.urandom(3900)
    db.write_bytes(bytes(data))
    _one_line_reason(_serve(c.file, "n1"), "corrupt")
    c.close()


def test_an_empty_data_dir_makes_the_node_refuse_to_start(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    for f in c.cluster.nodes[0].data_dir.iterdir():
        f.unlink()
    _one_line_reason(_serve(c.file, "n1"), "empty")
    c.close()


def test_a_port_already_taken_makes_the_node_refuse_to_start(tmp_path: Path) -> None:
    import socket
    c = LocalCluster(tmp_path)
    port = int(c.cluster.nodes[0].address.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        _one_line_reason(_serve(c.file, "n1"), str(port))
    c.close()


def test_sigterm_stops_a_node_gracefully_with_exit_0(cluster: LocalCluster) -> None:
    cluster.leader()
    assert cluster.stop("n1") == 0


def test_garbage_on_the_socket_is_counted_and_the_node_keeps_serving(cluster: LocalCluster) -> None:
    import zmq
    leader = cluster.leader()
    ctx = zmq.Context()
    s = cluster.socket(ctx, zmq.DEALER, cluster.cluster.node(leader).address)   # a valid key
    s.setsockopt(zmq.LINGER, 5000)   # close() must deliver the junk, not drop it
    s.connect(cluster.cluster.node(leader).address)
    for junk in (b"", b"\x00", b"\x01\x20garbage", os.urandom(300), b"\x01\x05" + os.urandom(50)):
        s.send(junk)
    s.send_multipart([b"a", b"b", b"c"])
    s.close()
    ctx.term()
    with socket_raw(cluster.cluster.node(leader).address) as raw:
        raw.sendall(os.urandom(2000))
    assert _put(cluster, leader, "still", b"ok", 1)["ok"]  # type: ignore[index]
    deadline = time.monotonic() + 5
    while (st := cluster.probe.status(leader)) is None or st["bad_frames"] < 6:
        assert time.monotonic() < deadline, st
        time.sleep(0.02)


class socket_raw:
    def __init__(self, endpoint: str) -> None:
        import socket
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)))

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.s

    def __exit__(self, *a: object) -> None:
        self.s.close()


def test_changes_are_published_to_subscribers_of_their_key(cluster: LocalCluster) -> None:
    import zmq

    from coordsvc import wire
    node = cluster.leader()
    ctx = zmq.Context()
    sub = cluster.socket(ctx, zmq.SUB, cluster.cluster.node(node).publish)   # the admin key
    sub.connect(cluster.cluster.node(node).publish)
    sub.setsockopt(zmq.SUBSCRIBE, b"kapp/")
    try:
        # A subscription reaches the node asynchronously: write until one change is seen.
        deadline = time.monotonic() + 10
        seq, got = 0, None
        while got is None:
            assert time.monotonic() < deadline, "no change was published"
            seq += 1
            assert _put(cluster, node, "other", b"-", seq)["ok"]        # type: ignore[index]
            assert _put(cluster, node, "app/x", b"%d" % seq, seq + 10_000)["ok"]  # type: ignore[index]
            if sub.poll(100):
                got = sub.recv_multipart()
        topic, body = got
        event = wire.decode_client(body, wire.EVENT)
        assert topic == b"kapp/x"
        assert event["type"] == "put" and event["key"] == "app/x"
        assert 1 <= int(event["value"]) <= seq
        assert type(event["revision"]) is int and event["revision"] > 0
    finally:
        sub.close()
        ctx.term()


def test_junk_sent_to_the_publish_socket_is_counted_and_the_node_keeps_serving(
        cluster: LocalCluster) -> None:
    import zmq
    leader = cluster.leader()
    ctx = zmq.Context()
    # An XSUB may send any message upstream, not only topics (with the admin key: a
    # stranger's handshake fails before it can send anything).
    s = cluster.socket(ctx, zmq.XSUB, cluster.cluster.node(leader).publish)
    s.setsockopt(zmq.LINGER, 5000)
    s.connect(cluster.cluster.node(leader).publish)
    for junk in ([b"\x07junk"], [b"\x01kapp/", b"extra frame"], [b""]):
        s.send_multipart(junk)
    s.close()
    ctx.term()
    deadline = time.monotonic() + 5
    while (st := cluster.probe.status(leader)) is None or st["bad_frames"] < 3:
        assert time.monotonic() < deadline, st
        time.sleep(0.02)
    assert _put(cluster, leader, "after-junk", b"ok", 1)["ok"]  # type: ignore[index]
