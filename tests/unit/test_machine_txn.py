"""Transactions in the machine: compare revisions, one branch, one revision."""
from __future__ import annotations

import pytest

from coordsvc.core import machine as machine_mod
from coordsvc.core.acl import Rights, command_refusal
from coordsvc.core.commands import (
    MAX_TXN_OPS,
    Acquire,
    Delete,
    ExpireSession,
    Fence,
    Put,
    Request,
    Txn,
    decode_request,
    encode_request,
    validate,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ChangeType, ResultCode

from .test_machine import Client, internal


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def test_a_txn_whose_compares_hold_applies_success_at_one_revision(c: Client) -> None:
    ra = c.do(Put("a", b"1")).revision
    r = c.do(Txn(compare=(("a", ra), ("b", 0)),
                 success=(Put("b", b"2"), Put("a", b"3"), Delete("gone")), failure=(Put("f", b"x"),)))
    assert r.code == ResultCode.OK and r.data == {"succeeded": True, "revision": ra + 1}
    a, b = c.m.get("a"), c.m.get("b")
    assert a is not None and b is not None and a.revision == b.revision == ra + 1
    assert (a.value, b.value, c.m.get("f")) == (b"3", b"2", None)
    evs = c.m.events_since("", ra, 100)
    assert [(e.key, e.revision) for e in evs] == [("a", ra + 1), ("b", ra + 1)]


def test_a_failed_compare_applies_failure_and_is_not_an_error(c: Client) -> None:
    c.do(Put("a", b"1"))
    r = c.do(Txn(compare=(("a", 0),), success=(Put("s", b"x"),), failure=(Put("f", b"y"), Delete("a"))))
    assert r.code == ResultCode.OK and r.data["succeeded"] is False
    assert c.m.get("s") is None and c.m.get("a") is None and c.m.get("f") is not None
    assert c.m.history("a")[-1].type == ChangeType.DELETE


def test_a_branch_that_changes_nothing_creates_no_revision(c: Client) -> None:
    c.do(Put("a", b"1"))
    rev = c.m.revision
    r = c.do(Txn(compare=(("a", 99),), success=(), failure=(Delete("absent"),)))
    assert r.data == {"succeeded": False, "revision": rev} and c.m.revision == rev


def test_a_fenced_txn_with_a_stale_token_applies_nothing(c: Client) -> None:
    sid = c.session()
    tok = c.do(Acquire("l", sid, False)).data["token"]
    assert isinstance(tok, int)
    assert c.do(Txn(success=(Put("k", b"v"),), fence=Fence("l", tok + 1))).code == ResultCode.FENCE_REJECTED
    assert c.m.get("k") is None
    assert c.do(Txn(success=(Put("k", b"v"),), fence=Fence("l", tok))).data["succeeded"] is True


def test_txn_puts_may_live_on_a_lease(c: Client) -> None:
    sid = c.session()
    c.do(Txn(success=(Put("e", b"1", lease=sid), Put("p", b"2"))))
    internal(c.m, ExpireSession(sid))
    assert c.m.get("e") is None and c.m.get("p") is not None
    r = c.do(Txn(success=(Put("e", b"1", lease=sid),)))
    assert r.code == ResultCode.NO_SESSION and c.m.get("e") is None


@pytest.mark.parametrize("cmd", [
    Txn(success=(Put("a", b"", if_revision=1),)),
    Txn(success=(Put("a", b"", fence=Fence("l", 1)),)),
    Txn(success=(Put("a", b""), Delete("a"))),
    Txn(success=tuple(Put(f"k{i}", b"") for i in range(MAX_TXN_OPS + 1))),
    Txn(compare=tuple((f"k{i}", 0) for i in range(MAX_TXN_OPS + 1))),
    Txn(success=(Put("a", b"x" * 600_000), Put("b", b"x" * 600_000))),
    Txn(compare=(("", 0),)),
    Txn(compare=(("a", -1),)),
])
def test_malformed_or_oversized_txns_are_invalid_and_change_nothing(c: Client, cmd: Txn) -> None:
    assert validate(cmd) is not None
    assert c.do(cmd).code == ResultCode.INVALID and c.m.revision == 0


def test_a_txn_round_trips_through_its_encoding() -> None:
    cmd = Txn((("a", 3), ("b", 0)), (Put("a", b"x"), Put("e", b"y", lease=4), Delete("b")),
              (Delete("c"),), Fence("l", 7))
    req = Request("c", 1, 1, cmd)
    assert decode_request(encode_request(req)) == req


def test_every_key_of_a_txn_is_checked_against_the_callers_rights() -> None:
    r = Rights(read=("ro/",), write=("app/",))
    ok = Txn((("ro/x", 1), ("app/y", 0)), (Put("app/a", b""),), (Delete("app/b"),))
    assert command_refusal(r, ok) is None
    assert "write 'ro/x'" in (command_refusal(r, Txn(success=(Put("ro/x", b""),))) or "")
    assert "write 'other'" in (command_refusal(r, Txn(failure=(Delete("other"),))) or "")
    assert "read 'other'" in (command_refusal(r, Txn(compare=(("other", 0),))) or "")


def test_a_window_trimmed_through_txn_groups_keeps_revisions_and_snapshots_round_trip(
        c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "WINDOW_EVENTS", 5)
    c.do(Put("solo", b"0"))
    for i in range(4):
        c.do(Txn(success=(Put("a", str(i).encode()), Put("b", str(i).encode()), Put("c", b"z"))))
    evs = c.m.events_since("", c.m.first_revision_in_window - 1, 100)
    assert {e.revision for e in evs} == set(range(c.m.first_revision_in_window, c.m.revision + 1))
    assert len(evs) <= 5 + 2
    restored = Machine.restore(c.m.snapshot())
    assert restored.snapshot() == c.m.snapshot()
    assert restored.events_since("", restored.first_revision_in_window - 1, 100) == evs
    assert restored.history("a") == c.m.history("a")


def test_a_page_never_splits_a_revision(c: Client) -> None:
    c.do(Txn(success=(Put("a", b"1"), Put("b", b"2"), Put("c", b"3"))))
    c.do(Put("d", b"4"))
    evs, cut = c.m.events_page("", 0, 1, 1 << 20)
    assert [e.key for e in evs] == ["a", "b", "c"] and cut
    evs, cut = c.m.events_page("", 0, 100, 10)    # bytes: still the whole first revision
    assert [e.key for e in evs] == ["a", "b", "c"] and cut
    assert [e.key for e in c.m.events_since("b", 0, 1)] == ["b"]
