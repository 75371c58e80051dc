"""Rights and ownership on a real secure cluster, from the Python client (CONTRACT §7):
each op for each kind of right, and the issue's attacks on another identity's locks,
sessions and client id. Every refusal is a PermissionDenied that changed nothing."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordsvc import Client, LockTimeout, MembershipRefused, PermissionDenied, keys
from coordsvc.core.commands import Cancel, CloseSession, Release
from coordsvc.core.protocol import KeepaliveReply, KeepaliveRequest

from ..integration.harness import LocalCluster

RIGHTS: dict[str, dict[str, Any]] = {
    "reader": {"read": ["app/"]},
    "writer": {"write": ["app/"]},
    "locker": {"lock": ["jobs/"]},
    "nobody": {},
}


def add_key(cluster: LocalCluster, by: Client, tmp: Path, name: str, **rights: Any) -> Path:
    """What `coordctl auth add` does: a local key pair, only its public half recorded."""
    pair = keys.KeyPair.generate()
    assert cluster.key is not None
    path = tmp / f"{name}.key"
    keys.write_client_key(path, keys.ClientKey(name, pair, keys.read_client_key(cluster.key).nodes))
    by.auth_add(name, pair.public, **rights)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("acl"), election_timeout_ms=3000)
    c.start()
    try:
        c.leader(timeout=20)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


@pytest.fixture(scope="module")
def principals(cluster: LocalCluster, admin: Client, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, Client]]:
    tmp = tmp_path_factory.mktemp("keys")
    clients = {name: Client(cluster.endpoints, timeout=5.0, key=add_key(cluster, admin, tmp, name, **r))
               for name, r in RIGHTS.items()}
    clients["admin"] = admin
    yield clients
    for name, c in clients.items():
        if name != "admin":
            c.close()


def world(admin: Client) -> tuple[object, ...]:
    """Everything a refused request must leave as it was."""
    return (admin.revision(), [(e.key, e.value, e.revision) for e in admin.list("")],
            [(i.name, i.holder, i.token) for i in admin.locks()], admin.auth_list())


def _watch(c: Client) -> None:
    w = c.watch("app/", start_revision=1)
    try:
        assert w.next(5.0) is not None
    finally:
        w.close()


def _lock(c: Client) -> None:
    with c.lock("jobs/m", ttl=5.0, timeout=5.0) as lk:
        assert lk.token > 0


def _auth(c: Client) -> None:
    c.auth_add("matrix-extra", keys.KeyPair.generate().public, read=["x/"])
    c.auth_remove("matrix-extra")


def _member_change(c: Client) -> None:
    try:
        c.member_remove("not-a-member", timeout_s=5.0)
    except MembershipRefused:
        pass      # past the rights check: refused as not a member, and nothing changed


OPS: dict[str, tuple[Callable[[Client], object], set[str], bool]] = {
    # op: (call, principals allowed besides admin, whether it writes)
    "get": (lambda c: c.get("app/seed"), {"reader", "writer"}, False),
    "list": (lambda c: c.list("app/"), {"reader", "writer"}, False),
    "history": (lambda c: c.history("app/seed"), {"reader", "writer"}, False),
    "watch": (_watch, {"reader", "writer"}, False),
    "put": (lambda c: c.put("app/m", "v"), {"writer"}, True),
    "delete": (lambda c: c.delete("app/seed2"), {"writer"}, True),
    "cas": (lambda c: c.put("app/cas", "v", if_revision=0), {"writer"}, True),
    "lock": (_lock, {"locker"}, True),
    "locks": (lambda c: c.locks(), {"locker"}, False),
    "status": (lambda c: c.status(), {"reader", "writer", "locker", "nobody"}, False),
    "auth": (_auth, set(), True),
    "members": (lambda c: c.members(), {"reader", "writer", "locker", "nobody"}, False),
    "member_change": (_member_change, set(), False),
    # a backup holds every value and every principal: admin only
    "snapshot_save": (lambda c: c.snapshot_save(Path(tempfile.mkdtemp()) / "b.snap"), set(), False),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("who", sorted(RIGHTS))
def test_each_op_from_the_client_is_allowed_exactly_by_its_right(
        principals: dict[str, Client], op: str, who: str) -> None:
    admin = principals["admin"]
    admin.put("app/seed", "s")
    admin.put("app/seed2", "s")
    admin.delete("app/cas")
    call, allowed, _ = OPS[op]
    if who in allowed:
        call(principals[who])
        return
    before = world(admin)
    with pytest.raises(PermissionDenied):
        call(principals[who])
    assert world(admin) == before


@pytest.mark.parametrize("op", sorted(OPS))
def test_an_admin_may_do_everything(principals: dict[str, Client], op: str) -> None:
    admin = principals["admin"]
    admin.put("app/seed", "s")
    admin.put("app/seed2", "s")
    admin.delete("app/cas")
    OPS[op][0](admin)


def test_list_and_watch_return_only_readable_keys(principals: dict[str, Client]) -> None:
    admin, reader = principals["admin"], principals["reader"]
    rev = admin.put("secret/pw", "hunter2")
    admin.put("app/visible", "ok")
    assert all(e.key.startswith("app/") for e in reader.list(""))
    assert "app/visible" in [e.key for e in reader.list("")]
    w = reader.watch("", start_revision=rev)
    ev = w.next(5.0)
    w.close()
    assert ev is not None and ev.key == "app/visible"
    with pytest.raises(PermissionDenied):
        reader.list("secret/")
    with pytest.raises(PermissionDenied):
        reader.watch("secret/")


def test_status_is_any_keys_and_lock_list_names_holders(principals: dict[str, Client]) -> None:
    nobody, locker, admin = principals["nobody"], principals["locker"], principals["admin"]
    assert nobody.status()["cluster"]["quorum"] is True
    with locker.lock("jobs/named", ttl=5.0) as lk:
        (info,) = [i for i in admin.locks() if i.name == "jobs/named"]
        assert (info.holder, info.token) == ("locker", lk.token)
        assert [i.name for i in locker.locks()] == ["jobs/named"]


# -- ownership: the attacks with a valid key of its own -------------------------------

@pytest.fixture
def pair(cluster: LocalCluster, admin: Client, tmp_path: Path) -> Iterator[tuple[Client, Client]]:
    """Victim and attacker: two identities with the same rights."""
    suffix = str(time.monotonic_ns())[-8:]
    made = []
    for role in ("victim", "mallory"):
        path = add_key(cluster, admin, tmp_path, f"{role}-{suffix}", write=["own/"], lock=["own/"])
        made.append(Client(cluster.endpoints, timeout=5.0, key=path))
    yield made[0], made[1]
    for c in made:
        c.close()


def test_another_identity_cannot_release_cancel_close_or_keep_alive_a_lock(
        admin: Client, pair: tuple[Client, Client]) -> None:
    victim, mallory = pair
    lk = victim.acquire("own/lock", ttl=5.0)
    (info,) = [i for i in mallory.locks() if i.name == "own/lock"]
    assert info.holder != mallory._transport.credentials.name  # type: ignore[attr-defined]
    before = world(admin)
    for cmd in (Release("own/lock", info.holder_session, info.token),
                Cancel("own/lock", info.holder_session), CloseSession(info.holder_session)):
        res = mallory._write(cmd)
        assert res.code == "permission_denied", res
    with pytest.raises(PermissionDenied):
        mallory._call(KeepaliveRequest(info.holder_session), KeepaliveReply.from_wire, leader=True)
    with pytest.raises(LockTimeout):
        mallory.acquire("own/lock", ttl=5.0, timeout=0)
    assert world(admin) == before and lk.held
    lk.release()


def test_claiming_another_identitys_client_id_is_refused_and_the_victims_writes_apply_once(
        admin: Client, pair: tuple[Client, Client]) -> None:
    victim, mallory = pair
    victim.put("own/k", "1")
    mallory.client_id = victim.client_id    # mallory learned it somehow
    before = world(admin)
    for _ in range(3):        # seqs 1..3: the victim's next one among them
        with pytest.raises(PermissionDenied, match="belongs to another"):
            mallory.put("own/k", "evil")
    assert world(admin) == before
    rev = victim.put("own/k", "2")
    assert admin.get("own/k").value == b"2"  # type: ignore[union-attr]
    assert [e.revision for e in admin.history("own/k")][-1] == rev
    assert victim.put("own/k", "3") == rev + 1      # exactly once: one revision per put


def test_an_admin_may_release_anothers_lock(admin: Client, pair: tuple[Client, Client]) -> None:
    victim, _ = pair
    lk = victim.acquire("own/stuck", ttl=5.0)
    (info,) = [i for i in admin.locks() if i.name == "own/stuck"]
    assert admin._write(Release("own/stuck", info.holder_session, info.token)).code == "ok"
    assert [i for i in admin.locks() if i.name == "own/stuck"] == []
    lk.release()        # closes the victim's own session, which still exists
