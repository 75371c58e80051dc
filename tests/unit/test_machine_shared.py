"""Semaphores and read/write locks in the machine: FIFO, fencing tokens, sessions."""
from __future__ import annotations

import pytest

from coordsvc.core.commands import (
    Acquire,
    AcquireShared,
    Cancel,
    CloseSession,
    ExpireSession,
    Release,
    Request,
    decode_request,
    encode_request,
    validate,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import LockRow, ResultCode

from .test_machine import Client, internal


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def sem(c: Client, sid: int, limit: int = 2, wait: bool = True) -> str:
    return c.do(AcquireShared("s", sid, "semaphore", limit, wait)).code


def rw(c: Client, sid: int, mode: str, wait: bool = True) -> str:
    return c.do(AcquireShared("rw", sid, mode, 0, wait)).code


def test_a_semaphore_admits_limit_holders_then_queues_fifo(c: Client) -> None:
    a, b, d, e = (c.session() for _ in range(4))
    assert [sem(c, a), sem(c, b), sem(c, d), sem(c, e)] == ["ok", "ok", "queued", "queued"]
    assert sem(c, a) == "ok"                     # already held: the same token again
    c.do(CloseSession(a))
    assert c.m.held_token("s", d) is not None and c.m.held_token("s", e) is None
    tb = c.m.held_token("s", b)
    assert tb is not None
    c.do(Release("s", b, tb))
    te, td = c.m.held_token("s", e), c.m.held_token("s", d)
    assert te is not None and td is not None and te > td > tb


def test_a_full_semaphore_without_wait_is_busy(c: Client) -> None:
    a, b = c.session(), c.session()
    assert sem(c, a, limit=1) == "ok" and sem(c, b, limit=1, wait=False) == "lock_busy"


def test_every_holder_must_name_the_same_limit_and_kind(c: Client) -> None:
    a, b = c.session(), c.session()
    sem(c, a, limit=2)
    r = c.do(AcquireShared("s", b, "semaphore", 3, True))
    assert r.code == ResultCode.INVALID and "limit 2" in str(r.data["message"])
    assert c.do(AcquireShared("s", b, "read", 0, True)).code == ResultCode.INVALID
    c.do(Acquire("plain", a, False))
    assert c.do(AcquireShared("plain", b, "semaphore", 1, True)).code == ResultCode.INVALID


@pytest.mark.xfail(strict=True, raises=KeyError, reason="machine bug, reported and not fixed "
                   "here: Acquire does not refuse a semaphore's or rwlock's name")
def test_a_plain_acquire_of_a_shared_name_never_makes_an_apply_raise(c: Client) -> None:
    # The reverse of the last assertion above. Today Acquire answers ok and makes a plain
    # lock beside the semaphore, and closing its holder raises KeyError inside apply -- on
    # every replica, at the same slot: one client's two commands stop the whole cluster.
    a, b = c.session(), c.session()
    sem(c, a, limit=1)
    c.do(Acquire("s", b, True))
    assert c.do(CloseSession(b)).code == ResultCode.OK
    assert c.m.held_token("s", a) is not None


def test_readers_share_and_a_writer_waits_for_them(c: Client) -> None:
    r1, r2, w = c.session(), c.session(), c.session()
    assert [rw(c, r1, "read"), rw(c, r2, "read"), rw(c, w, "write")] == ["ok", "ok", "queued"]
    c.do(CloseSession(r1))
    assert c.m.held_token("rw", w) is None
    internal(c.m, ExpireSession(r2))
    assert c.m.held_token("rw", w) is not None


def test_a_waiting_writer_holds_back_later_readers_fifo(c: Client) -> None:
    r1, w, r2, r3 = (c.session() for _ in range(4))
    assert [rw(c, r1, "read"), rw(c, w, "write"), rw(c, r2, "read"), rw(c, r3, "read")] == \
        ["ok", "queued", "queued", "queued"]
    c.do(CloseSession(r1))
    assert c.m.held_token("rw", w) is not None and c.m.held_token("rw", r2) is None
    c.do(CloseSession(w))
    assert c.m.held_token("rw", r2) is not None and c.m.held_token("rw", r3) is not None


def test_a_writer_leaving_the_queue_lets_the_readers_behind_it_in(c: Client) -> None:
    r1, w, r2 = c.session(), c.session(), c.session()
    rw(c, r1, "read")
    rw(c, w, "write")
    rw(c, r2, "read")
    assert c.do(Cancel("rw", w)).data == {"dequeued": True, "released": False}
    assert c.m.held_token("rw", r2) is not None


def test_shared_holds_are_listed_with_their_holders_and_waiters(c: Client) -> None:
    a, b, d = c.session(), c.session(), c.session()
    sem(c, a)
    sem(c, b)
    sem(c, d)
    (row,) = c.m.locks()
    assert (row.name, row.kind, row.limit, [h[0] for h in row.holders], row.waiters) == \
        ("s", "semaphore", 2, [a, b], (d,))
    assert row.waiter_modes == ("semaphore",)
    wire = LockRow(row.name, row.holder_session, row.token, 0, row.waiters, None, kind=row.kind,
                   limit=row.limit, holders=row.holders, waiter_modes=row.waiter_modes)
    assert LockRow.from_wire(wire.to_wire()) == wire
    plain = LockRow("l", 1, 2, 3, (), None)
    assert len(plain.to_wire()) == 11 and LockRow.from_wire(plain.to_wire()) == plain


def test_semaphores_and_rwlocks_round_trip_through_a_snapshot(c: Client) -> None:
    a, b, d = c.session(), c.session(), c.session()
    sem(c, a, limit=1)
    sem(c, b, limit=1)
    rw(c, a, "read")
    rw(c, d, "write")
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot() and r.locks() == c.m.locks()
    internal(r, ExpireSession(a))
    assert r.held_token("s", b) is not None and r.held_token("rw", d) is not None


@pytest.mark.parametrize("cmd", [
    AcquireShared("s", 1, "semaphore", 0, True), AcquireShared("s", 1, "semaphore", 1001, True),
    AcquireShared("s", 1, "read", 2, True), AcquireShared("s", 1, "exclusive", 0, True),
    AcquireShared("", 1, "read", 0, True)])
def test_bad_shared_acquires_are_invalid(cmd: AcquireShared) -> None:
    assert validate(cmd) is not None


def test_acquire_shared_round_trips_through_its_encoding() -> None:
    req = Request("c", 1, 1, AcquireShared("s", 3, "semaphore", 4, False))
    assert decode_request(encode_request(req)) == req
