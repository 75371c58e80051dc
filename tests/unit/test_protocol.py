"""The client protocol schema: one record per request, reply and row, in today's wire shapes."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordsvc import wire
from coordsvc.core.commands import Put, Request
from coordsvc.core.protocol import (
    MAX_WAIT_MS,
    MAX_WATCH_BATCH,
    REQUEST_TYPES,
    Change,
    ChangeType,
    ErrorCode,
    ErrorReply,
    GetReply,
    GetRequest,
    HistoryReply,
    HistoryRequest,
    KeepaliveReply,
    KeepaliveRequest,
    KeepaliveStatus,
    KeyValue,
    ListReply,
    ListRequest,
    LockRow,
    LocksReply,
    LocksRequest,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    NodeStatus,
    Op,
    Result,
    ResultCode,
    SchemaError,
    SnapshotChunkReply,
    SnapshotChunkRequest,
    SnapshotSaveReply,
    SnapshotSaveRequest,
    StatusReply,
    StatusRequest,
    WatchReply,
    WatchRequest,
    WriteReply,
    WriteRequest,
    decode_client_request,
    reply_map,
    row_bytes,
)
from coordsvc.core.service_ops import HANDLERS
from coordsvc.core.types import ProtocolError

KV = KeyValue("k", b"v", 3, 1, 2)
PUT = Change(ChangeType.PUT, "k", b"v", 3)
STATUS = NodeStatus(
    id="n1", address="tcp://127.0.0.1:7101", role="leader", leader="n1", voting=True,
    ballot=(7, "n1"), commit_index=12, applied_index=12, uptime_s=1.5, sessions=1,
    locks_held=1, keys=3, revision=9, last_leader_contact_ms=0, bad_frames=0,
    snapshot_index=0, pending_writes=0, parked_watches=2, extra={"db_bytes": 4096})

REQUESTS = [
    WriteRequest.of(Request("c1", 1, 1, Put("k", b"v"))),
    KeepaliveRequest(4), KeepaliveRequest.batch([4, 9, 12]),
    GetRequest("k"), GetRequest("k", stale=True),
    ListRequest("app/", stale=True),
    HistoryRequest("k"),
    WatchRequest(5, prefixes=("a/", "b/"), wait_ms=100, limit=10),
    LockWaitRequest("deploy", 4, wait_ms=500),
    LocksRequest(), LocksRequest(cursor=3, offset=950),
    StatusRequest(),
    SnapshotSaveRequest(), SnapshotChunkRequest(3, 1_048_576),
]
REPLIES: list[Any] = [
    WriteReply(Result(ResultCode.OK, 3, {"revision": 3})),
    KeepaliveReply(True),
    KeepaliveReply(False, (KeepaliveStatus.KNOWN, KeepaliveStatus.DENIED, KeepaliveStatus.UNKNOWN)),
    GetReply(KV, 3), GetReply(None, 3),
    ListReply((KV,), 3),
    HistoryReply((PUT, Change(ChangeType.DELETE, "k", b"", 4)), 4),
    WatchReply((PUT,), 9),
    LockWaitReply(LockState.HELD, 7),
    LocksReply((LockRow("deploy", 4, 7, 11, (5, 6), 900, 10_000, 120, (30, None)),), 9),
    LocksReply((LockRow("deploy", 4, 7, 11, (), 900),), 9, cursor=2),
    StatusReply(STATUS),
    SnapshotSaveReply(3, 120, 99, 40, 100, 5000, 20, 9000, "n1"),
    SnapshotChunkReply(0, b"abc", False), SnapshotChunkReply(3, b"", True, bytes(32)),
]


def through_wire(m: dict[str, Any], tag: int) -> dict[str, Any]:
    return wire.decode_client(wire.encode_client(tag, {**m, "id": 1}), tag)


def test_every_op_has_one_request_record_and_one_handler() -> None:
    assert sorted(t.op for t in REQUEST_TYPES) == sorted(Op)
    assert set(HANDLERS) == set(REQUEST_TYPES)


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_request_survives_the_wire_unchanged(req: Any) -> None:
    assert decode_client_request(through_wire(req.to_wire(), wire.CLIENT_REQUEST)) == req


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_a_reply_survives_the_wire_unchanged(reply: Any) -> None:
    assert type(reply).from_wire(through_wire(reply_map(1, reply), wire.CLIENT_REPLY)) == reply


def test_wire_maps_keep_the_field_names_and_shapes_the_first_client_spoke() -> None:
    assert GetReply(KV, 3).to_wire() == {"ok": True, "kv": ["k", b"v", 3, 1, 2], "revision": 3}
    assert HistoryReply((PUT,), 3).to_wire() == {"ok": True, "events": [["put", "k", b"v", 3]],
                                                 "revision": 3}
    assert LockWaitReply(LockState.WAITING).to_wire() == {"ok": True, "state": "waiting", "token": 0}
    assert WriteReply(Result(ResultCode.COMPARE_FAILED, 2, {})).to_wire() == {
        "ok": True, "result": ["compare_failed", 2, {}]}
    row = LockRow("l", 4, 7, 11, (5,), None, None, None, (None,)).to_wire()
    assert row == ["l", 4, 7, 11, [5], None, None, None, [None], None, []]   # rows grow at the end
    row = LockRow("l", 4, 7, 11, (5,), None, None, None, (None,), "alice", ("bob",)).to_wire()
    assert row[9:] == ["alice", ["bob"]] and LockRow.from_wire(row).holder == "alice"
    assert WatchRequest(3, prefix="p/").to_wire() == {
        "op": "watch", "prefix": "p/", "prefixes": [], "after": 3, "wait_ms": 0,
        "limit": MAX_WATCH_BATCH}
    assert reply_map(9, ErrorReply(ErrorCode.NOT_LEADER, "no", "n2", "tcp://h:1")) == {
        "id": 9, "ok": False, "error": "not_leader", "message": "no", "leader": "n2",
        "leader_address": "tcp://h:1"}
    assert ErrorReply(ErrorCode.COMPACTED, "gone", oldest=4).to_wire()["oldest"] == 4
    assert set(ErrorReply(ErrorCode.BUSY, "full").to_wire()) == {"ok", "error", "message"}
    assert PUT.to_map() == {"type": "put", "key": "k", "value": b"v", "revision": 3}
    status = STATUS.to_wire()
    assert list(status)[0] == "db_bytes" and status["ballot"] == [7, "n1"]
    assert status["reachable"] is True


def test_rows_from_an_older_or_newer_node_still_decode() -> None:
    # Six fields: what nodes sent before ttl, age and waits were added.
    assert LockRow.from_wire(["l", 4, 7, 11, [5], 900]) == LockRow("l", 4, 7, 11, (5,), 900)
    # Rows grow at the end: a reader ignores what it does not know.
    assert KeyValue.from_wire(["k", b"v", 3, 1, 2, "lease"]) == KV
    assert Change.from_wire(["put", "k", b"v", 3, "more"]) == PUT
    assert ErrorReply.from_wire({"ok": False, "error": "permission_denied", "message": "m"}).error \
        == "permission_denied"


def test_watch_and_lock_wait_clamp_wait_and_limit_into_range() -> None:
    w = decode_client_request({"op": "watch", "after": 0, "wait_ms": 10**9, "limit": 0})
    assert isinstance(w, WatchRequest) and (w.wait_ms, w.limit) == (MAX_WAIT_MS, 1)
    lw = decode_client_request({"op": "lock_wait", "name": "l", "session_id": 1, "wait_ms": -5})
    assert isinstance(lw, LockWaitRequest) and lw.wait_ms == 0
    assert WatchRequest(0, prefix="p").selector == "p"
    assert WatchRequest(0, prefix="p", prefixes=("a", "b")).selector == ("a", "b")


@pytest.mark.parametrize("m, why", [
    ("not a map", "must be a map"),
    ({"op": "fly"}, "unknown op"),
    ({"op": ["get"]}, "unknown op"),
    ({"op": "get"}, "missing field 'key'"),
    ({"op": "get", "key": None}, "must not be nil"),
    ({"op": "get", "key": "k", "stale": 1}, "must be bool"),
    ({"op": "keepalive", "session_id": True}, "must be int"),
    ({"op": "keepalive", "session_ids": []}, "1..1000 ids"),
    ({"op": "keepalive", "session_ids": list(range(1001))}, "1..1000 ids"),
    ({"op": "keepalive", "session_ids": [1, "2"]}, "must be ints"),
    ({"op": "keepalive", "session_ids": 3}, "must be a list"),
    ({"op": "write", "req": "text"}, "must be bytes"),
    ({"op": "write", "req": b"\xc1"}, "undecodable write"),
    ({"op": "watch", "after": -1}, "field 'after' must be in"),
    ({"op": "watch", "after": 0, "prefixes": "a/"}, "prefixes must be a list"),
    ({"op": "watch", "after": 0, "prefixes": ["a"] * 1001}, "prefixes must be a list"),
])
def test_a_malformed_request_raises_schema_error_saying_why(m: object, why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        decode_client_request(m)


def test_a_client_cannot_send_an_internal_request() -> None:
    from coordsvc.core.commands import ExpireSession, encode_request
    raw = encode_request(Request("", 0, 0, ExpireSession(3)))
    with pytest.raises(SchemaError, match="internal requests"):
        decode_client_request({"op": "write", "req": raw})


def test_schema_error_is_a_protocol_error() -> None:
    assert issubclass(SchemaError, ProtocolError)


def test_result_codes_are_the_machine_codes_and_compare_as_strings() -> None:
    assert ResultCode.OK == "ok" and Result(ResultCode.OK, 1, {}) == Result("ok", 1, {})  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        Result.from_wire(["bogus", 1, {}])


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=20)
field_names = st.sampled_from(["op", "key", "prefix", "prefixes", "after", "wait_ms", "limit",
                               "stale", "req", "session_id", "session_ids", "name", "id", "export_id",
                               "offset"])
request_maps = st.dictionaries(field_names, wire_values | st.sampled_from([o.value for o in Op]),
                               max_size=8)


@given(request_maps)
def test_decoding_any_request_map_gives_a_record_or_schema_error_and_nothing_else(m: dict[str, Any]) -> None:
    try:
        decode_client_request(m)
    except SchemaError:
        pass


@given(st.sampled_from(REPLIES), st.dictionaries(
    st.sampled_from(["kv", "kvs", "events", "revision", "known", "state", "token", "locks",
                     "status", "result", "export_id", "index", "data", "done", "sha256", "sessions",
                     "offset"]), wire_values, max_size=4))
def test_decoding_any_reply_map_gives_a_record_or_schema_error_and_nothing_else(
        like: Any, m: dict[str, Any]) -> None:
    try:
        type(like).from_wire(m)
    except SchemaError:
        pass


@given(wire_values)
def test_decoding_any_row_gives_a_row_or_schema_error_and_nothing_else(w: object) -> None:
    for row in (KeyValue, Change, LockRow, NodeStatus, Result):
        try:
            row.from_wire(w)  # type: ignore[attr-defined]
        except SchemaError:
            pass
    try:
        ErrorReply.from_wire(w if isinstance(w, dict) else {"error": w})
    except SchemaError:
        pass


_names = st.text(max_size=40)
_lock_rows = st.builds(
    lambda name, holder, n, kind, ints: LockRow(
        name, ints, ints, ints, tuple([ints] * n), ints, ints, ints, tuple([ints] * n), holder,
        tuple([holder or ""] * n), kind, ints,
        tuple((ints, ints, holder or "", kind) for _ in range(n)), tuple([kind] * n)),
    _names, st.one_of(st.none(), _names), st.integers(0, 20),
    st.sampled_from(["lock", "semaphore", "rwlock", "read", "write"]),
    st.integers(-(2**63), 2**64 - 1))


@given(_lock_rows)
def test_a_lock_rows_size_bound_is_never_below_its_encoded_size(row: LockRow) -> None:
    """Pages of ``locks`` are cut by ``row_bytes``: it must bound what the wire carries."""
    assert len(msgpack.packb(row.to_wire(), use_bin_type=True)) <= row_bytes(row)
