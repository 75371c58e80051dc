"""A machine's snapshot written and read in pieces: the same bytes as in one piece, and a
reader that never holds more than a piece plus the state it rebuilds."""
from __future__ import annotations

import io

import msgpack  # type: ignore[import-untyped]
import pytest

from coordsvc.core.commands import Acquire, Put, Txn
from coordsvc.core.machine import Machine
from coordsvc.core.types import ProtocolError

from .test_machine import Client


def _busy_machine() -> Machine:
    c = Client(Machine())
    for i in range(300):
        c.do(Put(f"k/{i % 70}", bytes([i % 256]) * (i * 37 % 5000)))
    sid = c.session()
    c.do(Acquire("lock", sid, False))
    c.do(Txn(compare=(("k/1", 0),), success=(), failure=(Put("t/a", b"1"), Put("t/b", b"2"))))
    return c.m


class _Trickle:
    """A stream that hands out at most ``n`` bytes per read and counts the largest ask."""

    def __init__(self, data: bytes, n: int) -> None:
        self.f, self.n, self.reads = io.BytesIO(data), n, 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        return self.f.read(min(size, self.n))


def test_pieces_join_to_the_packed_state_and_stay_near_the_piece_size() -> None:
    m = _busy_machine()
    pieces = list(m.snapshot_pieces(piece_bytes=4096))
    assert len(pieces) > 10
    assert all(len(p) < 4096 + 5100 for p in pieces)      # a piece, plus at most one row
    data = b"".join(pieces)
    assert data == m.snapshot() == msgpack.packb(msgpack.unpackb(data, raw=False,
                                                                 strict_map_key=False),
                                                 use_bin_type=True)


def test_restore_from_a_stream_rebuilds_the_same_state_as_from_bytes() -> None:
    data = _busy_machine().snapshot()
    stream = _Trickle(data, 1000)
    m = Machine.restore_from(stream)
    assert stream.reads > len(data) // 1000
    assert m.snapshot() == Machine.restore(data).snapshot() == data


def test_restore_from_an_empty_stream_is_the_empty_machine() -> None:
    assert Machine.restore_from(io.BytesIO(b"")).snapshot() == Machine().snapshot()


@pytest.mark.parametrize("damage", ["truncated", "trailing", "garbage"])
def test_restore_from_refuses_a_damaged_stream(damage: str) -> None:
    data = _busy_machine().snapshot()
    bad = {"truncated": data[:-7], "trailing": data + b"\x01", "garbage": b"\xc1" + data}[damage]
    with pytest.raises(ProtocolError, match="malformed snapshot"):
        Machine.restore_from(io.BytesIO(bad))
