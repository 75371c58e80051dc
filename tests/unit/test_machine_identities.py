"""The identity table and ownership, as the replicated machine applies them: every decision
is a function of the log (the stamped principal and the table at that position), and a
refusal changes nothing."""
from __future__ import annotations

import msgpack  # type: ignore[import-untyped, unused-ignore]

from coordsvc.core.acl import ADMIN_RIGHTS, Rights
from coordsvc.core.commands import (
    AuthAdd,
    AuthRemove,
    Cancel,
    CloseSession,
    Command,
    OpenAndAcquire,
    Put,
    Release,
    Request,
    decode_request,
    encode_request,
    stamp,
)
from coordsvc.core.machine import Machine, Principal
from coordsvc.core.protocol import Result, ResultCode
from coordsvc.keys import KeyPair

ALICE, BOB, OPS = KeyPair.generate().public, KeyPair.generate().public, KeyPair.generate().public


class Log:
    """One machine and the log index; ``do`` applies a request stamped with ``who``."""

    def __init__(self) -> None:
        self.m = Machine()
        self.index = 0
        self.seqs: dict[str, int] = {}

    def do(self, who: str, cmd: Command, client_id: str | None = None, seq: int | None = None) -> Result:
        cid = client_id or f"c-{who}"
        if seq is None:
            seq = self.seqs[cid] = self.seqs.get(cid, 0) + 1
        self.index += 1
        return self.m.apply(self.index, Request(cid, seq, seq, cmd, who))

    def setup(self) -> Log:
        assert self.do("admin", AuthAdd("alice", ALICE, write=("app/",), lock=("jobs/",))).code == "ok"
        assert self.do("admin", AuthAdd("bob", BOB, write=("app/",), lock=("jobs/",))).code == "ok"
        return self

    def lock(self, who: str, name: str = "jobs/a") -> tuple[int, int]:
        r = self.do(who, OpenAndAcquire(name, 5000, True))
        assert r.code in ("ok", "queued"), r
        return r.data["session_id"], r.data.get("token", 0)  # type: ignore[return-value]

    def state(self) -> bytes:
        return self.m.snapshot()


def test_the_table_starts_with_the_bootstrap_admin_only() -> None:
    m = Machine()
    assert m.principals() == [Principal("admin", None, ADMIN_RIGHTS)]
    assert m.rights("admin") is ADMIN_RIGHTS and m.rights("alice") is None
    assert m.rights("node:n1") is not None and m.rights("node:n1").member  # type: ignore[union-attr]


def test_auth_add_records_the_public_key_and_rights_and_the_key_finds_the_principal() -> None:
    log = Log().setup()
    assert log.m.principal_for_key(ALICE) == "alice" and log.m.principal_for_key(OPS) is None
    assert log.m.rights("alice") == Rights(write=("app/",), lock=("jobs/",))
    assert [p.name for p in log.m.principals()] == ["admin", "alice", "bob"]


def test_only_an_admin_changes_the_table_and_a_refusal_changes_nothing() -> None:
    log = Log().setup()
    for who in ("alice", "node:n1", "stranger"):
        for cmd in (AuthAdd("mallory", OPS, admin=True), AuthRemove("bob")):
            assert log.do(who, cmd).code == ResultCode.PERMISSION_DENIED
    assert log.m.principal_for_key(OPS) is None and log.m.rights("bob") is not None
    assert [p.name for p in log.m.principals()] == ["admin", "alice", "bob"]


def test_a_name_or_key_in_use_and_the_bootstrap_name_are_refused() -> None:
    log = Log().setup()
    assert log.do("admin", AuthAdd("alice", OPS)).code == "refused"
    r = log.do("admin", AuthAdd("carol", ALICE))
    assert r.code == "refused" and "'alice'" in str(r.data["message"])
    assert log.do("admin", AuthAdd("admin", OPS)).code == "invalid"     # malformed, not taken
    assert log.do("admin", AuthAdd("node:n1", OPS)).code == "invalid"
    assert log.do("admin", AuthRemove("nobody")).code == "refused"


def test_the_last_admin_cannot_be_removed_but_the_bootstrap_one_can_once_another_exists() -> None:
    log = Log()
    assert "last admin" in str(log.do("admin", AuthRemove("admin")).data["message"])
    assert log.do("admin", AuthAdd("ops", OPS, admin=True)).code == "ok"
    assert log.do("ops", AuthRemove("admin")).code == "ok"
    assert log.m.rights("admin") is None
    assert log.do("admin", Put("k", b"v")).code == ResultCode.PERMISSION_DENIED
    assert "last admin" in str(log.do("ops", AuthRemove("ops")).data["message"])


def test_rights_are_checked_when_applied_so_a_removal_ahead_in_the_log_wins() -> None:
    log = Log().setup()
    assert log.do("alice", Put("app/k", b"1")).code == "ok"
    assert log.do("alice", Put("other/k", b"1")).code == ResultCode.PERMISSION_DENIED
    rev = log.m.revision
    # The leader checked alice's put before her removal was applied; the log orders the
    # removal first, so every replica refuses the put.
    assert log.do("admin", AuthRemove("alice")).code == "ok"
    r = log.do("alice", Put("app/k", b"2"))
    assert r.code == ResultCode.PERMISSION_DENIED and log.m.revision == rev
    assert log.m.get("app/k").value == b"1"  # type: ignore[union-attr]


def test_another_principal_cannot_release_cancel_close_or_queue_on_a_session() -> None:
    log = Log().setup()
    sid, token = log.lock("alice")
    before = log.m.locks()
    for cmd in (Release("jobs/a", sid, token), Cancel("jobs/a", sid), CloseSession(sid),
                OpenAndAcquire("jobs/a", 5000, False)):
        r = log.do("bob", cmd)
        if isinstance(cmd, OpenAndAcquire):
            assert r.code == ResultCode.LOCK_BUSY   # his own session: an ordinary busy lock
        else:
            assert r.code == ResultCode.PERMISSION_DENIED and "belongs to another" in str(r.data)
    assert log.m.locks() == before and log.m.session_owner(sid) == "alice"
    assert log.do("alice", Release("jobs/a", sid, token)).code == "ok"


def test_an_admin_may_release_anyones_lock() -> None:
    log = Log().setup()
    sid, token = log.lock("alice")
    assert log.do("admin", Release("jobs/a", sid, token)).code == "ok"
    assert log.do("admin", CloseSession(sid)).code == "ok"
    assert log.m.locks() == [] and log.m.session_count == 0


def test_lock_holders_and_waiters_are_named_by_principal() -> None:
    log = Log().setup()
    log.lock("alice")
    log.lock("bob")
    (held,) = log.m.locks()
    assert (held.holder, held.waiter_names) == ("alice", ("bob",))


def test_a_client_id_belongs_to_its_first_principal_and_the_owner_still_applies_exactly_once() -> None:
    log = Log().setup()
    assert log.do("alice", Put("app/a", b"1"), "victim", 1).code == "ok"
    before = log.state()
    # Mallory (bob's key) replays the victim's id with the next seqs, and a stale one.
    for seq in (2, 3, 1):
        r = log.do("bob", Put("app/a", b"evil"), "victim", seq)
        assert r.code == ResultCode.PERMISSION_DENIED and "belongs to another" in str(r.data)
    assert log.state() == before     # not cached, floor and activity order untouched
    r2 = log.do("alice", Put("app/a", b"2"), "victim", 2)
    assert r2.code == "ok" and log.m.get("app/a").value == b"2"  # type: ignore[union-attr]
    assert log.do("alice", Put("app/a", b"2"), "victim", 2) == r2      # a retry: the same Result
    assert log.m.revision == 2


def test_an_admin_cannot_claim_another_principals_client_id_either() -> None:
    log = Log().setup()
    log.do("alice", Put("app/a", b"1"), "victim", 1)
    assert log.do("admin", Put("app/a", b"x"), "victim", 2).code == ResultCode.PERMISSION_DENIED


def test_removing_a_principal_closes_its_sessions_and_hands_its_locks_on() -> None:
    log = Log().setup()
    log.lock("alice")
    bob_sid, _ = log.lock("bob")
    log.m.take_grants()
    r = log.do("admin", AuthRemove("alice"))
    assert r.code == "ok" and r.data["sessions_closed"] == 1
    (held,) = log.m.locks()
    assert (held.holder, held.holder_session) == ("bob", bob_sid)
    assert [g.session_id for g in log.m.take_grants()] == [bob_sid]
    assert log.m.principal_for_key(ALICE) is None and log.m.rights("alice") is None


def test_unstamped_requests_from_before_principals_are_the_bootstrap_admins() -> None:
    m = Machine()
    assert m.apply(1, Request("old", 1, 1, OpenAndAcquire("l", 5000, False))).code == "ok"
    assert m.locks()[0].holder == "admin"


def test_the_table_and_every_owner_survive_a_snapshot() -> None:
    log = Log().setup()
    log.do("admin", AuthAdd("ops", OPS, read=("", "a"), admin=True))
    log.do("admin", AuthRemove("bob"))
    sid, _ = log.lock("alice")
    log.do("alice", Put("app/a", b"1"), "victim", 1)
    data = log.m.snapshot()
    m2 = Machine.restore(data)
    assert m2.snapshot() == data
    assert m2.principals() == log.m.principals()
    assert m2.principal_for_key(OPS) == "ops" and m2.principal_for_key(BOB) is None
    assert m2.session_owner(sid) == "alice"
    assert m2.apply(99, Request("victim", 2, 2, Put("app/a", b"x"), "ops")).code == ResultCode.PERMISSION_DENIED


def test_a_snapshot_from_before_identities_restores_the_bootstrap_admin_as_owner() -> None:
    m = Machine()
    m.apply(1, Request("old", 1, 1, OpenAndAcquire("l", 5000, False)))
    st = msgpack.unpackb(m.snapshot(), raw=False, strict_map_key=False)
    del st["acl"]
    st["ses"] = [row[:3] for row in st["ses"]]
    st["cl"] = [row[:3] for row in st["cl"]]
    m2 = Machine.restore(msgpack.packb(st, use_bin_type=True))
    assert m2.principals() == [Principal("admin", None, ADMIN_RIGHTS)]
    assert m2.session_owner(1) == "admin"
    assert m2.apply(2, Request("old", 2, 2, Put("k", b""), "alice")).code == ResultCode.PERMISSION_DENIED


def test_a_stamped_request_encodes_as_the_leader_proposes_it() -> None:
    r = Request("c", 3, 2, AuthAdd("bob", BOB, ("a/",), ("b/",), ("l/",), True))
    raw = encode_request(r)
    assert decode_request(raw) == r
    stamped = stamp(raw, "admin")
    assert decode_request(stamped) == Request("c", 3, 2, r.cmd, "admin")
    assert stamped == encode_request(Request("c", 3, 2, r.cmd, "admin"))


def test_a_removed_name_is_never_given_to_another_key() -> None:
    # An open connection keeps the name it was authenticated with; a new key under that
    # name would hand it the new key's rights.
    log = Log().setup()
    log.do("admin", AuthRemove("alice"))
    r = log.do("admin", AuthAdd("alice", OPS, admin=True))
    assert r.code == "refused" and "never given to another key" in str(r.data["message"])
    assert log.m.rights("alice") is None
    assert Machine.restore(log.m.snapshot()).apply(
        99, Request("a", 1, 1, AuthAdd("alice", OPS), "admin")).code == "refused"
