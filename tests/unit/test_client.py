"""The client against a real node in this process (``inproc.LocalNode``: the production
``Service`` on a memory store), reached through an in-process transport.

Where a test needs a node or network that misbehaves -- a lost reply, a redirect, a
silent node, an odd answer -- ``inproc.Faults`` scripts it per (endpoint, op) in front of
the transport; everything it does not script is the node's own answer. Endpoints are
names only: ``A``, ``B`` and ``C`` reach the same node unless a test says otherwise, and
``DEAD`` reaches nothing.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import coordsvc
from coordsvc import wire
from coordsvc.client import Client, Event, _client, _lock, _watch
from coordsvc.client._transport import Transport
from coordsvc.client.errors import (
    Compacted,
    CompareFailed,
    CoordError,
    FenceRejected,
    InvalidRequest,
    LockTimeout,
    Unavailable,
)
from coordsvc.clusterfile import Cluster, NodeSpec
from coordsvc.core import machine
from coordsvc.core.commands import ELECTION_PREFIX, decode_request
from coordsvc.fencing import fenced_file_write, fenced_write, read_file_fence

from .inproc import Faults, LocalNode, LocalTransport, answer, drop_replies, first, silent

A, B, C = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"
PROBE = _client._PROBE_AFTER   # the after of the request c.watch() checks its rights with
DEAD = "tcp://127.0.0.1:4"
Reply = dict[str, Any]


@pytest.fixture
def net(node: LocalNode) -> Faults:
    """A, B and C all reach ``node``; nothing is scripted yet."""
    return Faults(LocalTransport({A: node, B: node, C: node}))


@pytest.fixture(autouse=True)
def quick_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    # A silent node is skipped after 0.2 s instead of 1 s, to keep each test fast.
    monkeypatch.setattr(_client, "ATTEMPT_S", 0.2)


def client(net: Faults, *endpoints: str, timeout: float = 2.0) -> Client:
    return Client(list(endpoints or [A]), timeout=timeout, transport=net)


def not_leader(address: str | None) -> Reply:
    return {"ok": False, "error": "not_leader", "message": "ask elsewhere",
            "leader": None if address is None else "n1", "leader_address": address}


# -- retries and leader discovery -------------------------------------------------------------

def test_write_retried_after_a_dropped_reply_resends_identical_bytes_and_applies_once(
        node: LocalNode, net: Faults) -> None:
    net.on(A, "write", drop_replies(1))
    with client(net) as c:
        assert c.put("k", "v") == 1
    writes = node.ops("write")
    assert len(writes) == 2
    assert writes[0]["req"] == writes[1]["req"]          # same client_id, seq, command
    assert writes[0]["id"] != writes[1]["id"]            # but a fresh id per attempt
    r = decode_request(writes[0]["req"])
    assert r.client_id == c.client_id and r.seq == 1 and r.first_unacked == 1
    assert node.machine.revision == 1                    # applied once


def test_not_leader_with_leader_address_is_followed(net: Faults) -> None:
    net.on(B, "write", answer(not_leader(A)))
    with client(net, B) as c:                  # the leader is not even listed
        assert c.put("k", b"v") == 1
        assert c.leader == A
        c.put("k", b"w")
    assert len(net.sent(B, "write")) == 1      # the leader is remembered
    assert len(net.sent(A, "write")) == 2


def test_not_leader_without_address_tries_the_next_endpoint(net: Faults) -> None:
    net.on(A, "get", answer(not_leader(None)))
    with client(net, A, B) as c:
        assert c.get("nope") is None
    assert len(net.sent(B, "get")) == 1


def test_zmq_transport_drops_a_reply_with_a_stale_id() -> None:
    # The id check lives in the ZeroMQ transport, so the peer here is a bare ROUTER that
    # answers a leftover (another id) before the real reply.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"

    def peer() -> None:
        ident, body = router.recv_multipart()
        rid = wire.decode_client(body, wire.CLIENT_REQUEST)["id"]
        for reply in ({"id": rid + 1000, "ok": True, "stale": True}, {"id": rid, "ok": True}):
            router.send_multipart([ident, wire.encode_client(wire.CLIENT_REPLY, reply)])

    t = threading.Thread(target=peer)
    t.start()
    transport = Transport()
    try:
        now = time.monotonic()
        reply = transport.request(endpoint, {"op": "status"}, now + 2.0, now + 2.0)
        assert reply is not None and "stale" not in reply
    finally:
        t.join()
        transport.close()
        router.close()
        ctx.term()


@contextlib.contextmanager
def _node_that_dies_holding_a_request() -> Iterator[tuple[str, threading.Event]]:
    """A bare ROUTER that takes one request, as a node parks a long poll (a lock wait, a
    watch), then closes -- as a killed node's connections close. Yields its endpoint and
    an event set once it had the request."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    got = threading.Event()

    def node() -> None:
        router.recv_multipart()
        got.set()
        router.close()

    t = threading.Thread(target=node)
    t.start()
    try:
        yield endpoint, got
    finally:
        t.join()
        ctx.term()


def test_zmq_transport_gives_up_at_once_when_the_node_goes_away_during_a_long_poll() -> None:
    """The attempt ends when the connection does, so the caller tries another node (not
    when the long poll would have ended)."""
    with _node_that_dies_holding_a_request() as (endpoint, got):
        transport = Transport()
        try:
            now = time.monotonic()
            reply = transport.request(endpoint, {"op": "lock_wait"}, now + 120.0, now + 120.0)
            assert reply is None and got.is_set()
            assert time.monotonic() - now < 60.0, "the attempt waited for its deadline"
        finally:
            transport.close()


def test_the_async_client_gives_up_at_once_when_the_node_goes_away_during_a_long_poll() -> None:
    from coordsvc.aio import AsyncClient

    async def attempt(endpoint: str) -> dict[str, object] | None:
        ac = AsyncClient([endpoint], timeout=120.0)
        try:
            return await ac._attempt(endpoint, {"op": "lock_wait"}, 120.0)
        finally:
            await ac.close()

    with _node_that_dies_holding_a_request() as (endpoint, got):
        now = time.monotonic()
        assert asyncio.run(attempt(endpoint)) is None and got.is_set()
        assert time.monotonic() - now < 60.0, "the attempt waited for its deadline"


def test_silent_node_is_skipped_for_a_live_one(net: Faults) -> None:
    net.on(A, "get", silent())                 # SIGSTOPped: never answers
    with client(net, A, B) as c:
        t0 = time.monotonic()
        assert c.get("k") is None
        assert time.monotonic() - t0 < 1.0


def test_no_reachable_node_raises_unavailable_within_the_timeout(net: Faults) -> None:
    net.on(A, "write", silent())
    with client(net, DEAD, A, timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            c.put("k", "v")
        assert time.monotonic() - t0 < 0.5 + 0.3


def test_busy_and_unavailable_are_retried(net: Faults) -> None:
    net.on(A, "write", first({"ok": False, "error": "busy", "message": "full"},
                             {"ok": False, "error": "unavailable", "message": "lost"}))
    with client(net) as c:
        assert c.put("k", "v") == 1
    assert len(net.sent(A, "write")) == 3
    assert len({w["req"] for w in net.sent(A, "write")}) == 1


# -- results and limits -------------------------------------------------------------------------

def test_result_codes_map_to_exceptions(net: Faults) -> None:
    with client(net) as c:
        rev = c.put("k", "v", if_revision=0)
        with pytest.raises(CompareFailed) as cf:
            c.put("k", "w", if_revision=0)
        assert cf.value.current_revision == rev
        assert c.put("k", "w", if_revision=rev) == rev + 1
        assert c.delete("k", if_revision=rev + 1) is True
        assert c.delete("k") is False
        for code, exc in [("invalid", InvalidRequest), ("limit", InvalidRequest),
                          ("stale_request", Unavailable), ("fence_rejected", FenceRejected)]:
            net.on(A, "write", answer({"ok": True, "result": [code, 0, {"message": f"server says {code}"}]}))
            with pytest.raises(exc, match=f"server says {code}"):
                c.put("k", "v")
        net.on(A, "get", answer({"ok": False, "error": "bad_request", "message": "huh"}))
        with pytest.raises(InvalidRequest, match="huh"):
            c.get("k")


def test_a_malformed_reply_is_a_coord_error_not_a_crash(net: Faults) -> None:
    with client(net) as c:
        for reply in [{"ok": True, "kv": ["k", "not bytes", 1, 1, 1], "revision": 1},
                      {"ok": True, "kv": None},
                      {"ok": False, "error": ["not", "a", "code"]}]:
            net.on(A, "get", answer(reply))
            with pytest.raises(CoordError, match="malformed reply"):
                c.get("k")
        net.on(A, "get", answer({"ok": False, "error": "from_the_future", "message": "new"}))
        with pytest.raises(CoordError, match="from_the_future"):
            c.get("k")


def test_a_refused_request_is_answered_bad_request_by_the_node(node: LocalNode) -> None:
    transport = LocalTransport({A: node})
    now = time.monotonic()
    for payload, why in [({"op": "get"}, "missing field 'key'"),
                         ({"op": "get", "key": 5}, "must be str"),
                         ({"op": "watch", "after": -1}, "field 'after' must be in [0, 2**63 - 1]"),
                         ({"op": "nope"}, "unknown op")]:
        reply = transport.request(A, payload, now + 2.0, now + 2.0)
        assert reply is not None and reply["ok"] is False and reply["error"] == "bad_request"
        assert why in reply["message"]
    assert node.status()["bad_frames"] == 4


def test_limits_are_checked_before_sending(net: Faults) -> None:
    with client(net) as c:
        for key in ["", "a\x00b", "é" * 257]:
            with pytest.raises(InvalidRequest):
                c.put(key, "v")
            with pytest.raises(InvalidRequest):
                c.get(key)
        with pytest.raises(InvalidRequest, match="value"):
            c.put("k", b"x" * (1_048_576 + 1))
        with pytest.raises(InvalidRequest, match="if_revision"):
            c.put("k", "v", if_revision=-1)
        with pytest.raises(InvalidRequest, match="ttl"):
            c.acquire("lk", ttl=0.5)
        with pytest.raises(InvalidRequest):
            c.acquire("", ttl=5)
        with pytest.raises(InvalidRequest):
            c.watch("p", start_revision=-2)
        c.put("k" * 512, b"x" * 1_048_576)  # exactly at both limits: fine
    assert len(net.sent()) == 1


@pytest.mark.parametrize("call", [
    lambda c: c.put(5, "v"), lambda c: c.put("k", 5), lambda c: c.put("k", "\udc80"),
    lambda c: c.put("k", "v", if_revision="3"), lambda c: c.put("k", "v", fence="lock"),
    lambda c: c.get(None), lambda c: c.list(3), lambda c: c.watch("p", start_revision="1"),
    lambda c: c.acquire("l", ttl="5"), lambda c: c.acquire("l", ttl=math.nan),
    lambda c: c.acquire("l", ttl=math.inf), lambda c: c.acquire("l", timeout="5"),
    lambda c: c.acquire("l", timeout=-1), lambda c: c.acquire("l", timeout=math.nan),
    lambda c: c.acquire("l", timeout=math.inf), lambda c: c.acquire("l", ttl=-1),
    lambda c: c.acquire("l", ttl=1e300), lambda c: c.acquire("l", timeout=True),
    lambda c: c.acquire("l", ttl=2**1100), lambda c: c.acquire("l", timeout=2**1100),
    lambda c: c.watch("p", start_revision=2**70), lambda c: c.watch("p" * 513),
    lambda c: c.put("k", "v", if_revision=2**70), lambda c: c.delete("k", if_revision=2**64),
    lambda c: c.list("p", limit=0), lambda c: c.list("p", limit=True),
    lambda c: c.list("p", limit="2"), lambda c: c.list("p", limit=2**70),
    lambda c: c.list("p", start_after="a\x00"), lambda c: c.history(""), lambda c: c.history("k" * 513),
    lambda c: c.member_add("", "tcp://127.0.0.1:7104"), lambda c: c.member_add("n4", ""),
    lambda c: c.member_add(4, "tcp://127.0.0.1:7104"), lambda c: c.member_add("n4", 7104),
    lambda c: c.member_add("n" * 65, "tcp://127.0.0.1:7104"),
    lambda c: c.member_add("n4", "tcp://127.0.0.1:7104", public_key="k" * 513),
    lambda c: c.member_add("\udc80", "tcp://127.0.0.1:7104"),
    lambda c: c.member_add("n4", "tcp://127.0.0.1:7104", timeout_s=-1),
    lambda c: c.member_remove(None), lambda c: c.member_remove("n2", timeout_s="5"),
    lambda c: c.transfer_leader(""), lambda c: c.transfer_leader("n2", timeout_s=math.nan),
])
def test_bad_arguments_raise_invalid_request_and_send_nothing(net: Faults, call: Any) -> None:
    with client(net) as c:
        with pytest.raises(InvalidRequest):
            call(c)
    assert net.sent() == []


@pytest.mark.parametrize("kwargs", [
    {"endpoints": "tcp://127.0.0.1:1"}, {"endpoints": []}, {"endpoints": [5]},
    {"endpoints": ["udp://127.0.0.1:1"]}, {"endpoints": ["tcp://127.0.0.1:99999"]},
    {"endpoints": 7}, {"timeout": "5"}, {"timeout": math.nan}, {"timeout": math.inf},
    {"timeout": -1.0}, {"timeout": 0}, {"timeout": True}, {"timeout": 2**1100},
])
def test_client_construction_refuses_bad_arguments_with_invalid_request(
        kwargs: dict[str, Any], net: Faults) -> None:
    with pytest.raises(InvalidRequest):
        Client(**{"endpoints": [A], **kwargs}, transport=net)


def test_client_without_a_cluster_to_find_raises_invalid_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, net: Faults) -> None:
    monkeypatch.delenv("COORD_CLUSTER", raising=False)
    monkeypatch.delenv("COORD_ENDPOINTS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRequest, match="no cluster given"):
        Client(transport=net)
    with pytest.raises(InvalidRequest, match="not found"):
        Client.from_cluster_file(tmp_path / "missing.toml")


def test_reads_return_entries_and_events(net: Faults) -> None:
    with client(net) as c:
        c.put("app/b", "2")
        c.put("app/a", "1")
        c.put("other", "x")
        c.delete("app/b")
        assert c.list("app/") == [coordsvc.Entry("app/a", b"1", 2)]
        assert [e.key for e in c.list()] == ["app/a", "other"]
        assert c.history("app/b") == [Event("put", "app/b", b"2", 1), Event("delete", "app/b", b"", 4)]
        assert c.get("other", stale=True) == coordsvc.Entry("other", b"x", 3)
        assert c.revision() == 4
    assert [r["stale"] for r in net.sent(op="get")] == [True]
    assert len(net.sent(op="revision")) == 1


def test_many_threads_share_one_client(node: LocalNode, net: Faults) -> None:
    revs: list[int] = []
    with client(net) as c:
        def work(t: int) -> None:
            for i in range(10):
                revs.append(c.put(f"t{t}/{i}", "v"))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(revs) == list(range(1, 81))
    for w in node.ops("write"):
        r = decode_request(w["req"])
        assert r.first_unacked <= r.seq


def test_client_finds_endpoints_from_the_environment(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORD_CLUSTER", raising=False)
    monkeypatch.setenv("COORD_ENDPOINTS", B)
    with Client(transport=net) as c:
        assert c.endpoints == [B]
        assert c.get("k") is None
    with pytest.raises(CoordError, match="closed"):
        c.get("k")


def test_exceptions_are_exported_and_share_a_base() -> None:
    for name in ["CompareFailed", "LockTimeout", "InvalidRequest", "Unavailable", "FenceRejected",
                 "Compacted"]:
        assert issubclass(getattr(coordsvc, name), coordsvc.CoordError)
        assert name in coordsvc.__all__


# -- watches --------------------------------------------------------------------------------------

def test_watch_delivers_from_start_revision_inclusive(net: Faults) -> None:
    with client(net) as c:
        for i in range(1, 5):
            c.put(f"app/{i}", str(i))
        c.put("zzz", "other")
        with c.watch("app/", start_revision=2) as w:
            got = [w.next(1.0) for _ in range(3)]
            assert [e.revision for e in got if e] == [2, 3, 4]
            assert w.next(0.1) is None                    # nothing new: None, nothing lost
            c.put("app/5", "5")
            ev = w.next(1.0)
            assert ev == Event("put", "app/5", b"5", 6)


def test_watch_without_start_revision_sees_only_new_events(net: Faults) -> None:
    with client(net) as c:
        c.put("app/old", "1")
        w = c.watch("app/")
        c.put("app/new", "2")
        ev = next(iter(w))
        assert ev.key == "app/new"
        w.close()
        assert list(w) == []


def test_watch_orders_and_dedupes_and_resumes_after_the_last_delivered_revision(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watch, "WATCH_WAIT_S", 0.2)   # how long a silent node may park us

    def ev(r: int) -> list[object]:
        return ["put", f"p/{r}", b"v", r]
    batches = iter([[ev(3), ev(1), ev(2), ev(2)], [ev(2), ev(3), ev(4)]])

    def batch(req: Reply, forward: object) -> Reply | None:
        if req["after"] == PROBE:
            return {"ok": True, "revision": 0, "events": []}   # c.watch asks first: allowed?
        evs = next(batches, None)
        if evs is None:
            return None      # node A goes silent once it has said its piece
        return {"ok": True, "revision": max(e[3] for e in evs), "events": evs}  # type: ignore[type-var]
    net.on(A, "watch", batch)
    with client(net, A, B) as c:
        w = c.watch("p/", start_revision=1)
        assert [w.next(1.0) for _ in range(4)] == [
            Event("put", f"p/{r}", b"v", r) for r in (1, 2, 3, 4)]
        # node A goes silent: the watch moves to B, asking for events after revision 4
        net.on(B, "watch", answer({"ok": True, "revision": 5, "events": [ev(4), ev(5)]}))
        # a silent long poll looks like a parked one, so A is dropped after wait + attempt
        assert w.next(2.0) == Event("put", "p/5", b"v", 5)
    assert [r["after"] for r in net.sent(A, "watch")][:3] == [PROBE, 0, 3]
    assert net.sent(B, "watch")[0]["after"] == 4


def test_watches_of_one_client_share_one_long_poll(net: Faults) -> None:
    c = client(net)
    watches = [c.watch(f"w{i}/", start_revision=1) for i in range(10)]
    for i in range(10):
        c.put(f"w{i}/k", str(i))
    for i, w in enumerate(watches):
        assert w.next(2.0) == Event("put", f"w{i}/k", str(i).encode(), i + 1)
        assert w.next(0) is None                       # nobody else's events
    polls = net.sent(op="watch")
    assert polls[-1]["prefixes"] == [f"w{i}/" for i in range(10)]
    assert len(polls) < 10 * 10                        # not one poll per watch per event
    watches[0].close()
    assert watches[0].next(0) is None
    c.close()
    with pytest.raises(CoordError, match="closed"):
        watches[1].next(1.0)


def test_past_the_prefix_bound_one_poll_asks_for_everything_and_the_records_take_turns(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watch, "MAX_PREFIXES", 3)
    with client(net) as c:
        terms = [c.election(f"e{i}").campaign("me", ttl=5.0) for i in range(3)]
        for p in ("a/", "b/", "c/", "d/"):
            c.put(p + "k", "v")
        plain = [c.watch(p, start_revision=1) for p in ("a/", "b/", "c/", "d/")]
        records = [c.watch(ELECTION_PREFIX + f"e{i}", start_revision=1) for i in range(3)]
        for w, p in zip(plain, ("a/", "b/", "c/", "d/"), strict=True):
            assert w.next(2.0).key == p + "k"  # type: ignore[union-attr]
        for w, t in zip(records, terms, strict=True):
            ev = w.next(2.0)
            assert ev is not None and ev.value == b"%d\nme" % t.token and w.next(0) is None
        polls = [r["prefixes"] for r in net.sent(op="watch") if r.get("prefixes")]
        assert all(len(p) <= 3 and p[0] == "" for p in polls[-3:])
        for w in plain + records:
            w.close()


def test_a_slow_watch_reader_bounds_its_buffer_and_still_gets_every_event(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watch, "WATCH_LIMIT", 2)
    monkeypatch.setattr(_watch, "BUFFER_MAX", 4)
    with client(net) as c:
        for i in range(10):
            c.put(f"s/{i}", "v")
        w = c.watch("s/", start_revision=1)
        deadline = time.monotonic() + 2.0
        while not w._full():
            assert time.monotonic() < deadline, "the hub never filled the buffer"
            time.sleep(0.01)
        assert len(w._buf) <= 4 + 2 - 1        # full stops polling for it
        assert [w.next(2.0).key for _ in range(10)] == [f"s/{i}" for i in range(10)]  # type: ignore[union-attr]


def test_a_dropped_watch_is_no_longer_polled_for(net: Faults) -> None:
    with client(net) as c:
        w = c.watch("d/", start_revision=1)
        hub = c._hub
        assert hub is not None and len(hub._watches) == 1
        del w
        gc.collect()
        assert len(hub._watches) == 0


def test_watch_raises_compacted_with_the_oldest_revision(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "WINDOW_EVENTS", 3)
    with client(net) as c:
        for i in range(6):
            c.put("p/k", str(i))
        with pytest.raises(Compacted) as e:
            c.watch("p/", start_revision=1).next(1.0)
        assert e.value.oldest == 4
        w = c.watch("p/", start_revision=4)
        assert w.next(1.0) == Event("put", "p/k", b"3", 4)


# -- locks ----------------------------------------------------------------------------------------

def test_lock_grants_tokens_and_try_lock_times_out(node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        with c.lock("deploy", ttl=5.0, timeout=1.0) as lk:
            assert lk.token >= 1 and lk.held and not lk.lost
            assert lk.valid_until > time.monotonic()
            assert lk.ttl == lk.ttl_s == 5.0
            with pytest.raises(LockTimeout):
                c.acquire("deploy", ttl=5.0, timeout=0)
            assert node.machine.session_count == 1        # the failed try closed its session
            assert [(i.name, i.token) for i in c.locks()] == [("deploy", lk.token)]
        assert lk.released and node.machine.locks_held == 0 and node.machine.session_count == 0
        lk.release()                                      # idempotent
        lk2 = c.acquire("deploy", ttl=5.0, timeout=0)
        assert lk2.token > lk.token
        lk2.release()


def test_lock_list_reports_holder_ttl_age_and_waiters(net: Faults) -> None:
    with client(net) as c:
        holder = c.acquire("q", ttl=5.0)
        outcome: list[BaseException] = []

        def wait_in_line() -> None:
            try:
                c.acquire("q", ttl=5.0, timeout=0.5)
            except LockTimeout as e:
                outcome.append(e)
        waiting = threading.Thread(target=wait_in_line)
        waiting.start()
        deadline = time.monotonic() + 2.0
        while not (infos := c.locks()) or not infos[0].waiters:
            assert time.monotonic() < deadline, "the waiter never queued"
        (info,) = infos
        assert (info.name, info.holder_session, info.token) == ("q", holder.session_id, holder.token)
        assert info.ttl_left_s is not None and 0 < info.ttl_left_s <= 5.0
        assert info.age_s is not None and info.age_s >= 0
        assert len(info.waits_s) == 1 and info.waits_s[0] is not None
        waiting.join()
        assert len(outcome) == 1
        holder.release()


def test_waiter_is_granted_when_the_holder_releases(net: Faults) -> None:
    with client(net) as c:
        first_lock = c.acquire("q", ttl=5.0)
        releaser = threading.Timer(0.2, first_lock.release)
        releaser.start()
        second = c.acquire("q", ttl=5.0, timeout=1.5)
        releaser.join()
        assert second.token > first_lock.token
        assert net.sent(op="lock_wait")
        second.release()


def test_lock_timeout_cancels_and_holds_nothing(node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        holder = c.acquire("q", ttl=5.0)
        with pytest.raises(LockTimeout):
            c.acquire("q", ttl=5.0, timeout=0.3)
        assert node.machine.session_count == 1 and node.machine.locks()[0].waiters == ()
        holder.release()


def test_on_lost_fires_when_the_session_is_forgotten(net: Faults) -> None:
    fired = threading.Event()
    with client(net) as c:
        lk = c.acquire("l", ttl=1.0, on_lost=lambda lock: fired.set())
        net.on(A, "keepalive", answer({"ok": True, "known": False}))
        assert fired.wait(1.0) and lk.lost and not lk.held
        lk.release()


def test_on_lost_fires_before_the_ttl_when_keepalives_go_unanswered(net: Faults) -> None:
    fired: list[float] = []
    with client(net) as c:
        net.on(A, "keepalive", silent())
        t0 = time.monotonic()
        lk = c.acquire("l", ttl=1.0, on_lost=lambda lock: fired.append(time.monotonic()))
        deadline = t0 + 1.0
        while not fired and time.monotonic() < deadline + 0.5:
            time.sleep(0.01)
        assert fired and fired[0] < deadline and lk.lost
        # on_lost ran a margin before the lock's own deadline: before any regrant.
        assert fired[0] <= lk.valid_until - _lock.LOST_MARGIN_MIN_S + 0.05


def test_keepalive_extends_valid_until(net: Faults) -> None:
    with client(net) as c:
        lk = c.acquire("l", ttl=1.0)
        first_valid = lk.valid_until
        deadline = time.monotonic() + 2.0      # the first keepalive is due after ttl / 3
        while lk.valid_until <= first_valid:
            assert time.monotonic() < deadline, "valid_until never moved"
            time.sleep(0.01)
        assert lk.held and net.sent(op="keepalive")
        lk.release()


def test_a_lock_released_before_its_first_keepalive_sends_none_and_all_share_one_thread(
        net: Faults) -> None:
    def keepalive_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("coordsvc-keepalive")]

    with client(net) as c:
        for _ in range(20):
            c.acquire("short", ttl=30.0).release()     # first keepalive due after 10 s
        assert not net.sent(op="keepalive")
        held = [c.acquire(f"long-{i}", ttl=1.0) for i in range(5)]   # due after 0.33 s
        deadline = time.monotonic() + 2.0
        while not net.sent(op="keepalive"):
            assert time.monotonic() < deadline, "no keepalive was sent"
            time.sleep(0.01)
        assert keepalive_threads() == ["coordsvc-keepalive"]
        for lk in held:
            lk.release()
    assert keepalive_threads() == []


def test_released_locks_do_not_pile_up_in_the_keepalive_loop(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lock, "PURGE_MIN", 16)
    with client(net) as c:
        held = c.acquire("held", ttl=300.0)
        for i in range(200):
            c.acquire(f"short-{i % 3}", ttl=300.0).release()   # due in 100 s
        loop = c._keepalive
        assert loop is not None and len(loop._due) <= 16
        assert [e[2] for e in loop._due if not e[2].released] == [held]
        held.release()


def test_put_fenced_by_a_stale_lock_is_rejected_and_writes_nothing(net: Faults) -> None:
    with client(net) as c:
        old = c.acquire("res", ttl=5.0)
        rev = c.put("data", "from old", fence=old)
        old.release()
        new = c.acquire("res", ttl=5.0)
        with pytest.raises(FenceRejected):
            c.put("data", "stale write", fence=old)
        assert c.get("data") == coordsvc.Entry("data", b"from old", rev)
        c.put("data", "from new", fence=new)
        new.release()


def test_close_gives_up_held_locks(node: LocalNode, net: Faults) -> None:
    c = client(net)
    lk = c.acquire("l", ttl=5.0)
    c.close()
    assert lk.released and node.machine.session_count == 0
    c.close()


# -- status ---------------------------------------------------------------------------------------

def test_status_marks_an_unreachable_member_with_null_fields(node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        for i in range(5):
            c.put(f"k{i}", "v")
    leader = node.status()
    follower = {**leader, "id": "n2", "role": "follower", "leader": "n1",
                "applied_index": leader["commit_index"] - 3}
    net.on(B, "status", answer({"ok": True, "status": follower}))
    cluster = Cluster("test", "cid", tuple(
        NodeSpec(i, addr, addr, Path(i)) for i, addr in [("n1", A), ("n2", B), ("n3", DEAD)]))
    with Client(cluster, timeout=0.3, transport=net) as c:
        st = c.status()
    assert st["cluster"] == {"name": "test", "leader": "n1", "quorum": True, "members": 3,
                             "healthy": 2, "commit_index": leader["commit_index"],
                             "revision": 5, "can_lose": 0, "security": "insecure",
                             "learners": 0, "alarms": []}
    n1, n2, n3 = st["nodes"]
    assert (n1["reachable"], n1["role"], n1["lag"], n1["ballot"]) == (True, "leader", 0, leader["ballot"])
    assert (n2["id"], n2["lag"], n2["applied_index"]) == ("n2", 3, leader["commit_index"] - 3)
    assert n3["id"] == "n3" and n3["address"] == DEAD and n3["reachable"] is False
    assert all(n3[k] is None for k in n3 if k not in ("id", "address", "reachable"))
    for k in ["role", "leader", "ballot", "commit_index", "applied_index", "lag", "db_bytes",
              "uptime_s", "sessions", "locks_held", "keys"]:
        assert k in n3 and k in n1


def test_status_from_endpoints_without_a_leader() -> None:
    lone = LocalNode("n1", members=("n1", "n2", "n3"))    # its peers never answer
    try:
        with Client([A, DEAD], timeout=0.3, transport=LocalTransport({A: lone})) as c:
            st = c.status()
    finally:
        lone.stop()
    assert st["cluster"]["leader"] is None and st["cluster"]["quorum"] is False
    assert st["nodes"][0]["id"] == "n1" and st["nodes"][0]["lag"] is None
    assert st["nodes"][1]["id"] is None and st["nodes"][1]["reachable"] is False


# -- fencing helpers ------------------------------------------------------------------------------

def test_fenced_sqlite_write_rejects_a_lower_token_and_accepts_equal_or_higher(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "app.db")
    try:
        conn.execute("CREATE TABLE t(v TEXT)")
        conn.commit()
        with fenced_write(conn, "res", 5) as tx:
            tx.execute("INSERT INTO t VALUES ('five')")
        with fenced_write(conn, "res", 5) as tx:
            tx.execute("INSERT INTO t VALUES ('five again')")
        with pytest.raises(FenceRejected):
            with fenced_write(conn, "res", 4) as tx:
                tx.execute("INSERT INTO t VALUES ('stale')")
        with fenced_write(conn, "res", 7) as tx:
            tx.execute("INSERT INTO t VALUES ('seven')")
        with pytest.raises(RuntimeError):
            with fenced_write(conn, "other", 1) as tx:
                tx.execute("INSERT INTO t VALUES ('rolled back')")
                raise RuntimeError("boom")
        assert [r[0] for r in conn.execute("SELECT v FROM t")] == ["five", "five again", "seven"]
        assert dict(conn.execute("SELECT resource, token FROM coord_fence")) == {"res": 7}
        assert not conn.in_transaction
    finally:
        conn.close()


def test_fenced_file_write_rejects_a_lower_token_and_accepts_equal_or_higher(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    fenced_file_write(path, b"three", 3)
    fenced_file_write(path, b"three again", 3)
    with pytest.raises(FenceRejected):
        fenced_file_write(path, b"stale", 2)
    assert path.read_bytes() == b"three again"
    fenced_file_write(path, b"nine", 9)
    assert path.read_bytes() == b"nine" and read_file_fence(path) == 9
    assert sorted(os.listdir(tmp_path)) == ["out.json", "out.json.fence"]
    with pytest.raises(ValueError):
        fenced_file_write(path, b"x", 0)
