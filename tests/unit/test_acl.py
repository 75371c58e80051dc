"""The rights model (CONTRACT §7) as pure functions: what each kind of principal may send."""
from __future__ import annotations

import pytest

from coordsvc.core.acl import (
    ADMIN_RIGHTS,
    MEMBER_RIGHTS,
    Rights,
    command_refusal,
    may_subscribe,
    request_refusal,
)
from coordsvc.core.commands import (
    Acquire,
    AuthAdd,
    AuthRemove,
    Cancel,
    CloseSession,
    Command,
    Delete,
    ExpireSession,
    Noop,
    OpenAndAcquire,
    OpenSession,
    Put,
    Release,
    Request,
)
from coordsvc.core.protocol import (
    AuthListRequest,
    ClientRequest,
    GetRequest,
    HistoryRequest,
    KeepaliveRequest,
    ListRequest,
    LocksRequest,
    LockWaitRequest,
    RevisionRequest,
    StatusRequest,
    WatchRequest,
    WriteRequest,
)

READER = Rights(read=("app/",))
WRITER = Rights(write=("app/",))
LOCKER = Rights(lock=("jobs/",))
NOTHING = Rights()
KEY = "A" * 40


def write(cmd: Command) -> WriteRequest:
    return WriteRequest.of(Request("c", 1, 1, cmd))


def test_write_implies_read_of_the_same_prefix_and_nothing_else() -> None:
    assert WRITER.may_read("app/x") and WRITER.may_write("app/x")
    assert not WRITER.may_read("other/x") and not WRITER.may_write("other/x")
    assert READER.may_read("app/x") and not READER.may_write("app/x")


def test_a_lock_right_covers_lock_names_by_prefix_and_no_keys() -> None:
    assert LOCKER.may_lock("jobs/nightly") and not LOCKER.may_lock("deploy")
    assert not LOCKER.may_read("jobs/nightly") and not LOCKER.may_write("jobs/nightly")
    assert not WRITER.may_lock("app/x") and not READER.may_lock("app/x")


def test_admin_may_do_everything_and_a_member_only_ask_for_status() -> None:
    assert ADMIN_RIGHTS.may_read("x") and ADMIN_RIGHTS.may_write("x") and ADMIN_RIGHTS.may_lock("x")
    assert request_refusal(MEMBER_RIGHTS, StatusRequest()) is None
    for req in (GetRequest("k"), RevisionRequest(), LocksRequest(), write(Noop())):
        assert request_refusal(MEMBER_RIGHTS, req) == "a member's key may only ask for status"
        assert request_refusal(ADMIN_RIGHTS, req) is None


def test_the_empty_prefix_is_every_key() -> None:
    everything = Rights(read=("",))
    assert everything.may_read("anything") and everything.reads_all_under("")
    assert not everything.may_write("anything")


@pytest.mark.parametrize(("prefix", "some", "all_"), [
    ("app/", True, True), ("app/x/", True, True), ("ap", True, False), ("", True, False),
    ("other/", False, False), ("app", True, False), ("b", False, False)])
def test_a_prefix_is_readable_in_part_whole_or_not_at_all(prefix: str, some: bool, all_: bool) -> None:
    assert READER.reads_some_under(prefix) is some
    assert READER.reads_all_under(prefix) is all_


# Each op for each kind of principal: None (allowed) or a piece of the refusal.
MATRIX: list[tuple[str, ClientRequest, dict[str, str | None]]] = [
    ("get", GetRequest("app/k"), {"reader": None, "writer": None, "locker": "read", "nothing": "read"}),
    ("get other", GetRequest("b/k"), {"reader": "read", "writer": "read", "locker": "read", "nothing": "read"}),
    ("history", HistoryRequest("app/k"), {"reader": None, "writer": None, "locker": "read", "nothing": "read"}),
    ("list", ListRequest("app/"), {"reader": None, "writer": None, "locker": "read", "nothing": "read"}),
    ("list all", ListRequest(""), {"reader": None, "writer": None, "locker": "read", "nothing": "read"}),
    ("watch", WatchRequest(0, "app/"), {"reader": None, "writer": None, "locker": "read", "nothing": "read"}),
    ("watch any bad", WatchRequest(0, prefixes=("app/", "b/")),
     {"reader": "'b/'", "writer": "'b/'", "locker": "read", "nothing": "read"}),
    ("put", write(Put("app/k", b"v")), {"reader": "write", "writer": None, "locker": "write", "nothing": "write"}),
    ("delete", write(Delete("app/k")), {"reader": "write", "writer": None, "locker": "write", "nothing": "write"}),
    ("cas", write(Put("app/k", b"v", if_revision=3)),
     {"reader": "write", "writer": None, "locker": "write", "nothing": "write"}),
    ("lock", write(OpenAndAcquire("jobs/a", 5000, True)),
     {"reader": "lock", "writer": "lock", "locker": None, "nothing": "lock"}),
    ("lock other", write(OpenAndAcquire("deploy", 5000, True)),
     {"reader": "lock", "writer": "lock", "locker": "lock", "nothing": "lock"}),
    ("release", write(Release("jobs/a", 1, 1)), {"reader": "lock", "writer": "lock", "locker": None, "nothing": "lock"}),
    ("cancel", write(Cancel("jobs/a", 1)), {"reader": "lock", "writer": "lock", "locker": None, "nothing": "lock"}),
    ("acquire", write(Acquire("jobs/a", 1, True)), {"reader": "lock", "writer": "lock", "locker": None, "nothing": "lock"}),
    ("open", write(OpenSession(5000)), {"reader": "lock", "writer": None, "locker": None, "nothing": "lock"}),
    ("close", write(CloseSession(1)), {"reader": "lock", "writer": None, "locker": None, "nothing": "lock"}),
    ("lock_wait", LockWaitRequest("jobs/a", 1), {"reader": "lock", "writer": "lock", "locker": None, "nothing": "lock"}),
    ("keepalive", KeepaliveRequest(1), {"reader": "lock", "writer": None, "locker": None, "nothing": "lock"}),
    ("locks", LocksRequest(), {"reader": "lock", "writer": "lock", "locker": None, "nothing": "lock"}),
    ("status", StatusRequest(), {"reader": None, "writer": None, "locker": None, "nothing": None}),
    ("revision", RevisionRequest(), {"reader": None, "writer": None, "locker": None, "nothing": None}),
    ("auth add", write(AuthAdd("bob", KEY)), {"reader": "admin", "writer": "admin", "locker": "admin", "nothing": "admin"}),
    ("auth remove", write(AuthRemove("bob")), {"reader": "admin", "writer": "admin", "locker": "admin", "nothing": "admin"}),
    ("auth list", AuthListRequest(), {"reader": "admin", "writer": "admin", "locker": "admin", "nothing": "admin"}),
    ("expire", write(ExpireSession(1)), {"reader": "admin", "writer": "admin", "locker": "admin", "nothing": "admin"}),
    ("noop", write(Noop()), {"reader": "write", "writer": None, "locker": None, "nothing": "write"}),
]
PRINCIPALS = {"reader": READER, "writer": WRITER, "locker": LOCKER, "nothing": NOTHING}


@pytest.mark.parametrize(("op", "req", "expect"), MATRIX, ids=[m[0] for m in MATRIX])
@pytest.mark.parametrize("who", sorted(PRINCIPALS))
def test_every_op_is_allowed_exactly_by_its_right(op: str, req: ClientRequest,
                                                   expect: dict[str, str | None], who: str) -> None:
    got = request_refusal(PRINCIPALS[who], req)
    if expect[who] is None:
        assert got is None, got
    else:
        assert got is not None and expect[who] in got, got
    assert request_refusal(ADMIN_RIGHTS, req) is None
    assert request_refusal(None, req) == "this key is no longer known to the cluster"


@pytest.mark.parametrize("cmd", [Put("app/k", b""), Delete("app/k"), OpenAndAcquire("jobs/a", 5000, False),
                                 Release("jobs/a", 1, 1), AuthAdd("bob", KEY), AuthRemove("bob")],
                         ids=lambda c: type(c).__name__)
def test_the_machine_applies_the_same_rights_to_commands_as_the_leader(cmd: Command) -> None:
    for rights in PRINCIPALS.values():
        assert command_refusal(rights, cmd) == request_refusal(rights, write(cmd))
    assert command_refusal(None, cmd) is not None and command_refusal(ADMIN_RIGHTS, cmd) is None


def test_only_members_and_admins_may_subscribe_to_the_stream_of_values() -> None:
    assert may_subscribe(MEMBER_RIGHTS) and may_subscribe(ADMIN_RIGHTS)
    assert not any(may_subscribe(r) for r in (READER, WRITER, LOCKER, NOTHING, None))
