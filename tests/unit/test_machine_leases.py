"""Leases in the machine: a lease is a session; keys put on it die with it."""
from __future__ import annotations

import pytest

from coordsvc.core import machine as machine_mod
from coordsvc.core.commands import (
    Acquire,
    AuthAdd,
    CloseSession,
    Delete,
    ExpireSession,
    OpenSession,
    Put,
    Request,
    decode_request,
    encode_request,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ChangeType, ResultCode

from .test_machine import Client, internal

KEY = "rq(KMG*K5(0KEPUs4gE2hT=yEs{H2rqEtUf8.xEk"


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def test_a_key_put_on_a_lease_is_deleted_when_the_lease_expires(c: Client) -> None:
    ls = c.session()
    c.do(Put("svc/a", b"1", lease=ls))
    c.do(Put("svc/b", b"2", lease=ls))
    c.do(Put("svc/c", b"3"))
    rev = c.m.revision
    assert internal(c.m, ExpireSession(ls)).code == ResultCode.OK
    assert c.m.get("svc/a") is None and c.m.get("svc/b") is None
    assert c.m.get("svc/c") is not None
    evs = c.m.events_since("", rev, 10)
    assert [(e.type, e.key) for e in evs] == [(ChangeType.DELETE, "svc/a"), (ChangeType.DELETE, "svc/b")]
    assert [e.revision for e in evs] == [rev + 1, rev + 2] and c.m.revision == rev + 2


def test_closing_a_lease_deletes_its_keys_and_releases_its_locks(c: Client) -> None:
    ls, other = c.session(), c.session()
    c.do(Put("svc/a", b"1", lease=ls))
    assert c.do(Acquire("x", ls, False)).code == ResultCode.OK
    assert c.do(Acquire("y", ls, False)).code == ResultCode.OK
    assert c.do(Acquire("x", other, True)).code == ResultCode.QUEUED
    assert c.do(CloseSession(ls)).code == ResultCode.OK
    assert c.m.get("svc/a") is None
    assert c.m.lock_owner("x") == (other, 3) and c.m.lock_owner("y") is None


def test_a_put_on_an_unknown_lease_is_no_session_and_writes_nothing(c: Client) -> None:
    assert c.do(Put("k", b"v", lease=7)).code == ResultCode.NO_SESSION
    assert c.m.get("k") is None and c.m.revision == 0


def test_a_put_without_a_lease_makes_an_ephemeral_key_persistent(c: Client) -> None:
    ls = c.session()
    c.do(Put("k", b"1", lease=ls))
    assert c.m.lease_of("k") == ls
    c.do(Put("k", b"2"))
    assert c.m.lease_of("k") is None
    internal(c.m, ExpireSession(ls))
    assert c.m.get("k") is not None and c.m.get("k").value == b"2"  # type: ignore[union-attr]


def test_a_put_on_another_lease_moves_the_key_to_it(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Put("k", b"1", lease=a))
    c.do(Put("k", b"2", lease=b))
    assert c.m.lease_keys(a) == [] and c.m.lease_keys(b) == ["k"]
    internal(c.m, ExpireSession(a))
    assert c.m.get("k") is not None
    internal(c.m, ExpireSession(b))
    assert c.m.get("k") is None


def test_deleting_an_ephemeral_key_detaches_it_from_its_lease(c: Client) -> None:
    ls = c.session()
    c.do(Put("k", b"1", lease=ls))
    c.do(Delete("k"))
    c.do(Put("k", b"2"))
    rev = c.m.revision
    internal(c.m, ExpireSession(ls))
    assert c.m.get("k") is not None and c.m.revision == rev


def test_a_failed_compare_on_a_leased_put_attaches_nothing(c: Client) -> None:
    ls = c.session()
    assert c.do(Put("k", b"1", if_revision=5, lease=ls)).code == ResultCode.COMPARE_FAILED
    assert c.m.lease_keys(ls) == []


def test_keys_per_lease_are_bounded(c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_KEYS_PER_LEASE", 2)
    ls = c.session()
    assert c.do(Put("a", b"", lease=ls)).code == ResultCode.OK
    assert c.do(Put("b", b"", lease=ls)).code == ResultCode.OK
    assert c.do(Put("a", b"x", lease=ls)).code == ResultCode.OK   # already on it
    assert c.do(Put("c", b"", lease=ls)).code == ResultCode.LIMIT
    assert c.m.get("c") is None


def test_another_principals_lease_cannot_carry_my_keys() -> None:
    m = Machine()
    m.apply(1, Request("adm", 1, 1, AuthAdd("alice", KEY, write=("svc/",), lock=("l/",)), "admin"))
    bob_key = KEY[:-1] + "y"
    m.apply(2, Request("adm", 2, 2, AuthAdd("bob", bob_key, write=("svc/",)), "admin"))
    ls = m.apply(3, Request("a", 1, 1, OpenSession(5_000), "alice")).data["session_id"]
    assert isinstance(ls, int)
    r = m.apply(4, Request("b", 1, 1, Put("svc/x", b"v", lease=ls), "bob"))
    assert r.code == ResultCode.PERMISSION_DENIED and m.get("svc/x") is None
    # A writer with no lock right may still open a lease of its own for ephemeral keys.
    mine = m.apply(5, Request("b", 2, 2, OpenSession(5_000), "bob")).data["session_id"]
    assert isinstance(mine, int)
    assert m.apply(6, Request("b", 3, 3, Put("svc/x", b"v", lease=mine), "bob")).code == ResultCode.OK
    # ... but only under its write prefixes, lease or not.
    assert m.apply(7, Request("b", 4, 4, Put("other", b"v", lease=mine), "bob")).code == \
        ResultCode.PERMISSION_DENIED


def test_ephemeral_keys_round_trip_through_a_snapshot(c: Client) -> None:
    ls = c.session()
    c.do(Put("k", b"1", lease=ls))
    c.do(Put("j", b"2"))
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot()
    assert r.lease_of("k") == ls and r.lease_keys(ls) == ["k"]
    internal(r, ExpireSession(ls))
    assert r.get("k") is None and r.get("j") is not None


def test_a_snapshot_from_before_leases_still_loads(c: Client) -> None:
    import msgpack  # type: ignore[import-untyped, unused-ignore]
    c.session()
    c.do(Put("j", b"2"))
    st = msgpack.unpackb(c.m.snapshot(), raw=False, strict_map_key=False)
    del st["eph"]
    r = Machine.restore(msgpack.packb(st, use_bin_type=True))
    assert r.get("j") is not None and r.lease_of("j") is None


def test_a_leased_put_has_its_own_tag_and_a_plain_put_keeps_the_old_encoding() -> None:
    plain = Request("c", 1, 1, Put("k", b"v"))
    leased = Request("c", 1, 1, Put("k", b"v", lease=3))
    assert decode_request(encode_request(leased)) == leased
    assert decode_request(encode_request(plain)) == plain
    assert encode_request(plain) == b"\x94\xa1c\x01\x01\x95\x01\xa1k\xc4\x01v\xc0\xc0"
