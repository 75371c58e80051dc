"""The loop's instruments and the readiness rule, without a cluster."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from coordsvc.runtime import logs, observe
from coordsvc.runtime.observe import (
    OTHER_OP,
    Histogram,
    HistogramValue,
    Observer,
    Published,
    Shared,
    readiness,
)

_H = HistogramValue((1.0,), (0, 0), 0.0)


def _pub(at: float = 100.0, known_commit: int = 10, serving: bool = True, **status: Any) -> Published:
    st: dict[str, Any] = {"role": "follower", "leader": "n2", "last_leader_contact_ms": 40,
                          "applied_index": 10, "voting": True}
    st.update(status)
    return Published(at_mono=at, node="n1", status=st, members=("n1", "n2", "n3"),
                     known_commit=known_commit, election_timeout_ms=500, serving=serving,
                     counters={}, fsync=_H, batch=_H, requests={})


@pytest.mark.parametrize(("pub", "now", "ready", "why"), [
    (None, 0.0, False, "starting"),
    (_pub(), 100.1, True, "following leader n2"),
    (_pub(role="leader", leader="n1", last_leader_contact_ms=0), 100.1, True, "leader"),
    (_pub(role="leader", leader="n1", serving=False), 100.1, False, "recovering"),
    (_pub(role="candidate", leader=None), 100.1, False, "no leader"),
    (_pub(last_leader_contact_ms=501), 100.1, False, "not heard"),
    (_pub(last_leader_contact_ms=None), 100.1, False, "not heard"),
    (_pub(known_commit=10 + observe.READY_MAX_LAG + 1), 100.1, False, "behind"),
    (_pub(known_commit=10 + observe.READY_MAX_LAG), 100.1, True, "entries behind"),
    (_pub(voting=False), 100.1, False, "rebuilding"),
    (_pub(voting=False, config=[["n1", "tcp://a", True, ""]]), 100.1, False, "rebuilding"),
    (_pub(voting=False, config=[["n1", "tcp://a", False, ""]]), 100.1, False, "learner"),
    (_pub(voting=False, config=[]), 100.1, False, "learner"),
    (_pub(), 100.0 + observe.STALL_READY_S + 1, False, "loop has not turned"),
])
def test_ready_means_following_a_leader_with_a_quorum_and_a_small_lag(
        pub: Published | None, now: float, ready: bool, why: str) -> None:
    ok, reason = readiness(pub, now)
    assert ok is ready and why in reason


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    h = Histogram((0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 0.01, 5.0):
        h.observe(v)
    f = h.frozen()
    assert f.counts == (2, 2, 1) and f.count == 5 and f.total == pytest.approx(5.0135)


def test_request_latency_is_tracked_per_op_from_arrival_to_reply() -> None:
    o = Observer("n1", Shared())
    o.request_in(b"r1", {"id": 1, "op": "get"}, 10.0)
    o.request_in(b"r1", {"id": 2, "op": "no-such-op"}, 10.0)
    o.request_in(b"r2", {"id": "x", "op": "get"}, 10.0)    # not an int id: not tracked
    o.request_in(b"r2", ["junk"], 10.0)
    o.reply_out(b"r1", {"id": 1}, 10.25)
    o.reply_out(b"r1", {"id": 2}, 10.5)
    o.reply_out(b"r9", {"id": 1}, 11.0)                  # unknown: ignored
    assert o.requests["get"].frozen().count == 1 and o.requests["get"].total == pytest.approx(0.25)
    assert o.requests[OTHER_OP].frozen().count == 1      # junk ops share one label
    assert o.pending == {}


def test_tracked_requests_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe, "MAX_TRACKED_REQUESTS", 3)
    o = Observer("n1", Shared())
    for i in range(5):
        o.request_in(b"r", {"id": i, "op": "get"}, 0.0)
    assert len(o.pending) == 3 and o.counts.untracked_requests == 2


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_log_lines_carry_time_level_node_event_and_fields(captured: io.StringIO) -> None:
    logs.setup("n7", "info", "json", captured)
    lg = logging.getLogger("coordsvc.test")
    logs.event(lg, logging.WARNING, "slow_fsync", "a save took 120 ms", took_ms=120.0, msg="x")
    lg.info("plain %s", "line")
    lg.debug("hidden")
    lines = [json.loads(ln) for ln in captured.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "warning" and first["node"] == "n7" and first["event"] == "slow_fsync"
    assert first["msg"] == "a save took 120 ms" and first["took_ms"] == 120.0
    assert first["field_msg"] == "x"        # a field never overwrites the line's own keys
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert lines[1]["event"] == "log" and lines[1]["msg"] == "plain line"


def test_text_log_lines_name_the_node_and_event(captured: io.StringIO) -> None:
    logs.setup("n2", "warning", "text", captured)
    lg = logging.getLogger("coordsvc.test")
    logs.event(lg, logging.INFO, "leader", "elected")
    logs.event(lg, logging.ERROR, "stop", "stopping: disk", reason="disk")
    out = captured.getvalue().splitlines()
    assert len(out) == 1 and " n2 ERROR stop: stopping: disk (reason=\"disk\")" in out[0]


def test_log_setup_refuses_unknown_levels_and_formats() -> None:
    with pytest.raises(ValueError):
        logs.setup("n1", "loud", "text")
    with pytest.raises(ValueError):
        logs.setup("n1", "info", "xml")


def test_slow_fsyncs_are_counted_each_and_logged_at_most_once_a_second(captured: io.StringIO) -> None:
    logs.setup("n1", "info", "json", captured)
    o = Observer("n1", Shared())
    for _ in range(5):
        o.synced(0.5)
    o.synced(0.001)
    assert o.counts.slow_fsyncs == 5 and o.fsync.frozen().count == 6
    lines = [json.loads(ln) for ln in captured.getvalue().splitlines()]
    assert [ln["event"] for ln in lines] == ["slow_fsync"]
    assert lines[0]["took_ms"] == 500.0 and lines[0]["slow_since_last"] == 1
