"""coordsvc.wire: every message survives a round trip; every bad frame is a WireError."""
from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordsvc import wire
from coordsvc.core.membership import Member, Membership
from coordsvc.core.messages import (
    MESSAGE_TYPES,
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    SnapshotChunk,
    SnapshotInfo,
    SnapshotRequest,
    TimeoutNow,
    chosen_bytes,
    entry_bytes,
    value_bytes,
)
from coordsvc.core.types import (
    MAX_BATCH_COMMANDS,
    MAX_MESSAGE_ITEMS,
    MAX_RENEWED,
    MESSAGE_BUDGET_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    ZERO_BALLOT,
    Ballot,
    LogEntry,
    ProtocolError,
    UsageError,
)
from coordsvc.wire import (
    CLIENT_REPLY,
    CLIENT_REQUEST,
    EVENT,
    MAX_FRAME_BYTES,
    PEER_TAGS,
    WIRE_VERSION,
    WireError,
    decode,
    decode_client,
    decode_peer,
    encode_client,
    encode_peer,
)

B = Ballot(7, "n1")
MiB = 1024 * 1024


def frame(tag: int, payload: object, version: int = WIRE_VERSION) -> bytes:
    packed: bytes = msgpack.packb(payload, use_bin_type=True)
    return bytes((version, tag)) + packed


def tag_of(cls: type) -> int:
    return PEER_TAGS[cls]


# --- strategies ----------------------------------------------------------------------

TOP = 2**62
U62 = st.integers(min_value=0, max_value=TOP)
SLOTS = st.integers(min_value=1, max_value=TOP)
NODES = st.text(min_size=1, max_size=64)
BALLOTS = st.builds(Ballot, st.integers(1, TOP), NODES) | st.just(ZERO_BALLOT)
VALUES = st.lists(st.binary(max_size=64), max_size=5).map(tuple)
ENTRIES = st.builds(LogEntry, SLOTS, BALLOTS, VALUES)
INFOS = st.builds(SnapshotInfo, SLOTS, st.integers(0, TOP), st.binary(min_size=32, max_size=32))


@st.composite
def promises(draw: st.DrawFn) -> Promise:
    src, ballot, from_slot = draw(NODES), draw(BALLOTS), draw(U62)
    entries = draw(st.lists(ENTRIES, max_size=4).map(tuple))
    nxt = 0
    if entries and draw(st.booleans()):
        nxt = draw(st.integers(max(from_slot + 1, entries[-1].slot + 1), TOP + 1))
        nxt = min(nxt, TOP)
        if nxt <= from_slot or nxt <= entries[-1].slot:
            nxt = 0
    return Promise(src, ballot, from_slot, entries, draw(U62), draw(U62), nxt)


@st.composite
def catchup_requests(draw: st.DrawFn) -> CatchupRequest:
    a, b = sorted((draw(SLOTS), draw(SLOTS)))
    return CatchupRequest(draw(NODES), a, b)


@st.composite
def snapshot_chunks(draw: st.DrawFn) -> SnapshotChunk:
    data = draw(st.binary(max_size=64))
    offset = draw(st.integers(0, TOP - len(data)))
    size = draw(st.integers(offset + len(data), TOP))
    if not data:
        size = offset
    info = SnapshotInfo(draw(SLOTS), size, draw(st.binary(min_size=32, max_size=32)))
    return SnapshotChunk(draw(NODES), info, offset, data)


MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(Prepare, NODES, BALLOTS, U62),
    promises(),
    st.builds(Nack, NODES, BALLOTS, BALLOTS),
    st.builds(Accept, NODES, BALLOTS, SLOTS, VALUES, U62),
    st.builds(Accepted, NODES, BALLOTS, SLOTS),
    st.builds(Heartbeat, NODES, BALLOTS, U62, U62,
              st.lists(st.integers(1, 2**63 - 1), max_size=5).map(tuple)),
    st.builds(HeartbeatAck, NODES, BALLOTS, U62, U62),
    catchup_requests(),
    st.builds(CatchupReply, NODES, BALLOTS,
              st.lists(st.tuples(SLOTS, VALUES), max_size=4).map(tuple),
              st.none() | INFOS, U62),
    st.builds(SnapshotRequest, NODES, SLOTS, U62),
    snapshot_chunks(),
    st.builds(PreVote, NODES, U62, U62),
    st.builds(PreVoteReply, NODES, U62, st.booleans()),
    st.builds(TimeoutNow, NODES, BALLOTS),
)

# Arbitrary msgpack-able trees, biased towards the shapes the decoders look for.
LEAVES = (
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8)
)
TREES = st.recursive(
    LEAVES,
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=4), kids,
                                                              max_size=3),
    max_leaves=20,
)
ALL_TAGS = sorted(PEER_TAGS.values()) + [CLIENT_REQUEST, CLIENT_REPLY, EVENT]


def assert_valid_or_wire_error(body: bytes) -> None:
    """The fuzz oracle: a decoded result is a well-formed value, else exactly WireError."""
    try:
        tag, obj = decode(body)
    except WireError:
        return
    if tag in (CLIENT_REQUEST, CLIENT_REPLY, EVENT):
        assert type(obj) is dict and all(type(k) is str for k in obj)
        again = encode_client(tag, obj)  # compared as bytes: NaN != NaN
        assert encode_client(tag, decode_client(again, tag)) == again
    else:
        assert type(obj) in MESSAGE_TYPES and PEER_TAGS[type(obj)] == tag
        # Whatever was accepted re-encodes to something that decodes to the same value.
        assert decode_peer(encode_peer(obj)) == obj  # type: ignore[arg-type]


# --- round trips ---------------------------------------------------------------------

SUM = bytes(range(32))
INFO = SnapshotInfo(8, 3 * MiB, SUM)

EXAMPLES: list[Message] = [
    Prepare("n1", B, 0),
    Prepare("n" * 64, ZERO_BALLOT, 2**62),
    Promise("n2", B, 1, (), 0, 0),
    Promise("n2", B, 5, (LogEntry(5, B, ()), LogEntry(6, Ballot(3, "n3"), (b"a", b""))), 4, 2),
    Promise("n2", B, 5, (LogEntry(5, B, (b"x" * MiB,)),), 4, 2, 9),
    Nack("n3", B, Ballot(9, "n9")),
    Accept("n1", B, 1, (), 0),
    Accept("n1", B, 42, (b"x" * 100,), 41),
    Accept("n1", B, 42, (b"v" * MiB,), 41),
    Accept("n1", B, 43, tuple(b"c%d" % i for i in range(512)), 0),
    Accepted("n2", B, 42),
    Accepted("n2", B, 42, 2**62),
    Promise("n2", B, 1, (), 0, 0, 0, 17),
    HeartbeatAck("n2", B, 3, 10, 99),
    CatchupReply("n1", B, ((1, (b"a",)),), None, 1,
                 Membership((Member("n1"), Member("n4", 12, False, "tcp://127.0.0.1:7104",
                                                  "tcp://127.0.0.1:7204", "", "k" * 40)))),
    Heartbeat("n1", B, 10, 3),
    Heartbeat("n1", B, 10, 3, (1, 2, 2**40, 2**63 - 1)),
    HeartbeatAck("n2", B, 3, 10),
    CatchupRequest("n3", 1, 256),
    CatchupRequest("n3", 2**62, 2**62),
    CatchupReply("n1", B, (), None, 0),
    CatchupReply("n1", B, ((1, ()), (2, (b"a",))), None, 2),
    CatchupReply("n1", B, ((9, (b"z" * MiB,)),), None, 9),
    CatchupReply("n1", B, (), INFO, 9),
    SnapshotRequest("n2", 8, 0),
    SnapshotRequest("n2", 8, 2 * MiB),
    SnapshotChunk("n1", INFO, 0, b"s" * SNAPSHOT_CHUNK_BYTES),
    SnapshotChunk("n1", INFO, 3 * MiB - 5, b"tail!"),
    SnapshotChunk("n1", SnapshotInfo(4, 0, SUM), 0, b""),
    PreVote("n2", 7, 40),
    PreVote("n2", 2**62, 0),
    PreVoteReply("n1", 7, True),
    PreVoteReply("n1", 7, False),
    TimeoutNow("n1", B),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: Message) -> None:
    body = encode_peer(msg)
    assert body[0] == WIRE_VERSION and body[1] == PEER_TAGS[type(msg)]
    assert decode_peer(body) == msg
    assert decode(body) == (PEER_TAGS[type(msg)], msg)


def test_examples_cover_every_message_type() -> None:
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES)


def test_decoded_values_are_tuples_of_bytes() -> None:
    m = decode_peer(encode_peer(Accept("n1", B, 1, (b"a", b"b"), 0)))
    assert isinstance(m, Accept) and type(m.value) is tuple
    assert all(type(c) is bytes for c in m.value)


@given(MESSAGES)
def test_any_valid_message_round_trips(msg: Message) -> None:
    assert decode_peer(encode_peer(msg)) == msg


def test_peer_tags_follow_message_types_order() -> None:
    assert [PEER_TAGS[c] for c in MESSAGE_TYPES] == list(range(1, 15))
    assert PEER_TAGS[Prepare] == 1 and PEER_TAGS[CatchupReply] == 9
    # New messages are appended, never renumbered.
    assert PEER_TAGS[SnapshotRequest] == 10 and PEER_TAGS[SnapshotChunk] == 11
    assert (PEER_TAGS[PreVote], PEER_TAGS[PreVoteReply], PEER_TAGS[TimeoutNow]) == (12, 13, 14)
    assert (CLIENT_REQUEST, CLIENT_REPLY, EVENT) == (32, 33, 34)


def test_peer_payload_is_a_compact_positional_array() -> None:
    body = encode_peer(Accept("n1", B, 42, (b"x",), 41))
    assert msgpack.unpackb(body[2:]) == ["n1", [7, "n1"], 42, [b"x"], 41]
    body = encode_peer(Promise("n2", B, 5, (LogEntry(5, B, (b"a",)),), 4, 2, 6))
    assert msgpack.unpackb(body[2:]) == ["n2", [7, "n1"], 5, [[5, [7, "n1"], [b"a"]]], 4, 2, 6, 0]
    body = encode_peer(CatchupReply("n1", B, ((1, (b"a",)),), None, 1))
    assert msgpack.unpackb(body[2:]) == ["n1", [7, "n1"], [[1, [b"a"]]], None, 1, None]
    body = encode_peer(CatchupReply("n1", B, (), INFO, 9))
    assert msgpack.unpackb(body[2:]) == ["n1", [7, "n1"], [], [8, 3 * MiB, SUM], 9, None]
    body = encode_peer(SnapshotRequest("n2", 8, 1024))
    assert msgpack.unpackb(body[2:]) == ["n2", 8, 1024]
    body = encode_peer(SnapshotChunk("n1", INFO, 1024, b"abc"))
    assert msgpack.unpackb(body[2:]) == ["n1", [8, 3 * MiB, SUM], 1024, b"abc"]


@pytest.mark.parametrize("tag", [CLIENT_REQUEST, CLIENT_REPLY, EVENT])
def test_client_payloads_round_trip(tag: int) -> None:
    payload: dict[str, Any] = {
        "op": "set", "key": "/a/b", "value": b"\x00" * 100, "ttl_s": None,
        "ids": [1, 2, 3], "nested": {"ok": True, "f": 1.5}, "empty": {},
    }
    body = encode_client(tag, payload)
    assert body[:2] == bytes((WIRE_VERSION, tag))
    assert decode_client(body, tag) == payload
    assert decode(body) == (tag, payload)
    assert decode_client(encode_client(tag, {}), tag) == {}


@given(st.sampled_from([CLIENT_REQUEST, CLIENT_REPLY, EVENT]),
       st.dictionaries(st.text(max_size=8), TREES, max_size=5))
def test_any_client_map_round_trips(tag: int, payload: dict[str, Any]) -> None:
    assert decode_client(encode_client(tag, payload), tag) == payload


# --- rejection: frame level ----------------------------------------------------------

def test_wrong_version_is_rejected() -> None:
    good = encode_peer(Accepted("n2", B, 1))
    for v in (0, 2, 255):
        with pytest.raises(WireError, match="version"):
            decode(bytes((v,)) + good[1:])


@pytest.mark.parametrize("tag", [0, 15, 31, 35, 255])
def test_unknown_tag_is_rejected(tag: int) -> None:
    with pytest.raises(WireError, match="tag"):
        decode(frame(tag, ["n1", [1, "n1"], 1]))


@pytest.mark.parametrize("body", [b"", b"\x01", b"\x01\x04"])
def test_short_frames_are_rejected(body: bytes) -> None:
    with pytest.raises(WireError):
        decode(body)


def test_truncated_msgpack_is_rejected_at_every_cut() -> None:
    body = encode_peer(Promise("n2", B, 5, (LogEntry(5, B, (b"abc",)),), 4, 2))
    for cut in range(len(body)):
        with pytest.raises(WireError):
            decode(body[:cut])


def test_trailing_bytes_after_payload_are_rejected() -> None:
    with pytest.raises(WireError, match="msgpack"):
        decode(encode_peer(Accepted("n2", B, 1)) + b"\x00")


def test_oversize_frame_is_rejected_before_msgpack_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> object:
        raise AssertionError("msgpack must not see an oversize frame")

    body = frame(tag_of(Accept), ["n1", [1, "n1"], 1, [b"x" * MAX_FRAME_BYTES], 0])
    assert len(body) > MAX_FRAME_BYTES
    monkeypatch.setattr(wire, "_unpackb", boom)
    for f in (decode, decode_peer, lambda b: decode_client(b, CLIENT_REQUEST)):
        with pytest.raises(WireError, match="too large"):
            f(body)


def test_frame_exactly_at_the_cap_is_accepted() -> None:
    overhead = len(encode_peer(Accept("n1", B, 1, (b"x" * MiB,), 0))) - MiB
    msg = Accept("n1", B, 1, (b"x" * (MAX_FRAME_BYTES - overhead),), 0)
    body = encode_peer(msg)
    assert len(body) == MAX_FRAME_BYTES
    assert decode_peer(body) == msg


def test_ext_types_and_timestamps_are_rejected() -> None:
    for ext in (msgpack.ExtType(5, b"ab"), msgpack.Timestamp(1, 0)):
        with pytest.raises(WireError):
            decode(frame(CLIENT_REQUEST, {"k": ext}))


def test_invalid_utf8_string_is_rejected() -> None:
    bad_str = b"\xa2\xff\xfe"  # fixstr of 2 invalid UTF-8 bytes
    with pytest.raises(WireError):
        decode(bytes((WIRE_VERSION, tag_of(CatchupRequest))) + b"\x93" + bad_str + b"\x01\x02")


def test_deep_nesting_is_rejected() -> None:
    with pytest.raises(WireError):
        decode(bytes((WIRE_VERSION, CLIENT_REQUEST)) + b"\x91" * 5000 + b"\x01")


def test_lying_length_header_is_rejected() -> None:
    # array32 claiming 4 billion elements in a 7-byte frame
    with pytest.raises(WireError):
        decode(bytes((WIRE_VERSION, tag_of(Promise))) + b"\xdd\xff\xff\xff\xff")


# --- rejection: peer payload shape and field types -----------------------------------

def test_peer_payload_must_be_an_array() -> None:
    for payload in ({"src": "n1"}, 5, None, "n1", b"n1"):
        with pytest.raises(WireError, match="Accepted"):
            decode(frame(tag_of(Accepted), payload))


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_wrong_arity_is_rejected(cls: type) -> None:
    good = next(m for m in EXAMPLES if type(m) is cls)
    fields: list[object] = msgpack.unpackb(encode_peer(good)[2:])
    bad: list[object]
    for bad in (fields[:-1], fields + [0], []):
        with pytest.raises(WireError, match=cls.__name__):
            decode_peer(frame(tag_of(cls), bad))


ACCEPT_OK = ["n1", [7, "n1"], 3, [b"a"], 2]


def accept_with(i: int, v: object) -> bytes:
    fields = list(ACCEPT_OK)
    fields[i] = v
    return frame(tag_of(Accept), fields)


def test_accept_template_is_valid() -> None:
    assert decode_peer(frame(tag_of(Accept), ACCEPT_OK)) == Accept("n1", B, 3, (b"a",), 2)


@pytest.mark.parametrize("i,bad", [
    (0, 1), (0, b"n1"), (0, None), (0, ["n1"]),                  # src: not a str
    (2, "3"), (4, "2"), (2, 3.0), (2, None),                     # str/float where an int is
    (2, True), (4, False),                                       # bool where an int is
    (2, -1), (4, -1),                                            # negative slot / index
    (2, 0),                                                      # reserved slot 0
    (3, ["a"]), (3, [b"a", 1]), (3, [None]), (3, b"a"), (3, None),  # value batch not bin
    (3, [[b"a"]]),
    (1, [7]), (1, [7, "n1", 0]), (1, ["7", "n1"]), (1, [True, "n1"]),  # ballot shape
    (1, [-1, "n1"]), (1, [7, b"n1"]), (1, {"round": 7}), (1, None),
])
def test_accept_field_type_errors_are_rejected(i: int, bad: object) -> None:
    with pytest.raises(WireError, match="Accept"):
        decode_peer(accept_with(i, bad))


@pytest.mark.parametrize("cls,payload", [
    (Prepare, ["n1", [1, "n1"], -1]),
    (Prepare, ["n1", [1, "n1"], True]),
    (Promise, ["n1", [1, "n1"], 0, [[0, [1, "n1"], []]], 0, 0, 0]),     # entry slot 0
    (Promise, ["n1", [1, "n1"], 0, [[1, [1, "n1"]]], 0, 0, 0]),         # entry arity
    (Promise, ["n1", [1, "n1"], 0, [[1, [1, "n1"], ["s"]]], 0, 0, 0]),  # entry value
    (Promise, ["n1", [1, "n1"], 0, None, 0, 0, 0]),
    (Promise, ["n1", [1, "n1"], 0, [], 0, -3, 0]),
    (Promise, ["n1", [1, "n1"], 0, [], 0, 0, 5]),                      # more follows nothing
    (Promise, ["n1", [1, "n1"], 3, [[4, [1, "n1"], []]], 0, 0, 3]),     # next_slot not ahead
    (Promise, ["n1", [1, "n1"], 3, [[4, [1, "n1"], []]], 0, 0, 4]),     # listed past next_slot
    (Nack, ["n1", [1, "n1"], [1]]),
    (Accepted, ["n1", [1, "n1"], -1]),
    (Heartbeat, ["n1", [1, "n1"], 0, 0, [1, "2"]]),
    (Heartbeat, ["n1", [1, "n1"], 0, 0, [True]]),
    (Heartbeat, ["n1", [1, "n1"], 0, -1, []]),
    (Heartbeat, ["n1", [1, "n1"], 0, 0, None]),
    (HeartbeatAck, ["n1", [1, "n1"], "0", 0]),
    (CatchupRequest, ["n1", -1, 5]),
    (CatchupRequest, ["n1", 1, 2.5]),
    (CatchupRequest, ["n1", 0, 5]),                                  # slot 0 is never chosen
    (CatchupRequest, ["n1", 6, 5]),                                  # an empty range
    (CatchupReply, ["n1", [1, "n1"], [[1]], None, 0]),
    (CatchupReply, ["n1", [1, "n1"], [[-1, []]], None, 0]),
    (CatchupReply, ["n1", [1, "n1"], [[1, [1]]], None, 0]),
    (CatchupReply, ["n1", [1, "n1"], [5], None, 0]),
    (CatchupReply, ["n1", [1, "n1"], [], [1], 0]),
    (CatchupReply, ["n1", [1, "n1"], [], [1, 5, "sum"], 0]),
    (CatchupReply, ["n1", [1, "n1"], [], [1, 5, b"short"], 0]),          # not a sha256
    (CatchupReply, ["n1", [1, "n1"], [], [0, 5, bytes(32)], 0]),         # index 0
    (CatchupReply, ["n1", [1, "n1"], [], [1, -5, bytes(32)], 0]),
    (CatchupReply, ["n1", [1, "n1"], [], [1, b"old snapshot bytes"], 0]),  # the old format
    (CatchupReply, ["n1", [1, "n1"], [], False, 0]),
    (SnapshotRequest, ["n1", 0, 0]),
    (SnapshotRequest, ["n1", 1, -1]),
    (SnapshotRequest, ["n1", 1, 2**62 + 1]),
    (SnapshotChunk, ["n1", [1, 10, bytes(32)], 8, b"abc"]),              # past the end
    (SnapshotChunk, ["n1", [1, 10, bytes(32)], 2, b""]),                 # empty mid-way
    (SnapshotChunk, ["n1", [1, 10, bytes(32)], 0, "abc"]),
    (SnapshotChunk, ["n1", [1, 10, bytes(32)], -1, b"a"]),
    (SnapshotChunk, ["n1", None, 0, b"a"]),
])
def test_field_type_errors_are_rejected_for_every_message(cls: type, payload: object) -> None:
    with pytest.raises(WireError, match=cls.__name__):
        decode(frame(tag_of(cls), payload))


@pytest.mark.parametrize("exc", [ProtocolError("bad"), TypeError("bad"), ValueError("bad")])
def test_dataclass_construction_errors_become_wire_errors(
        monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    def raising(_: tuple[object, ...]) -> Message:
        raise exc

    tag = tag_of(Accepted)
    name, _, arity = wire._PEER_DECODERS[tag]
    monkeypatch.setitem(wire._PEER_DECODERS, tag, (name, raising, arity))
    with pytest.raises(WireError, match="Accepted") as info:
        decode(encode_peer(Accepted("n2", B, 1)))
    assert type(info.value) is WireError


def test_wire_error_is_a_protocol_error() -> None:
    assert issubclass(WireError, ProtocolError)


# --- rejection: client payloads ------------------------------------------------------

@pytest.mark.parametrize("payload", [[1, 2], "x", 3, None, b"x"])
def test_client_payload_must_be_a_map(payload: object) -> None:
    with pytest.raises(WireError, match="map"):
        decode_client(frame(CLIENT_REQUEST, payload), CLIENT_REQUEST)


def test_client_map_keys_must_be_str() -> None:
    with pytest.raises(WireError, match="str keys"):
        decode_client(frame(CLIENT_REPLY, {b"k": 1}), CLIENT_REPLY)
    with pytest.raises(WireError):  # int keys: msgpack's strict_map_key refuses them
        decode_client(bytes((WIRE_VERSION, CLIENT_REPLY)) + b"\x81\x01\x01", CLIENT_REPLY)


def test_decode_client_rejects_another_tag() -> None:
    with pytest.raises(WireError, match="want tag"):
        decode_client(encode_client(CLIENT_REPLY, {}), CLIENT_REQUEST)
    with pytest.raises(WireError, match="want tag"):
        decode_client(encode_peer(Accepted("n2", B, 1)), CLIENT_REPLY)


def test_decode_peer_rejects_client_tags() -> None:
    with pytest.raises(WireError, match="not a peer"):
        decode_peer(encode_client(EVENT, {"k": 1}))


# --- encode-side misuse is ours: UsageError ------------------------------------------

def test_encoding_a_non_message_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encode_peer(LogEntry(1, B, ()))  # type: ignore[arg-type]


def test_encoding_a_bad_client_frame_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encode_client(5, {})
    with pytest.raises(UsageError):
        encode_client(CLIENT_REQUEST, {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(UsageError):
        encode_client(CLIENT_REQUEST, {"x": object()})
    with pytest.raises(UsageError):
        decode_client(b"", 5)


def test_encoding_an_oversize_frame_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="too large"):
        encode_peer(Accept("n1", B, 1, (b"x" * MAX_FRAME_BYTES,), 0))
    with pytest.raises(UsageError, match="too large"):
        encode_client(CLIENT_REPLY, {"v": b"x" * MAX_FRAME_BYTES})


# --- fuzz ----------------------------------------------------------------------------

FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes_decode_or_wire_error(body: bytes) -> None:
    assert_valid_or_wire_error(body)


@FUZZ
@given(st.sampled_from(ALL_TAGS), st.binary(max_size=256))
def test_fuzz_valid_header_arbitrary_payload_bytes(tag: int, payload: bytes) -> None:
    assert_valid_or_wire_error(bytes((WIRE_VERSION, tag)) + payload)


@FUZZ
@given(st.sampled_from(ALL_TAGS), st.data())
def test_fuzz_arbitrary_msgpack_trees(tag: int, data: st.DataObject) -> None:
    # Arrays of the right arity get past the shape check and exercise field validation.
    arity = {PEER_TAGS[c]: wire._CODECS[c][2] for c in MESSAGE_TYPES}.get(tag)
    tree = TREES if arity is None else st.lists(TREES, min_size=arity, max_size=arity)
    assert_valid_or_wire_error(frame(tag, data.draw(tree)))


@FUZZ
@given(MESSAGES, st.data())
def test_fuzz_mutated_valid_frames(msg: Message, data: st.DataObject) -> None:
    body = bytearray(encode_peer(msg))
    i = data.draw(st.integers(0, len(body) - 1), label="index")
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]), label="kind")
    if kind == "flip":
        body[i] ^= data.draw(st.integers(1, 255), label="mask")
    elif kind == "truncate":
        del body[i:]
    elif kind == "insert":
        body.insert(i, data.draw(st.integers(0, 255), label="byte"))
    else:
        del body[i]
    assert_valid_or_wire_error(bytes(body))


# --- ballot interning ----------------------------------------------------------------

def test_ballot_cache_is_bounded_and_never_confuses_bool_with_int() -> None:
    for r in range(3 * wire._BALLOT_CACHE_MAX):
        assert decode_peer(encode_peer(Accepted("n2", Ballot(r, "n1"), 1))) == Accepted(
            "n2", Ballot(r, "n1"), 1)
        assert len(wire._BALLOT_CACHE) <= wire._BALLOT_CACHE_MAX
    decode_peer(encode_peer(Accepted("n2", Ballot(1, "n1"), 1)))  # (1, "n1") now cached
    with pytest.raises(WireError, match="ballot"):
        decode_peer(frame(tag_of(Accepted), ["n2", [True, "n1"], 1, 0]))


def test_bytes_like_bodies_decode_and_non_bytes_is_a_usage_error() -> None:
    body = encode_peer(Accepted("n2", B, 1))
    assert decode(bytearray(body)) == decode(body)  # type: ignore[arg-type]
    assert decode(memoryview(body)) == decode(body)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        decode("not bytes")  # type: ignore[arg-type]


def test_no_frame_of_any_type_may_exceed_the_frame_cap() -> None:
    big = frame(tag_of(CatchupReply), ["n1", [1, "n1"], [[1, [b"s" * MAX_FRAME_BYTES]]], None, 1])
    with pytest.raises(WireError, match="too large"):
        decode(big)
    for msg in (CatchupReply("n1", B, ((1, (b"x" * (MAX_FRAME_BYTES + 1),)),), None, 1),
                Promise("n1", B, 1, (LogEntry(1, B, (b"x" * MAX_FRAME_BYTES,)),), 0, 0)):
        with pytest.raises(UsageError, match="too large"):
            encode_peer(msg)
    assert not hasattr(wire, "MAX_SNAPSHOT_FRAME_BYTES")


# --- range checks: the bounds documented in wire's docstring -------------------------

HUGE = [2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.mark.parametrize("n", HUGE)
def test_ballot_rounds_above_2_to_the_62_are_rejected(n: int) -> None:
    for cls, payload in [
        (Prepare, ["n1", [n, "n1"], 1]),
        (Accept, ["n1", [n, "n1"], 1, [], 0]),
        (Heartbeat, ["n1", [n, "n1"], 0, 1, []]),
        (Nack, ["n1", [1, "n1"], [n, "n2"]]),
        (Promise, ["n1", [1, "n1"], 1, [[1, [n, "n2"], []]], 0, 0, 0]),
    ]:
        with pytest.raises(WireError, match=cls.__name__):
            decode(frame(tag_of(cls), payload))


@pytest.mark.parametrize("n", HUGE)
def test_slots_commit_indexes_and_heartbeat_rounds_above_2_to_the_62_are_rejected(n: int) -> None:
    for cls, payload in [
        (Prepare, ["n1", [1, "n1"], n]),
        (Accept, ["n1", [1, "n1"], n, [], 0]),
        (Accept, ["n1", [1, "n1"], 1, [], n]),
        (Accepted, ["n1", [1, "n1"], n]),
        (Heartbeat, ["n1", [1, "n1"], n, 1, []]),
        (Heartbeat, ["n1", [1, "n1"], 0, n, []]),
        (HeartbeatAck, ["n1", [1, "n1"], n, 0]),
        (HeartbeatAck, ["n1", [1, "n1"], 0, n]),
        (Promise, ["n1", [1, "n1"], 1, [], 0, n, 0]),
        (Promise, ["n1", [1, "n1"], 1, [[n, [1, "n1"], []]], 0, 0, 0]),
        (CatchupRequest, ["n1", 1, n]),
        (CatchupReply, ["n1", [1, "n1"], [[n, []]], None, 0]),
        (CatchupReply, ["n1", [1, "n1"], [], None, n]),
        (SnapshotRequest, ["n1", n, 0]),
    ]:
        with pytest.raises(WireError, match=cls.__name__):
            decode(frame(tag_of(cls), payload))


def test_the_largest_round_and_slot_are_accepted_and_still_fit_an_increment_in_int64() -> None:
    m = decode_peer(frame(tag_of(Accept), ["n1", [2**62, "n1"], 2**62, [], 2**62]))
    assert isinstance(m, Accept) and m.ballot.round + 1 < 2**63 and m.slot + 1 < 2**63


def test_node_ids_are_short_non_empty_strings() -> None:
    for bad in ("", "n" * 65):
        with pytest.raises(WireError, match="Accepted.src"):
            decode(frame(tag_of(Accepted), [bad, [1, "n1"], 1, 0]))
    with pytest.raises(WireError, match="Accepted.ballot"):
        decode(frame(tag_of(Accepted), ["n1", [1, "n" * 65], 1, 0]))
    with pytest.raises(WireError, match="Accepted.ballot"):    # only the zero ballot is nobody's
        decode(frame(tag_of(Accepted), ["n1", [3, ""], 1, 0]))
    assert decode_peer(frame(tag_of(Nack), ["n" * 64, [1, "n1"], [0, ""]])) == Nack(
        "n" * 64, Ballot(1, "n1"), ZERO_BALLOT)


def test_lists_in_peer_messages_are_bounded() -> None:
    too_many_cmds = [b""] * (MAX_BATCH_COMMANDS + 1)
    with pytest.raises(WireError, match="Accept.value"):
        decode(frame(tag_of(Accept), ["n1", [1, "n1"], 1, too_many_cmds, 0]))
    with pytest.raises(WireError, match="Promise.accepted"):
        decode(frame(tag_of(Promise), ["n1", [1, "n1"], 1,
                                       [[1, [1, "n1"], []]] * (MAX_MESSAGE_ITEMS + 1), 0, 0, 0, 0]))
    with pytest.raises(WireError, match="CatchupReply.chosen"):
        decode(frame(tag_of(CatchupReply), ["n1", [1, "n1"], [[1, []]] * (MAX_MESSAGE_ITEMS + 1),
                                            None, 0, None]))
    with pytest.raises(WireError, match="Heartbeat.renewed"):
        decode(frame(tag_of(Heartbeat), ["n1", [1, "n1"], 0, 1, [1] * (MAX_RENEWED + 1)]))
    for sid in (0, -5, 2**63):
        with pytest.raises(WireError, match="Heartbeat.renewed"):
            decode(frame(tag_of(Heartbeat), ["n1", [1, "n1"], 0, 1, [sid]]))


def test_a_snapshot_chunk_carries_at_most_one_chunk_of_data() -> None:
    info = [1, 4 * SNAPSHOT_CHUNK_BYTES, bytes(32)]
    ok = frame(tag_of(SnapshotChunk), ["n1", info, 0, b"x" * SNAPSHOT_CHUNK_BYTES])
    assert isinstance(decode_peer(ok), SnapshotChunk)
    with pytest.raises(WireError, match="SnapshotChunk.data"):
        decode(frame(tag_of(SnapshotChunk), ["n1", info, 0, b"x" * (SNAPSHOT_CHUNK_BYTES + 1)]))


# --- size estimates: senders pack with them, so they must bound the real encoding -----

@settings(max_examples=200)
@given(SLOTS, BALLOTS, st.lists(st.binary(max_size=300), max_size=20).map(tuple))
def test_size_estimates_bound_the_encoded_sizes(slot: int, ballot: Ballot,
                                                value: tuple[bytes, ...]) -> None:
    def packed(x: object) -> int:
        return len(msgpack.packb(x, use_bin_type=True))

    assert packed(list(value)) <= value_bytes(value)
    assert packed([slot, [ballot.round, ballot.node], list(value)]) <= entry_bytes(
        LogEntry(slot, ballot, value))
    assert packed([slot, list(value)]) <= chosen_bytes(value)


def test_the_largest_command_a_client_can_send_fits_max_command_bytes() -> None:
    from coordsvc.core.commands import (
        MAX_CLIENT_ID_CHARS,
        MAX_INT,
        MAX_KEY_BYTES,
        MAX_VALUE_BYTES,
        Fence,
        Put,
        Request,
        encode_request,
        validate,
        validate_request,
    )
    from coordsvc.core.types import MAX_COMMAND_BYTES
    key = "\U0010ffff" * (MAX_KEY_BYTES // 4)          # 512 bytes of 4-byte characters
    cmd = Put(key, b"v" * MAX_VALUE_BYTES, MAX_INT, Fence(key, MAX_INT))
    req = Request("\U0010ffff" * MAX_CLIENT_ID_CHARS, MAX_INT, MAX_INT, cmd)
    assert validate(cmd) is None and validate_request(req) is None
    assert len(encode_request(req)) <= MAX_COMMAND_BYTES


def test_a_full_budget_plus_the_largest_item_fits_in_one_frame() -> None:
    from coordsvc.core.commands import MAX_KEY_BYTES, MAX_VALUE_BYTES
    from coordsvc.core.messages import ENVELOPE_BYTES
    from coordsvc.core.types import MAX_COMMAND_BYTES
    assert MAX_COMMAND_BYTES > MAX_KEY_BYTES + MAX_VALUE_BYTES
    biggest = (b"c" * MAX_COMMAND_BYTES,)
    n = "n" * 64
    for msg in (Accept(n, Ballot(2**62, n), 2**62, biggest, 2**62),
                Promise(n, Ballot(2**62, n), 2**62 - 1, (LogEntry(2**62 - 1, Ballot(2**62, n),
                                                               biggest),), 2**62, 2**62, 2**62),
                CatchupReply(n, Ballot(2**62, n), ((2**62, biggest),), INFO, 2**62)):
        assert len(encode_peer(msg)) <= MESSAGE_BUDGET_BYTES + ENVELOPE_BYTES < MAX_FRAME_BYTES
    chunk = SnapshotChunk(n, SnapshotInfo(2**62, 2**62, SUM), 0, b"s" * SNAPSHOT_CHUNK_BYTES)
    assert len(encode_peer(chunk)) <= SNAPSHOT_CHUNK_BYTES + ENVELOPE_BYTES


def test_a_vote_carries_an_incarnation_within_range() -> None:
    for bad in (-1, 2**62 + 1, True, "1"):
        with pytest.raises(WireError, match="Accepted.incarnation"):
            decode_peer(frame(tag_of(Accepted), ["n2", [1, "n1"], 1, bad]))
        with pytest.raises(WireError, match="HeartbeatAck.incarnation"):
            decode_peer(frame(tag_of(HeartbeatAck), ["n2", [1, "n1"], 1, 0, bad]))


def test_a_configuration_on_the_wire_is_checked_row_by_row() -> None:
    ok = ["n1", 0, True, "", "", "", ""]
    def reply(rows: object) -> bytes:
        return frame(tag_of(CatchupReply), ["n1", [1, "n1"], [], None, 0, rows])
    assert decode_peer(reply([ok])).config == Membership((Member("n1"),))  # type: ignore[union-attr]
    for rows in ([["n1", 0, 1, "", "", "", ""]],              # voting not a bool
                 [["", 0, True, "", "", "", ""]],              # empty id
                 [["n1", -1, True, "", "", "", ""]],           # incarnation below 0
                 [["n1", 0, True, "x" * 513, "", "", ""]],     # address too long
                 [ok, ok],                                      # an id twice
                 [["n2", 0, True, "", "", "", ""], ok],        # not sorted
                 [ok] * 65, "n1", [ok[:6]]):
        with pytest.raises(WireError):
            decode_peer(reply(rows))


def test_prevote_reply_granted_is_a_bool_not_an_int() -> None:
    with pytest.raises(WireError, match="granted"):
        decode_peer(frame(tag_of(PreVoteReply), ["n1", 3, 1]))
