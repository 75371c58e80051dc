"""Lock-delay: after its holder's session expires, a lock stays unavailable until the
leader ends the delay; a voluntary release hands it over at once."""
from __future__ import annotations

import pytest

from coordsvc.core.commands import (
    Acquire,
    CloseSession,
    EndLockDelay,
    ExpireSession,
    Fence,
    OpenAndAcquire,
    Put,
    Request,
    decode_request,
    encode_request,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ResultCode

from .test_machine import Client, internal


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def test_an_expired_holders_lock_waits_out_its_delay_then_goes_to_the_first_waiter(c: Client) -> None:
    a, b = c.session(), c.session()
    tok = c.do(Acquire("l", a, False, lock_delay_ms=5_000)).data["token"]
    assert c.do(Acquire("l", b, True)).code == ResultCode.QUEUED
    internal(c.m, ExpireSession(a), index=50)
    assert c.m.lock_owner("l") == (0, 0) and c.m.take_delays() == [("l", 5_000)]
    assert c.m.delayed_locks() == {"l": 5_000}
    # During the delay the old token fences nothing, and nobody new gets the lock.
    assert c.do(Put("k", b"v", fence=Fence("l", tok))).code == ResultCode.FENCE_REJECTED  # type: ignore[arg-type]
    d = c.session()
    assert c.do(Acquire("l", d, False)).code == ResultCode.LOCK_BUSY
    c.m.take_grants()
    internal(c.m, EndLockDelay("l"), index=60)
    (g,) = c.m.take_grants()
    assert (g.name, g.session_id) == ("l", b) and g.token > tok  # type: ignore[operator]
    assert c.m.lock_owner("l") == (b, g.token)
    assert c.m.delayed_locks() == {}


def test_a_voluntary_release_ignores_the_delay(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("l", a, False, lock_delay_ms=5_000))
    c.do(Acquire("l", b, True))
    c.do(CloseSession(a))
    owner = c.m.lock_owner("l")
    assert owner is not None and owner[0] == b and c.m.take_delays() == []


def test_without_a_delay_expiry_hands_over_at_once(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("l", a, False))
    c.do(Acquire("l", b, True))
    internal(c.m, ExpireSession(a))
    owner = c.m.lock_owner("l")
    assert owner is not None and owner[0] == b


def test_a_delayed_lock_without_waiters_is_gone_once_the_delay_ends(c: Client) -> None:
    r = c.do(OpenAndAcquire("l", 5_000, False, lock_delay_ms=1_000))
    sid = r.data["session_id"]
    assert isinstance(sid, int)
    internal(c.m, ExpireSession(sid))
    assert c.m.locks_held == 1 and c.m.locks()[0].holder_session == 0
    assert internal(c.m, EndLockDelay("l")).data == {"ended": True}
    assert c.m.locks_held == 0
    assert internal(c.m, EndLockDelay("l")).data == {"ended": False}


def test_end_lock_delay_from_a_client_is_refused(c: Client) -> None:
    assert c.do(EndLockDelay("l")).code in (ResultCode.INVALID, ResultCode.PERMISSION_DENIED)


def test_the_delay_is_the_holders_own(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("l", a, False, lock_delay_ms=5_000))
    c.do(Acquire("l", b, True))          # b asks for no delay
    c.do(CloseSession(a))
    internal(c.m, ExpireSession(b))
    assert c.m.locks_held == 0 and c.m.take_delays() == []


def test_lock_delays_round_trip_through_a_snapshot(c: Client) -> None:
    a, b, w = c.session(), c.session(), c.session()
    c.do(Acquire("held", a, False, lock_delay_ms=2_000))
    c.do(Acquire("delayed", b, False, lock_delay_ms=3_000))
    c.do(Acquire("delayed", w, True, lock_delay_ms=4_000))
    internal(c.m, ExpireSession(b))
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot() and r.delayed_locks() == {"delayed": 3_000}
    internal(r, EndLockDelay("delayed"))
    internal(r, ExpireSession(w))       # w's own delay came along in the snapshot
    internal(r, ExpireSession(a))
    assert r.delayed_locks() == {"delayed": 4_000, "held": 2_000}


def test_acquires_with_a_delay_have_their_own_tags_and_round_trip() -> None:
    for cmd in (Acquire("l", 1, True, 500), OpenAndAcquire("l", 5_000, True, 500), EndLockDelay("l")):
        req = Request("", 0, 0, cmd)
        assert decode_request(encode_request(req)) == req
    assert encode_request(Request("c", 1, 1, Acquire("l", 1, True)))[6] == 6   # the old tag
