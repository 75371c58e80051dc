from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordsvc.core import machine as machine_mod
from coordsvc.core.commands import (
    Acquire,
    Cancel,
    CloseSession,
    Command,
    Delete,
    ExpireSession,
    Fence,
    Noop,
    OpenAndAcquire,
    OpenSession,
    Put,
    Release,
    Request,
)
from coordsvc.core.machine import Grant, HeldLock, Machine, RevisionCompacted, SessionInfo
from coordsvc.core.protocol import Change, KeyValue, Result, ResultCode
from coordsvc.core.types import ProtocolError, UsageError


class Client:
    """Drives a machine as one client would: increasing seqs, log index ticking."""

    def __init__(self, m: Machine, cid: str = "c1") -> None:
        self.m, self.cid, self.seq = m, cid, 0

    def do(self, cmd: Command, first_unacked: int | None = None) -> Result:
        self.seq += 1
        fu = self.seq if first_unacked is None else first_unacked
        return self.m.apply(self.seq, Request(self.cid, self.seq, fu, cmd))

    def session(self, ttl_ms: int = 5_000) -> int:
        r = self.do(OpenSession(ttl_ms))
        assert r.code == "ok"
        sid = r.data["session_id"]
        assert isinstance(sid, int)
        return sid


def internal(m: Machine, cmd: Command, index: int = 0) -> Result:
    return m.apply(index, Request("", 0, 0, cmd))


@pytest.fixture
def c() -> Client:
    return Client(Machine())


# -- keys ---------------------------------------------------------------------------

def test_put_bumps_the_global_revision_and_returns_it(c: Client) -> None:
    assert c.do(Put("a", b"1")) == Result("ok", 1, {"revision": 1})
    assert c.do(Put("b", b"2")).data == {"revision": 2}
    assert c.m.revision == 2


def test_put_tracks_create_revision_and_version(c: Client) -> None:
    c.do(Put("a", b"1"))
    c.do(Put("b", b"x"))
    c.do(Put("a", b"2"))
    assert c.m.get("a") == KeyValue("a", b"2", 3, 1, 2)
    c.do(Delete("a"))
    c.do(Put("a", b"3"))
    assert c.m.get("a") == KeyValue("a", b"3", 5, 5, 1)


def test_put_with_if_revision_zero_requires_the_key_to_be_absent(c: Client) -> None:
    assert c.do(Put("a", b"1", 0)).code == "ok"
    r = c.do(Put("a", b"2", 0))
    assert r.code == "compare_failed" and r.data["current_revision"] == 1
    assert c.m.get("a") == KeyValue("a", b"1", 1, 1, 1)


def test_cas_with_stale_revision_writes_nothing(c: Client) -> None:
    c.do(Put("a", b"1"))
    c.do(Put("a", b"2"))
    r = c.do(Put("a", b"3", if_revision=1))
    assert r.code == "compare_failed" and r.revision == 2
    assert c.m.get("a") == KeyValue("a", b"2", 2, 1, 2)
    assert len(c.m.history("a")) == 2


def test_cas_with_current_revision_writes(c: Client) -> None:
    c.do(Put("a", b"1"))
    assert c.do(Put("a", b"2", if_revision=1)).data == {"revision": 2}


def test_delete_of_a_missing_key_is_ok_and_creates_no_revision(c: Client) -> None:
    assert c.do(Delete("nope")) == Result("ok", 0, {"deleted": False})
    assert c.do(Delete("nope", if_revision=0)) == Result("ok", 0, {"deleted": False})
    assert c.m.revision == 0 and c.m.events_since("", 0, 10) == []


def test_delete_with_mismatched_if_revision_is_compare_failed(c: Client) -> None:
    assert c.do(Delete("nope", if_revision=3)).code == "compare_failed"
    c.do(Put("a", b"1"))
    assert c.do(Delete("a", if_revision=0)).code == "compare_failed"
    assert c.do(Delete("a", if_revision=7)).code == "compare_failed"
    assert c.m.get("a") is not None


def test_delete_bumps_the_revision_and_records_a_delete_event(c: Client) -> None:
    c.do(Put("a", b"1"))
    assert c.do(Delete("a", if_revision=1)) == Result("ok", 2, {"deleted": True, "revision": 2})
    assert c.m.get("a") is None
    assert c.m.history("a") == [Change("put", "a", b"1", 1), Change("delete", "a", b"", 2)]


def test_fenced_write_with_the_current_token_is_applied(c: Client) -> None:
    sid = c.session()
    token = c.do(Acquire("lk", sid, False)).data["token"]
    assert isinstance(token, int)
    assert c.do(Put("k", b"v", None, Fence("lk", token))).code == "ok"
    assert c.do(Delete("k", None, Fence("lk", token))).data["deleted"] is True


def test_fenced_write_with_a_stale_token_is_rejected_and_writes_nothing(c: Client) -> None:
    a, b = c.session(), c.session()
    old = c.do(Acquire("lk", a, False)).data["token"]
    assert isinstance(old, int)
    c.do(Release("lk", a, old))
    c.do(Acquire("lk", b, False))
    assert c.do(Put("k", b"v", None, Fence("lk", old))).code == "fence_rejected"
    assert c.do(Put("k", b"v", None, Fence("free", 1))).code == "fence_rejected"
    assert c.m.get("k") is None and c.m.revision == 0


@pytest.mark.parametrize("cmd", [
    Put("", b""), Put("k", b"x" * 1_048_577), Delete("a\x00"), OpenSession(10),
    Acquire("", 1, True), Put("k", b"", -1), Put("k", "str"),  # type: ignore[arg-type]
])
def test_bad_values_give_an_invalid_result_and_change_nothing(c: Client, cmd: Command) -> None:
    before = c.m.snapshot()
    r = c.m.apply(1, Request("x", 1, 1, cmd))
    assert r.code == "invalid" and isinstance(r.data["message"], str)
    assert Machine.restore(before).list("") == c.m.list("") and c.m.session_count == 0


def test_list_returns_keys_under_the_prefix_sorted(c: Client) -> None:
    for k in ["app/b", "other", "app/a", "app"]:
        c.do(Put(k, k.encode()))
    assert [kv.key for kv in c.m.list("app/")] == ["app/a", "app/b"]
    assert [kv.key for kv in c.m.list("")] == ["app", "app/a", "app/b", "other"]


def test_key_history_keeps_the_last_64_events_oldest_first(c: Client) -> None:
    for i in range(70):
        c.do(Put("k", str(i).encode()))
    h = c.m.history("k")
    assert len(h) == 64 and h[0].value == b"6" and h[-1].value == b"69"
    assert [e.revision for e in h] == list(range(7, 71))


def test_history_of_a_deleted_key_is_dropped_once_its_delete_leaves_the_window(
        c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "WINDOW_EVENTS", 3)
    c.do(Put("gone", b"1"))
    c.do(Delete("gone"))
    c.do(Put("kept", b"1"))
    assert len(c.m.history("gone")) == 2
    c.do(Put("kept", b"2"))
    c.do(Put("kept", b"3"))
    assert c.m.history("gone") == []
    assert len(c.m.history("kept")) == 3


def test_events_since_returns_later_events_under_the_prefix_ascending_up_to_limit(c: Client) -> None:
    for i, k in enumerate(["a/1", "b/1", "a/2", "a/3", "a/4"]):
        c.do(Put(k, bytes([i])))
    assert [e.revision for e in c.m.events_since("a/", 1, 2)] == [3, 4]
    assert [e.revision for e in c.m.events_since("", 0, 100)] == [1, 2, 3, 4, 5]
    assert c.m.events_since("", 5, 10) == []
    with pytest.raises(UsageError):
        c.m.events_since("", 0, 0)


def test_events_since_raises_compacted_exactly_when_a_needed_event_was_dropped(
        c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "WINDOW_EVENTS", 5)
    for i in range(8):
        c.do(Put("k", bytes([i])))
    assert c.m.first_revision_in_window == 4
    assert [e.revision for e in c.m.events_since("", 3, 10)] == [4, 5, 6, 7, 8]
    with pytest.raises(RevisionCompacted) as exc:
        c.m.events_since("", 2, 10)
    assert exc.value.oldest_available_revision == 4


def test_event_window_is_also_bounded_by_value_bytes(c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "WINDOW_BYTES", 25)
    for i in range(5):
        c.do(Put(f"k{i}", b"x" * 10))
    assert c.m.first_revision_in_window == 4
    with pytest.raises(RevisionCompacted):
        c.m.events_since("", 0, 10)


# -- exactly once -------------------------------------------------------------------

def test_a_retried_seq_returns_the_cached_result_without_reapplying() -> None:
    m = Machine()
    first = m.apply(1, Request("c", 1, 1, Put("k", b"v")))
    again = m.apply(2, Request("c", 1, 1, Put("k", b"other")))
    assert again == first and m.revision == 1 and m.get("k") == KeyValue("k", b"v", 1, 1, 1)


def test_concurrent_seqs_applied_out_of_order_are_each_applied_once() -> None:
    m = Machine()
    r3 = m.apply(1, Request("c", 3, 1, Put("k", b"3")))
    r1 = m.apply(2, Request("c", 1, 1, Put("k", b"1")))
    assert (r3.revision, r1.revision) == (1, 2)
    assert m.apply(3, Request("c", 3, 1, Put("k", b"3"))) == r3
    assert m.apply(4, Request("c", 2, 1, Noop())).code == "ok"
    assert m.revision == 2


def test_a_seq_below_first_unacked_is_a_stale_request_and_not_applied() -> None:
    m = Machine()
    m.apply(1, Request("c", 1, 1, Put("k", b"1")))
    m.apply(2, Request("c", 5, 5, Put("k", b"5")))
    r = m.apply(3, Request("c", 1, 1, Put("k", b"again")))
    assert r.code == "stale_request" and m.revision == 2


def test_first_unacked_prunes_cached_results_below_it() -> None:
    m = Machine()
    for s in (1, 2, 3):
        m.apply(s, Request("c", s, 1, Noop()))
    m.apply(4, Request("c", 4, 3, Noop()))
    seqs = _client_seqs(m, "c")
    assert seqs == [3, 4]


def test_a_seq_evicted_from_the_cache_is_refused_rather_than_reapplied(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_SEQS_PER_CLIENT", 3)
    m = Machine()
    for s in range(1, 5):
        m.apply(s, Request("c", s, 1, Put("k", bytes([s]))))
    assert _client_seqs(m, "c") == [2, 3, 4]
    assert m.apply(9, Request("c", 1, 1, Put("k", b"dup"))).code == "stale_request"
    assert m.revision == 4


def test_the_least_recently_active_client_is_evicted_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_CLIENTS", 2)
    m = Machine()
    m.apply(1, Request("a", 1, 1, Put("k", b"a")))
    m.apply(2, Request("b", 1, 1, Noop()))
    m.apply(3, Request("a", 2, 1, Noop()))
    m.apply(4, Request("c", 1, 1, Noop()))
    assert _client_ids(m) == ["a", "c"]


def test_internal_requests_are_not_deduplicated() -> None:
    m = Machine()
    sid = m.apply(1, Request("c", 1, 1, OpenSession(5_000))).data["session_id"]
    assert isinstance(sid, int)
    assert internal(m, ExpireSession(sid)).code == "ok"
    assert internal(m, ExpireSession(sid)).code == "no_session"
    assert _client_ids(m) == ["c"]


def test_a_bad_request_envelope_is_invalid_and_not_cached() -> None:
    m = Machine()
    assert m.apply(1, Request("x" * 65, 1, 1, Put("k", b""))).code == "invalid"
    assert m.apply(1, Request("c", 2, 3, Put("k", b""))).code == "invalid"
    assert m.apply(1, Request("", 4, 0, Put("k", b""))).code == "invalid"
    assert m.revision == 0 and _client_ids(m) == []


# -- sessions -----------------------------------------------------------------------

def test_session_ids_count_up_from_one(c: Client) -> None:
    assert [c.session(), c.session(), c.session()] == [1, 2, 3]
    c.do(CloseSession(2))
    assert c.session() == 4


def test_sessions_report_ttl_held_locks_and_opened_index(c: Client) -> None:
    sid = c.session(7_000)
    c.do(Acquire("b", sid, False))
    c.do(Acquire("a", sid, False))
    assert c.m.sessions() == {sid: SessionInfo(7_000, ("a", "b"), 1)}


def test_session_count_is_bounded(c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_SESSIONS", 2)
    c.session()
    c.session()
    assert c.do(OpenSession(5_000)).code == "limit"


def test_closing_a_session_releases_its_locks_to_the_next_waiters(c: Client) -> None:
    a, b, d = c.session(), c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("y", a, False))
    c.do(Acquire("x", b, True))
    c.do(Acquire("y", d, True))
    c.m.take_grants()
    assert c.do(CloseSession(a)).code == "ok"
    assert c.m.take_grants() == [Grant("x", b, 3), Grant("y", d, 4)]
    assert a not in c.m.sessions() and c.m.locks_held == 2


def test_expiring_a_session_dequeues_its_waits(c: Client) -> None:
    a, b, d = c.session(), c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    c.do(Acquire("x", d, True))
    assert internal(c.m, ExpireSession(b)).code == "ok"
    assert not c.m.waiting("x", b)
    tok = c.m.lock_owner("x")
    assert tok is not None
    c.do(Release("x", a, tok[1]))
    assert c.m.lock_owner("x") == (d, 2)


def test_expire_session_from_a_client_is_invalid(c: Client) -> None:
    sid = c.session()
    assert c.do(ExpireSession(sid)).code == "invalid"
    assert sid in c.m.sessions()


def test_closing_an_unknown_session_is_no_session(c: Client) -> None:
    assert c.do(CloseSession(42)).code == "no_session"


# -- locks --------------------------------------------------------------------------

def test_acquiring_a_free_lock_grants_the_next_token(c: Client) -> None:
    a = c.session()
    assert c.do(Acquire("x", a, False)) == Result("ok", 0, {"token": 1})
    assert c.do(Acquire("y", a, True)).data == {"token": 2}
    assert c.m.locks() == [HeldLock("x", a, 1, 2, (), "admin"), HeldLock("y", a, 2, 3, (), "admin")]


def test_acquire_with_an_unknown_session_is_no_session(c: Client) -> None:
    assert c.do(Acquire("x", 9, True)).code == "no_session"
    assert c.m.lock_owner("x") is None


def test_reacquiring_a_held_lock_returns_the_same_token(c: Client) -> None:
    a = c.session()
    c.do(Acquire("x", a, False))
    assert c.do(Acquire("x", a, True)).data == {"token": 1}
    assert c.m.next_token == 2


def test_acquiring_a_lock_held_by_another_without_wait_is_lock_busy(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("x", a, False))
    assert c.do(Acquire("x", b, False)).code == "lock_busy"
    assert not c.m.waiting("x", b)


def test_lock_waiters_are_granted_in_fifo_order(c: Client) -> None:
    a, b, d, e = c.session(), c.session(), c.session(), c.session()
    c.do(Acquire("x", a, False))
    for s in (d, b, e):
        assert c.do(Acquire("x", s, True)).code == "queued"
    order = []
    holder, token = a, 1
    for _ in range(3):
        c.do(Release("x", holder, token))
        owner = c.m.lock_owner("x")
        assert owner is not None
        holder, token = owner
        order.append(holder)
    assert order == [d, b, e]


def test_queueing_twice_keeps_one_place_in_line(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    assert c.do(Acquire("x", b, True)).code == "queued"
    assert c.m.locks()[0].waiters == (b,)


def test_waiters_per_lock_are_bounded(c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_WAITERS", 1)
    a, b, d = c.session(), c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    assert c.do(Acquire("x", d, True)).code == "limit"


def test_held_locks_are_bounded(c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_LOCKS", 1)
    a = c.session()
    c.do(Acquire("x", a, False))
    assert c.do(Acquire("y", a, False)).code == "limit"


def test_release_with_a_wrong_session_or_token_is_not_held(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("x", a, False))
    assert c.do(Release("x", a, 2)).code == "not_held"
    assert c.do(Release("x", b, 1)).code == "not_held"
    assert c.do(Release("y", a, 1)).code == "not_held"
    assert c.m.lock_owner("x") == (a, 1)


def test_tokens_strictly_increase_and_are_never_reused(c: Client) -> None:
    a, b = c.session(), c.session()
    tokens = []
    for s in (a, b, a, b):
        t = c.do(Acquire("x", s, False)).data["token"]
        assert isinstance(t, int)
        tokens.append(t)
        c.do(Release("x", s, t))
    assert tokens == sorted(set(tokens))


def test_open_and_acquire_grants_a_free_lock_on_a_new_session(c: Client) -> None:
    r = c.do(OpenAndAcquire("x", 5_000, True))
    assert r.code == "ok"
    sid = r.data["session_id"]
    assert c.m.lock_owner("x") == (sid, r.data["token"])
    assert c.m.sessions()[sid] == SessionInfo(5_000, ("x",), c.seq)


def test_open_and_acquire_queues_its_new_session_behind_the_holder(c: Client) -> None:
    a = c.session()
    c.do(Acquire("x", a, False))
    r = c.do(OpenAndAcquire("x", 5_000, True))
    assert r.code == "queued"
    sid = r.data["session_id"]
    assert c.m.waiting("x", sid)
    c.do(CloseSession(a))            # closing the holder's session hands the lock over
    assert c.m.lock_owner("x") == (sid, 2)


def test_open_and_acquire_that_gets_nothing_leaves_no_session(c: Client) -> None:
    a = c.session()
    c.do(Acquire("x", a, False))
    assert c.do(OpenAndAcquire("x", 5_000, False)).code == "lock_busy"
    assert c.do(OpenAndAcquire("x", 999, True)).code == "invalid"
    assert list(c.m.sessions()) == [a]


def test_closing_the_only_session_of_a_lock_releases_it_to_the_next_waiter(c: Client) -> None:
    first = c.do(OpenAndAcquire("x", 5_000, True)).data
    second = c.do(OpenAndAcquire("x", 5_000, True)).data
    assert c.do(CloseSession(first["session_id"])).code == "ok"
    assert c.m.lock_owner("x") == (second["session_id"], first["token"] + 1)
    assert c.m.take_grants()[-1] == Grant("x", second["session_id"], first["token"] + 1)


def test_cancel_dequeues_a_waiter(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    assert c.do(Cancel("x", b)).data == {"dequeued": True, "released": False}
    assert not c.m.waiting("x", b) and c.m.locks()[0].waiters == ()


def test_cancel_by_the_holder_releases_and_grants_the_next_waiter(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    assert c.do(Cancel("x", a)).data == {"dequeued": False, "released": True}
    assert c.m.lock_owner("x") == (b, 2)
    assert c.do(Cancel("x", a)).data == {"dequeued": False, "released": False}


def test_take_grants_returns_every_grant_once_including_immediate_ones(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    c.do(Release("x", a, 1))
    assert c.m.take_grants() == [Grant("x", a, 1), Grant("x", b, 2)]
    assert c.m.take_grants() == []


def test_status_counters(c: Client) -> None:
    a = c.session()
    c.do(Put("k", b""))
    c.do(Acquire("x", a, False))
    assert (c.m.revision, c.m.key_count, c.m.session_count, c.m.locks_held) == (1, 1, 1, 1)


# -- snapshots ----------------------------------------------------------------------

def test_restore_of_empty_bytes_or_a_fresh_snapshot_is_a_fresh_machine() -> None:
    fresh = Machine().snapshot()
    assert Machine.restore(b"").snapshot() == fresh
    assert Machine.restore(fresh).snapshot() == fresh


def test_a_restored_machine_has_the_same_state(c: Client) -> None:
    a, b = c.session(), c.session()
    c.do(Put("k", b"v" * 100))
    c.do(Put("k", b"w"))
    c.do(Delete("k"))
    c.do(Put("j", b"1"))
    c.do(Acquire("x", a, False))
    c.do(Acquire("x", b, True))
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot()
    assert r.list("") == c.m.list("") and r.history("k") == c.m.history("k")
    assert r.events_since("", 0, 100) == c.m.events_since("", 0, 100)
    assert r.sessions() == c.m.sessions() and r.locks() == c.m.locks()
    assert r.apply(99, Request("c1", c.seq, c.seq, Noop())) == c.m.apply(99, Request("c1", c.seq, c.seq, Noop()))


@pytest.mark.parametrize("data", [b"\xc1", b"\x93\x01\x02\x03", b"\x80", b"\x81\xa1v\x01"])
def test_restoring_garbage_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Machine.restore(data)


def test_results_round_trip_through_the_wire_form() -> None:
    r = Result("compare_failed", 4, {"message": "m", "current_revision": 2})
    assert Result.from_wire(r.to_wire()) == r
    with pytest.raises(ProtocolError):
        Result.from_wire(["bogus", 1, {}])


# -- determinism --------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "a/c"])
_ids = st.integers(1, 3)
# Session opens and waiting acquires are over-weighted so locks actually get contended.
_cmds: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, _names, st.binary(max_size=3), st.none() | st.integers(0, 6),
              st.none() | st.builds(Fence, _names, st.integers(1, 6))),
    st.builds(Put, _names, st.binary(max_size=3), st.none() | st.integers(0, 6), st.none(),
              st.integers(0, 3)),
    st.builds(Delete, _names, st.none() | st.integers(0, 6)),
    st.builds(OpenSession, st.sampled_from([999, 5_000, 5_000])),
    st.builds(OpenSession, st.just(5_000)),
    st.builds(CloseSession, _ids),
    st.builds(ExpireSession, _ids),
    st.builds(Acquire, _names, _ids, st.booleans()),
    st.builds(Acquire, _names, _ids, st.just(True)),
    st.builds(Acquire, _names, _ids, st.just(True)),
    st.builds(Release, _names, _ids, st.integers(1, 6)),
    st.builds(Cancel, _names, _ids),
    st.builds(OpenAndAcquire, _names, st.sampled_from([999, 5_000]), st.booleans()),
    st.just(Noop()),
)
# (client, retry_back, unacked_back, cmd): client "" is internal; retry_back > 0 re-sends
# an earlier seq; unacked_back says how far first_unacked lags behind the latest seq.
_specs = st.tuples(st.sampled_from(["p", "q", ""]), st.sampled_from([0, 0, 0, 1, 3]),
                   st.integers(0, 4), _cmds)


def _to_requests(specs: list[tuple[str, int, int, Command]]) -> list[Request]:
    latest: dict[str, int] = {}
    out = []
    for cid, retry_back, unacked_back, cmd in specs:
        if cid == "":
            out.append(Request("", 0, 0, cmd))
            continue
        top = latest.get(cid, 0)
        if retry_back and top > retry_back:
            seq = top - retry_back
        else:
            seq = latest[cid] = top + 1
        out.append(Request(cid, seq, max(0, min(seq, latest[cid] - unacked_back)), cmd))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_specs, max_size=60), st.data())
def test_replicas_applying_the_same_requests_agree_also_across_a_snapshot(
        specs: list[tuple[str, int, int, Command]], data: st.DataObject) -> None:
    reqs = _to_requests(specs)
    cut = data.draw(st.integers(0, len(reqs)))
    one, two, half = Machine(), Machine(), Machine()
    results_one = [one.apply(i, r) for i, r in enumerate(reqs, 1)]
    results_two = [two.apply(i, r) for i, r in enumerate(reqs, 1)]
    for i, r in enumerate(reqs[:cut], 1):
        half.apply(i, r)
    half.take_grants()
    restored = Machine.restore(half.snapshot())
    results_restored = [restored.apply(i, r) for i, r in enumerate(reqs[cut:], cut + 1)]
    assert results_one == results_two
    assert results_restored == results_one[cut:]
    assert one.snapshot() == two.snapshot() == restored.snapshot()
    _check_invariants(one)


_wide = st.integers(-(2**63), 2**64 - 1)  # every int msgpack can carry
_any_cmds: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, st.text(max_size=3), st.binary(max_size=3), st.none() | _wide,
              st.none() | st.builds(Fence, st.text(max_size=3), _wide)),
    st.builds(Delete, st.text(max_size=3), st.none() | _wide),
    st.builds(OpenSession, _wide | st.just(5_000)), st.builds(CloseSession, _wide),
    st.builds(ExpireSession, _wide), st.builds(Acquire, st.text(max_size=3), _wide, st.booleans()),
    st.builds(Release, st.text(max_size=3), _wide, _wide), st.builds(Cancel, st.text(max_size=3), _wide),
    st.builds(OpenAndAcquire, st.text(max_size=3), _wide | st.just(5_000), st.booleans()),
)


@settings(deadline=None)
@given(st.lists(st.builds(Request, st.text(max_size=3), _wide, _wide, _any_cmds), max_size=20))
def test_apply_never_raises_on_a_well_typed_request(reqs: list[Request]) -> None:
    m = Machine()
    for i, r in enumerate(reqs, 1):
        assert m.apply(i, r).code in set(ResultCode)
    assert Machine.restore(m.snapshot()).snapshot() == m.snapshot()


def _check_invariants(m: Machine) -> None:
    sessions = m.sessions()
    for lk in m.locks():
        assert lk.holder_session in sessions and lk.name in sessions[lk.holder_session].locks
        assert lk.holder_session not in lk.waiters and len(set(lk.waiters)) == len(lk.waiters)
        assert all(m.waiting(lk.name, w) for w in lk.waiters)
        assert lk.token < m.next_token
    grants = m.take_grants()
    assert [g.token for g in grants] == sorted({g.token for g in grants})


def _client_ids(m: Machine) -> list[str]:
    return list(m._clients)


def _client_seqs(m: Machine, cid: str) -> list[int]:
    return sorted(m._clients[cid].results)


def test_session_ttl_lookup_matches_the_session_table() -> None:
    from coordsvc.core.commands import OpenSession, Request
    from coordsvc.core.machine import Machine
    m = Machine()
    sid = m.apply(1, Request("c", 1, 1, OpenSession(5_000))).data["session_id"]
    assert isinstance(sid, int)
    assert m.session_ttl_ms(sid) == m.sessions()[sid].ttl_ms == 5_000
    assert m.session_ttl_ms(sid + 1) is None
