"""The client's half of paging and quotas, against a real in-process node (``inproc``):
answers larger than one reply come back whole and from one revision; quotas raise
``QuotaExceeded``; a client's watches survive one bad watch."""
from __future__ import annotations

from typing import Any

import pytest

from coordsvc.client import Client, EntryList, QuotaExceeded
from coordsvc.client.errors import CoordError, InvalidRequest
from coordsvc.core.commands import MAX_VALUE_BYTES
from coordsvc.core.quotas import Quotas

from .inproc import A, Faults, LocalNode, LocalTransport

Reply = dict[str, Any]


def _value(i: int) -> bytes:
    return bytes([i]) * MAX_VALUE_BYTES


def _client_of(net: Faults) -> Client:
    return Client([A], timeout=10.0, transport=net)


def test_list_of_six_1_mib_values_returns_every_entry_at_one_revision(node: LocalNode, net: Faults) -> None:
    with _client_of(net) as c, Client([A], timeout=10.0, transport=LocalTransport({A: node})) as other:
        revs = [c.put(f"big/{i}", _value(i)) for i in range(6)]

        def write_between_pages(req: Reply, forward: Any) -> Reply | None:
            reply = forward()
            if req.get("cursor"):      # the state moves on while the client pages
                other.put("big/0", b"newer")
                other.delete("big/5")
            return reply
        net.on(A, "list", write_between_pages)
        lst = c.list("big/")
    assert isinstance(lst, EntryList) and lst.revision == revs[-1] and lst.more is False
    assert [e.key for e in lst] == [f"big/{i}" for i in range(6)]
    assert [e.value for e in lst] == [_value(i) for i in range(6)]
    assert len([p for p in net.sent(op="list") if p.get("cursor")]) >= 5


def test_a_listing_whose_cursor_vanished_starts_again_and_is_still_whole(net: Faults) -> None:
    with _client_of(net) as c:
        for i in range(4):
            c.put(f"big/{i}", _value(i))
        lost = [1]

        def lose_the_cursor_once(req: Reply, forward: Any) -> Reply | None:
            if req.get("cursor") and lost[0]:
                lost[0] -= 1
                return {"ok": False, "error": "cursor_expired", "message": "gone"}
            return forward()
        net.on(A, "list", lose_the_cursor_once)
        lst = c.list("big/")
    assert [e.key for e in lst] == [f"big/{i}" for i in range(4)]
    firsts = [p for p in net.sent(op="list") if not p.get("cursor")]
    assert len(firsts) == 2


def test_list_with_a_limit_is_one_page_after_start_after(net: Faults) -> None:
    with _client_of(net) as c:
        for k in ["a/1", "a/2", "a/3", "b"]:
            c.put(k, "v")
        page = c.list("a/", limit=2)
        assert [e.key for e in page] == ["a/1", "a/2"] and page.more
        rest = c.list("a/", limit=2, start_after=page[-1].key)
        assert [e.key for e in rest] == ["a/3"] and not rest.more
        assert rest.revision == page.revision == c.list("").revision


def test_history_of_a_key_with_six_1_mib_versions_is_whole(net: Faults) -> None:
    with _client_of(net) as c:
        revs = [c.put("k", _value(i)) for i in range(6)]
        hist = c.history("k")
    assert [ev.revision for ev in hist] == revs and [ev.value for ev in hist] == [_value(i) for i in range(6)]


def test_a_watch_over_1_mib_values_delivers_every_event(net: Faults) -> None:
    with _client_of(net) as c:
        revs = [c.put(f"big/{i}", _value(i)) for i in range(6)]
        with c.watch("big/", start_revision=1) as w:
            got = [w.next(10.0) for _ in range(6)]
    assert [ev.revision for ev in got if ev is not None] == revs


def test_a_put_past_a_quota_raises_quota_exceeded_naming_it() -> None:
    n = LocalNode(quotas=Quotas(max_keys=2))
    try:
        with Client([A], timeout=5.0, transport=LocalTransport({A: n})) as c:
            c.put("a", "1")
            c.put("b", "1")
            with pytest.raises(QuotaExceeded, match="max_keys"):
                c.put("c", "1")
            assert isinstance(QuotaExceeded("x"), CoordError)
            assert c.status()["cluster"]["alarms"] == ["max_keys"]
            c.put("a", "2")                  # an overwrite adds no key
            assert c.delete("b")
            assert c.status()["cluster"]["alarms"] == []
            c.put("c", "1")
    finally:
        n.stop()


def test_one_bad_watch_argument_leaves_the_clients_other_watches_running(net: Faults) -> None:
    with _client_of(net) as c:
        rev = c.put("w/1", "a")
        with c.watch("w/", start_revision=rev) as w:
            with pytest.raises(InvalidRequest):
                c.watch("w/", start_revision=2**70)
            c.put("w/2", "b")
            assert [w.next(5.0).key, w.next(5.0).key] == ["w/1", "w/2"]   # type: ignore[union-attr]


def test_a_watch_poll_that_fails_unexpectedly_is_reported_and_polling_goes_on(
        net: Faults, monkeypatch: pytest.MonkeyPatch) -> None:
    with _client_of(net) as c:
        rev = c.put("w/1", "a")
        calls = [0]
        real = c._call

        def flaky(*a: Any, **k: Any) -> Any:
            if getattr(a[0], "after", 0) < 2**62:   # not Client.watch's rights probe: a poll
                calls[0] += 1
                if calls[0] == 1:
                    raise OverflowError("injected")
            return real(*a, **k)
        monkeypatch.setattr(c, "_call", flaky)
        with c.watch("w/", start_revision=rev) as w:
            with pytest.raises(CoordError, match="OverflowError"):
                w.next(5.0)
            ev = w.next(5.0)
        assert ev is not None and ev.key == "w/1"


def test_locks_larger_than_one_reply_come_back_whole_from_one_read(node: LocalNode, net: Faults) -> None:
    """Held locks whose rows fill more than one reply (2 MiB): the client puts the pages
    together, every row from the same read."""
    names = [f"{i:05d}/" + "L" * 500 for i in range(2_100)]   # ~2 KiB per row at most
    with _client_of(net) as c:
        lease = c.lease(ttl=30.0)
        for name in names:
            c.acquire(name, lease=lease, timeout=5.0)
        held = c.locks()
        pages = [p for p in net.sent(op="locks") if p.get("cursor")]
    assert sorted(lk.name for lk in held) == names
    assert len(pages) >= 1
