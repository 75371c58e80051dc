"""The cluster's own records (election leaders, config schemas) live under a NUL-led prefix
no client key can have: every legal key and lock name is the client's, records are written
by the machine alone, and a snapshot from when records lived under "\\x01" loads renamed."""
from __future__ import annotations

import io
import json

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from coordsvc.core import machine as machine_module
from coordsvc.core.commands import (
    ELECTION_PREFIX,
    RESERVED_PREFIX,
    SCHEMA_PREFIX,
    Acquire,
    AcquireShared,
    Campaign,
    Cancel,
    Delete,
    ExpireSession,
    Fence,
    OpenAndAcquire,
    Put,
    Release,
    Request,
    SchemaSet,
    Txn,
    name_error,
    under,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ResultCode
from coordsvc.core.types import ProtocolError

from .test_machine import Client, internal

OK = ResultCode.OK
FLAGS = json.dumps({"type": "object", "required": ["rollout"]}).encode()


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def test_records_are_named_by_one_nul_led_prefix_that_no_client_key_can_begin_with() -> None:
    assert RESERVED_PREFIX == "\x00"
    assert ELECTION_PREFIX == RESERVED_PREFIX + "election/"
    assert SCHEMA_PREFIX == RESERVED_PREFIX + "schema/"
    assert name_error("key", ELECTION_PREFIX + "x") is not None
    assert name_error("key", ELECTION_PREFIX + "x", records=True) is None
    for bad in ("\x00", "\x00\x00x", "\x00a\x00", "a\x00", "\x00" + "k" * 512):
        assert name_error("key", bad, records=True) is not None, repr(bad)


def test_every_write_form_takes_keys_and_names_beginning_with_x01(c: Client) -> None:
    sid = c.session()
    assert c.do(Put("\x01k", b"1")).code == OK
    assert c.do(Put("\x01leased", b"1", lease=sid)).code == OK
    assert c.m.lease_keys(sid) == ["\x01leased"]
    lock = c.do(Acquire("\x01lock", sid, False))
    assert lock.code == OK
    fence = Fence("\x01lock", lock.data["token"])  # type: ignore[arg-type]
    assert c.do(Put("\x01k", b"2", if_revision=1, fence=fence)).code == OK
    txn = c.do(Txn(compare=(("\x01k", 3),), success=(Put("\x01t", b"1"), Delete("\x01leased")),
                   fence=fence))
    assert txn.code == OK and txn.data["succeeded"] is True
    assert c.do(Delete("\x01t", fence=fence)).code == OK
    assert c.do(Release("\x01lock", sid, fence.token)).code == OK
    assert c.do(OpenAndAcquire("\x01own", 5_000, False)).code == OK
    assert c.do(AcquireShared("\x01sem", sid, "semaphore", 2, False)).code == OK
    assert c.do(AcquireShared("\x01rw", sid, "read", 0, False)).code == OK
    assert c.do(Cancel("\x01sem", sid)).code == OK
    assert c.do(Campaign("\x01el", sid, b"me")).code == OK
    assert c.do(SchemaSet("\x01p/", FLAGS)).code == OK
    assert c.do(Put("\x01p/x", b"{}")).code == ResultCode.INVALID     # the schema holds
    assert {lk.name for lk in c.m.locks()} == {"\x01own", "\x01rw", ELECTION_PREFIX + "\x01el"}
    assert c.m.get(ELECTION_PREFIX + "\x01el") is not None
    assert c.m.get(SCHEMA_PREFIX + "\x01p/") is not None
    assert c.m.get("\x01k").value == b"2"  # type: ignore[union-attr]


def test_no_client_write_names_a_record(c: Client) -> None:
    sid = c.session()
    c.do(SchemaSet("app/", FLAGS))
    c.do(Campaign("sched", sid, b"me"))
    rec, schema = ELECTION_PREFIX + "sched", SCHEMA_PREFIX + "app/"
    for cmd in (Put(rec, b"1\nforged"), Put(schema, b"{}", lease=sid), Delete(schema),
                Txn(success=(Put(rec, b"x"),)), Txn(failure=(Delete(schema),)),
                Acquire(rec, sid, False), OpenAndAcquire(rec, 5_000, False),
                AcquireShared(rec, sid, "semaphore", 1, False), Campaign(rec, sid, b""),
                SchemaSet(RESERVED_PREFIX + "app/", FLAGS), Acquire("a\x00b", sid, False)):
        assert c.do(cmd).code == ResultCode.INVALID, cmd
    assert c.m.get(rec).value.endswith(b"\nme")  # type: ignore[union-attr]
    assert c.m.get(schema).value == FLAGS  # type: ignore[union-attr]


def test_a_candidate_resigns_and_fences_by_its_elections_lock(c: Client) -> None:
    a, b = c.session(), c.session()
    name = ELECTION_PREFIX + "sched"
    token = c.do(Campaign("sched", a, b"A")).data["token"]
    assert c.do(Campaign("sched", b, b"B")).code == ResultCode.QUEUED
    assert c.do(Put("jobs/out", b"1", fence=Fence(name, token))).code == OK  # type: ignore[arg-type]
    assert c.do(Release(name, a, token)).code == OK  # type: ignore[arg-type]
    assert c.m.get(name).value.endswith(b"\nB")  # type: ignore[union-attr]
    assert c.do(Put("jobs/out", b"2", fence=Fence(name, token))).code == ResultCode.FENCE_REJECTED  # type: ignore[arg-type]
    assert c.do(Cancel(name, b)).code == OK
    assert c.m.get(name) is None


def test_a_client_lists_and_watches_records_only_by_a_prefix_of_records(c: Client) -> None:
    sid = c.session()
    c.do(Put("\x01a", b"1"))
    c.do(Campaign("sched", sid, b"me"))
    c.do(SchemaSet("app/", FLAGS))
    c.do(Put("z", b"1"))
    assert [kv.key for kv in c.m.scan("", hide_records=True)] == ["\x01a", "z"]
    assert [kv.key for kv in c.m.scan("", ELECTION_PREFIX, hide_records=True)] == ["\x01a", "z"]
    assert [kv.key for kv in c.m.scan(ELECTION_PREFIX, hide_records=True)] == [ELECTION_PREFIX + "sched"]
    assert len(c.m.list("")) == 4     # the machine's own view holds everything
    assert [e.key for e in c.m.events_since("", 0, 100, hide_records=True)] == ["\x01a", "z"]
    both = ("", SCHEMA_PREFIX)
    assert [e.key for e in c.m.events_since(both, 0, 100, hide_records=True)] == [
        "\x01a", SCHEMA_PREFIX + "app/", "z"]
    assert [e.key for e in c.m.events_since(SCHEMA_PREFIX, 0, 100, hide_records=True)] == [
        SCHEMA_PREFIX + "app/"]
    assert under("\x01a", "") and not under(ELECTION_PREFIX + "x", "")
    assert under(ELECTION_PREFIX + "x", ELECTION_PREFIX) and not under("\x01a", ELECTION_PREFIX)


# -- snapshots from before the move ----------------------------------------------------------

V1_ELECTION, V1_SCHEMA = "\x01election/", "\x01schema/"


def _busy(c: Client) -> tuple[int, int]:
    """Elections with a leader and a waiting candidate, a leadership change (the record's
    history), a schema, an ephemeral key, and ordinary keys around them."""
    a, b, d = c.session(), c.session(), c.session()
    c.do(Put("app/plain", b"x"))
    c.do(SchemaSet("cfg/", FLAGS))
    c.do(Campaign("sched", a, b"A"))
    c.do(Campaign("sched", b, b"B"))
    c.do(Campaign("sched", d, b"D"))
    c.do(Campaign("other", d, b"D"))
    internal(c.m, ExpireSession(a))        # B leads now: the record has two versions
    c.do(Put("svc/eph", b"1", lease=b))
    c.do(Put("cfg/flags", b'{"rollout": 1}'))
    return b, d


def _v1_snapshot(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``_busy``'s state as the code before the move wrote it: records under "\\x01"."""
    with monkeypatch.context() as mp:
        mp.setattr(machine_module, "ELECTION_PREFIX", V1_ELECTION)
        mp.setattr(machine_module, "SCHEMA_PREFIX", V1_SCHEMA)
        mp.setattr(machine_module, "_SNAPSHOT_VERSION", 1)
        old = Client(Machine())
        _busy(old)
        data = old.m.snapshot()
    st = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert st["v"] == 1 and not any(RESERVED_PREFIX in row[0] for row in st["kv"])
    assert {row[0] for row in st["kv"]} >= {V1_ELECTION + "sched", V1_SCHEMA + "cfg/"}
    return data


def test_a_version_1_snapshot_loads_with_its_records_under_the_new_prefix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    restored = Machine.restore(_v1_snapshot(monkeypatch))
    now = Client(Machine())
    b, d = _busy(now)
    # Keys, histories, the event window, ephemeral keys, locks and candidates: all renamed,
    # and nothing else differs from the same commands applied under the new names.
    assert restored.snapshot() == now.m.snapshot()
    assert not any(kv.key.startswith("\x01") for kv in restored.list(""))
    assert [e.value.partition(b"\n")[2] for e in restored.history(ELECTION_PREFIX + "sched")] == [
        b"A", b"B"]
    # The restored machine goes on: the schema is in force, the queue passes leadership on.
    assert restored.apply(99, Request("late", 1, 1, Put("cfg/flags", b"[]"))).code == ResultCode.INVALID
    internal(restored, ExpireSession(b), 100)
    assert restored.get(ELECTION_PREFIX + "sched").value.endswith(b"\nD")  # type: ignore[union-attr]
    assert restored.lock_owner(ELECTION_PREFIX + "sched") == (d, restored.next_token - 1)
    assert restored.lock_owner(V1_ELECTION + "sched") is None


def test_a_version_1_snapshot_streamed_in_pieces_loads_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _v1_snapshot(monkeypatch)
    streamed = Machine.restore_from(io.BytesIO(data))
    assert streamed.snapshot() == Machine.restore(data).snapshot()
    assert streamed.get(SCHEMA_PREFIX + "cfg/") is not None and streamed.get(V1_SCHEMA + "cfg/") is None


def test_client_keys_under_x01_in_a_current_snapshot_stay_client_keys(c: Client) -> None:
    sid = c.session()
    c.do(Put(V1_ELECTION + "sched", b"mine"))
    c.do(Put(V1_SCHEMA + "cfg/", b"not a schema"))
    c.do(Acquire(V1_ELECTION + "sched", sid, False))
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot()
    assert r.get(V1_ELECTION + "sched").value == b"mine"  # type: ignore[union-attr]
    assert r.get(ELECTION_PREFIX + "sched") is None and r.lock_owner(V1_ELECTION + "sched") is not None


def test_an_unknown_snapshot_version_is_refused() -> None:
    data = msgpack.packb({"v": 3}, use_bin_type=True)
    with pytest.raises(ProtocolError, match="version"):
        Machine.restore(data)
