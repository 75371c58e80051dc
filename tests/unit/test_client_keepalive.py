"""The Client's one keepalive, against an in-process node: every session of a client is
renewed by one thread in batch requests, each on its own schedule, and a session the
cluster no longer knows or refuses is lost alone."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from coordsvc import Client, Lock
from coordsvc.client import _client, _lock
from coordsvc.core.commands import CloseSession

from .inproc import A, Faults, LocalNode, LocalTransport


@pytest.fixture(autouse=True)
def quick_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_client, "ATTEMPT_S", 0.2)


def client(net: Faults) -> Client:
    return Client([A], timeout=2.0, transport=net)


def keepalive_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("coordsvc-keepalive")]


def wait_for(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_many_locks_are_renewed_in_batches_by_one_thread(node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        locks = [c.acquire(f"batch/{i}", ttl=1.0) for i in range(60)]
        first = [lk.valid_until for lk in locks]
        time.sleep(2.5)                       # 2.5 ttls: each lock needs ~7 keepalives
        assert all(lk.held and not lk.lost for lk in locks)
        assert all(lk.valid_until > v + 1.0 for lk, v in zip(locks, first, strict=True))
        assert keepalive_threads() == ["coordsvc-keepalive"]
        sent = net.sent(op="keepalive")
        ids = [sid for p in sent for sid in p["session_ids"]]
        assert all("session_id" not in p for p in sent)
        assert set(ids) == {lk.session_id for lk in locks}
        # Batched: far fewer requests than renewals.
        assert len(sent) * 5 <= len(ids)
        assert node.machine.locks_held == 60
        for lk in locks:
            lk.release()


def test_sessions_with_different_ttls_are_each_renewed_on_time(net: Faults) -> None:
    with client(net) as c:
        short = [c.acquire(f"short/{i}", ttl=1.0) for i in range(5)]
        long = [c.acquire(f"long/{i}", ttl=6.0) for i in range(5)]
        with c.lease(ttl=3.0) as ls:
            time.sleep(3.0)       # three ttls of the short ones, one of the lease
            assert all(lk.held for lk in short + long) and ls.alive
            per_session: dict[int, int] = {}
            for p in net.sent(op="keepalive"):
                for sid in p["session_ids"]:
                    per_session[sid] = per_session.get(sid, 0) + 1
            # ttl/3 apart: ~9 for ttl 1 s, ~3 for the lease, ~1 for ttl 6 s.
            assert all(per_session[lk.session_id] >= 5 for lk in short)
            assert 2 <= per_session[ls.id] <= 4
            assert all(1 <= per_session[lk.session_id] <= 2 for lk in long)
        for lk in short + long:
            lk.release()


def test_a_session_the_cluster_forgot_is_lost_alone_among_kept_ones(
        node: LocalNode, net: Faults) -> None:
    lost: list[Lock] = []
    with client(net) as c:
        locks = [c.acquire(f"k/{i}", ttl=1.0, on_lost=lost.append) for i in range(10)]
        victim = locks[3]
        # Another client (the admin, in this insecure node) closes the session.
        with Client([A], timeout=2.0, transport=LocalTransport({A: node})) as other:
            assert other._write(CloseSession(victim.session_id)).code.value == "ok"
        wait_for(lambda: victim.lost, 2.0, "the closed session was never declared lost")
        assert lost == [victim]
        time.sleep(1.5)
        assert all(lk.held for lk in locks if lk is not victim) and lost == [victim]
        for lk in locks:
            lk.release()


def test_a_session_denied_in_a_batch_is_lost_alone(net: Faults) -> None:
    lost: list[Lock] = []
    with client(net) as c:
        locks = [c.acquire(f"d/{i}", ttl=1.0, on_lost=lost.append) for i in range(6)]
        victim = locks[2].session_id

        def deny_victim(req: dict[str, Any], forward: Callable[[], Any]) -> Any:
            reply = forward()
            if reply is not None and reply.get("ok") and victim in req["session_ids"]:
                sessions = list(reply["sessions"])
                sessions[req["session_ids"].index(victim)] = "denied"
                reply = {**reply, "known": False, "sessions": sessions}
            return reply
        net.on(A, "keepalive", deny_victim)
        wait_for(lambda: locks[2].lost, 2.0, "the denied session was never declared lost")
        time.sleep(1.5)
        assert lost == [locks[2]]
        assert all(lk.held for i, lk in enumerate(locks) if i != 2)
        for lk in locks:
            lk.release()


def test_a_slow_leader_loses_only_the_sessions_past_their_margin_and_others_resume(
        net: Faults) -> None:
    """A batch call that gets no answer ends by its first lost deadline; sessions that
    still have time are renewed once the leader answers again."""
    lost: list[Lock] = []
    with client(net) as c:
        short = c.acquire("s", ttl=1.5, on_lost=lost.append)
        long = c.acquire("l", ttl=10.0, on_lost=lost.append)
        silent = threading.Event()

        def maybe_silent(req: dict[str, Any], forward: Callable[[], Any]) -> Any:
            return None if silent.is_set() else forward()
        net.on(A, "keepalive", maybe_silent)
        silent.set()
        wait_for(lambda: short.lost, 3.0, "the short lock was never declared lost")
        assert lost == [short] and not long.lost
        silent.clear()
        before = long.valid_until
        wait_for(lambda: long.valid_until > before, 5.0, "the long lock was never renewed")
        assert long.held and lost == [short]
        long.release()
        short.release()


def test_the_batch_is_bounded_per_request(net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lock, "MAX_KEEPALIVE_BATCH", 7)
    with client(net) as c:
        locks = [c.acquire(f"b/{i}", ttl=1.0) for i in range(20)]
        wait_for(lambda: len(net.sent(op="keepalive")) >= 6, 3.0, "too few keepalives")
        assert max(len(p["session_ids"]) for p in net.sent(op="keepalive")) <= 7
        assert all(lk.held for lk in locks)
        for lk in locks:
            lk.release()


def test_closing_the_client_ends_its_keepalive_thread(net: Faults) -> None:
    c = client(net)
    lk = c.acquire("x", ttl=1.0)
    wait_for(lambda: bool(net.sent(op="keepalive")), 2.0, "no keepalive was sent")
    assert keepalive_threads() == ["coordsvc-keepalive"]
    c.close()
    assert keepalive_threads() == [] and lk.released
