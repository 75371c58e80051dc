"""Rights and ownership on the Service a node runs: every request is authorized before it
does anything, answers show only what the caller may read, writes carry their principal
into the log, and a removed principal's parked requests end at once."""
from __future__ import annotations

import random
from typing import Any

from coordsvc.core.commands import (
    ELECTION_PREFIX,
    SCHEMA_PREFIX,
    AuthAdd,
    AuthRemove,
    Campaign,
    CloseSession,
    Command,
    OpenAndAcquire,
    OpenSession,
    Put,
    Request,
    SchemaSet,
    decode_request,
    encode_request,
    stamp,
)
from coordsvc.core.identity import INSECURE, Identities
from coordsvc.core.messages import Message, Outbound
from coordsvc.core.service import Service
from coordsvc.core.types import Config
from coordsvc.keys import KeyPair
from coordsvc.storage.memory import MemoryStore

CFG = Config(heartbeat_ms=10, election_timeout_ms=50)
N1, ADMIN_KEY = KeyPair.generate().public, KeyPair.generate().public
ALICE, BOB, OPS = KeyPair.generate().public, KeyPair.generate().public, KeyPair.generate().public
SECURE = Identities(secure=True, members={"n1": N1}, admin_key=ADMIN_KEY)


class Node:
    """One serving single-member Service; requests name their principal."""

    def __init__(self, identities: Identities = SECURE) -> None:
        self.store = MemoryStore()
        self.now = 0
        self.svc = Service("n1", {"n1": "tcp://127.0.0.1:1"}, self.store.load(), random.Random(1),
                           self.now, CFG, identities=identities)
        self.replies: list[tuple[object, dict[str, Any]]] = []
        self.seqs: dict[str, int] = {}
        self.rid = 0
        self.advance(200)
        assert self.svc.serving()

    def advance(self, ms: int) -> None:
        for _ in range(ms):
            self.now += 1
            if self.now >= self.svc.next_timer_ms():
                self.svc.tick(self.now)
            self.step()

    def step(self) -> None:
        local: list[Message] = []

        def send(out: list[Outbound]) -> None:
            local.extend(o.msg for o in out if o.dst == "n1")
        while True:
            self.svc.step(self.store.save, send)
            if not local:
                break
            for m in local:
                self.svc.on_peer(m, self.now, "node:n1")
            local.clear()
        self.replies.extend(self.svc.take_outbox()[0])

    def send(self, who: str, req: dict[str, Any], route: object = None) -> object:
        self.rid += 1
        route = route if route is not None else ("route", self.rid)
        self.svc.on_client(route, {"id": self.rid, **req}, self.now, who)
        return route

    def answers(self, route: object) -> list[dict[str, Any]]:
        return [r for rt, r in self.replies if rt == route]

    def ask(self, who: str, req: dict[str, Any]) -> dict[str, Any]:
        route = self.send(who, req)
        self.step()
        (reply,) = self.answers(route)
        return reply

    def write(self, who: str, cmd: Command, client_id: str | None = None) -> dict[str, Any]:
        cid = client_id or f"c-{who}"
        seq = self.seqs[cid] = self.seqs.get(cid, 0) + 1
        return self.ask(who, {"op": "write", "req": encode_request(Request(cid, seq, seq, cmd))})

    def setup(self) -> Node:
        for name, key, rights in (("alice", ALICE, {"read": ("app/",), "lock": ("jobs/",)}),
                                  ("bob", BOB, {"write": ("app/",), "lock": ("jobs/",)})):
            assert self.write("admin", AuthAdd(name, key, **rights))["result"][0] == "ok"  # type: ignore[arg-type]
        return self


def denied(reply: dict[str, Any]) -> bool:
    return reply.get("error") == "permission_denied" or (
        reply.get("ok") is True and reply.get("result", [None])[0] == "permission_denied")


def test_a_request_outside_the_callers_rights_is_refused_counted_and_changes_nothing() -> None:
    n = Node().setup()
    n.write("bob", Put("app/k", b"1"))
    rev = n.svc.machine.revision
    assert n.ask("alice", {"op": "get", "key": "app/k"})["kv"][1] == b"1"
    reply = n.ask("alice", {"op": "write", "req": encode_request(Request("a", 1, 1, Put("app/k", b"2")))})
    assert reply == {"id": n.rid, "ok": False, "error": "permission_denied",
                     "message": "alice: no right to write 'app/k'"}
    assert denied(n.ask("alice", {"op": "get", "key": "secret/k"}))
    assert denied(n.ask("node:n1", {"op": "get", "key": "app/k"}))
    assert n.svc.machine.revision == rev and n.svc.counters.denied == 3
    assert n.ask("alice", {"op": "status"})["status"]["denied"] == 3


def test_list_and_watch_show_only_readable_keys_and_refuse_a_prefix_with_none() -> None:
    n = Node().setup()
    for k in ("app/a", "apx", "secret/b"):
        n.write("admin", Put(k, b"v"))
    assert [kv[0] for kv in n.ask("alice", {"op": "list", "prefix": ""})["kvs"]] == ["app/a"]
    assert [kv[0] for kv in n.ask("alice", {"op": "list", "prefix": "ap"})["kvs"]] == ["app/a"]
    assert denied(n.ask("alice", {"op": "list", "prefix": "secret/"}))
    events = n.ask("alice", {"op": "watch", "prefix": "", "after": 0})["events"]
    assert [e[1] for e in events] == ["app/a"]
    assert denied(n.ask("alice", {"op": "watch", "prefixes": ["app/", "secret/"], "after": 0}))


def test_a_parked_watch_wakes_only_for_what_its_caller_may_read() -> None:
    n = Node().setup()
    route = n.send("alice", {"op": "watch", "prefix": "", "after": n.svc.machine.revision,
                             "wait_ms": 5000})
    n.write("admin", Put("secret/x", b"1"))
    assert n.answers(route) == []
    n.write("admin", Put("app/x", b"2"))
    (reply,) = n.answers(route)
    assert [e[1] for e in reply["events"]] == ["app/x"]


def test_the_leader_stamps_the_sender_into_the_log_and_a_client_cannot() -> None:
    n = Node().setup()
    n.write("bob", OpenAndAcquire("jobs/a", 5000, True))
    assert n.svc.machine.locks()[0].holder == "bob"
    entries = [decode_request(raw) for e in n.store.load().entries for raw in e.value]
    assert [r.principal for r in entries if r.client_id] == ["admin", "admin", "bob"]
    forged = stamp(encode_request(Request("x", 1, 1, Put("app/k", b"v"))), "admin")
    reply = n.ask("bob", {"op": "write", "req": forged})
    assert reply["error"] == "bad_request" and "stamps" in reply["message"]


def test_writes_of_two_principals_with_one_client_id_never_share_a_result() -> None:
    n = Node().setup()
    raw = encode_request(Request("shared", 1, 1, Put("app/k", b"bob")))
    first = n.send("bob", {"op": "write", "req": raw})
    second = n.send("admin", {"op": "write", "req": raw})   # in flight at once
    assert len(n.svc.writes) == 2
    n.step()
    (a,), (b,) = n.answers(first), n.answers(second)
    assert a["result"][0] == "ok" and b["result"][0] == "permission_denied"
    assert n.svc.machine.get("app/k").value == b"bob"  # type: ignore[union-attr]


def test_keepalive_and_lock_wait_of_another_principals_session_are_refused() -> None:
    n = Node().setup()
    sid = n.write("bob", OpenAndAcquire("jobs/a", 5000, True))["result"][2]["session_id"]
    assert denied(n.ask("alice", {"op": "keepalive", "session_id": sid}))
    assert denied(n.ask("alice", {"op": "lock_wait", "name": "jobs/a", "session_id": sid}))
    assert n.ask("bob", {"op": "keepalive", "session_id": sid})["known"] is True
    assert n.ask("admin", {"op": "keepalive", "session_id": sid})["known"] is True
    assert denied(n.write("alice", CloseSession(sid)))
    assert n.svc.machine.session_count == 1


def test_a_batch_keepalive_renews_the_callers_sessions_and_denies_only_the_foreign_ids() -> None:
    n = Node().setup()
    mine = [n.write("alice", OpenAndAcquire(f"jobs/{i}", 5000, True))["result"][2]["session_id"]
            for i in range(3)]
    bobs = n.write("bob", OpenAndAcquire("jobs/b", 5000, True))["result"][2]["session_id"]
    n.advance(1000)
    before = {sid: n.svc.sessions.deadline_ms(sid) for sid in mine + [bobs]}
    reply = n.ask("alice", {"op": "keepalive", "session_ids": [mine[0], bobs, mine[1], 999, mine[2]]})
    assert reply["ok"] is True and reply["known"] is False
    assert reply["sessions"] == ["known", "denied", "known", "unknown", "known"]
    for sid in mine:   # renewed: the clock restarted now
        assert n.svc.sessions.deadline_ms(sid) == n.now + 5000 > before[sid]  # type: ignore[operator]
    assert n.svc.sessions.deadline_ms(bobs) == before[bobs]     # the foreign one was not
    # The owner and an admin renew it, in a batch as alone.
    assert n.ask("bob", {"op": "keepalive", "session_ids": [bobs]})["sessions"] == ["known"]
    by_admin = n.ask("admin", {"op": "keepalive", "session_ids": [bobs, mine[0]]})
    assert by_admin["known"] is True and by_admin["sessions"] == ["known", "known"]


def test_a_batch_keepalive_without_any_session_right_is_refused_whole() -> None:
    n = Node()
    assert n.write("admin", AuthAdd("ro", OPS, read=("app/",)))["result"][0] == "ok"
    sid = n.write("admin", OpenAndAcquire("jobs/a", 5000, True))["result"][2]["session_id"]
    assert denied(n.ask("ro", {"op": "keepalive", "session_ids": [sid]}))


def test_locks_lists_holders_by_name_and_only_lock_names_the_caller_may_take() -> None:
    n = Node().setup()
    n.write("bob", OpenAndAcquire("jobs/a", 5000, True))
    n.write("alice", OpenAndAcquire("jobs/a", 5000, True))
    n.write("admin", OpenAndAcquire("deploy", 5000, True))
    rows = n.ask("alice", {"op": "locks"})["locks"]
    assert [(r[0], r[9], r[10]) for r in rows] == [("jobs/a", "bob", ["alice"])]
    assert len(n.ask("admin", {"op": "locks"})["locks"]) == 2


def test_removing_a_principal_ends_its_parked_requests_and_refuses_what_it_sends_next() -> None:
    n = Node().setup()
    n.write("bob", OpenAndAcquire("jobs/a", 5000, True))
    sid = n.write("alice", OpenAndAcquire("jobs/a", 5000, True))["result"][2]["session_id"]
    watch = n.send("alice", {"op": "watch", "prefix": "app/", "after": n.svc.machine.revision,
                             "wait_ms": 5000})
    wait = n.send("alice", {"op": "lock_wait", "name": "jobs/a", "session_id": sid, "wait_ms": 5000})
    other = n.send("bob", {"op": "watch", "prefix": "app/", "after": n.svc.machine.revision,
                           "wait_ms": 5000})
    n.step()
    assert n.answers(watch) == n.answers(wait) == []
    assert n.write("admin", AuthRemove("alice"))["result"][0] == "ok"
    assert denied(n.answers(watch)[0]) and denied(n.answers(wait)[0])
    assert n.answers(other) == [] and len(n.svc.parking.watches) == 1
    assert n.svc.principal_for_key(ALICE) is None
    assert denied(n.ask("alice", {"op": "status"}))
    assert n.svc.machine.session_owner(sid) is None     # its sessions closed with it
    assert n.svc.take_removed_subscribers() == []         # alice could not subscribe anyway


def test_keys_added_through_the_log_are_admitted_and_removed_ones_refused() -> None:
    n = Node().setup()
    assert [n.svc.principal_for_key(k) for k in (N1, ADMIN_KEY, ALICE, OPS)] == [
        "node:n1", "admin", "alice", None]
    n.write("admin", AuthAdd("ops", OPS, admin=True))
    assert n.svc.principal_for_key(OPS) == "ops" and n.svc.may_subscribe("ops")
    assert not n.svc.may_subscribe("alice") and n.svc.may_subscribe("node:n1")
    assert n.write("ops", AuthRemove("admin"))["result"][0] == "ok"
    assert n.svc.principal_for_key(ADMIN_KEY) is None
    assert n.svc.take_removed_subscribers() == ["admin"]
    assert denied(n.ask("admin", {"op": "status"}))


def test_the_leader_refuses_identities_an_insecure_cluster_or_a_members_key() -> None:
    n = Node()
    assert n.ask("admin", {"op": "write", "req": encode_request(Request(
        "a", 1, 1, AuthAdd("x", N1)))})["error"] == "bad_request"
    assert n.ask("admin", {"op": "write", "req": encode_request(Request(
        "a", 2, 1, AuthAdd("x", ADMIN_KEY)))})["error"] == "bad_request"
    plain = Node(INSECURE)
    reply = plain.write("admin", AuthAdd("x", ALICE))
    assert reply["error"] == "bad_request" and "insecure" in reply["message"]
    assert plain.svc.principal_for_key(ALICE) is None


def test_auth_list_names_every_principal_with_its_rights_and_is_for_admins() -> None:
    n = Node().setup()
    rows = n.ask("admin", {"op": "auth_list"})["principals"]
    assert rows == [["admin", ADMIN_KEY, [], [], [], True],
                    ["alice", ALICE, ["app/"], [], ["jobs/"], False],
                    ["bob", BOB, [], ["app/"], ["jobs/"], False]]
    assert denied(n.ask("alice", {"op": "auth_list"}))


def test_revision_is_for_any_client_key_but_not_a_members() -> None:
    n = Node().setup()
    n.write("bob", Put("app/k", b"1"))
    assert n.ask("alice", {"op": "revision"}) == {"id": n.rid, "ok": True, "revision": 1}
    assert denied(n.ask("node:n1", {"op": "revision"}))


# -- the cluster's own records ---------------------------------------------------------------

def test_records_are_read_by_their_names_with_the_rights_of_what_they_describe() -> None:
    n = Node().setup()
    for prefix in ("app/", "secret/"):
        n.write("admin", SchemaSet(prefix, b'{"type": "object"}'))
    sid = n.write("bob", OpenSession(5000))["result"][2]["session_id"]
    n.write("bob", Campaign("jobs/sched", sid, b"bob"))
    n.write("admin", Campaign("ops/x", n.write("admin", OpenSession(5000))["result"][2]["session_id"], b""))
    rec = ELECTION_PREFIX + "jobs/sched"
    # A schema: by the read right on its prefix; an election's record: by the lock right.
    assert n.ask("alice", {"op": "get", "key": SCHEMA_PREFIX + "app/"})["kv"][1] == b'{"type": "object"}'
    assert denied(n.ask("alice", {"op": "get", "key": SCHEMA_PREFIX + "secret/"}))
    assert n.ask("alice", {"op": "get", "key": rec})["kv"][1].endswith(b"\nbob")
    assert denied(n.ask("alice", {"op": "get", "key": ELECTION_PREFIX + "ops/x"}))
    assert [e[1] for e in n.ask("alice", {"op": "history", "key": rec})["events"]] == [rec]
    assert [kv[0] for kv in n.ask("alice", {"op": "list", "prefix": ELECTION_PREFIX + "jobs/"})["kvs"]] == [rec]
    assert denied(n.ask("alice", {"op": "list", "prefix": ELECTION_PREFIX}))
    assert [e[1] for e in n.ask("alice", {"op": "watch", "prefix": rec, "after": 0})["events"]] == [rec]
    assert denied(n.ask("alice", {"op": "watch", "prefix": ELECTION_PREFIX + "ops/", "after": 0}))


def test_everything_listed_or_watched_is_client_keys_unless_records_are_asked_for() -> None:
    n = Node().setup()
    n.write("admin", Put("\x01k", b"1"))
    n.write("admin", SchemaSet("app/", b"{}"))
    sid = n.write("bob", OpenSession(5000))["result"][2]["session_id"]
    n.write("bob", Campaign("jobs/sched", sid, b"bob"))
    n.write("admin", Put("app/a", b"{}"))
    rec = ELECTION_PREFIX + "jobs/sched"
    assert [kv[0] for kv in n.ask("admin", {"op": "list", "prefix": ""})["kvs"]] == ["\x01k", "app/a"]
    assert [e[1] for e in n.ask("admin", {"op": "watch", "prefix": "", "after": 0})["events"]] == [
        "\x01k", "app/a"]
    both = n.ask("admin", {"op": "watch", "prefixes": ["", SCHEMA_PREFIX], "after": 0})["events"]
    assert [e[1] for e in both] == ["\x01k", SCHEMA_PREFIX + "app/", "app/a"]
    # alice reads under app/ and locks under jobs/: her watch of everything is filtered by
    # her rights, and the election she may read still comes through beside it.
    mixed = n.ask("alice", {"op": "watch", "prefixes": ["", ELECTION_PREFIX + "jobs/"], "after": 0})
    assert [e[1] for e in mixed["events"]] == [rec, "app/a"]
