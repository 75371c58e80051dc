"""Locks, sessions, config, CAS, fencing and watches against real clusters (CONTRACT §4)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from coordsvc import Client, Compacted, CompareFailed, Event, FenceRejected, InvalidRequest, LockTimeout
from coordsvc.core.commands import Put, Request, encode_request

from .harness import LocalCluster


@pytest.fixture
def client(cluster: LocalCluster) -> Client:
    cluster.leader()
    c = cluster.client(timeout=10.0)
    yield c  # type: ignore[misc]
    c.close()


def test_contract_python_example_works_verbatim(cluster: LocalCluster,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.leader()
    monkeypatch.setenv("COORD_KEY", str(cluster.key))   # CONTRACT §7: the key, when not given
    c = Client(cluster.endpoints, timeout=5.0)
    rev = c.put("app/db_url", "postgres://...", if_revision=None)
    e = c.get("app/db_url")
    assert e is not None and e.key == "app/db_url" and e.value == b"postgres://..." and e.revision == rev
    assert c.list("app/") == [e]
    watch = c.watch("app/", start_revision=rev)
    ev = watch.next(timeout=5)
    assert ev == Event("put", "app/db_url", b"postgres://...", rev)
    watch.close()
    with c.lock("deploy", ttl=10.0, timeout=30.0) as lk:
        first = lk.token
        assert isinstance(first, int)
        with pytest.raises(LockTimeout):
            c.acquire("deploy", ttl=10.0, timeout=0)
    lk2 = c.acquire("deploy", ttl=10.0, timeout=0)
    assert lk2.token > first
    lk2.release()
    ok = c.delete("app/db_url", if_revision=None)
    assert ok is True and c.get("app/db_url") is None
    st = c.status()
    assert st["cluster"]["leader"] in cluster.ids and st["cluster"]["quorum"] is True
    assert {n["id"] for n in st["nodes"]} == set(cluster.ids)
    c.close()
    with Client.from_cluster_file(cluster.file) as c2:
        assert c2.get("app/db_url") is None


def test_put_get_delete_list_history_and_cas_rules(client: Client) -> None:
    r1 = client.put("cfg/a", b"1")
    r2 = client.put("cfg/a", "2", if_revision=r1)
    with pytest.raises(CompareFailed):
        client.put("cfg/a", "3", if_revision=r1)
    with pytest.raises(CompareFailed):
        client.put("cfg/a", "3", if_revision=0)
    r3 = client.put("cfg/b", "x", if_revision=0)
    assert [e.key for e in client.list("cfg/")] == ["cfg/a", "cfg/b"]
    assert [(ev.type, ev.value) for ev in client.history("cfg/a")] == [("put", b"1"), ("put", b"2")]
    with pytest.raises(CompareFailed):
        client.delete("cfg/b", if_revision=r2)
    assert client.delete("cfg/b", if_revision=r3) is True
    assert client.delete("cfg/b") is False
    assert client.get("cfg/a").value == b"2"  # type: ignore[union-attr]


@pytest.mark.parametrize("key,value", [("", b"v"), ("a\x00b", b"v"), ("k" * 513, b"v"),
                                       ("ok", b"x" * (1024 * 1024 + 1))])
def test_bad_keys_and_oversized_values_are_refused_and_write_nothing(client: Client, key: str, value: bytes) -> None:
    before = client.revision()
    with pytest.raises(InvalidRequest):
        client.put(key, value)
    assert client.revision() == before


def test_ten_clients_cas_the_same_revision_and_exactly_one_wins(cluster: LocalCluster, client: Client) -> None:
    rev = client.put("race", "start")
    results: list[str] = []
    clients = [cluster.client(timeout=10.0) for _ in range(10)]
    barrier = threading.Barrier(10)

    def go(i: int) -> None:
        barrier.wait()
        try:
            clients[i].put("race", f"w{i}", if_revision=rev)
            results.append("won")
        except CompareFailed:
            results.append("lost")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert sorted(results) == ["lost"] * 9 + ["won"]
    assert len(client.history("race")) == 2


def test_eight_contending_clients_are_granted_in_fifo_order(cluster: LocalCluster, client: Client) -> None:
    holder = client.acquire("fifo", ttl=10.0, timeout=0)
    clients = [cluster.client(timeout=10.0) for _ in range(8)]
    order: list[int] = []
    tokens: list[int] = []
    threads = []

    def wait_turn(i: int) -> None:
        lk = clients[i].acquire("fifo", ttl=10.0, timeout=30.0)
        order.append(i)
        tokens.append(lk.token)
        lk.release()

    for i in range(8):
        t = threading.Thread(target=wait_turn, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:   # enqueue strictly one after another
            info = [lk for lk in client.locks() if lk.name == "fifo"]
            if info and len(info[0].waiters) == i + 1:
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"waiter {i} never queued")
    (info,) = [lk for lk in client.locks() if lk.name == "fifo"]
    assert info.age_s is not None and info.age_s > 0
    waits = list(info.waits_s)
    assert len(waits) == 8 and all(w is not None for w in waits)
    assert waits == sorted(waits, reverse=True), waits   # first in line has waited longest
    holder.release()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert order == list(range(8))
    assert tokens == sorted(tokens) and len(set(tokens)) == 8 and tokens[0] > holder.token


HOLDER = textwrap.dedent("""
    import sys, time
    from coordsvc import Client
    c = Client(sys.argv[1].split(","), timeout=10.0, key=sys.argv[3])
    lk = c.acquire("job", ttl=float(sys.argv[2]), timeout=10)
    print(lk.token, flush=True)
    time.sleep(600)
""")


def test_a_killed_holders_lock_goes_to_the_next_waiter_within_ttl_plus_one_second(cluster: LocalCluster, client: Client) -> None:
    ttl = 2.0
    p = subprocess.Popen([sys.executable, "-c", HOLDER, ",".join(cluster.endpoints), str(ttl),
                          str(cluster.key)],
                         stdout=subprocess.PIPE, text=True)
    try:
        held = int(p.stdout.readline())  # type: ignore[union-attr]
        p.kill()
        t0 = time.monotonic()
        lk = client.acquire("job", ttl=5.0, timeout=ttl + 5)
        waited = time.monotonic() - t0
        assert lk.token > held
        assert waited <= ttl + 1.0, f"waited {waited:.2f}s for a {ttl}s ttl"
        lk.release()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]


def test_a_put_fenced_with_a_stale_token_is_rejected_and_changes_nothing(client: Client) -> None:
    old = client.acquire("res", ttl=5.0, timeout=0)
    rev = client.put("data", "v1", fence=old)
    old.release()
    new = client.acquire("res", ttl=5.0, timeout=0)
    with pytest.raises(FenceRejected):
        client.put("data", "stale", fence=old)
    e = client.get("data")
    assert e is not None and e.value == b"v1" and e.revision == rev
    client.put("data", "v2", fence=new)
    new.release()


def test_a_write_retried_after_the_leader_is_killed_is_applied_exactly_once(cluster: LocalCluster) -> None:
    for attempt in range(3):
        leader = cluster.leader()
        req = encode_request(Request(f"retry{attempt}", 1, 1, Put(f"once{attempt}", b"v", None, None)))
        import zmq

        from coordsvc import wire
        ctx = zmq.Context()
        s = cluster.socket(ctx, zmq.DEALER, cluster.cluster.node(leader).address)
        s.connect(cluster.cluster.node(leader).address)
        s.send(wire.encode_client(wire.CLIENT_REQUEST, {"id": 1, "op": "write", "req": req}))
        s.poll(20 if attempt else 2000)     # maybe the first answer arrives, maybe not
        s.close()
        ctx.destroy()
        cluster.kill(leader)
        new = cluster.leader(exclude={leader})
        for _ in range(100):
            r = cluster.probe.call(new, "write", timeout=2.0, req=req)   # the same bytes again
            if r and r.get("ok"):
                break
            time.sleep(0.05)
        h = cluster.probe.call(new, "history", key=f"once{attempt}")
        assert h and len(h["events"]) == 1, h
        cluster.start(leader)


def test_a_watch_across_a_leader_kill_sees_every_event_once_in_order(cluster: LocalCluster, client: Client) -> None:
    start = client.put("w/start", "0")
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with cluster.client(timeout=10.0) as wc:
            for i in range(150):
                acked.append(wc.put(f"w/k{i % 7}", str(i)))
                if stop.is_set():
                    break

    w = client.watch("w/", start_revision=start)
    t = threading.Thread(target=writer)
    t.start()
    seen: list[Event] = []
    killed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ev = w.next(timeout=1.0)
        if ev is not None:
            seen.append(ev)
        if not killed and len(seen) > 40:
            cluster.kill(cluster.leader())
            killed = True
        if not t.is_alive() and acked and seen and seen[-1].revision >= acked[-1]:
            break
    w.close()
    t.join()
    revs = [e.revision for e in seen]
    assert killed
    assert revs == sorted(set(revs)), "an event was repeated or reordered"
    assert revs[0] == start
    assert set(acked) <= set(revs), f"missing {sorted(set(acked) - set(revs))[:5]}"
    full = client.history  # every revision in range belongs to the prefix: no gaps at all
    assert revs == list(range(start, revs[-1] + 1)), full


def test_sessions_and_locks_survive_a_leader_change(cluster: LocalCluster, client: Client) -> None:
    lost: list[object] = []
    lk = client.acquire("keep", ttl=3.0, timeout=0, on_lost=lost.append)
    cluster.kill(cluster.leader())
    time.sleep(3.0 + 2.0)     # longer than the ttl plus an election: a dropped session would show
    info = [i for i in client.locks() if i.name == "keep"]
    assert info and info[0].holder_session == lk.session_id and info[0].token == lk.token
    assert not lost and not lk.lost
    client.put("fenced-after-failover", "ok", fence=lk)
    lk.release()


def test_a_watch_from_a_revision_older_than_the_window_raises_compacted(tmp_path: Path) -> None:
    from coordsvc.core.machine import WINDOW_EVENTS

    from .harness import RawWriter
    c = LocalCluster(tmp_path)
    c.start()
    writer = RawWriter(c.cluster, "fill", window=256)
    try:
        c.leader()
        items = [(f"f/{i % 50}", b"v") for i in range(WINDOW_EVENTS + 100)]
        # unique keys are not needed here; each put is its own revision
        writer.put_all(items, time.monotonic() + 120)
        assert not writer.unknown
        # Every node must have moved its window past revision 1 (a lagging follower
        # rightly still serves it).
        deadline = time.monotonic() + 30
        while not all((st := c.probe.status(n)) and st["revision"] >= len(items) for n in c.ids):
            assert time.monotonic() < deadline, [c.probe.status(n) for n in c.ids]
            time.sleep(0.05)
        with c.client(timeout=5.0) as cl:
            w = cl.watch("f/", start_revision=1)
            with pytest.raises(Compacted) as info:
                w.next(timeout=5)
            assert info.value.oldest > 1
            w.close()
            recent = cl.watch("f/", start_revision=cl.revision())
            assert recent.next(timeout=5).revision == cl.revision()  # type: ignore[union-attr]
            recent.close()
    finally:
        writer.close()
        c.close()
