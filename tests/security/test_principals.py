"""The pure rules of identity, on the Service a node runs: a peer message is accepted only
over the connection of the member it claims to come from (CONTRACT §7, WAVE2 §1)."""
from __future__ import annotations

import random

import pytest

from coordsvc.core.identity import INSECURE, Identities
from coordsvc.core.messages import (
    Accept,
    CatchupReply,
    Heartbeat,
    Message,
    Outbound,
    Prepare,
    SnapshotChunk,
    SnapshotInfo,
)
from coordsvc.core.service import Service
from coordsvc.core.types import Ballot, Config, Persist, Value
from coordsvc.keys import KeyPair
from coordsvc.storage.memory import MemoryStore

IDS = ["n1", "n2", "n3"]
KEYS = {i: KeyPair.generate().public for i in IDS}
ADMIN_KEY = KeyPair.generate().public
SECURE = Identities(secure=True, members=KEYS, admin_key=ADMIN_KEY)


class Node:
    """One Service with the runtime's step loop around it, in memory."""

    def __init__(self, identities: Identities, node_id: str = "n1") -> None:
        self.store = MemoryStore()
        self.svc = Service(node_id, {i: f"tcp://127.0.0.1:{7100 + k}" for k, i in enumerate(IDS)},
                           self.store.load(), random.Random(1), 0, Config(), identities=identities)
        self.sent: list[Outbound] = []
        self.saved: list[Persist] = []
        self.step()

    def step(self) -> None:
        self.svc.step(self.saved.append, self.sent.extend)

    def peer(self, msg: Message, principal: str | None) -> None:
        self.sent.clear()
        self.saved.clear()
        self.svc.on_peer(msg, 10, principal)
        self.step()

    def state(self) -> tuple[object, ...]:
        r = self.svc.replica
        return (r.promised, r.leader, r.role, r.commit_index, r.applied,
                self.svc.machine.revision, self.svc.machine.key_count)


FORGED: list[Message] = [
    Prepare("n2", Ballot(7, "n2"), 1),
    Heartbeat("n2", Ballot(7, "n2"), 0, 1),
    Accept("n2", Ballot(7, "n2"), 1, Value((b"x",)), 1),
    CatchupReply("n2", Ballot(7, "n2"), (), SnapshotInfo(5, 4, b"\x00" * 32), 5),
    SnapshotChunk("n2", SnapshotInfo(5, 4, b"\x00" * 32), 0, b"junk"),
]


@pytest.mark.parametrize("msg", FORGED, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("principal", [None, "node:n3", "admin", "node:n2 ", "node:"])
def test_a_peer_message_over_anyone_elses_connection_is_dropped_and_counted(
        msg: Message, principal: str | None) -> None:
    n = Node(SECURE)
    before = n.state()
    n.peer(msg, principal)
    assert n.state() == before
    assert n.sent == [] and all(p.empty() for p in n.saved)
    assert n.svc.counters.rejected_peer == 1
    assert n.svc.status()["rejected_peer"] == 1


def test_the_same_message_over_its_members_own_connection_is_accepted() -> None:
    n = Node(SECURE)
    n.peer(Prepare("n2", Ballot(7, "n2"), 1), "node:n2")
    assert n.svc.replica.promised == Ballot(7, "n2")
    assert [o.dst for o in n.sent] == ["n2"]
    assert n.svc.counters.rejected_peer == 0


def test_an_insecure_cluster_trusts_src_as_before_keys() -> None:
    n = Node(INSECURE)
    n.peer(Prepare("n2", Ballot(7, "n2"), 1), None)
    assert n.svc.replica.promised == Ballot(7, "n2")
    assert n.svc.counters.rejected_peer == 0
    assert n.svc.status()["security"] == "insecure"


def test_member_keys_map_to_node_principals_and_the_admin_key_to_admin() -> None:
    n = Node(SECURE)
    assert n.svc.principal_for_key(KEYS["n2"]) == "node:n2"
    assert n.svc.principal_for_key(ADMIN_KEY) == "admin"
    assert n.svc.principal_for_key(KeyPair.generate().public) is None
    assert n.svc.principal_for_key("") is None
    assert Node(INSECURE).svc.principal_for_key(KEYS["n2"]) is None


def test_two_members_cannot_share_a_key() -> None:
    with pytest.raises(ValueError):
        Identities(secure=True, members={"n1": KEYS["n1"], "n2": KEYS["n1"]})
    with pytest.raises(ValueError):
        Identities(secure=True, members=KEYS, admin_key=KEYS["n1"])


def test_a_redirect_names_the_leaders_public_key_so_clients_can_pin_it() -> None:
    n = Node(SECURE)
    n.peer(Heartbeat("n2", Ballot(7, "n2"), 0, 1), "node:n2")
    assert n.svc.replica.leader == "n2"
    n.svc.on_client(b"route", {"id": 1, "op": "get", "key": "k"}, 20, "admin")
    (route, reply), = n.svc.take_outbox()[0]
    assert reply["error"] == "not_leader" and reply["leader"] == "n2"
    assert reply["leader_public_key"] == KEYS["n2"]


def test_status_says_how_the_cluster_is_secured() -> None:
    st = Node(SECURE).svc.status()
    assert (st["security"], st["public_key"], st["rejected_peer"]) == ("curve", KEYS["n1"], 0)


def test_the_pub_socket_admits_members_and_admin_but_not_other_clients() -> None:
    # The ZAP credentials callbacks of the two domains (values flow on the PUB socket).
    from types import SimpleNamespace

    from coordsvc.transport.zmq_transport import Counters, _Admit
    principals = {"m": "node:n2", "a": "admin", "c": "alice"}
    zap = SimpleNamespace(principal_for_key=principals.get, counters=Counters())
    router, pub = _Admit(zap, pub=False), _Admit(zap, pub=True)  # type: ignore[arg-type]
    assert [router.callback("coordsvc", k) for k in (b"m", b"a", b"c", b"x")] == [True, True, True, False]
    assert [pub.callback("coordsvc-pub", k) for k in (b"m", b"a", b"c", b"x")] == [True, True, False, False]
    assert zap.counters.rejected_keys == 3
