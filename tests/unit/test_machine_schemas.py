"""Config schemas in the machine: checked when a put is applied, the same on every replica."""
from __future__ import annotations

import json

import pytest

from coordsvc.core.acl import Rights, command_refusal
from coordsvc.core.commands import (
    SCHEMA_PREFIX,
    Delete,
    Put,
    Request,
    SchemaDelete,
    SchemaSet,
    Txn,
    decode_request,
    encode_request,
)
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ResultCode

from .test_machine import Client

FLAGS = json.dumps({"type": "object", "properties": {"rollout": {"type": "integer", "minimum": 0,
                    "maximum": 100}}, "required": ["rollout"]}).encode()


@pytest.fixture
def c() -> Client:
    return Client(Machine())


def test_puts_under_a_schema_must_validate_and_the_refusal_names_the_path(c: Client) -> None:
    assert c.do(SchemaSet("app/flags/", FLAGS)).code == ResultCode.OK
    assert c.do(Put("app/flags/a", b'{"rollout": 10}')).code == ResultCode.OK
    r = c.do(Put("app/flags/a", b'{"rollout": 101}'))
    assert r.code == ResultCode.INVALID and "$.rollout" in str(r.data["message"])
    assert "app/flags/" in str(r.data["message"])
    assert c.do(Put("app/flags/b", b"not json")).code == ResultCode.INVALID
    assert c.do(Put("app/other", b"anything")).code == ResultCode.OK
    kv = c.m.get("app/flags/a")
    assert kv is not None and kv.value == b'{"rollout": 10}'


def test_a_txn_is_refused_whole_when_a_put_of_its_branch_does_not_validate(c: Client) -> None:
    c.do(SchemaSet("app/flags/", FLAGS))
    rev = c.m.revision
    r = c.do(Txn(success=(Put("app/x", b"1"), Put("app/flags/a", b'{"rollout": "x"}'))))
    assert r.code == ResultCode.INVALID and c.m.revision == rev and c.m.get("app/x") is None
    # the branch not taken is not checked
    r = c.do(Txn(compare=(("app/x", 5),), success=(Put("app/flags/a", b"bad"),),
                 failure=(Put("app/x", b"1"),)))
    assert r.code == ResultCode.OK and r.data["succeeded"] is False


def test_nested_schemas_all_apply(c: Client) -> None:
    c.do(SchemaSet("app/", json.dumps({"type": "object"}).encode()))
    c.do(SchemaSet("app/flags/", FLAGS))
    assert c.do(Put("app/x", b"[1]")).code == ResultCode.INVALID
    assert c.do(Put("app/flags/y", b"{}")).code == ResultCode.INVALID
    assert c.do(Put("app/flags/y", b'{"rollout": 1}')).code == ResultCode.OK


def test_a_schema_is_a_reserved_key_readable_and_watchable_but_not_writable(c: Client) -> None:
    c.do(SchemaSet("app/", FLAGS))
    kv = c.m.get(SCHEMA_PREFIX + "app/")
    assert kv is not None and kv.value == FLAGS
    assert c.do(Put(SCHEMA_PREFIX + "app/", b"{}")).code == ResultCode.INVALID
    assert c.do(Delete(SCHEMA_PREFIX + "app/")).code == ResultCode.INVALID
    assert c.do(SchemaDelete("app/")).data["deleted"] is True
    assert c.do(Put("app/x", b"free again")).code == ResultCode.OK
    assert c.do(SchemaDelete("app/")).data == {"deleted": False}


@pytest.mark.parametrize("schema", [b"{", b'{"type": 5}', b"[1]", b'{"$schema": "urn:nope"}'])
def test_a_bad_schema_is_refused_and_changes_nothing(c: Client, schema: bytes) -> None:
    r = c.do(SchemaSet("app/", schema))
    assert r.code == ResultCode.INVALID and c.m.revision == 0


def test_a_remote_ref_is_never_fetched_and_refuses_deterministically(c: Client) -> None:
    c.do(SchemaSet("app/", b'{"$ref": "http://127.0.0.1:9/never"}'))
    r = c.do(Put("app/x", b"1"))
    assert r.code == ResultCode.INVALID and "cannot be applied" in str(r.data["message"])


def test_schemas_come_back_with_a_snapshot(c: Client) -> None:
    c.do(SchemaSet("app/flags/", FLAGS))
    r = Machine.restore(c.m.snapshot())
    assert r.snapshot() == c.m.snapshot()
    assert r.apply(9, Request("c1", 99, 99, Put("app/flags/a", b"{}"))).code == ResultCode.INVALID


def test_only_who_may_write_the_whole_prefix_may_set_its_schema() -> None:
    r = Rights(write=("app/",), read=("ro/",))
    assert command_refusal(r, SchemaSet("app/flags/", FLAGS)) is None
    assert command_refusal(r, SchemaSet("ap", FLAGS)) is not None
    assert command_refusal(r, SchemaDelete("ro/")) is not None
    assert r.may_read(SCHEMA_PREFIX + "app/x") and r.may_read(SCHEMA_PREFIX + "ro/")
    assert not r.may_read(SCHEMA_PREFIX + "other/")


def test_schema_commands_round_trip() -> None:
    for cmd in (SchemaSet("p/", FLAGS), SchemaDelete("p/")):
        req = Request("c", 1, 1, cmd)
        assert decode_request(encode_request(req)) == req
