"""Leases through the Client against an in-process node: one session, one keepalive, for
every key and lock on it."""
from __future__ import annotations

import threading
import time

import pytest

from coordsvc import Client, CoordError, Lease, LeaseExpired, LockTimeout
from coordsvc.client import _client
from coordsvc.client.errors import InvalidRequest

from .inproc import A, Faults, LocalNode, answer


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


# -- lock-delay -------------------------------------------------------------------------------

def test_an_expired_holders_lock_delay_keeps_the_lock_from_the_waiter_for_a_while(
        node: LocalNode, net: Faults) -> None:
    with client(net) as c, client(net) as waiter_client:
        holder = c.acquire("l", ttl=1.0, lock_delay=1.0)
        net.on(A, "keepalive", answer({"ok": True, "known": True}))   # the node never hears one
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(
            waiter_client.acquire("l", ttl=5.0, timeout=10.0).token))
        t.start()
        states = []
        while t.is_alive():
            infos = [i for i in waiter_client.locks() if i.name == "l"]
            states.append(infos[0].holder_session if infos else None)
            time.sleep(0.01)
        t.join()
        # held by the first session, then by nobody (the delay), then by the waiter's
        assert holder.session_id in states and 0 in states
        assert states.index(0) > states.index(holder.session_id)
        assert got and got[0] > holder.token
        with pytest.raises(InvalidRequest):
            c.acquire("m", lock_delay=61.0)


# -- semaphores and read/write locks -------------------------------------------------------------

def test_a_semaphore_admits_its_limit_and_the_next_waiter_gets_a_larger_token(
        node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        with c.semaphore("batch", limit=2, ttl=5.0, timeout=1.0) as s1, \
                c.semaphore("batch", limit=2, ttl=5.0, timeout=1.0) as s2:
            assert s1.token >= 1 and s2.token > s1.token and s1.held
            with pytest.raises(LockTimeout):
                c.semaphore("batch", limit=2, ttl=5.0, timeout=0).acquire()
            (info,) = [i for i in c.locks() if i.name == "batch"]
            assert info.kind == "semaphore" and info.limit == 2 and len(info.holders) == 2
            with pytest.raises(InvalidRequest):
                c.semaphore("batch", limit=3, timeout=0).acquire()
        with c.semaphore("batch", limit=2, timeout=0) as s3:
            assert s3.token > s2.token
        assert node.machine.locks_held == 0 and node.machine.session_count == 0


def test_rwlock_readers_share_and_a_writer_waits_for_them(node: LocalNode, net: Faults) -> None:
    with client(net) as c:
        rw = c.rwlock("schema")
        with rw.read(ttl=5.0) as r1, rw.read(ttl=5.0) as r2:
            assert r2.token > r1.token
            with pytest.raises(LockTimeout):
                rw.write(ttl=5.0, timeout=0.2).acquire()
            got: list[int] = []
            t = threading.Thread(target=lambda: got.append(rw.write(ttl=5.0, timeout=5.0).acquire().token))
            t.start()
            deadline = time.monotonic() + 5.0
            while not any(i.waiters for i in c.locks() if i.name == "schema"):
                assert time.monotonic() < deadline, "the writer never queued"
                time.sleep(0.01)
            (info,) = [i for i in c.locks() if i.name == "schema"]
            assert info.kind == "rwlock" and info.waiter_modes == ("write",)
            with pytest.raises(LockTimeout):     # FIFO: a reader does not pass the writer
                rw.read(ttl=5.0, timeout=0).acquire()
        t.join()
        assert got and got[0] > r2.token
        c.close()
    assert node.machine.locks_held == 0


# -- elections ---------------------------------------------------------------------------------

def test_an_election_has_one_leader_whose_value_and_token_everyone_reads(net: Faults) -> None:
    from coordsvc import Leader
    with client(net) as c, client(net) as other:
        el = c.election("scheduler")
        assert el.leader() is None
        with el.campaign("host-a", ttl=5.0, timeout=None) as term:
            assert term.token >= 1 and term.held
            assert other.election("scheduler").leader() == Leader(b"host-a", term.token)
            with pytest.raises(LockTimeout):
                other.election("scheduler").campaign("host-b", ttl=5.0, timeout=0)
        assert el.leader() is None
        t2 = other.election("scheduler").campaign("host-b", ttl=5.0, timeout=1.0)
        assert t2.token > term.token and el.leader() == Leader(b"host-b", t2.token)
        t2.resign()
        t2.resign()


def test_observe_yields_every_change_of_leader_in_order(net: Faults) -> None:
    from coordsvc import Leader
    with client(net) as c, client(net) as b_client:
        el = c.election("sched")
        seen = el.observe()
        assert next(seen) is None
        ta = el.campaign("A", ttl=5.0)
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(
            b_client.election("sched").campaign("B", ttl=5.0, timeout=5.0)))
        waiter.start()
        deadline = time.monotonic() + 5.0
        while not any(i.waiters for i in c.locks() if i.name.endswith("sched")):
            assert time.monotonic() < deadline, "B never queued"
            time.sleep(0.01)
        ta.resign()
        waiter.join()
        (tb,) = got
        tb.resign()   # type: ignore[attr-defined]
        assert [next(seen), next(seen), next(seen)] == [
            Leader(b"A", ta.token), Leader(b"B", tb.token), None]  # type: ignore[attr-defined]
        seen.close()


def test_a_term_on_a_lease_fences_writes_and_resigns_by_its_elections_lock(net: Faults) -> None:
    from coordsvc import Leader
    with client(net) as c, client(net) as other, c.lease(ttl=5.0) as ls:
        el = c.election("sched")
        term = el.campaign("A", lease=ls)
        c.put("jobs/out", "1", fence=term.lock)
        with pytest.raises(LockTimeout):     # queued, then given up: a Cancel by the lock's name
            other.election("sched").campaign("B", ttl=5.0, timeout=0.2)
        term.resign()                        # a Release by the lock's name; the lease lives on
        assert el.leader() is None and ls.alive
        with pytest.raises(CoordError):
            c.put("jobs/out", "2", fence=term.lock)
        t2 = el.campaign("A2", lease=ls)
        assert el.leader() == Leader(b"A2", t2.token)


def test_a_watch_of_everything_shows_no_records_beside_an_observed_election(net: Faults) -> None:
    from coordsvc import Leader
    with client(net) as c:
        everything = c.watch("")
        seen = c.election("sched").observe()
        assert next(seen) is None
        term = c.election("sched").campaign("A", ttl=5.0)
        c.schema_set("app/", {"type": "object"})
        c.put("\x01k", "1")
        assert next(seen) == Leader(b"A", term.token)
        ev = everything.next(timeout=5.0)
        assert ev is not None and ev.key == "\x01k"
        assert [e.key for e in c.list("")] == ["\x01k"]
        term.resign()
        assert next(seen) is None
        seen.close()
        everything.close()


def test_every_client_call_takes_keys_and_names_beginning_with_x01(net: Faults) -> None:
    with client(net) as c:
        rev = c.put("\x01k", "1")
        assert c.get("\x01k").value == b"1" and c.history("\x01k")[0].revision == rev  # type: ignore[union-attr]
        with c.lock("\x01lock", ttl=5.0, timeout=1.0) as lk:
            ok, _ = c.txn(compare=[("\x01k", rev)], success=[("put", "\x01t", "2"), ("delete", "\x01k")],
                          fence=lk)
            assert ok
        with c.lease(ttl=5.0) as ls:
            c.put("\x01eph", "1", lease=ls)
            with c.semaphore("\x01sem", limit=2, ttl=5.0, timeout=1.0), \
                    c.rwlock("\x01rw").read(ttl=5.0, timeout=1.0):
                pass
        with c.election("\x01el").campaign("me", ttl=5.0) as term:
            assert c.election("\x01el").leader().token == term.token  # type: ignore[union-attr]
        c.schema_set("\x01cfg/", {"type": "object"})
        assert c.schema_get("\x01cfg/") is not None
        with pytest.raises(InvalidRequest):
            c.put("\x01cfg/x", "[1]")
        assert c.delete("\x01t") and c.get("\x01eph") is None
        assert [e.key for e in c.list("\x01")] == []


# -- config schemas ------------------------------------------------------------------------------

def test_a_schema_refuses_puts_and_txns_with_invalid_request_naming_the_path(net: Faults) -> None:
    schema = {"type": "object", "properties": {"rollout": {"type": "integer"}}}
    with client(net) as c:
        c.schema_set("app/flags/", schema)
        assert c.schema_get("app/flags/") is not None and c.schema_get("app/") is None
        c.put("app/flags/a", '{"rollout": 5}')
        with pytest.raises(InvalidRequest, match=r"\$\.rollout"):
            c.put("app/flags/a", '{"rollout": "five"}')
        with pytest.raises(InvalidRequest, match="app/flags/b"):
            c.txn(success=[("put", "app/x", "1"), ("put", "app/flags/b", "[")])
        assert c.get("app/x") is None
        with pytest.raises(InvalidRequest):
            c.schema_set("app/", "{not json")
        assert c.schema_delete("app/flags/") and not c.schema_delete("app/flags/")
        c.put("app/flags/a", "anything")
