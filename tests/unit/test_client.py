"""The client against in-process fake nodes speaking coordsvc/core/protocol.py.

A fake node is a ROUTER socket on a thread; it answers from the real state machine
(``core.machine.Machine``), so exactly-once, CAS, fencing and locks behave as on a node.
Per-op ``override`` hooks script faults: dropped replies, redirects, stale replies.
"""
from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import coordsvc
from coordsvc import wire
from coordsvc.client import Client, Event, _client, _lock, _watch
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
from coordsvc.core.commands import decode_request
from coordsvc.core.machine import Machine
from coordsvc.fencing import fenced_file_write, fenced_write, read_file_fence

PARK = object()  # an override's answer meaning "not yet: ask me again shortly"
Reply = dict[str, Any]
Override = Callable[[Reply, bool], "Reply | None | object"]


class FakeNode:
    """One node: answers from a (possibly shared) Machine, or from ``override[op]``.

    An override gets (request, expired) and returns a reply map (``id`` is added), None
    to send nothing, or PARK to be asked again until the request's wait_ms runs out.
    """

    def __init__(self, m: Machine | None = None, node_id: str = "n1", role: str = "leader") -> None:
        self.m = m if m is not None else Machine()
        self.id = node_id
        self.role = role
        self.override: dict[str, Override] = {}
        self.requests: list[Reply] = []
        self.before_reply: Callable[[Reply], list[Reply]] | None = None
        self._index = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._parked: list[tuple[bytes, Reply, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ops(self, op: str) -> list[Reply]:
        return [r for r in self.requests if r["op"] == op]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close(linger=0)
        self._ctx.term()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(5, zmq.POLLIN):
                ident, body = self._sock.recv_multipart()
                req = wire.decode_client(body, wire.CLIENT_REQUEST)
                self.requests.append(req)
                wait_s = req.get("wait_ms", 0) / 1000
                self._parked.append((ident, req, time.monotonic() + wait_s))
            still = []
            for ident, req, until in self._parked:
                out = self._answer(req, time.monotonic() >= until)
                if out is PARK:
                    still.append((ident, req, until))
                elif isinstance(out, dict):
                    for extra in self.before_reply(req) if self.before_reply else []:
                        self._send(ident, extra)
                    self._send(ident, {**out, "id": req["id"]})
            self._parked = still

    def _send(self, ident: bytes, reply: Reply) -> None:
        self._sock.send_multipart([ident, wire.encode_client(wire.CLIENT_REPLY, reply)])

    def _answer(self, req: Reply, expired: bool) -> Reply | None | object:
        hook = self.override.get(req["op"])
        if hook is not None:
            return hook(req, expired)
        handler: Override = getattr(self, "_op_" + req["op"])
        return handler(req, expired)

    # -- the protocol, from the real machine -----------------------------------------------

    def _op_write(self, req: Reply, expired: bool) -> Reply:
        self._index += 1
        return {"ok": True, "result": self.m.apply(self._index, decode_request(req["req"])).to_wire()}

    def _op_keepalive(self, req: Reply, expired: bool) -> Reply:
        return {"ok": True, "known": req["session_id"] in self.m.sessions()}

    def _op_get(self, req: Reply, expired: bool) -> Reply:
        kv = self.m.get(req["key"])
        return {"ok": True, "revision": self.m.revision,
                "kv": None if kv is None else [kv.key, kv.value, kv.revision,
                                               kv.create_revision, kv.version]}

    def _op_list(self, req: Reply, expired: bool) -> Reply:
        return {"ok": True, "revision": self.m.revision,
                "kvs": [[kv.key, kv.value, kv.revision, kv.create_revision, kv.version]
                        for kv in self.m.list(req["prefix"])]}

    def _op_history(self, req: Reply, expired: bool) -> Reply:
        return {"ok": True, "revision": self.m.revision,
                "events": [[e.type, e.key, e.value, e.revision] for e in self.m.history(req["key"])]}

    def _op_watch(self, req: Reply, expired: bool) -> Reply | object:
        try:
            prefix = tuple(req["prefixes"]) if req.get("prefixes") else req["prefix"]
            evs = self.m.events_since(prefix, req["after"], req["limit"])
        except machine.Compacted as e:
            return {"ok": False, "error": "compacted", "message": str(e),
                    "oldest": e.oldest_available_revision}
        if not evs and not expired:
            return PARK
        return {"ok": True, "revision": self.m.revision,
                "events": [[e.type, e.key, e.value, e.revision] for e in evs]}

    def _op_lock_wait(self, req: Reply, expired: bool) -> Reply | object:
        owner = self.m.lock_owner(req["name"])
        if owner is not None and owner[0] == req["session_id"]:
            return {"ok": True, "state": "held", "token": owner[1]}
        if self.m.waiting(req["name"], req["session_id"]):
            return {"ok": True, "state": "waiting", "token": 0} if expired else PARK
        return {"ok": True, "state": "none", "token": 0}

    def _op_locks(self, req: Reply, expired: bool) -> Reply:
        return {"ok": True, "locks": [[i.name, i.holder_session, i.token, i.granted_index,
                                       list(i.waiters), 5000, 10000] for i in self.m.locks()]}

    def _op_status(self, req: Reply, expired: bool) -> Reply:
        return {"ok": True, "status": {
            "id": self.id, "address": self.address, "role": self.role, "leader": "n1",
            "ballot": [3, "n1"], "commit_index": 40, "applied_index": 37 if self.role != "leader" else 40,
            "db_bytes": 4096, "uptime_s": 1.5, "sessions": self.m.session_count,
            "locks_held": self.m.locks_held, "keys": self.m.key_count, "revision": self.m.revision,
            "bad_frames": 0, "fsync_p99_ms": 1.0, "last_leader_contact_ms": 3}}


@pytest.fixture
def nodes() -> Iterator[Callable[..., FakeNode]]:
    made: list[FakeNode] = []

    def make(*args: Any, **kw: Any) -> FakeNode:
        made.append(FakeNode(*args, **kw))
        return made[-1]

    yield make
    for n in made:
        n.stop()


@pytest.fixture(autouse=True)
def quick_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    # A silent node is skipped after 0.2 s instead of 1 s, to keep each test fast.
    monkeypatch.setattr(_client, "ATTEMPT_S", 0.2)


def dead_endpoint() -> str:
    """A loopback port nobody listens on."""
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as s:
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port("tcp://127.0.0.1")
    return f"tcp://127.0.0.1:{port}"


def drop_first(n: int, inner: Override) -> Override:
    """Apply the request but send no reply, the first ``n`` times."""
    left = [n]

    def hook(req: Reply, expired: bool) -> Reply | None | object:
        out = inner(req, expired)
        if left[0] > 0:
            left[0] -= 1
            return None
        return out
    return hook


def answer_with(reply: Reply) -> Override:
    return lambda req, expired: reply


# -- retries and leader discovery -------------------------------------------------------------

def test_write_retried_after_a_dropped_reply_resends_identical_bytes_and_applies_once(
        nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    n.override["write"] = drop_first(1, n._op_write)
    with Client([n.address], timeout=2.0) as c:
        assert c.put("k", "v") == 1
    writes = n.ops("write")
    assert len(writes) == 2
    assert writes[0]["req"] == writes[1]["req"]          # same client_id, seq, command
    assert writes[0]["id"] != writes[1]["id"]            # but a fresh id per attempt
    r = decode_request(writes[0]["req"])
    assert r.client_id == c.client_id and r.seq == 1 and r.first_unacked == 1
    assert n.m.revision == 1                             # applied once


def test_not_leader_with_leader_address_is_followed(nodes: Callable[..., FakeNode]) -> None:
    leader = nodes()
    follower = nodes(leader.m, "n2", "follower")
    follower.override["write"] = lambda req, exp: {
        "ok": False, "error": "not_leader", "leader": "n1", "leader_address": leader.address,
        "message": "ask n1"}
    with Client([follower.address], timeout=2.0) as c:  # the leader is not even listed
        assert c.put("k", b"v") == 1
        assert c.leader == leader.address
        c.put("k", b"w")
    assert len(follower.ops("write")) == 1              # the leader is remembered
    assert len(leader.ops("write")) == 2


def test_not_leader_without_address_tries_the_next_endpoint(nodes: Callable[..., FakeNode]) -> None:
    follower = nodes(role="follower")
    leader = nodes(follower.m, "n2")
    follower.override["get"] = lambda req, exp: {"ok": False, "error": "not_leader",
                                                 "leader": None, "leader_address": None}
    with Client([follower.address, leader.address], timeout=2.0) as c:
        assert c.get("nope") is None
    assert len(leader.ops("get")) == 1


def test_reply_with_a_stale_id_is_dropped(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    n.before_reply = lambda req: [{"id": req["id"] + 1000, "ok": True,
                                   "kv": ["k", b"stale", 99, 99, 1], "revision": 99}]
    with Client([n.address], timeout=2.0) as c:
        c.put("k", "fresh")
        e = c.get("k")
    assert e is not None and e.value == b"fresh" and e.revision == 1


def test_silent_node_is_skipped_for_a_live_one(nodes: Callable[..., FakeNode]) -> None:
    paused = nodes()
    live = nodes(paused.m, "n2")
    paused.override["get"] = lambda req, exp: None  # SIGSTOPped: never answers
    with Client([paused.address, live.address], timeout=2.0) as c:
        t0 = time.monotonic()
        assert c.get("k") is None
        assert time.monotonic() - t0 < 1.0


def test_no_reachable_node_raises_unavailable_within_the_timeout(
        nodes: Callable[..., FakeNode]) -> None:
    silent = nodes()
    silent.override["write"] = lambda req, exp: None
    with Client([dead_endpoint(), silent.address], timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            c.put("k", "v")
        assert time.monotonic() - t0 < 0.5 + 0.3


def test_busy_and_unavailable_are_retried(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    answers = iter([{"ok": False, "error": "busy"}, {"ok": False, "error": "unavailable"}])
    n.override["write"] = lambda req, exp: next(answers, None) or n._op_write(req, exp)
    with Client([n.address], timeout=2.0) as c:
        assert c.put("k", "v") == 1
    assert len({w["req"] for w in n.ops("write")}) == 1


# -- results and limits -------------------------------------------------------------------------

def test_result_codes_map_to_exceptions(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        rev = c.put("k", "v", if_revision=0)
        with pytest.raises(CompareFailed) as cf:
            c.put("k", "w", if_revision=0)
        assert cf.value.current_revision == rev
        assert c.put("k", "w", if_revision=rev) == rev + 1
        assert c.delete("k", if_revision=rev + 1) is True
        assert c.delete("k") is False
        for code, exc in [("invalid", InvalidRequest), ("limit", InvalidRequest),
                          ("stale_request", Unavailable), ("fence_rejected", FenceRejected)]:
            n.override["write"] = answer_with(
                {"ok": True, "result": [code, 0, {"message": f"server says {code}"}]})
            with pytest.raises(exc, match=f"server says {code}"):
                c.put("k", "v")
        n.override["get"] = lambda req, exp: {"ok": False, "error": "bad_request", "message": "huh"}
        with pytest.raises(InvalidRequest, match="huh"):
            c.get("k")


def test_limits_are_checked_before_sending(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
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
    assert len(n.requests) == 1


def test_reads_return_entries_and_events(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        c.put("app/b", "2")
        c.put("app/a", "1")
        c.put("other", "x")
        c.delete("app/b")
        assert c.list("app/") == [coordsvc.Entry("app/a", b"1", 2)]
        assert [e.key for e in c.list()] == ["app/a", "other"]
        assert c.history("app/b") == [Event("put", "app/b", b"2", 1), Event("delete", "app/b", b"", 4)]
        assert c.get("other", stale=True) == coordsvc.Entry("other", b"x", 3)
        assert c.revision() == 4
    assert [r["stale"] for r in n.ops("get")] == [True, False]


def test_many_threads_share_one_client(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    revs: list[int] = []
    with Client([n.address], timeout=2.0) as c:
        def work(t: int) -> None:
            for i in range(10):
                revs.append(c.put(f"t{t}/{i}", "v"))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(revs) == list(range(1, 81))
    for w in n.ops("write"):
        r = decode_request(w["req"])
        assert r.first_unacked <= r.seq


def test_client_finds_endpoints_from_the_environment(
        nodes: Callable[..., FakeNode], monkeypatch: pytest.MonkeyPatch) -> None:
    n = nodes()
    monkeypatch.delenv("COORD_CLUSTER", raising=False)
    monkeypatch.setenv("COORD_ENDPOINTS", n.address)
    with Client() as c:
        assert c.endpoints == [n.address]
        assert c.get("k") is None
    with pytest.raises(CoordError, match="closed"):
        c.get("k")


def test_exceptions_are_exported_and_share_a_base() -> None:
    for name in ["CompareFailed", "LockTimeout", "InvalidRequest", "Unavailable", "FenceRejected",
                 "Compacted"]:
        assert issubclass(getattr(coordsvc, name), coordsvc.CoordError)
        assert name in coordsvc.__all__


# -- watches --------------------------------------------------------------------------------------

def test_watch_delivers_from_start_revision_inclusive(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
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


def test_watch_without_start_revision_sees_only_new_events(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        c.put("app/old", "1")
        w = c.watch("app/")
        c.put("app/new", "2")
        ev = next(iter(w))
        assert ev.key == "app/new"
        w.close()
        assert list(w) == []


def test_watch_orders_and_dedupes_and_resumes_after_the_last_delivered_revision(
        nodes: Callable[..., FakeNode], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watch, "WATCH_WAIT_S", 0.2)   # how long a silent node may park us
    a = nodes()
    b = nodes(a.m, "n2")

    def ev(r: int) -> list[object]:
        return ["put", f"p/{r}", b"v", r]
    batches = iter([[ev(3), ev(1), ev(2), ev(2)], [ev(2), ev(3), ev(4)]])
    def batch(req: Reply, exp: bool) -> Reply:
        evs = next(batches)
        return {"ok": True, "revision": max(e[3] for e in evs), "events": evs}  # type: ignore[type-var]
    a.override["watch"] = batch
    with Client([a.address, b.address], timeout=2.0) as c:
        w = c.watch("p/", start_revision=1)
        assert [w.next(1.0) for _ in range(4)] == [
            Event("put", f"p/{r}", b"v", r) for r in (1, 2, 3, 4)]
        # node a goes silent: the watch moves to b, asking for events after revision 4
        a.override["watch"] = lambda req, exp: None
        b.override["watch"] = lambda req, exp: {"ok": True, "revision": 5,
                                                "events": [ev(4), ev(5)]}
        # a silent long poll looks like a parked one, so a is dropped after wait + attempt
        assert w.next(2.0) == Event("put", "p/5", b"v", 5)
    assert [r["after"] for r in a.ops("watch")][:2] == [0, 3]
    assert b.ops("watch")[0]["after"] == 4


def test_watches_of_one_client_share_one_long_poll(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    c = Client([n.address], timeout=2.0)
    watches = [c.watch(f"w{i}/", start_revision=1) for i in range(10)]
    for i in range(10):
        c.put(f"w{i}/k", str(i))
    for i, w in enumerate(watches):
        assert w.next(2.0) == Event("put", f"w{i}/k", str(i).encode(), i + 1)
        assert w.next(0) is None                       # nobody else's events
    polls = n.ops("watch")
    assert polls[-1]["prefixes"] == [f"w{i}/" for i in range(10)]
    assert len(polls) < 10 * 10                        # not one poll per watch per event
    watches[0].close()
    assert watches[0].next(0) is None
    c.close()
    with pytest.raises(CoordError, match="closed"):
        watches[1].next(1.0)


def test_a_slow_watch_reader_bounds_its_buffer_and_still_gets_every_event(
        nodes: Callable[..., FakeNode], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watch, "WATCH_LIMIT", 2)
    monkeypatch.setattr(_watch, "BUFFER_MAX", 4)
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        for i in range(10):
            c.put(f"s/{i}", "v")
        w = c.watch("s/", start_revision=1)
        deadline = time.monotonic() + 2.0
        while not w._full():
            assert time.monotonic() < deadline, "the hub never filled the buffer"
            time.sleep(0.01)
        assert len(w._buf) <= 4 + 2 - 1        # full stops polling for it
        assert [w.next(2.0).key for _ in range(10)] == [f"s/{i}" for i in range(10)]  # type: ignore[union-attr]


def test_a_dropped_watch_is_no_longer_polled_for(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        w = c.watch("d/", start_revision=1)
        hub = c._hub
        assert hub is not None and len(hub._watches) == 1
        del w
        gc.collect()
        assert len(hub._watches) == 0


def test_watch_raises_compacted_with_the_oldest_revision(
        nodes: Callable[..., FakeNode], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "WINDOW_EVENTS", 3)
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        for i in range(6):
            c.put("p/k", str(i))
        with pytest.raises(Compacted) as e:
            c.watch("p/", start_revision=1).next(1.0)
        assert e.value.oldest == 4
        w = c.watch("p/", start_revision=4)
        assert w.next(1.0) == Event("put", "p/k", b"3", 4)


# -- locks ----------------------------------------------------------------------------------------

def test_lock_grants_tokens_and_try_lock_times_out(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        with c.lock("deploy", ttl=5.0, timeout=1.0) as lk:
            assert lk.token >= 1 and lk.held and not lk.lost
            assert lk.valid_until > time.monotonic()
            with pytest.raises(LockTimeout):
                c.acquire("deploy", ttl=5.0, timeout=0)
            assert n.m.session_count == 1                 # the failed try closed its session
            assert [(i.name, i.token) for i in c.locks()] == [("deploy", lk.token)]
        assert lk.released and n.m.locks_held == 0 and n.m.session_count == 0
        lk.release()                                      # idempotent
        lk2 = c.acquire("deploy", ttl=5.0, timeout=0)
        assert lk2.token > lk.token
        lk2.release()


def test_waiter_is_granted_when_the_holder_releases(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        first = c.acquire("q", ttl=5.0)
        releaser = threading.Timer(0.2, first.release)
        releaser.start()
        second = c.acquire("q", ttl=5.0, timeout=1.5)
        releaser.join()
        assert second.token > first.token
        assert n.ops("lock_wait")
        second.release()


def test_lock_timeout_cancels_and_holds_nothing(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        holder = c.acquire("q", ttl=5.0)
        with pytest.raises(LockTimeout):
            c.acquire("q", ttl=5.0, timeout=0.3)
        assert n.m.session_count == 1 and n.m.locks()[0].waiters == ()
        holder.release()


def test_on_lost_fires_when_the_session_is_forgotten(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    fired = threading.Event()
    with Client([n.address], timeout=2.0) as c:
        lk = c.acquire("l", ttl=1.0, on_lost=lambda lock: fired.set())
        n.override["keepalive"] = lambda req, exp: {"ok": True, "known": False}
        assert fired.wait(1.0) and lk.lost and not lk.held
        lk.release()


def test_on_lost_fires_before_the_ttl_when_keepalives_go_unanswered(
        nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    fired: list[float] = []
    with Client([n.address], timeout=2.0) as c:
        n.override["keepalive"] = lambda req, exp: None
        t0 = time.monotonic()
        lk = c.acquire("l", ttl=1.0, on_lost=lambda lock: fired.append(time.monotonic()))
        deadline = t0 + 1.0
        while not fired and time.monotonic() < deadline + 0.5:
            time.sleep(0.01)
        assert fired and fired[0] < deadline and lk.lost
        # on_lost ran a margin before the lock's own deadline: before any regrant.
        assert fired[0] <= lk.valid_until - _lock.LOST_MARGIN_MIN_S + 0.05


def test_keepalive_extends_valid_until(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        lk = c.acquire("l", ttl=1.0)
        first = lk.valid_until
        deadline = time.monotonic() + 2.0      # the first keepalive is due after ttl / 3
        while lk.valid_until <= first:
            assert time.monotonic() < deadline, "valid_until never moved"
            time.sleep(0.01)
        assert lk.held and n.ops("keepalive")
        lk.release()


def test_a_lock_released_before_its_first_keepalive_never_starts_a_thread(
        nodes: Callable[..., FakeNode]) -> None:
    n = nodes()

    def keepalive_threads() -> list[str]:
        return [t.name for t in threading.enumerate()
                if t.name.startswith("coordsvc-keepalive-") and "starter" not in t.name]

    with Client([n.address], timeout=2.0) as c:
        for _ in range(20):
            c.acquire("short", ttl=30.0).release()     # first keepalive due after 10 s
        assert keepalive_threads() == [] and not n.ops("keepalive")
        lk = c.acquire("long", ttl=1.0)                  # due after 0.33 s
        deadline = time.monotonic() + 2.0
        while not n.ops("keepalive"):
            assert time.monotonic() < deadline, "no keepalive was sent"
            time.sleep(0.01)
        assert keepalive_threads() == [f"coordsvc-keepalive-{lk.session_id}"]
        lk.release()
        assert keepalive_threads() == []


def test_released_locks_do_not_pile_up_in_the_keepalive_starter(
        nodes: Callable[..., FakeNode], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lock, "PURGE_MIN", 16)
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        held = c.acquire("held", ttl=300.0)
        for i in range(200):
            c.acquire(f"short-{i % 3}", ttl=300.0).release()   # starts due in 100 s
        starter = c._starter
        assert starter is not None and len(starter._due) <= 16
        assert [e[2] for e in starter._due if not e[2].released] == [held]
        held.release()


def test_put_fenced_by_a_stale_lock_is_rejected_and_writes_nothing(
        nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    with Client([n.address], timeout=2.0) as c:
        old = c.acquire("res", ttl=5.0)
        rev = c.put("data", "from old", fence=old)
        old.release()
        new = c.acquire("res", ttl=5.0)
        with pytest.raises(FenceRejected):
            c.put("data", "stale write", fence=old)
        assert c.get("data") == coordsvc.Entry("data", b"from old", rev)
        c.put("data", "from new", fence=new)
        new.release()


def test_close_gives_up_held_locks(nodes: Callable[..., FakeNode]) -> None:
    n = nodes()
    c = Client([n.address], timeout=2.0)
    lk = c.acquire("l", ttl=5.0)
    c.close()
    assert lk.released and n.m.session_count == 0
    c.close()


# -- status ---------------------------------------------------------------------------------------

def test_status_marks_an_unreachable_member_with_null_fields(nodes: Callable[..., FakeNode]) -> None:
    a = nodes(node_id="n1")
    b = nodes(a.m, "n2", "follower")
    dead = dead_endpoint()
    cluster = Cluster("test", "cid", tuple(
        NodeSpec(i, addr, addr, Path(i)) for i, addr in
        [("n1", a.address), ("n2", b.address), ("n3", dead)]))
    with Client(cluster, timeout=0.3) as c:
        st = c.status()
    assert st["cluster"] == {"name": "test", "leader": "n1", "quorum": True, "members": 3,
                             "healthy": 2, "commit_index": 40, "revision": 0, "can_lose": 0,
                             "security": None}   # the fake nodes do not say
    n1, n2, n3 = st["nodes"]
    assert (n1["reachable"], n1["role"], n1["lag"], n1["ballot"]) == (True, "leader", 0, [3, "n1"])
    assert (n2["id"], n2["lag"], n2["applied_index"]) == ("n2", 3, 37)
    assert n3["id"] == "n3" and n3["address"] == dead and n3["reachable"] is False
    assert all(n3[k] is None for k in n3 if k not in ("id", "address", "reachable"))
    for k in ["role", "leader", "ballot", "commit_index", "applied_index", "lag", "db_bytes",
              "uptime_s", "sessions", "locks_held", "keys"]:
        assert k in n3 and k in n1


def test_status_from_endpoints_without_a_leader(nodes: Callable[..., FakeNode]) -> None:
    a = nodes(node_id="n1", role="follower")
    with Client([a.address, dead_endpoint()], timeout=0.3) as c:
        st = c.status()
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
