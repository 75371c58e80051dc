"""Backups on the leader (core/export.py): a save pins a point, serves it, and nothing else."""
from __future__ import annotations

import hashlib
import random
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from coordsvc.core.commands import Acquire, Delete, OpenSession, Put, Request, encode_request
from coordsvc.core.export import (
    EXPORT_IDLE_MS,
    MAX_EXPORTS,
    MAX_RECORD_BYTES,
    BodyDecoder,
    Export,
    ExportPoint,
    apply_value,
    record_bytes,
)
from coordsvc.core.machine import Machine
from coordsvc.core.types import MAX_COMMAND_BYTES, Config, ProtocolError, Snapshot, UsageError

from .test_service_parts import CFG, Solo

SMALL = Config(heartbeat_ms=10, election_timeout_ms=50, snapshot_every=20)


def drain(solo: Solo, reply: dict[str, Any]) -> bytes:
    """Every chunk of the save that ``reply`` opened, asked for in order."""
    body = bytearray()
    while True:
        chunk = solo.ask({"op": "snapshot_chunk", "export_id": reply["export_id"], "offset": len(body)})
        assert chunk["ok"], chunk
        assert chunk["offset"] == len(body)
        body += chunk["data"]
        if chunk["done"]:
            assert chunk["sha256"] == hashlib.sha256(body).digest()
            assert len(body) == reply["body_bytes"]
            return bytes(body)


def rebuild(reply: dict[str, Any], body: bytes) -> Machine:
    m = Machine.restore(body[:reply["snapshot_bytes"]])
    dec = BodyDecoder(reply["snapshot_index"] + 1, reply["entries"])
    for slot, value in dec.feed(body[reply["snapshot_bytes"]:]):
        apply_value(m, slot, value)
    dec.finish()
    return m


def fill(solo: Solo, n: int, prefix: str = "k") -> None:
    for i in range(n):
        solo.write(Put(f"{prefix}{i % 7}", f"v{i}".encode()))
        if i % 5 == 0:
            solo.write(Delete(f"{prefix}{(i + 3) % 7}"))


def test_a_save_rebuilds_exactly_the_state_the_leader_had_at_its_read_point() -> None:
    solo = Solo(config=SMALL)
    fill(solo, 60)
    sid = solo.write(OpenSession(10_000))["result"][2]["session_id"]
    solo.write(Acquire("deploy", sid, False))
    reply = solo.ask({"op": "snapshot_save"})
    assert reply["ok"], reply
    live = solo.svc.machine.snapshot()
    # The save spans a compaction and more writes: it still serves the pinned point.
    fill(solo, 60, prefix="later")
    assert solo.svc.replica.status().snapshot_index > reply["index"]
    body = drain(solo, reply)
    assert reply["snapshot_index"] > 0 and reply["entries"] > 0, reply
    m = rebuild(reply, body)
    assert m.snapshot() == live
    assert (m.revision, m.key_count) == (reply["revision"], reply["keys"])
    assert m.lock_owner("deploy") == (sid, 1)


def test_chunks_are_served_in_order_and_the_last_one_may_be_asked_again() -> None:
    point = ExportPoint(3, 0, 0, Snapshot(1, b"s" * 10),
                        ((2, (b"a", b"bc")), (3, ())))
    ex = Export(1, point, now_ms=0, chunk_bytes=7)
    body = b"s" * 10 + b"".join([
        (2).to_bytes(8, "big"), (2).to_bytes(4, "big"), (1).to_bytes(4, "big"), b"a",
        (2).to_bytes(4, "big"), b"bc", (3).to_bytes(8, "big"), (0).to_bytes(4, "big")])
    assert point.body_bytes == len(body) == record_bytes((b"a", b"bc")) + record_bytes(()) + 10
    first = ex.chunk(0, 1)
    assert first is not None and first.data == body[:7] and not first.done
    assert ex.chunk(0, 2) == first            # a retry after a lost reply
    assert ex.chunk(14, 3) is None            # a gap: refused
    got = bytearray(first.data)
    while True:
        c = ex.chunk(len(got), 4)
        assert c is not None
        got += c.data
        if c.done:
            break
    assert bytes(got) == body
    assert c.sha256 == hashlib.sha256(body).digest()
    assert ex.chunk(len(got), 5) is None      # nothing after the end
    assert ex.chunk(c.offset, 6) == c         # but the last chunk again


def test_export_points_must_cover_the_slots_after_their_snapshot() -> None:
    with pytest.raises(UsageError):
        ExportPoint(3, 0, 0, Snapshot(1, b""), ((3, ()),))
    with pytest.raises(UsageError):
        ExportPoint(4, 0, 0, Snapshot(1, b""), ((2, ()), (3, ())))
    empty = Export(1, ExportPoint(0, 0, 0, Snapshot(0, b""), ()), 0)
    c = empty.chunk(0, 0)
    assert c is not None and c.done and c.data == b"" and c.sha256 == hashlib.sha256().digest()


def test_saves_past_the_bound_are_busy_and_an_idle_save_is_forgotten() -> None:
    solo = Solo()
    solo.write(Put("k", b"v"))
    replies = [solo.ask({"op": "snapshot_save"}) for _ in range(MAX_EXPORTS + 1)]
    assert all(r["ok"] for r in replies[:MAX_EXPORTS])
    assert replies[-1]["error"] == "busy"
    solo.advance(EXPORT_IDLE_MS + 1)
    gone = solo.ask({"op": "snapshot_chunk", "export_id": replies[0]["export_id"], "offset": 0})
    assert gone["error"] == "snapshot_gone" and "start the save again" in gone["message"]
    again = solo.ask({"op": "snapshot_save"})
    assert again["ok"] and rebuild(again, drain(solo, again)).get("k") is not None


def test_a_follower_sends_a_save_to_the_leader_and_has_no_saves_to_serve() -> None:
    solo = Solo(members=("n1", "n2", "n3"), config=CFG)
    assert solo.ask({"op": "snapshot_save"})["error"] == "not_leader"
    assert solo.ask({"op": "snapshot_chunk", "export_id": 1, "offset": 0})["error"] == "snapshot_gone"


def test_replay_skips_what_does_not_decode_as_every_replica_does() -> None:
    m = Machine()
    good = encode_request(Request("c", 1, 1, Put("k", b"v")))
    apply_value(m, 1, (b"\xc1 not a request", good))
    assert m.get("k") is not None and m.revision == 1


def _records(entries: list[tuple[int, tuple[bytes, ...]]]) -> bytes:
    point = ExportPoint(entries[-1][0], 0, 0, Snapshot(entries[0][0] - 1, b""), tuple(entries))
    ex = Export(1, point, 0)
    c = ex.chunk(0, 0)
    assert c is not None and c.done
    return c.data


def test_records_decode_the_same_whatever_pieces_they_arrive_in() -> None:
    rng = random.Random(7)
    print("seed 7")
    entries = [(s, tuple(rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 4))))
               for s in range(5, 25)]
    body = _records(entries)
    dec = BodyDecoder(5, len(entries))
    got = []
    i = 0
    while i < len(body):
        n = rng.randrange(1, 9)
        got += dec.feed(body[i:i + n])
        i += n
    dec.finish()
    assert got == entries


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b[:-1], "ends inside"),
    (lambda b: b + b"\x00", "after the last record"),
    (lambda b: (9).to_bytes(8, "big") + b[8:], "slot 9 where slot 5"),
    (lambda b: b[:8] + (70_000).to_bytes(4, "big") + b[12:], "claims 70000 commands"),
    (lambda b: b[:12] + (MAX_COMMAND_BYTES + 1).to_bytes(4, "big") + b[16:], "claims"),
])
def test_a_damaged_record_is_a_protocol_error_saying_why(mutate: Any, why: str) -> None:
    body = mutate(_records([(5, (b"abc",)), (6, ())]))
    dec = BodyDecoder(5, 2)
    with pytest.raises(ProtocolError, match=why):
        dec.feed(body)
        dec.finish()


def test_a_record_beyond_the_largest_log_value_is_refused_before_it_is_buffered() -> None:
    dec = BodyDecoder(1, 1)
    head = (1).to_bytes(8, "big") + (64).to_bytes(4, "big")
    one = MAX_COMMAND_BYTES.to_bytes(4, "big") + bytes(MAX_COMMAND_BYTES)
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.feed(head + one * (MAX_RECORD_BYTES // MAX_COMMAND_BYTES + 1))


def test_a_machine_snapshot_is_plain_msgpack_the_restorer_can_read() -> None:
    # The body's first part is exactly Machine.snapshot(): a restored node reads it as is.
    m = Machine()
    m.apply(1, Request("c", 1, 1, Put("k", b"v")))
    assert msgpack.unpackb(m.snapshot())["rev"] == 1
