"""Rights and ownership as a ``Client`` meets them, against an in-process secure node: one
client per principal, each refusal a ``PermissionDenied`` that changed nothing."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from coordsvc.client import Client, LockTimeout, PermissionDenied, Principal
from coordsvc.client.errors import CoordError, InvalidRequest
from coordsvc.core.identity import Identities
from coordsvc.keys import KeyPair

from .inproc import LocalNode, LocalTransport

EP = "tcp://127.0.0.1:1"
ALICE, BOB = KeyPair.generate().public, KeyPair.generate().public
SECURE = Identities(secure=True, members={"n1": KeyPair.generate().public},
                    admin_key=KeyPair.generate().public)


@pytest.fixture
def node() -> Iterator[LocalNode]:
    n = LocalNode(identities=SECURE)
    yield n
    n.stop()


def as_(node: LocalNode, principal: str) -> Client:
    return Client([EP], timeout=2.0, transport=LocalTransport({EP: node}, principal))


@pytest.fixture
def admin(node: LocalNode) -> Iterator[Client]:
    c = as_(node, "admin")
    c.auth_add("alice", ALICE, read=["app/"], lock=["jobs/"])
    c.auth_add("bob", BOB, write=["app/"], lock=["jobs/"])
    yield c
    c.close()


def test_auth_add_list_and_remove_through_the_client(admin: Client) -> None:
    assert admin.auth_list() == [
        Principal("admin", SECURE.admin_key, (), (), (), True),
        Principal("alice", ALICE, ("app/",), (), ("jobs/",), False),
        Principal("bob", BOB, (), ("app/",), ("jobs/",), False)]
    with pytest.raises(CoordError, match="exists"):
        admin.auth_add("alice", KeyPair.generate().public)
    with pytest.raises(InvalidRequest, match="CURVE public key"):
        admin.auth_add("carol", "not a key")
    with pytest.raises(InvalidRequest, match="list of key prefixes"):
        admin.auth_add("carol", KeyPair.generate().public, read="app/")  # type: ignore[arg-type]
    admin.auth_remove("bob")
    assert [p.name for p in admin.auth_list()] == ["admin", "alice"]
    with pytest.raises(CoordError, match="no principal"):
        admin.auth_remove("bob")


def test_a_write_outside_the_rights_raises_permission_denied_and_writes_nothing(
        node: LocalNode, admin: Client) -> None:
    admin.put("app/k", "1")
    with as_(node, "alice") as alice:
        assert alice.get("app/k").value == b"1"  # type: ignore[union-attr]
        with pytest.raises(PermissionDenied, match="no right to write 'app/k'"):
            alice.put("app/k", "2")
        with pytest.raises(PermissionDenied, match="admin"):
            alice.auth_list()
        with pytest.raises(PermissionDenied):
            alice.auth_add("mallory", KeyPair.generate().public, admin=True)
        assert alice.revision() == 1       # any key may ask the revision
    assert admin.get("app/k").value == b"1" and admin.revision() == 1  # type: ignore[union-attr]
    assert [p.name for p in admin.auth_list()] == ["admin", "alice", "bob"]


def test_a_watch_on_a_prefix_the_key_cannot_read_is_refused_at_once(node: LocalNode,
                                                                     admin: Client) -> None:
    with as_(node, "alice") as alice:
        with pytest.raises(PermissionDenied):
            alice.watch("secret/")
        w = alice.watch("")            # everything it may read, and only that
        admin.put("secret/x", "1")
        admin.put("app/x", "2")
        ev = w.next(2.0)
        assert ev is not None and ev.key == "app/x"


def test_another_identitys_lock_cannot_be_released_and_the_holder_is_named(
        node: LocalNode, admin: Client) -> None:
    with as_(node, "bob") as bob, as_(node, "alice") as alice:
        lk = bob.acquire("jobs/a", ttl=5.0)
        with pytest.raises(LockTimeout):
            alice.acquire("jobs/a", ttl=5.0, timeout=0)
        (info,) = alice.locks()
        assert (info.name, info.holder, info.token) == ("jobs/a", "bob", lk.token)
        assert admin.locks()[0].holder == "bob"
        with pytest.raises(PermissionDenied):
            alice.acquire("deploy", ttl=5.0, timeout=0)
        lk.release()


def test_removing_a_key_ends_its_watches_and_loses_its_locks(node: LocalNode, admin: Client) -> None:
    with as_(node, "bob") as bob:
        lost = threading.Event()
        lk = bob.acquire("jobs/a", ttl=3.0, on_lost=lambda _: lost.set())
        w = bob.watch("app/")
        admin.auth_remove("bob")
        with pytest.raises(PermissionDenied):
            w.next(5.0)
        with pytest.raises(PermissionDenied):    # the watch has ended for good
            w.next(0.1)
        assert lost.wait(5.0) and lk.lost        # its first keepalive was refused
        with pytest.raises(PermissionDenied):
            bob.put("app/k", "x")
        with pytest.raises(PermissionDenied):   # not "no node is reachable"
            bob.status()
    assert admin.locks() == []                   # its session closed with it
