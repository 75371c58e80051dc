"""The node service's parts, driven through a real single-node ``Service`` by hand.

``Solo`` steps one ``Service`` on a memory store with a clock the test moves: no threads,
no sockets, every reply in the order the service produced it.
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from coordsvc.core import service_parking, service_writes
from coordsvc.core.commands import (
    CloseSession,
    Command,
    OpenAndAcquire,
    Put,
    Request,
    encode_request,
)
from coordsvc.core.machine import SessionInfo
from coordsvc.core.messages import Message, Outbound
from coordsvc.core.quotas import Quotas
from coordsvc.core.service import Service
from coordsvc.core.service_clocks import EXPIRE_RETRY_MS, SessionClocks
from coordsvc.core.service_writes import PendingWrites, WriteWaiter
from coordsvc.core.types import Config
from coordsvc.storage.memory import MemoryStore

CFG = Config(heartbeat_ms=10, election_timeout_ms=50)


class Solo:
    """One Service, its store and its clock; ``ask`` sends a request map and steps."""

    def __init__(self, members: tuple[str, ...] = ("n1",), config: Config = CFG,
                 quotas: Quotas = Quotas()) -> None:
        self.store = MemoryStore()
        self.now = 0
        self.svc = Service("n1", {m: f"tcp://127.0.0.1:{i + 1}" for i, m in enumerate(members)},
                           self.store.load(), random.Random(1), self.now, config, quotas=quotas)
        self.replies: list[tuple[object, dict[str, Any]]] = []
        self.seq = 0
        if len(members) == 1:
            self.advance(200)
            assert self.svc.serving()

    def advance(self, ms: int) -> None:
        for _ in range(ms):
            self.now += 1
            if self.now >= self.svc.next_timer_ms():
                self.svc.tick(self.now)
            self.step()

    def step(self) -> None:
        local: list[Message] = []

        def send(out: list[Outbound]) -> None:
            local.extend(o.msg for o in out if o.dst == "n1")
        while True:
            self.svc.step(self.store.save, send)
            if not local:
                break
            for m in local:
                self.svc.on_peer(m, self.now)
            local.clear()
        replies, _ = self.svc.take_outbox()
        self.replies.extend(replies)

    def send(self, route: object, req: dict[str, Any]) -> None:
        self.svc.on_client(route, req, self.now)

    def ask(self, req: dict[str, Any], route: object = "r") -> dict[str, Any]:
        before = len(self.replies)
        self.send(route, {"id": before, **req})
        self.step()
        (reply,) = [r for rt, r in self.replies[before:] if rt == route]
        return reply

    def write(self, cmd: Command, client_id: str = "c") -> dict[str, Any]:
        self.seq += 1
        return self.ask({"op": "write",
                         "req": encode_request(Request(client_id, self.seq, self.seq, cmd))})


def test_a_malformed_request_is_answered_bad_request_counted_and_changes_nothing() -> None:
    s = Solo()
    rev = s.svc.machine.revision
    reply = s.ask({"op": "get", "key": 7})
    assert reply == {"id": 0, "ok": False, "error": "bad_request", "message": "field 'key' must be str"}
    assert s.svc.machine.revision == rev and s.svc.counters.bad_requests == 1
    assert s.ask({"op": "status"})["status"]["bad_frames"] == 1


def test_a_retried_write_in_flight_is_proposed_once_and_both_attempts_hear_one_result() -> None:
    s = Solo()
    raw = encode_request(Request("c", 1, 1, Put("k", b"v")))
    s.send("first", {"id": 1, "op": "write", "req": raw})
    s.send("retry", {"id": 2, "op": "write", "req": raw})
    assert len(s.svc.writes) == 1
    s.step()
    assert [(rt, r["result"]) for rt, r in s.replies] == [("first", ["ok", 1, {"revision": 1}]),
                                                        ("retry", ["ok", 1, {"revision": 1}])]
    assert s.svc.machine.revision == 1 and s.svc.counters.writes == 1


def test_distinct_writes_past_the_bound_are_answered_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_writes, "MAX_WRITE_WAITERS", 1)
    s = Solo()
    s.send("a", {"id": 1, "op": "write", "req": encode_request(Request("c", 1, 1, Put("a", b"")))})
    reply = s.ask({"op": "write", "req": encode_request(Request("c", 2, 1, Put("b", b"")))}, "b")
    assert reply["error"] == "busy"


def test_a_follower_redirects_what_needs_a_leader_and_answers_stale_reads_itself() -> None:
    s = Solo(members=("n1", "n2", "n3"))        # its peers never answer: no leader
    for req in [{"op": "get", "key": "k"}, {"op": "locks"}, {"op": "keepalive", "session_id": 1},
                {"op": "lock_wait", "name": "l", "session_id": 1},
                {"op": "write", "req": encode_request(Request("c", 1, 1, Put("k", b"v")))}]:
        reply = s.ask(req)
        assert (reply["ok"], reply["error"], reply["leader"]) == (False, "not_leader", None), req
    assert s.ask({"op": "get", "key": "k", "stale": True}) == {
        "id": 5, "ok": True, "kv": None, "revision": 0}


def test_a_parked_watch_is_answered_by_the_first_matching_change() -> None:
    s = Solo()
    s.send("w", {"id": 1, "op": "watch", "prefix": "app/", "after": 0, "wait_ms": 1000})
    s.step()
    assert s.svc.next_timer_ms() <= s.now + 1000 and len(s.svc.parking.watches) == 1
    s.write(Put("other", b"x"))
    assert not [r for rt, r in s.replies if rt == "w"]
    s.write(Put("app/a", b"1"))
    (reply,) = [r for rt, r in s.replies if rt == "w"]
    assert reply == {"id": 1, "ok": True, "events": [["put", "app/a", b"1", 2]], "revision": 2}
    assert not s.svc.parking.watches


def test_a_parked_watch_is_answered_empty_at_its_deadline() -> None:
    s = Solo()
    s.send("w", {"id": 1, "op": "watch", "prefix": "p/", "after": 0, "wait_ms": 100})
    s.advance(99)
    assert not [r for rt, r in s.replies if rt == "w"]
    s.advance(1)
    assert [r for rt, r in s.replies if rt == "w"] == [{"id": 1, "ok": True, "events": [], "revision": 0}]


def test_parked_watches_are_bounded_and_the_next_is_answered_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_parking, "MAX_PARKED", 2)
    s = Solo()
    for i in range(2):
        s.send(i, {"id": i, "op": "watch", "after": 0, "wait_ms": 1000})
    assert s.ask({"op": "watch", "after": 0, "wait_ms": 1000})["error"] == "busy"


def test_a_lock_wait_is_answered_held_when_its_session_is_granted() -> None:
    s = Solo()
    holder = s.write(OpenAndAcquire("l", 5000, True))["result"][2]["session_id"]
    waiter = s.write(OpenAndAcquire("l", 5000, True))["result"][2]["session_id"]
    s.send("wait", {"id": 9, "op": "lock_wait", "name": "l", "session_id": waiter, "wait_ms": 5000})
    s.step()
    assert not [r for rt, r in s.replies if rt == "wait"]
    rows = s.ask({"op": "locks"})["locks"]
    assert [(r[0], r[1], r[4]) for r in rows] == [("l", holder, [waiter])]
    s.write(CloseSession(holder))
    (reply,) = [r for rt, r in s.replies if rt == "wait"]
    assert reply["state"] == "held" and reply["token"] == 2


def test_a_session_whose_keepalives_stop_is_expired_by_the_leader_after_its_ttl() -> None:
    s = Solo()
    sid = s.write(OpenAndAcquire("l", 1000, True))["result"][2]["session_id"]
    s.advance(900)
    assert s.ask({"op": "keepalive", "session_id": sid}) == {"id": len(s.replies) - 1,
                                                             "ok": True, "known": True}
    s.advance(900)
    assert s.svc.machine.session_count == 1      # renewed 900 ms ago: alive
    s.advance(200)
    assert s.svc.machine.session_count == 0 and s.svc.machine.locks_held == 0
    assert s.ask({"op": "keepalive", "session_id": sid})["known"] is False


def test_a_new_leader_gives_every_session_its_full_ttl_from_the_takeover_plus_grace() -> None:
    clocks = SessionClocks()
    clocks.renewed(1, 1_000, 5_000)              # renewed at 1000 ms while this node led
    clocks.stop_leading()
    clocks.take_over({1: SessionInfo(5_000, (), 1), 2: SessionInfo(2_000, (), 2)}, 3_000, 600)
    # Not from the last renewal this node knew of: a later one may never have reached it.
    assert clocks.deadline_ms(1) == 3_000 + 5_000 + 600
    assert clocks.deadline_ms(2) == 3_000 + 2_000 + 600


def test_an_expiry_is_proposed_again_only_after_the_retry_interval() -> None:
    clocks = SessionClocks()
    clocks.renewed(1, 0, 1_000)
    assert clocks.due(1_000) == []
    assert clocks.due(1_001) == [1]
    assert clocks.due(1_001 + EXPIRE_RETRY_MS) == []
    assert clocks.due(1_002 + EXPIRE_RETRY_MS) == [1]
    clocks.forget(1)
    assert clocks.due(10_000) == [] and clocks.deadline_ms(1) is None


class _PlainClocks:
    """What ``SessionClocks.due`` must answer, by looking at every session every time."""

    def __init__(self) -> None:
        self.deadline: dict[int, int] = {}
        self.expiring: dict[int, int] = {}

    def due(self, now: int) -> list[int]:
        out = []
        for sid, deadline in sorted(self.deadline.items()):
            if now > deadline and now - self.expiring.get(sid, -10**12) > EXPIRE_RETRY_MS:
                self.expiring[sid] = now
                out.append(sid)
        return out


@pytest.mark.parametrize("seed", range(20))
def test_due_skips_looking_until_something_can_be_due_and_answers_as_looking_every_time(
        seed: int) -> None:
    rng = random.Random(seed)
    print(f"seed={seed}")
    clocks, plain = SessionClocks(), _PlainClocks()
    now = 0
    for _ in range(2_000):
        now += rng.choice((1, 7, 50, 300))
        sid, ttl = rng.randrange(12), rng.choice((200, 1_000, 5_000))
        what = rng.random()
        if what < 0.35:
            clocks.renewed(sid, now, ttl)
            plain.deadline[sid] = now + ttl
        elif what < 0.45:
            clocks.opened(sid, now, ttl, leading=True)
            plain.deadline[sid] = now + ttl
        elif what < 0.5:
            clocks.forget(sid)
            plain.deadline.pop(sid, None)
            plain.expiring.pop(sid, None)
        elif what < 0.51:
            infos = {s: SessionInfo(rng.choice((200, 1_000)), (), s) for s in rng.sample(range(12), 4)}
            clocks.take_over(infos, now, 100)
            plain.deadline = {s: now + i.ttl_ms + 100 for s, i in infos.items()}
            plain.expiring.clear()
        assert clocks.due(now) == plain.due(now), now


def test_leadership_ending_hands_every_write_waiter_back_and_forgets_proposals() -> None:
    w = PendingWrites()
    r1, r2 = Request("c", 1, 1, Put("a", b"")), Request("c", 2, 1, Put("b", b""))
    w.start(b"1", r1, WriteWaiter("x", 1, 0))
    assert w.join(("", "c", 1), WriteWaiter("y", 2, 5))
    w.start(b"2", r2, WriteWaiter("z", 3, 0))
    assert [x.route for x in w.drop_all()] == ["x", "y", "z"]
    assert w.idle() and w.proposed(b"1") is None and w.finish(r2) == []


def test_write_waiters_older_than_their_ttl_are_forgotten() -> None:
    w = PendingWrites()
    r = Request("c", 1, 1, Put("a", b""))
    w.start(b"1", r, WriteWaiter("x", 1, 0))
    w.expire(service_writes.WRITE_WAITER_TTL_MS)
    assert len(w) == 1
    w.expire(service_writes.WRITE_WAITER_TTL_MS + 1)
    assert len(w) == 0
