"""Elections in the machine: a lock whose grants write the election's record key."""
from __future__ import annotations

import pytest

from coordsvc.core.acl import Rights, command_refusal
from coordsvc.core.commands import (
    ELECTION_PREFIX,
    Acquire,
    Campaign,
    Cancel,
    CloseSession,
    Delete,
    ExpireSession,
    Put,
    Request,
    Txn,
    decode_request,
    encode_request,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ChangeType, ResultCode

from .test_machine import Client, internal

KEY = ELECTION_PREFIX + "sched"


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def record(c: Client) -> bytes | None:
    kv = c.m.get(KEY)
    return None if kv is None else kv.value


def test_the_first_candidate_leads_and_its_record_names_its_token_and_value(c: Client) -> None:
    a, b = c.session(), c.session()
    r = c.do(Campaign("sched", a, b"host-a"))
    assert r.code == ResultCode.OK
    tok = r.data["token"]
    assert record(c) == b"%d\nhost-a" % tok  # type: ignore[str-bytes-safe]
    assert c.do(Campaign("sched", b, b"host-b")).code == ResultCode.QUEUED
    assert record(c) == b"%d\nhost-a" % tok  # type: ignore[str-bytes-safe]


def test_leadership_passes_in_fifo_order_and_the_record_follows_every_change(c: Client) -> None:
    a, b, d = c.session(), c.session(), c.session()
    c.do(Campaign("sched", a, b"A"))
    c.do(Campaign("sched", b, b"B"))
    c.do(Campaign("sched", d, b"D"))
    start = c.m.revision
    internal(c.m, ExpireSession(a))          # involuntary
    c.do(CloseSession(b))                    # resign
    c.do(CloseSession(d))                    # the last one leaves: nobody leads
    evs = [e for e in c.m.events_since("", start, 100) if e.key == KEY]
    assert [(e.type, e.value.partition(b"\n")[2]) for e in evs] == [
        (ChangeType.PUT, b"B"), (ChangeType.PUT, b"D"), (ChangeType.DELETE, b"")]
    tokens = [int(e.value.split(b"\n")[0]) for e in evs[:2]]
    assert tokens[0] < tokens[1]
    assert record(c) is None and c.m.locks_held == 0


def test_a_candidate_that_gives_up_leaves_no_value_behind(c: Client) -> None:
    a, b, d = c.session(), c.session(), c.session()
    c.do(Campaign("sched", a, b"A"))
    c.do(Campaign("sched", b, b"B"))
    c.do(Cancel(KEY, b))
    c.do(Campaign("sched", d, b"D"))
    c.do(CloseSession(a))
    assert record(c) is not None and record(c).endswith(b"\nD")  # type: ignore[union-attr]
    assert c.do(Campaign("sched", a, b"late")).code == ResultCode.NO_SESSION


def test_clients_may_not_write_election_records_or_take_their_locks(c: Client) -> None:
    a = c.session()
    for cmd in (Put(KEY, b"1\nforged"), Delete(KEY), Txn(success=(Put(KEY, b"x"),)),
                Acquire(KEY, a, True)):
        assert c.do(cmd).code == ResultCode.INVALID
    assert record(c) is None


def test_the_lock_right_on_a_name_covers_its_election_and_its_record() -> None:
    r = Rights(lock=("jobs/",))
    assert command_refusal(r, Campaign("jobs/sched", 1, b"")) is None
    assert command_refusal(r, Campaign("other", 1, b"")) is not None
    assert r.may_read(ELECTION_PREFIX + "jobs/sched") and not r.may_read(ELECTION_PREFIX + "x")
    assert r.reads_all_under(ELECTION_PREFIX + "jobs/") and not r.may_read("jobs/sched")


def test_candidates_round_trip_through_a_snapshot(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Campaign("sched", a, b"A"))
    c.do(Campaign("sched", b, b"B"))
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot()
    internal(r, ExpireSession(a))
    kv = r.get(KEY)
    assert kv is not None and kv.value.endswith(b"\nB")


def test_campaign_round_trips_and_is_bounded() -> None:
    req = Request("c", 1, 1, Campaign("sched", 2, b"v", False))
    assert decode_request(encode_request(req)) == req
    m = Machine()
    assert m.apply(1, Request("c", 1, 1, Campaign("s", 1, b"x" * 70_000))).code == ResultCode.INVALID
