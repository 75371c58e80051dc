"""Issue 11, the service's half: paged answers, fair bounds, quotas, and a node that
answers ``internal`` instead of dying -- all through a real single-node ``Service``."""
from __future__ import annotations

from typing import Any

import pytest

from coordsvc.core import machine as machine_mod
from coordsvc.core import service_pages, service_parking
from coordsvc.core.commands import (
    ELECTION_PREFIX,
    MAX_VALUE_BYTES,
    SCHEMA_PREFIX,
    Delete,
    OpenAndAcquire,
    Put,
    Request,
    encode_request,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import MESSAGE_BUDGET_BYTES, GetRequest
from coordsvc.core.quotas import Quotas
from coordsvc.core.service_ops import HANDLERS

from .test_service_parts import Solo

MiB = 1024 * 1024


def _value(i: int) -> bytes:
    return bytes([i % 251]) * MAX_VALUE_BYTES


def _big(s: Solo, n: int = 6, prefix: str = "big/") -> None:
    for i in range(n):
        assert s.write(Put(f"{prefix}{i}", _value(i)))["result"][0] == "ok"


def _encoded_rows(rows: list[list[Any]]) -> int:
    return sum(len(r[1]) + len(r[0]) for r in rows)


# -- paging -----------------------------------------------------------------------------------

def test_a_list_larger_than_one_reply_is_paged_within_the_budget_and_consistent_at_one_revision() -> None:
    s = Solo()
    _big(s)
    first = s.ask({"op": "list", "prefix": "big/"})
    assert first["cursor"] and _encoded_rows(first["kvs"]) <= MESSAGE_BUDGET_BYTES
    revision = first["revision"]
    # The state changes between pages: the listing does not.
    s.write(Put("big/3", b"changed"))
    s.write(Delete("big/5"))
    s.write(Put("big/44", b"new"))
    rows = list(first["kvs"])
    cursor = first["cursor"]
    while cursor:
        page = s.ask({"op": "list", "cursor": cursor, "offset": len(rows) - len(first["kvs"])})
        assert page["ok"] and page["revision"] == revision
        assert _encoded_rows(page["kvs"]) <= MESSAGE_BUDGET_BYTES
        rows += page["kvs"]
        cursor = page.get("cursor", 0)
    assert [r[0] for r in rows] == [f"big/{i}" for i in range(6)]
    assert all(r[1] == _value(i) for i, r in enumerate(rows))
    assert s.svc.status()["cursors"] == 0          # drained: gone


def test_a_retried_page_repeats_rather_than_skipping_rows() -> None:
    s = Solo()
    _big(s, 4)
    first = s.ask({"op": "list", "prefix": "big/"})
    a = s.ask({"op": "list", "cursor": first["cursor"], "offset": 0})
    b = s.ask({"op": "list", "cursor": first["cursor"], "offset": 0})   # the reply was lost
    assert a["kvs"] == b["kvs"] and [r[0] for r in a["kvs"]] == ["big/1"]


def test_a_cursor_unused_for_its_idle_time_is_gone_and_says_so() -> None:
    s = Solo()
    _big(s, 3)
    first = s.ask({"op": "list", "prefix": "big/"})
    s.advance(service_pages.CURSOR_IDLE_MS + 10)
    reply = s.ask({"op": "list", "cursor": first["cursor"], "offset": 0})
    assert reply["error"] == "cursor_expired" and "start the read again" in reply["message"]
    assert s.svc.status()["cursors"] == 0


def test_paged_reads_in_progress_are_bounded_per_connection_and_name_the_bound() -> None:
    s = Solo()
    _big(s, 3)
    for _ in range(service_pages.MAX_CURSORS_PER_ROUTE):
        assert s.ask({"op": "list", "prefix": "big/"}, "greedy")["cursor"]
    refused = s.ask({"op": "list", "prefix": "big/"}, "greedy")
    assert refused["error"] == "busy" and "max_cursors_per_connection" in refused["message"]
    assert s.ask({"op": "list", "prefix": "big/"}, "other")["cursor"]   # others still can


def test_the_rows_cursors_refer_to_are_bounded_but_one_cursor_may_always_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_pages, "MAX_CURSOR_BYTES", 2 * MiB)
    s = Solo()
    _big(s, 4)
    assert s.ask({"op": "list", "prefix": "big/"}, "a")["cursor"]      # 3 MiB left: alone, fine
    refused = s.ask({"op": "list", "prefix": "big/"}, "b")
    assert refused["error"] == "busy" and "max_cursor_bytes" in refused["message"]


def test_limit_and_start_after_return_one_sorted_page_and_say_whether_more_keys_exist() -> None:
    s = Solo()
    for k in ["a/3", "a/1", "b/1", "a/2", "a/4", "a"]:
        s.write(Put(k, b"v"))
    page = s.ask({"op": "list", "prefix": "a/", "limit": 2})
    assert [r[0] for r in page["kvs"]] == ["a/1", "a/2"] and page["more"] is True
    page = s.ask({"op": "list", "prefix": "a/", "limit": 2, "start_after": "a/2"})
    assert [r[0] for r in page["kvs"]] == ["a/3", "a/4"] and "more" not in page
    page = s.ask({"op": "list", "prefix": "", "start_after": "a/4"})
    assert [r[0] for r in page["kvs"]] == ["b/1"]


def test_listing_a_page_does_not_sort_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Solo()
    for i in range(200):
        s.write(Put(f"k/{i:04d}", b"v"))
    monkeypatch.setattr("builtins.sorted", lambda *a, **k: pytest.fail("sorted() on a list read"))
    page = s.ask({"op": "list", "prefix": "k/", "start_after": "k/0100", "limit": 3})
    assert [r[0] for r in page["kvs"]] == ["k/0101", "k/0102", "k/0103"]


def test_history_keeps_64_versions_or_what_fits_8_mib_never_less_than_one() -> None:
    m = Machine()
    for i in range(70):
        m.apply(i + 1, Request("c", i + 1, i + 1, Put("small", b"x")))
    assert len(m.history("small")) == machine_mod.KEY_HISTORY == 64
    for i in range(12):
        m.apply(100 + i, Request("c", 100 + i, 100 + i, Put("big", _value(i))))
    hist = m.history("big")
    assert len(hist) == 8 and sum(len(e.value) for e in hist) <= machine_mod.KEY_HISTORY_BYTES
    assert [e.value for e in hist] == [_value(i) for i in range(4, 12)]   # the newest
    assert [e.value for e in Machine.restore(m.snapshot()).history("big")] == [e.value for e in hist]


def test_history_never_keeps_less_than_the_newest_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "KEY_HISTORY_BYTES", 10)
    m = Machine()
    m.apply(1, Request("c", 1, 1, Put("k", b"x" * 100)))
    m.apply(2, Request("c", 2, 2, Put("k", b"y" * 100)))
    assert [e.value for e in m.history("k")] == [b"y" * 100]


def test_history_of_a_key_with_six_1_mib_versions_is_paged() -> None:
    s = Solo()
    for i in range(6):
        s.write(Put("k", _value(i)))
    first = s.ask({"op": "history", "key": "k"})
    assert first["cursor"] and len(first["events"]) == 1
    events = list(first["events"])
    cursor = first["cursor"]
    while cursor:
        page = s.ask({"op": "history", "key": "k", "cursor": cursor, "offset": len(events) - 1})
        assert page["revision"] == first["revision"]
        events += page["events"]
        cursor = page.get("cursor", 0)
    assert [e[2] for e in events] == [_value(i) for i in range(6)]
    assert [e[3] for e in events] == sorted(e[3] for e in events)


def test_a_watch_reply_is_cut_by_bytes_and_says_it_is_complete_only_to_its_last_event() -> None:
    s = Solo()
    _big(s, 3)
    s.write(Put("big/z", b"small"))
    reply = s.ask({"op": "watch", "prefix": "big/", "after": 0})
    assert len(reply["events"]) == 1 and reply["more"] is True
    reply = s.ask({"op": "watch", "prefix": "big/", "after": reply["events"][-1][3]})
    assert len(reply["events"]) == 1 and reply["more"] is True
    reply = s.ask({"op": "watch", "prefix": "big/", "after": reply["events"][-1][3]})
    assert [e[1] for e in reply["events"]] == ["big/2", "big/z"] and "more" not in reply


# -- keys checked at the schema ------------------------------------------------------------

@pytest.mark.parametrize("req", [
    {"op": "get", "key": ""}, {"op": "get", "key": "k" * 513}, {"op": "get", "key": "a\x00b"},
    {"op": "get", "key": "é" * 257},
    {"op": "history", "key": ""}, {"op": "history", "key": "k" * 513}, {"op": "history", "key": "\x00"},
    {"op": "watch", "prefix": "p" * 100 * 1024, "after": 0},
    {"op": "watch", "prefixes": ["ok", "p" * 513], "after": 0},
    {"op": "list", "prefix": "a\x00"}, {"op": "watch", "after": 2**64 - 1},
    {"op": "list", "prefix": "a", "limit": -1},
    # A NUL may only lead a record's name, once, before a key.
    {"op": "get", "key": "\x00\x00a"}, {"op": "list", "prefix": "\x00"},
    {"op": "watch", "prefixes": ["\x00a\x00"], "after": 0},
    {"op": "lock_wait", "name": "\x00", "session_id": 1},
    {"op": "get", "key": "\x00" + "k" * 512},
])
def test_a_key_or_prefix_outside_the_key_limits_is_a_bad_request(req: dict[str, Any]) -> None:
    s = Solo()
    reply = s.ask(req)
    assert reply["ok"] is False and reply["error"] == "bad_request", reply


@pytest.mark.parametrize("req", [
    {"op": "get", "key": SCHEMA_PREFIX + "app/"}, {"op": "history", "key": ELECTION_PREFIX + "x"},
    {"op": "list", "prefix": ELECTION_PREFIX, "start_after": ELECTION_PREFIX + "a"},
    {"op": "watch", "prefix": SCHEMA_PREFIX, "after": 0},
    {"op": "watch", "prefixes": ["", ELECTION_PREFIX + "x"], "after": 0},
    {"op": "get", "key": "\x01k"}, {"op": "list", "prefix": "\x01"},
])
def test_a_records_name_is_a_key_to_read_by(req: dict[str, Any]) -> None:
    s = Solo()
    reply = s.ask(req)
    assert reply["ok"] is True, reply


# -- fair bounds on parked requests ---------------------------------------------------------

def test_parked_watches_are_bounded_per_connection_and_others_still_park(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_parking, "MAX_PARKED_PER_ROUTE", 3)
    s = Solo()
    for i in range(3):
        s.send("greedy", {"id": i, "op": "watch", "prefix": f"p{i}/", "after": 0, "wait_ms": 5000})
    refused = s.ask({"op": "watch", "prefix": "x/", "after": 0, "wait_ms": 5000}, "greedy")
    assert refused["error"] == "busy" and "max_parked_watches_per_connection" in refused["message"]
    s.send("other", {"id": 9, "op": "watch", "prefix": "x/", "after": 0, "wait_ms": 5000})
    assert len(s.svc.parking.watches) == 4


def test_watch_prefix_bytes_are_bounded_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_parking, "MAX_PREFIX_BYTES_PER_ROUTE", 10_000)
    s = Solo()
    prefixes = [f"{i:03d}/" + "x" * 400 for i in range(20)]           # ~9,300 bytes
    s.send("c", {"id": 1, "op": "watch", "prefixes": prefixes, "after": 0, "wait_ms": 5000})
    assert len(s.svc.parking.watches) == 1
    refused = s.ask({"op": "watch", "prefixes": prefixes[:5], "after": 0, "wait_ms": 5000}, "c")
    assert refused["error"] == "busy" and "max_watch_prefix_bytes_per_connection" in refused["message"]
    too_big = s.ask({"op": "watch", "prefixes": prefixes + [p + "y" for p in prefixes], "after": 0, "wait_ms": 5000}, "d")
    assert too_big["error"] == "bad_request"


def test_lock_waits_are_bounded_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_parking, "MAX_PARKED_PER_ROUTE", 2)
    s = Solo()
    s.write(OpenAndAcquire("l", 5000, True))
    waiters = [s.write(OpenAndAcquire("l", 5000, True))["result"][2]["session_id"] for _ in range(3)]
    for i, sid in enumerate(waiters[:2]):
        s.send("c", {"id": i, "op": "lock_wait", "name": "l", "session_id": sid, "wait_ms": 5000})
    refused = s.ask({"op": "lock_wait", "name": "l", "session_id": waiters[2], "wait_ms": 5000}, "c")
    assert refused["error"] == "busy" and "max_parked_lock_waits_per_connection" in refused["message"]


def test_a_change_wakes_only_watches_whose_prefix_it_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Solo()
    for i in range(2000):
        s.send(("w", i), {"id": i, "op": "watch", "prefix": f"svc/{i}/", "after": 0, "wait_ms": 20_000})
    s.send("all", {"id": -1, "op": "watch", "prefix": "", "after": 0, "wait_ms": 20_000})
    tried: list[object] = []
    real = service_parking.Parking._try_watch
    monkeypatch.setattr(service_parking.Parking, "_try_watch",
                        lambda self, m, w: tried.append(w.request.prefix) or real(self, m, w))
    s.write(Put("svc/7/x", b"v"))
    assert sorted(map(str, tried)) == ["", "svc/7/"]       # 2 of 2,001 parked watches looked at
    assert {rt for rt, r in s.replies if r.get("events")} == {("w", 7), "all"}


def test_the_next_timer_comes_from_a_heap_not_a_scan_of_parked_requests() -> None:
    s = Solo()
    for i in range(1000):
        s.send(("w", i), {"id": i, "op": "watch", "prefix": f"p{i}/", "after": 0,
                          "wait_ms": 20_000 - i})
    assert s.svc.next_timer_ms() <= s.now + 20_000 - 999
    s.advance(20_000 - 999)
    assert len(s.svc.parking.watches) == 999          # exactly the one due was answered
    assert len(s.svc.parking._deadlines) <= 999 + 1


# -- per-owner bounds in the machine --------------------------------------------------------

def test_one_client_cannot_hold_more_sessions_than_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_SESSIONS_PER_OWNER", 3)
    s = Solo()
    for i in range(3):
        assert s.write(OpenAndAcquire(f"l{i}", 5000, True), "greedy")["result"][0] == "ok"
    refused = s.write(OpenAndAcquire("l9", 5000, True), "greedy")["result"]
    assert refused[0] == "limit" and "max_sessions_per_owner" in refused[2]["message"]
    assert s.write(OpenAndAcquire("l9", 5000, True), "polite")["result"][0] == "ok"
    assert Machine.restore(s.svc.machine.snapshot()).sessions().keys() == s.svc.machine.sessions().keys()


def test_one_client_cannot_fill_a_locks_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_WAITERS_PER_OWNER", 2)
    s = Solo()
    s.write(OpenAndAcquire("l", 5000, True), "holder")
    for _ in range(2):
        assert s.write(OpenAndAcquire("l", 5000, True), "greedy")["result"][0] == "queued"
    refused = s.write(OpenAndAcquire("l", 5000, True), "greedy")["result"]
    assert refused[0] == "limit" and "max_waiters_per_owner" in refused[2]["message"]
    assert s.write(OpenAndAcquire("l", 5000, True), "polite")["result"][0] == "queued"
    assert s.svc.machine.session_count == 4           # the refused one left no session


# -- quotas ---------------------------------------------------------------------------------

def test_past_max_keys_new_keys_are_refused_and_everything_else_works() -> None:
    s = Solo(quotas=Quotas(max_keys=3))
    for i in range(3):
        s.write(Put(f"k{i}", b"v"))
    refused = s.write(Put("k3", b"v"))
    assert refused["error"] == "quota_exceeded" and "max_keys" in refused["message"]
    assert s.ask({"op": "status"})["status"]["alarms"] == ["max_keys"]
    assert s.write(Put("k0", b"overwrite"))["result"][0] == "ok"
    assert s.ask({"op": "get", "key": "k0"})["kv"][1] == b"overwrite"
    assert s.write(Delete("k1"))["result"][2]["deleted"] is True
    assert s.ask({"op": "status"})["status"]["alarms"] == []
    assert s.write(Put("k3", b"v"))["result"][0] == "ok"


def test_past_max_db_bytes_every_put_is_refused_but_deletes_reads_and_locks_work() -> None:
    s = Solo(quotas=Quotas(max_db_bytes=1000))
    s.write(Put("k", b"v"))
    s.svc.observe_db_bytes(1000)
    refused = s.write(Put("k", b"w"))
    assert refused["error"] == "quota_exceeded" and "max_db_bytes" in refused["message"]
    assert s.ask({"op": "status"})["status"]["alarms"] == ["max_db_bytes"]
    assert s.ask({"op": "get", "key": "k"})["kv"][1] == b"v"
    sid = s.write(OpenAndAcquire("l", 1000, True))["result"][2]["session_id"]
    s.advance(1700)                                   # expiry still goes through the log
    assert s.svc.machine.session_count == 0, sid
    assert s.write(Delete("k"))["result"][2]["deleted"] is True
    s.svc.observe_db_bytes(10)
    assert s.ask({"op": "status"})["status"]["alarms"] == []
    assert s.write(Put("k", b"x"))["result"][0] == "ok"


def test_a_retry_of_an_applied_put_gets_its_result_even_past_a_quota() -> None:
    s = Solo(quotas=Quotas(max_db_bytes=1000))
    raw = encode_request(Request("c", 1, 1, Put("k", b"v")))
    first = s.ask({"op": "write", "req": raw})
    s.svc.observe_db_bytes(5000)
    assert s.ask({"op": "write", "req": raw})["result"] == first["result"]


# -- a node that survives its handlers ------------------------------------------------------

def test_a_handler_that_raises_is_answered_internal_with_the_request_id_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Solo()
    s.write(Put("k", b"v"))

    def boom(*a: object) -> None:
        raise RuntimeError("injected")
    monkeypatch.setitem(HANDLERS, GetRequest, boom)
    reply = s.ask({"op": "get", "key": "k"})
    assert reply["id"] == len(s.replies) - 1 and reply["error"] == "internal"
    assert "RuntimeError" in reply["message"]
    ((what, exc),) = s.svc.take_incidents()
    assert "handling 'get'" in what and str(exc) == "injected"
    assert s.ask({"op": "status"})["status"]["internal_errors"] == 1
    assert s.ask({"op": "list", "prefix": ""})["kvs"][0][0] == "k"     # and it goes on


def test_a_read_answer_that_raises_fails_that_read_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Solo()
    s.write(Put("k", b"v"))
    monkeypatch.setattr(Machine, "scan", lambda self, *a: iter([None]))   # a row that breaks paging
    s.send("a", {"id": 1, "op": "list", "prefix": ""})
    s.send("b", {"id": 2, "op": "get", "key": "k"})
    s.step()
    by = {rt: r for rt, r in s.replies}
    assert by["a"]["error"] == "internal" and by["a"]["id"] == 1
    assert by["b"]["kv"][1] == b"v"
    assert s.svc.status()["internal_errors"] == 1


def test_a_woken_watch_that_fails_is_answered_internal_and_others_are_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Solo()
    s.send("bad", {"id": 1, "op": "watch", "prefix": "a/", "after": 0, "wait_ms": 5000})
    s.send("good", {"id": 2, "op": "watch", "prefix": "b/", "after": 0, "wait_ms": 5000})
    real = Machine.events_page

    def events_page(self: Machine, sel: object, *a: Any, **kw: Any) -> Any:
        if sel == "a/":
            raise KeyError("injected")
        return real(self, sel, *a, **kw)   # type: ignore[arg-type]
    monkeypatch.setattr(Machine, "events_page", events_page)
    s.write(Put("a/1", b"v"))
    s.write(Put("b/1", b"v"))
    by = {rt: r for rt, r in s.replies if rt in ("bad", "good")}
    assert by["bad"]["error"] == "internal" and by["good"]["events"][0][1] == "b/1"
    assert not s.svc.parking.watches


def test_a_budget_is_respected_by_a_row_at_the_size_limit() -> None:
    from coordsvc import wire
    s = Solo()
    _big(s, 2, prefix="k" * 511)
    page = s.ask({"op": "list", "prefix": ""})
    body = wire.encode_client(wire.CLIENT_REPLY, page)
    assert len(body) < wire.MAX_FRAME_BYTES and len(page["kvs"]) == 1
