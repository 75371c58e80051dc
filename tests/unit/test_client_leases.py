"""Leases through the Client against an in-process node: one session, one keepalive, for
every key and lock on it."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from coordsvc import Client, Lease, LeaseExpired, LockTimeout
from coordsvc.client import _client
from coordsvc.client.errors import InvalidRequest

from .inproc import Faults, LocalNode, LocalTransport, answer

A = "tcp://127.0.0.1:1"


@pytest.fixture
def node() -> Iterator[LocalNode]:
    n = LocalNode()
    yield n
    n.stop()


@pytest.fixture
def net(node: LocalNode) -> Faults:
    return Faults(LocalTransport({A: node}))


@pytest.fixture(autouse=True)
def quick_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_client, "ATTEMPT_S", 0.2)


def client(net: Faults) -> Client:
    return Client([A], timeout=2.0, transport=net)


def test_keys_and_locks_on_a_lease_share_its_one_session(node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        with c.lease(ttl=5.0) as ls:
            assert isinstance(ls, Lease) and ls.id >= 1 and ls.alive
            c.put("svc/web/n1", "10.0.0.5:80", lease=ls)
            c.put("svc/web/n2", "10.0.0.6:80", lease=ls)
            with c.lock("deploy", lease=ls, timeout=1.0) as lk:
                assert lk.token >= 1 and lk.session_id == ls.id and lk.held
                assert lk.valid_until == ls.valid_until
            assert node.machine.lock_owner("deploy") is None     # released, lease lives on
            lk2 = c.acquire("other", lease=ls, timeout=0)
            assert node.machine.session_count == 1
            assert node.machine.lease_keys(ls.id) == ["svc/web/n1", "svc/web/n2"]
        assert ls.revoked and lk2.released
        assert c.get("svc/web/n1") is None and c.get("svc/web/n2") is None
        assert node.machine.session_count == 0 and node.machine.locks_held == 0


def test_revoke_deletes_the_keys_before_it_returns_and_watchers_see_it(net: Faults) -> None:
    with client(net) as c:
        ls = c.lease(ttl=5.0)
        rev = c.put("svc/a", "1", lease=ls)
        w = c.watch("svc/", start_revision=rev)
        ls.revoke()
        assert c.get("svc/a") is None
        it = iter(w)
        first, second = next(it), next(it)
        assert (first.type, second.type, second.key) == ("put", "delete", "svc/a")
        w.close()
        ls.revoke()   # idempotent


def test_a_put_on_a_revoked_lease_is_lease_expired(net: Faults) -> None:
    with client(net) as c:
        ls = c.lease(ttl=5.0)
        ls.revoke()
        with pytest.raises(LeaseExpired):
            c.put("k", "v", lease=ls)
        with pytest.raises(Exception, match="ended"):
            c.acquire("l", lease=ls, timeout=0)
        assert c.get("k") is None


def test_a_lease_lock_that_is_busy_times_out_and_leaves_the_lease_alive(
        node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        holder = c.acquire("l", ttl=5.0)
        with c.lease(ttl=5.0) as ls:
            with pytest.raises(LockTimeout):
                c.acquire("l", lease=ls, timeout=0)
            with pytest.raises(LockTimeout):
                c.acquire("l", lease=ls, timeout=0.2)
            assert node.machine.locks()[0].waiters == ()
            c.put("k", "v", lease=ls)
            holder.release()
            lk = c.acquire("l", lease=ls, timeout=1.0)
            assert lk.token > holder.token
        assert node.machine.locks_held == 0 and c.get("k") is None


def test_the_lease_keepalive_extends_valid_until(net: Faults) -> None:
    with client(net) as c, c.lease(ttl=1.0) as ls:
        first = ls.valid_until
        deadline = time.monotonic() + 2.0
        while ls.valid_until <= first:
            assert time.monotonic() < deadline, "valid_until never moved"
            time.sleep(0.01)
        assert ls.alive and net.sent(op="keepalive")


def test_losing_a_lease_loses_its_locks(net: Faults) -> None:
    lost_lease, lost_lock = threading.Event(), threading.Event()
    with client(net) as c:
        ls = c.lease(ttl=1.0, on_lost=lambda _: lost_lease.set())
        lk = c.acquire("l", lease=ls, timeout=0, on_lost=lambda _: lost_lock.set())
        net.on(A, "keepalive", answer({"ok": True, "known": False}))
        assert lost_lease.wait(2.0) and lost_lock.wait(2.0)
        assert ls.lost and lk.lost and not lk.held and not ls.alive


def test_closing_the_client_revokes_its_leases(node: LocalNode, net: Faults) -> None:
    c = client(net)
    ls = c.lease(ttl=5.0)
    c.put("k", "v", lease=ls)
    c.close()
    assert node.machine.session_count == 0 and node.machine.get("k") is None


def test_a_lease_argument_must_be_a_lease_of_this_client(net: Faults) -> None:
    with client(net) as c, client(net) as d:
        ls = d.lease(ttl=5.0)
        with pytest.raises(InvalidRequest):
            c.put("k", "v", lease=ls)
        with pytest.raises(InvalidRequest):
            c.put("k", "v", lease=3)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            c.lease(ttl=0.1)
        ls.revoke()


# -- transactions ------------------------------------------------------------------------------

def test_txn_applies_one_branch_at_one_revision_and_a_watch_sees_every_write(net: Faults) -> None:
    with client(net) as c:
        ra = c.put("app/a", "1")
        w = c.watch("app/", start_revision=ra + 1)
        ok, rev = c.txn(compare=[("app/a", ra), ("app/b", 0)],
                        success=[("put", "app/a", "x"), ("put", "app/b", b"y"), ("delete", "app/c")],
                        failure=[])
        assert ok and rev == ra + 1
        a, b = c.get("app/a"), c.get("app/b")
        assert a is not None and b is not None and a.revision == b.revision == rev
        got = [w.next(timeout=2.0), w.next(timeout=2.0)]
        assert [(e.key, e.revision) for e in got if e is not None] == [("app/a", rev), ("app/b", rev)]
        w.close()
        ok, rev2 = c.txn(compare=[("app/a", ra)], success=[("delete", "app/a")],
                         failure=[("put", "app/f", "failed")])
        assert not ok and rev2 == rev + 1 and c.get("app/a") is not None
        with c.lease(ttl=5.0) as ls:
            c.txn(success=[("put", "app/e", "eph", ls)])
        assert c.get("app/e") is None


def test_txn_arguments_are_checked_before_sending(net: Faults) -> None:
    with client(net) as c:
        for bad in ([("get", "k")], "put", [("put", "k")], [("delete", "a"), ("delete", "a")]):
            with pytest.raises(InvalidRequest):
                c.txn(success=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            c.txn(compare=[("k", "3")])  # type: ignore[list-item]
        assert not net.sent(op="write")
