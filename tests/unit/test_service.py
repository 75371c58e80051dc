"""Rules of the whole node (``Service``), driven by hand through ``step(save, send)``.

Three Services on memory stores, joined by a loop that saves each Ready before its
messages leave (as the runtime does) and delivers messages in order, except across cut
links. The randomized version of all of this is the whole-node simulator (tests/sim).
"""
from __future__ import annotations

import random
from typing import Any

from coordsvc.core.commands import OpenAndAcquire, Put, Request, encode_request
from coordsvc.core.leadership import Functional
from coordsvc.core.machine import Machine
from coordsvc.core.messages import Outbound
from coordsvc.core.replica import Role
from coordsvc.core.service import SNAPSHOT_RETRY_MS, Service
from coordsvc.core.types import Config
from coordsvc.storage.memory import MemoryStore

IDS = ["n1", "n2", "n3"]
CFG = Config(heartbeat_ms=50, election_timeout_ms=500)
TTL_MS = 3000
CLIENT_MARGIN_MS = 600     # client/_lock.py: max(0.2 * ttl, 0.5 s)


class Nodes:
    def __init__(self, cfg: Config = CFG, prevote: bool = True) -> None:
        self.stores = {i: MemoryStore() for i in IDS}
        self.svcs = {i: Service(i, {j: f"tcp://{j}" for j in IDS}, self.stores[i].load(),
                                random.Random(k), 0, cfg, Functional(prevote=prevote))
                     for k, i in enumerate(IDS)}
        self.cut: set[tuple[str, str]] = set()
        self.now = 0
        self.rid = 1000
        self.replies: dict[tuple[str, object], dict[str, Any]] = {}

    def settle(self) -> None:
        for _ in range(1000):
            out: list[tuple[str, Outbound]] = []
            for i, svc in self.svcs.items():
                def send(msgs: list[Outbound], i: str = i, out: list[tuple[str, Outbound]] = out) -> None:
                    out.extend((i, o) for o in msgs)
                svc.step(self.stores[i].save, send)
                replies, _ = svc.take_outbox()
                for _route, reply in replies:
                    self.replies[(i, reply["id"])] = reply
            if not out:
                return
            for src, o in out:
                if (src, o.dst) not in self.cut:
                    self.svcs[o.dst].on_peer(o.msg, self.now)
        raise AssertionError("did not settle")

    def advance(self, ms: int) -> None:
        for _ in range(ms // 10):
            self.now += 10
            for svc in self.svcs.values():
                svc.tick(self.now)
            self.settle()

    def leader(self) -> str | None:
        serving = [i for i, s in self.svcs.items() if s.replica.role is Role.LEADER]
        return serving[0] if len(serving) == 1 else None

    def ask(self, node: str, req: dict[str, Any]) -> dict[str, Any] | None:
        rid = self.send(node, req)
        return self.replies.get((node, rid))

    def send(self, node: str, req: dict[str, Any]) -> int:
        self.rid += 1
        self.svcs[node].on_client("client", {**req, "id": self.rid}, self.now)
        self.settle()
        return self.rid

    def isolate(self, node: str) -> None:
        self.cut |= {(a, b) for a in IDS for b in IDS if node in (a, b) and a != b}


def put(key: str, value: bytes, seq: int) -> dict[str, Any]:
    return {"op": "write", "req": encode_request(Request("c1", seq, seq, Put(key, value)))}


def test_step_saves_each_ready_before_it_sends_and_answers_clients_only_after() -> None:
    nodes = Nodes()
    nodes.advance(3000)
    leader = nodes.leader()
    assert leader is not None
    svc, calls = nodes.svcs[leader], []
    svc.on_client("client", {**put("k", b"v", 1), "id": 1}, nodes.now)
    svc.step(lambda p: calls.append("save"), lambda msgs: calls.append("send"))
    assert calls[:2] == ["save", "send"] and calls.count("save") == calls.count("send")
    assert all(calls[i] == "save" for i in range(0, len(calls), 2))
    assert svc.take_outbox()[0] == []      # the write is not chosen yet: no answer


def test_a_retried_write_is_applied_once_and_answered_with_the_first_result() -> None:
    nodes = Nodes()
    nodes.advance(3000)
    leader = nodes.leader()
    assert leader is not None
    first = nodes.ask(leader, put("k", b"v", 1))
    again = nodes.ask(leader, put("k", b"v", 1))
    assert first is not None and again is not None
    assert first["result"] == again["result"] == ["ok", 1, {"revision": 1}]
    assert nodes.svcs[leader].machine.revision == 1


def test_a_follower_answers_a_write_with_the_leaders_address() -> None:
    nodes = Nodes()
    nodes.advance(3000)
    leader = nodes.leader()
    follower = next(i for i in IDS if i != leader)
    reply = nodes.ask(follower, put("k", b"v", 1))
    assert reply is not None and reply["error"] == "not_leader"
    assert reply["leader"] == leader and reply["leader_address"] == f"tcp://{leader}"


def test_a_new_leader_never_expires_a_session_before_a_keepalive_the_old_leader_answered_runs_out() -> None:
    """Found by the whole-node simulator: the old leader may renew a session until it
    steps down, which can be after the takeover, and the renewal then never reaches the
    new leader; so the new leader must give every session a full ttl.

    Without pre-vote, so that cutting the old leader off from one follower alone makes
    that follower take over while the old leader, still heard by the third node, keeps
    leading (and renewing) until the new ballot reaches it. With pre-vote the third node
    refuses that campaign, and an old leader cut off from both others steps down within
    one election timeout, which leaves too short a window of unseen renewals to tell a
    full ttl from the old rule here; the rule itself does not depend on pre-vote."""
    nodes = Nodes(prevote=False)
    nodes.advance(3000)
    old = nodes.leader()
    assert old is not None
    opened = nodes.ask(old, {"op": "write", "req": encode_request(
        Request("c1", 1, 1, OpenAndAcquire("lk", TTL_MS, wait=True)))})
    assert opened is not None and opened["ok"]
    sid = opened["result"][2]["session_id"]
    nodes.advance(500)    # every node has applied the open (and seen the session alive)
    new = next(i for i in IDS if i != old)
    nodes.cut |= {(old, new), (new, old)}
    last_renewal = None
    while nodes.svcs[old].replica.role is Role.LEADER:   # keepalives every 100 ms
        reply = nodes.ask(old, {"op": "keepalive", "session_id": sid})
        if reply is not None and reply.get("known") is True:
            last_renewal = nodes.now
        nodes.advance(100)
    assert last_renewal is not None and nodes.leader() == new
    client_believes_until = last_renewal + TTL_MS - CLIENT_MARGIN_MS
    while nodes.now < client_believes_until:
        nodes.advance(10)
        assert sid in nodes.svcs[new].machine.sessions(), (
            f"session expired at {nodes.now}; its client holds the lock until "
            f"{client_believes_until} (renewed at {last_renewal})")


def test_a_parked_watch_is_answered_with_the_events_a_snapshot_install_brought() -> None:
    """Found by the whole-node simulator: a follower that caught up by installing a
    snapshot (and nothing after it) left its parked watches parked, and on their timeout
    answered "no events, revision R" for revisions the snapshot had brought: the watcher
    then skipped them."""
    nodes = Nodes(Config(heartbeat_ms=50, election_timeout_ms=500, snapshot_every=1))
    nodes.advance(3000)
    leader = nodes.leader()
    assert leader is not None
    follower = next(i for i in IDS if i != leader)
    rid = nodes.send(follower, {"op": "watch", "prefix": "k/", "after": 0, "wait_ms": 2000})
    nodes.isolate(follower)
    for seq in (1, 2, 3):
        assert nodes.ask(leader, put(f"k/{seq}", b"v", seq)) is not None
    nodes.advance(200)          # the leader snapshots past every entry it has
    nodes.cut.clear()
    nodes.advance(2500)         # the follower catches up by snapshot; the watch runs out
    reply = nodes.replies.get((follower, rid))
    assert reply is not None and reply["ok"]
    assert [e[3] for e in reply["events"]] == [1, 2, 3], reply


class _Deferred:
    """A Snapshotter that writes later, as the node's forked child does: it keeps the
    state as of the call (the child's copy-on-write image) and returns None."""

    def __init__(self) -> None:
        self.started: list[tuple[int, bytes]] = []

    def start(self, index: int, machine: Machine, config: object) -> None:
        self.started.append((index, machine.snapshot()))


def _deferred_at(follower: bool = False) -> tuple[Nodes, str, str, _Deferred]:
    """Three nodes snapshotting every 2 entries; the leader (or a follower) writes its
    snapshots later. The nodes, the leader, that node and its writer."""
    nodes = Nodes(Config(heartbeat_ms=50, election_timeout_ms=500, snapshot_every=2))
    nodes.advance(3000)
    leader = nodes.leader()
    assert leader is not None
    node = next(i for i in IDS if i != leader) if follower else leader
    writer = nodes.svcs[node].snapshotter = _Deferred()
    return nodes, leader, node, writer


def test_a_snapshot_written_off_the_loop_truncates_the_log_only_once_it_is_reported() -> None:
    nodes, leader, _, writer = _deferred_at()
    svc = nodes.svcs[leader]
    for seq in range(1, 6):
        assert nodes.ask(leader, put(f"k/{seq}", b"v%d" % seq, seq)) is not None
    (index, image), = writer.started               # one at a time, however far it falls behind
    assert svc.snapshotting == index and svc.replica.acceptor.snapshot.index == 0
    assert min(svc.replica.acceptor.log) == 1      # nothing truncated yet
    svc.snapshot_written(index, image)
    nodes.settle()
    assert svc.replica.acceptor.snapshot.index == index and min(svc.replica.acceptor.log) > index
    assert nodes.stores[leader].load().snapshot.index == index          # durable
    assert Machine.restore(image).revision < svc.machine.revision       # the image at index
    assert nodes.ask(leader, put("k/6", b"v6", 6)) is not None
    assert len(writer.started) == 2 and writer.started[1][0] > index    # the next one


def test_a_failed_snapshot_keeps_the_log_and_is_tried_again_after_a_pause() -> None:
    nodes, leader, _, writer = _deferred_at()
    svc = nodes.svcs[leader]
    for seq in (1, 2, 3):
        nodes.ask(leader, put(f"k/{seq}", b"v", seq))
    svc.snapshot_failed(writer.started[0][0])
    assert svc.snapshotting is None and svc.replica.acceptor.snapshot.index == 0
    nodes.ask(leader, put("k/4", b"v", 4))
    assert len(writer.started) == 1                # not on every applied slot
    nodes.advance(SNAPSHOT_RETRY_MS + 100)
    nodes.ask(leader, put("k/5", b"v", 5))
    assert len(writer.started) == 2


def test_a_late_snapshot_overtaken_by_an_installed_one_changes_nothing() -> None:
    nodes, leader, follower, slow = _deferred_at(follower=True)
    for seq in (1, 2, 3):
        nodes.ask(leader, put(f"k/{seq}", b"v", seq))
    nodes.advance(200)
    late_index, late_image = slow.started[0]
    nodes.isolate(follower)
    for seq in range(4, 12):
        nodes.ask(leader, put(f"k/{seq}", b"v", seq))
    nodes.advance(200)
    nodes.cut.clear()
    nodes.advance(2000)                              # catches up by the leader's snapshot
    f = nodes.svcs[follower]
    installed = f.replica.acceptor.snapshot.index
    assert installed > late_index
    f.snapshot_written(late_index, late_image)
    assert f.replica.acceptor.snapshot.index == installed
    assert f.machine.snapshot() == nodes.svcs[leader].machine.snapshot()


def test_sessions_expire_and_lock_delays_end_on_time_while_reads_come_faster_than_heartbeats() -> None:
    """Found by the real-cluster lock-delay test: a linearizable read makes the leader send
    a heartbeat, which the replica counts as its beat, so with a read every 10 ms the
    replica's timer never came due; a driver that ticks only when ``next_timer_ms()`` says
    (the runtime) never ticked, and a dead holder's session never expired -- nor did the
    lock-delay that would have followed."""
    nodes = Nodes()
    nodes.advance(3000)
    leader = nodes.leader()
    assert leader is not None
    held = nodes.ask(leader, {"op": "write", "req": encode_request(
        Request("c1", 1, 1, OpenAndAcquire("lk", 1000, wait=False, lock_delay_ms=500)))})
    assert held is not None and held["ok"]
    sid = held["result"][2]["session_id"]
    m = nodes.svcs[leader].machine
    opened, expired, ended = nodes.now, None, None
    while ended is None and nodes.now < opened + 5000:
        nodes.now += 10
        for svc in nodes.svcs.values():
            if nodes.now >= svc.next_timer_ms():     # as runtime/node.py: only when due
                svc.tick(nodes.now)
        read = nodes.ask(leader, {"op": "get", "key": "k"})
        assert read is not None and read["ok"], read
        if expired is None and sid not in m.sessions():
            expired = nodes.now
            assert m.delayed_locks() == {"lk": 500}
        elif expired is not None and not m.delayed_locks():
            ended = nodes.now
    late_ms = 2 * CFG.heartbeat_ms     # a tick's lateness, then a round trip to a quorum
    assert expired is not None and expired - opened <= 1000 + late_ms, (opened, expired)
    assert ended is not None and ended - expired <= 500 + late_ms, (expired, ended)
