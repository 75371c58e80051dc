from __future__ import annotations

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordsvc.core.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
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
    decode_request,
    encode_request,
    validate,
    validate_request,
)
from coordsvc.core.types import ProtocolError

EXAMPLES: list[Command] = [
    Put("a/b", b"v", None, None),
    Put("k", b"", 0, Fence("lk", 7)),
    Delete("k", 3, None),
    Delete("k", None, Fence("lk", 1)),
    OpenSession(10_000),
    CloseSession(2),
    ExpireSession(3),
    Acquire("deploy", 1, True),
    Acquire("deploy", 1, False),
    Release("deploy", 1, 9),
    Cancel("deploy", 1),
    OpenAndAcquire("deploy", 10_000, True),
    Noop(),
]

names = st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
ints = st.integers(min_value=0, max_value=2**63 - 1)
fences = st.none() | st.builds(Fence, names, ints)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, names, st.binary(max_size=50), st.none() | ints, fences),
    st.builds(Delete, names, st.none() | ints, fences),
    st.builds(OpenSession, ints),
    st.builds(CloseSession, ints),
    st.builds(ExpireSession, ints),
    st.builds(Acquire, names, ints, st.booleans()),
    st.builds(Release, names, ints, ints),
    st.builds(Cancel, names, ints),
    st.builds(OpenAndAcquire, names, ints, st.booleans()),
    st.just(Noop()),
)


@pytest.mark.parametrize("cmd", EXAMPLES, ids=lambda c: type(c).__name__)
def test_every_command_round_trips_through_encoding(cmd: Command) -> None:
    r = Request("client-1", 5, 3, cmd)
    assert decode_request(encode_request(r)) == r


@given(st.builds(Request, st.text(max_size=64), ints, ints, commands))
def test_any_well_typed_request_round_trips(r: Request) -> None:
    assert decode_request(encode_request(r)) == r


def test_encoding_is_a_list_with_a_small_int_tag() -> None:
    raw = msgpack.unpackb(encode_request(Request("c", 1, 1, Acquire("x", 4, True))))
    assert raw == ["c", 1, 1, [6, "x", 4, True]]


@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(b: bytes) -> None:
    try:
        decode_request(b)
    except ProtocolError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)


@given(st.lists(msgpack_values, max_size=5), st.integers(0, 10))
def test_decode_of_any_msgpack_shape_raises_only_protocol_error(fields: list[object], tag: int) -> None:
    for shape in ([*fields[:3], [tag, *fields[3:]]], ["c", 1, 1, [tag, *fields]]):
        try:
            decode_request(msgpack.packb(shape))
        except ProtocolError:
            pass


@pytest.mark.parametrize("shape", [
    ["c", 1, 1, [99]],                         # unknown tag
    ["c", 1, 1, [1, "k", b"v", None]],         # wrong arity
    ["c", 1, 1, [1, "k", "not-bytes", None, None]],
    ["c", "1", 1, [0]],                        # seq not an int
    ["c", True, 1, [0]],                       # bool is not an int
    ["c", 1, 1, [6, "x", 1, 1]],               # wait not a bool
    ["c", 1, 1, [1, "k", b"v", None, ["lk"]]],  # fence arity
    ["c", 1, 1, []],
    ["c", 1, 1],
    {"c": 1},
    1.5,
])
def test_decode_rejects_malformed_shapes_with_protocol_error(shape: object) -> None:
    with pytest.raises(ProtocolError):
        decode_request(msgpack.packb(shape))


def test_decode_rejects_non_utf8_strings_with_protocol_error() -> None:
    good = encode_request(Request("c", 1, 1, Noop()))
    bad = good.replace(b"\xa1c", b"\xa1\xff")
    assert bad != good
    with pytest.raises(ProtocolError):
        decode_request(bad)


def test_decode_rejects_trailing_bytes_and_non_bytes_with_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_request(encode_request(Request("c", 1, 1, Noop())) + b"\x00")
    with pytest.raises(ProtocolError):
        decode_request("text")  # type: ignore[arg-type]


def test_key_must_be_1_to_512_utf8_bytes_without_nul() -> None:
    assert validate(Put("k" * MAX_KEY_BYTES, b"")) is None
    assert validate(Put("é" * 256, b"")) is None           # 512 bytes
    assert validate(Put("é" * 257, b"")) is not None       # 514 bytes, 257 chars
    assert validate(Put("", b"")) is not None
    assert validate(Delete("a\x00b")) is not None
    assert validate(Put("\ud800", b"")) is not None        # lone surrogate: not UTF-8


def test_value_may_be_at_most_one_mib() -> None:
    assert validate(Put("k", b"x" * MAX_VALUE_BYTES)) is None
    assert validate(Put("k", b"x" * (MAX_VALUE_BYTES + 1))) is not None


def test_ttl_must_be_between_1_and_300_seconds() -> None:
    assert validate(OpenSession(1_000)) is None
    assert validate(OpenSession(300_000)) is None
    assert validate(OpenSession(999)) is not None
    assert validate(OpenSession(300_001)) is not None
    assert validate(OpenAndAcquire("x", 999, True)) is not None
    assert validate(OpenAndAcquire("x", 300_000, False)) is None
    assert validate(OpenAndAcquire("", 5_000, True)) is not None
    assert validate(OpenAndAcquire("x", 5_000, 1)) is not None   # type: ignore[arg-type]


def test_lock_names_follow_the_key_rules() -> None:
    assert validate(Acquire("", 1, True)) is not None
    assert validate(Release("x" * 513, 1, 1)) is not None
    assert validate(Cancel("a\x00", 1)) is not None
    assert validate(Put("k", b"", None, Fence("", 1))) is not None


def test_numbers_must_be_in_range_and_not_bool() -> None:
    assert validate(Put("k", b"", -1)) is not None
    assert validate(Acquire("x", 0, True)) is not None
    assert validate(Release("x", 1, 0)) is not None
    assert validate(CloseSession(True)) is not None
    assert validate(CloseSession(2**63)) is not None
    assert validate("not a command") is not None


def test_client_id_is_1_to_64_chars_or_empty_for_internal_requests() -> None:
    assert validate_request(Request("c" * 64, 1, 0, Noop())) is None
    assert validate_request(Request("c" * 65, 1, 0, Noop())) is not None
    assert validate_request(Request("", 0, 0, ExpireSession(1))) is None
    assert validate_request(Request("", 1, 0, Noop())) is not None


def test_seq_is_positive_and_first_unacked_not_above_it() -> None:
    assert validate_request(Request("c", 0, 0, Noop())) is not None
    assert validate_request(Request("c", 3, 3, Noop())) is None
    assert validate_request(Request("c", 3, 4, Noop())) is not None
