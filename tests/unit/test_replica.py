"""One test per rule of the multi-Paxos replica, named after the rule."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace

import pytest

from coordsvc.core.commands import Put, Request, encode_request
from coordsvc.core.messages import (
    ENVELOPE_BYTES,
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    Promise,
    SnapshotChunk,
    SnapshotInfo,
    SnapshotRequest,
    chosen_bytes,
    value_bytes,
)
from coordsvc.core.replica import Ready, Replica, ReplicaStatus, Role
from coordsvc.core.transfer import checksum
from coordsvc.core.types import (
    MAX_COMMAND_BYTES,
    MAX_ROUND,
    MESSAGE_BUDGET_BYTES,
    NOOP,
    SNAPSHOT_CHUNK_BYTES,
    Ballot,
    Config,
    Durable,
    LogEntry,
    MiB,
    ProtocolError,
    SafetyViolation,
    Snapshot,
    UsageError,
)
from coordsvc.storage.memory import MemoryStore
from coordsvc.wire import MAX_FRAME_BYTES, encode_peer

from .helpers import CFG, IDS, Net, drain, make, sent

B1, B2, B3 = Ballot(1, "n2"), Ballot(2, "n2"), Ballot(3, "n3")


def test_acceptor_promises_higher_ballot_and_nacks_lower_one() -> None:
    r = make("n1")
    r.receive(Prepare("n2", B2, 1), 0)
    r.receive(Prepare("n3", B1, 1), 0)
    ready = drain(r)
    assert ready.persist.promised == B2
    assert sent(ready, Promise, "n2") and sent(ready, Nack, "n3") == [Nack("n1", B1, B2)]


def test_accepting_never_lowers_the_promised_ballot() -> None:
    r = make("n1")
    r.receive(Prepare("n3", B3, 1), 0)
    r.receive(Accept("n2", B2, 1, (b"x",), 0), 0)
    ready = drain(r)
    assert r.promised == B3
    assert sent(ready, Nack, "n2") == [Nack("n1", B2, B3)]
    assert not ready.persist.entries


def test_accept_at_higher_ballot_raises_the_promise_and_stores_the_entry() -> None:
    r = make("n1")
    r.receive(Accept("n2", B2, 1, (b"x",), 0), 0)
    ready = drain(r)
    assert ready.persist.promised == B2
    assert ready.persist.entries == [LogEntry(1, B2, (b"x",))]
    assert sent(ready, Accepted, "n2") == [Accepted("n1", B2, 1)]


def test_an_acceptor_behind_by_more_than_its_budget_withholds_votes_until_it_catches_up() -> None:
    cfg = replace(CFG, max_ahead_bytes=3 * (1 << 20))
    r = make("n1", cfg=cfg)
    mib = (b"v" * (1 << 20),)                         # a little over 1 MiB, as counted
    for slot in (2, 3, 4, 5):                         # slot 1 missing: nothing commits here
        r.receive(Accept("n2", B2, slot, mib, 0), 0)
    ready = drain(r)
    assert [e.slot for e in ready.persist.entries] == [2, 3]    # the third would pass 3 MiB
    assert [m.slot for m in sent(ready, Accepted, "n2")] == [2, 3]
    r.receive(Accept("n2", B2, 1, (b"x",), 3), 0)     # the gap, and word that 1-3 are chosen
    drain(r)
    r.receive(Accept("n2", B2, 4, mib, 3), 0)         # the leader resends: room again
    assert [m.slot for m in sent(drain(r), Accepted, "n2")] == [4]


def test_two_different_values_for_one_ballot_and_slot_is_a_hard_error() -> None:
    r = make("n1")
    r.receive(Accept("n2", B2, 1, (b"x",), 0), 0)
    with pytest.raises(SafetyViolation):
        r.receive(Accept("n2", B2, 1, (b"y",), 0), 0)


def test_duplicate_prepare_before_the_save_completes_gets_no_reply_until_saved() -> None:
    r = make("n1")
    r.receive(Prepare("n2", B2, 1), 0)
    first = r.ready()                      # handed to the disk, not yet saved
    r.receive(Prepare("n2", B2, 1), 0)     # the duplicate arrives meanwhile
    assert not r.has_ready()               # its reply is held back
    with pytest.raises(UsageError):
        r.ready()
    assert len(sent(first, Promise)) == 1 and first.persist.promised == B2
    r.advance()                            # the save completed
    assert len(sent(drain(r), Promise)) == 1


def test_duplicate_accept_before_the_save_completes_gets_no_reply_until_saved() -> None:
    r = make("n1")
    r.receive(Accept("n2", B2, 1, (b"x",), 0), 0)
    r.ready()
    r.receive(Accept("n2", B2, 1, (b"x",), 0), 0)
    assert not r.has_ready()
    r.advance()
    assert sent(drain(r), Accepted) == [Accepted("n1", B2, 1)]


def test_prepare_is_sent_in_the_same_ready_that_persists_the_ballot_high_water_mark() -> None:
    r = make("n1")
    r.tick(10_000)
    ready = drain(r)
    prepares = sent(ready, Prepare)
    assert prepares and ready.persist.high_water_round == prepares[0].ballot.round


def test_restarted_proposer_never_reuses_a_ballot() -> None:
    store = MemoryStore()
    r = make("n1")
    r.tick(10_000)
    first = sent(drain(r, store), Prepare)[0].ballot
    again = make("n1", durable=store.load())   # restart from disk; nothing was promised
    again.tick(10_000)
    second = sent(drain(again, store), Prepare)[0].ballot
    assert second > first


def test_follower_starts_phase1_only_after_the_election_timeout() -> None:
    r = make("n1", now=0)
    r.receive(Heartbeat("n2", B2, 0, 1), 0)
    r.tick(CFG_T - 1)
    assert not sent(drain(r), Prepare)
    r.tick(3 * CFG_T)
    assert r.role is Role.CANDIDATE and sent(drain(r), Prepare)


def test_a_booting_follower_waits_at_least_half_an_election_timeout() -> None:
    for seed in range(20):
        r = make("n1", now=0, seed=seed)
        r.tick(CFG_T // 2 - 1)
        assert not sent(drain(r), Prepare), f"seed={seed}"
        r.tick(CFG_T)
        assert sent(drain(r), Prepare), f"seed={seed}"


CFG_T = 500


def test_heartbeats_from_the_leader_keep_a_follower_from_electing() -> None:
    r = make("n1", now=0)
    for t in range(0, 5000, 100):
        r.receive(Heartbeat("n2", B2, 0, t // 100 + 1), t)
        r.tick(t)
    assert r.role is Role.FOLLOWER and r.leader == "n2"


def test_new_leader_adopts_the_highest_ballot_value_per_slot_and_fills_holes_with_noops() -> None:
    r = make("n1")
    r.tick(10_000)
    b = sent(drain(r), Prepare)[0].ballot
    low, high = Ballot(1, "n2"), Ballot(1, "n3")
    r.receive(Promise("n2", b, 1, (LogEntry(1, low, (b"a",)), LogEntry(3, low, (b"c",))), 0, 0), 0)
    r.receive(Promise("n3", b, 1, (LogEntry(1, high, (b"b",)),), 0, 0), 0)
    assert r.role is Role.LEADER
    accepts = {m.slot: m.value for m in sent(drain(r), Accept, "n2")}
    assert accepts == {1: (b"b",), 2: NOOP, 3: (b"c",)}


def test_candidate_behind_a_compacted_acceptor_catches_up_before_leading() -> None:
    r = make("n1")
    r.tick(10_000)
    b = sent(drain(r), Prepare)[0].ballot
    r.receive(Promise("n2", b, 1, (), 40, 40), 0)
    r.receive(Promise("n3", b, 1, (), 0, 0), 0)
    assert r.role is Role.CANDIDATE
    assert sent(drain(r), CatchupRequest, "n2")


def _leader() -> tuple[Replica, Ballot]:
    r = make("n1")
    r.tick(10_000)
    b = sent(drain(r), Prepare)[0].ballot
    for n in IDS:
        r.receive(Promise(n, b, 1, (), 0, 0), 10_000)
    drain(r)
    assert r.role is Role.LEADER
    return r, b


def test_a_single_nack_does_not_trigger_a_storm_of_prepares() -> None:
    r, b = _leader()
    r.receive(Nack("n3", b, Ballot(b.round + 5, "n3")), 10_001)
    ready = drain(r)
    assert r.role is Role.LEADER and not sent(ready, Prepare)


def test_a_quorum_of_nacks_makes_the_leader_step_down() -> None:
    r, b = _leader()
    for n in ("n2", "n3"):
        r.receive(Nack(n, b, Ballot(b.round + 5, "n3")), 10_001)
    assert r.role is Role.FOLLOWER
    assert not sent(drain(r), Prepare)


def test_a_higher_ballot_heartbeat_makes_the_leader_step_down() -> None:
    r, b = _leader()
    r.receive(Heartbeat("n3", Ballot(b.round + 1, "n3"), 0, 1), 10_001)
    assert r.role is Role.FOLLOWER and r.leader == "n3"


def test_leader_that_hears_no_quorum_within_the_election_timeout_steps_down() -> None:
    r, _ = _leader()
    r.tick(10_000 + 3 * CFG_T)
    assert r.role is Role.FOLLOWER


def test_leadership_is_gained_lost_and_regained_by_heartbeats() -> None:
    net = Net()
    net.tick(2000)
    leaders = [i for i, r in net.reps.items() if r.role is Role.LEADER]
    assert len(leaders) == 1
    old = leaders[0]
    net.down.add(old)
    for _ in range(40):
        net.tick(100)
    new = [i for i, r in net.reps.items() if r.role is Role.LEADER and i != old]
    assert len(new) == 1
    net.down.discard(old)
    for _ in range(5):
        net.tick(50)
    assert net.reps[old].role is Role.FOLLOWER and net.reps[old].leader == new[0]


def test_external_detector_drives_leadership_without_timers() -> None:
    net = Net(external=True)
    for _ in range(50):
        net.tick(100)
    assert all(r.role is Role.FOLLOWER for r in net.reps.values())
    net.reps["n2"].leader_is("n2")
    net.stabilize()
    assert net.reps["n2"].role is Role.LEADER
    for n in ("n1", "n3"):
        net.reps[n].leader_is("n2")
    net.reps["n3"].leader_is("n3")      # the detector changes its mind
    net.stabilize()
    assert net.reps["n3"].role is Role.LEADER and net.reps["n2"].role is Role.FOLLOWER


def test_chosen_entries_are_applied_strictly_in_slot_order() -> None:
    r, b = _leader()
    for c in (b"a", b"b", b"c"):
        r.propose(c)
        drain(r)
    # slots 1..3 are in flight; slot 3 and 2 are chosen before slot 1
    for slot in (3, 2):
        for n in ("n1", "n2"):
            r.receive(Accepted(n, b, slot), 10_001)
    assert drain(r).committed == []
    for n in ("n1", "n2"):
        r.receive(Accepted(n, b, 1), 10_001)
    assert [s for s, _ in drain(r).committed] == [1, 2, 3]


def test_commit_index_travels_on_accepts_and_heartbeats() -> None:
    r = make("n1")
    r.receive(Accept("n2", B2, 1, (b"x",), 0), 0)
    r.receive(Accept("n2", B2, 2, (b"y",), 1), 0)
    assert [s for s, _ in drain(r).committed] == [1]
    r.receive(Heartbeat("n2", B2, 2, 1), 10)
    assert [s for s, _ in drain(r).committed] == [2]


def test_follower_requests_missing_chosen_entries_from_the_leader() -> None:
    r = make("n1")
    r.receive(Heartbeat("n2", B2, 7, 1), 0)
    req = sent(drain(r), CatchupRequest, "n2")
    assert req == [CatchupRequest("n1", 1, 7)]


def test_follower_entry_from_an_older_ballot_is_not_taken_as_chosen() -> None:
    r = make("n1")
    r.receive(Accept("n2", B1, 1, (b"old",), 0), 0)
    r.receive(Heartbeat("n2", B2, 1, 1), 0)
    assert drain(r).committed == []


def test_a_read_is_served_only_after_a_quorum_confirms_the_leader() -> None:
    r, b = _leader()
    assert r.read("q1")
    hb = sent(drain(r), Heartbeat, "n2")
    assert hb
    rnd = hb[-1].round
    r.receive(HeartbeatAck("n1", b, rnd, 0), 10_001)
    assert "q1" not in drain(r).reads
    r.receive(HeartbeatAck("n2", b, rnd, 0), 10_001)
    assert drain(r).reads == ["q1"]


def test_a_lost_accept_is_resent_though_reads_keep_the_heartbeat_busy() -> None:
    """A read's heartbeat counts as the leader's beat; the leader's other periodic duties
    (resending Accepts, promoting learners, handing over) are timed apart from it, or a
    read every 10 ms would keep a lost Accept from ever being resent."""
    r, b = _leader()
    assert r.propose(b"cmd")
    first = sent(drain(r), Accept, "n3")
    assert first                                      # ... and lost on the way to n3
    resent: list[Message] = []
    for t in range(10_010, 10_300, 10):
        assert r.read(("q", t))
        r.tick(t)
        resent += sent(drain(r), Accept, "n3")
    assert resent and resent[0].slot == first[0].slot


def test_reads_and_queued_commands_are_aborted_when_the_leader_steps_down() -> None:
    r, b = _leader()
    r.read("q")
    drain(r)
    r.receive(Heartbeat("n3", Ballot(b.round + 1, "n3"), 0, 1), 10_001)
    assert drain(r).aborted_reads == ["q"]


def test_non_leader_refuses_proposals_and_reads() -> None:
    r = make("n1")
    assert not r.propose(b"x") and not r.read("q")


def test_three_replicas_commit_and_agree() -> None:
    net = Net()
    net.tick(2000)
    leader = next(r for r in net.reps.values() if r.role is Role.LEADER)
    for i in range(10):
        leader.propose(f"c{i}".encode())
    net.stabilize()
    net.tick(100)
    logs = [[v for _, v in net.applied[i]] for i in IDS]
    assert logs[0] == logs[1] == logs[2]
    flat = [c for batch in logs[0] for c in batch]
    assert flat == [f"c{i}".encode() for i in range(10)]


def test_restart_replays_the_committed_log_from_disk() -> None:
    net = Net()
    net.tick(2000)
    leader_id = next(i for i, r in net.reps.items() if r.role is Role.LEADER)
    net.reps[leader_id].propose(b"x")
    net.stabilize()
    net.tick(100)
    r = make("n1", durable=net.stores["n1"].load())
    assert [v for _, v in drain(r).committed] == [v for _, v in net.applied["n1"]]


def test_acceptor_vouches_for_a_slot_it_compacted_so_a_new_leader_is_not_stuck() -> None:
    from coordsvc.core.types import Snapshot
    r = make("n1", durable=Durable(promised=B2, commit_index=5, snapshot=Snapshot(5, b"s")))
    r.receive(Accept("n3", B3, 4, (b"chosen",), 0), 0)
    assert sent(drain(r), Accepted, "n3") == [Accepted("n1", B3, 4)]


def _rebuilding_net() -> tuple[Net, str, str]:
    net = Net()
    net.tick(2000)
    leader = next(i for i, r in net.reps.items() if r.role is Role.LEADER)
    for i in range(5):
        net.reps[leader].propose(f"c{i}".encode())
    net.stabilize()
    net.tick(100)
    lost = next(i for i in IDS if i != leader)
    store = MemoryStore()
    store.rebuilding = True
    net.stores[lost] = store
    net.reps[lost] = make(lost, durable=store.load(), now=net.now)
    net.applied[lost] = []
    return net, leader, lost


def test_a_rebuilding_replacement_never_votes_until_it_has_led_a_phase1_without_its_vote() -> None:
    net, leader, lost = _rebuilding_net()
    r = net.reps[lost]
    r.receive(Prepare(leader, Ballot(50, leader), 1), net.now)
    r.receive(Accept(leader, Ballot(50, leader), 99, (b"x",), 0), net.now)
    r.receive(Heartbeat(leader, Ballot(50, leader), 0, 7), net.now)
    out = drain(r, net.stores[lost])
    assert not sent(out, Promise) and not sent(out, Accepted) and not sent(out, HeartbeatAck)
    assert out.persist.promised is None and not out.persist.entries


def test_a_rebuilding_replacement_catches_up_campaigns_and_regains_its_vote() -> None:
    net, leader, lost = _rebuilding_net()
    assert net.reps[lost].rebuilding
    for _ in range(100):
        net.tick(50)
        if not net.reps[lost].rebuilding:
            break
    r = net.reps[lost]
    assert not r.rebuilding and not net.stores[lost].rebuilding
    assert r.role is Role.LEADER            # it earned its vote by leading without it
    flat = [c for _, v in net.applied[lost] for c in v]
    assert flat[:5] == [f"c{i}".encode() for i in range(5)]
    r.propose(b"after")
    net.stabilize()
    net.tick(100)
    logs = [[v for _, v in net.applied[i]] for i in IDS]
    assert logs[0][-1] == logs[1][-1] == logs[2][-1] == (b"after",)


def test_a_rebuilding_replacement_campaigns_though_heartbeats_come_faster_than_its_timer() -> None:
    """Found by the whole-node simulator (which ticks a node only when next_timer_ms() is
    due, as runtime/node.py does): a timer counted from the last input never fired while
    the leader's heartbeats arrived a little faster than the heartbeat interval."""
    net, leader, lost = _rebuilding_net()
    lead, r = net.reps[leader], net.reps[lost]
    net.tick(50)                       # one heartbeat round: the replacement catches up
    assert r.rebuilding and r.commit_index == lead.commit_index and r.leader == leader
    now, hb_round = net.now, 100
    for _ in range(200):               # 200 heartbeats 45 ms apart: 18 election timeouts
        now += 45
        hb_round += 1
        r.receive(Heartbeat(leader, lead.ballot, lead.commit_index, hb_round), now)
        drain(r, net.stores[lost])
        if now >= r.next_timer_ms():
            r.tick(now)
            drain(r, net.stores[lost])
        if r.role is Role.CANDIDATE:
            return
    pytest.fail("the replacement never campaigned, so it never regains its vote")


# ------------------------------------------------------------------ phase 1 in chunks

def _candidate(cfg: Config = CFG) -> tuple[Replica, Ballot]:
    r = make("n1", cfg=cfg)
    r.tick(10_000)
    b = sent(drain(r), Prepare)[0].ballot
    return r, b


def _acceptor_with(entries: list[LogEntry], budget: int) -> Replica:
    store = MemoryStore()
    for e in entries:
        store.entries[e.slot] = e
    return make("n2", durable=store.load(), cfg=replace(CFG, message_budget_bytes=budget))


def test_promise_larger_than_budget_continues_at_the_same_ballot() -> None:
    b = Ballot(9, "n1")
    entries = [LogEntry(s, Ballot(3, "n3"), (b"v" * 100,)) for s in range(1, 6)]
    acc = _acceptor_with(entries, budget=300)
    acc.receive(Prepare("n1", b, 1), 0)
    first = sent(drain(acc), Promise, "n1")[0]
    assert [e.slot for e in first.accepted] == [1, 2] and first.next_slot == 3
    acc.receive(Prepare("n1", b, first.next_slot), 0)     # same ballot, from the next slot
    ready = drain(acc)
    second = sent(ready, Promise, "n1")[0]
    assert [e.slot for e in second.accepted] == [3, 4] and second.next_slot == 5
    assert ready.persist.promised is None                 # nothing new to make durable
    acc.receive(Prepare("n1", b, 5), 0)
    last = sent(drain(acc), Promise, "n1")[0]
    assert [e.slot for e in last.accepted] == [5] and last.next_slot == 0
    assert all(len(encode_peer(p)) <= 300 + ENVELOPE_BYTES for p in (first, second, last))


def test_a_candidate_asks_for_the_next_chunk_and_leads_only_on_complete_promises() -> None:
    r, b = _candidate()
    low = Ballot(1, "n2")
    r.receive(Promise("n2", b, 1, (LogEntry(1, low, (b"a",)),), 0, 0, next_slot=2), 0)
    r.receive(Promise("n3", b, 1, (LogEntry(1, low, (b"a",)),), 0, 0, next_slot=2), 0)
    ready = drain(r)
    assert r.role is Role.CANDIDATE          # two promises, neither complete
    assert {m.from_slot for m in sent(ready, Prepare)} == {2}
    assert {o.dst for o in ready.messages if isinstance(o.msg, Prepare)} == {"n2", "n3"}
    r.receive(Promise("n2", b, 2, (LogEntry(2, low, (b"b",)),), 0, 0), 0)
    assert r.role is Role.CANDIDATE          # one complete promise is not a quorum
    r.receive(Promise("n3", b, 2, (), 0, 0), 0)
    assert r.role is Role.LEADER
    accepts = {m.slot: m.value for m in sent(drain(r), Accept, "n2")}
    assert accepts == {1: (b"a",), 2: (b"b",)}   # values from the later chunk are adopted


def test_a_promise_chunk_not_asked_for_changes_nothing() -> None:
    r, b = _candidate()
    r.receive(Promise("n2", b, 1, (LogEntry(1, Ballot(1, "n2"), (b"a",)),), 0, 0, next_slot=2), 0)
    drain(r)
    # A chunk from elsewhere than where we asked (a stray or a duplicate of the first):
    r.receive(Promise("n2", b, 5, (), 0, 0), 0)
    r.receive(Promise("n2", b, 1, (LogEntry(1, Ballot(1, "n2"), (b"a",)),), 0, 0, next_slot=2), 0)
    r.receive(Promise("n3", b, 1, (), 0, 0), 0)
    assert r.role is Role.CANDIDATE and not r.promises["n2"].complete


def test_a_promise_that_requires_catch_up_lists_nothing_and_the_candidate_catches_up_at_once() -> None:
    acc = _acceptor_with([LogEntry(s, Ballot(3, "n3"), (b"v",)) for s in range(1, 400)], budget=300)
    acc.acceptor.commit_index = 399
    acc.receive(Prepare("n1", Ballot(9, "n1"), 1), 0)
    p = sent(drain(acc), Promise, "n1")[0]
    assert p.accepted == () and p.next_slot == 0 and p.snapshot_index == 399
    r, b = _candidate()
    r.receive(Promise("n2", b, 1, (), 399, 399), 0)        # one such promise is enough
    assert sent(drain(r), CatchupRequest, "n2") == [CatchupRequest("n1", 1, 399)]


def test_a_follower_that_promised_a_candidate_gives_it_an_election_timeout() -> None:
    r = make("n1", now=0)
    r.tick(CFG_T // 2 - 1)
    r.receive(Prepare("n2", Ballot(5, "n2"), 1), CFG_T - 10)
    r.tick(CFG_T + 10)                      # our own first timer would have fired by now
    assert r.role is Role.FOLLOWER and not sent(drain(r), Prepare, "n3")


def test_a_node_never_campaigns_with_a_round_it_could_not_store() -> None:
    r = make("n1", durable=Durable(promised=Ballot(MAX_ROUND, "n2")))
    r.tick(10_000)
    ready = drain(r)
    assert not sent(ready, Prepare) and ready.persist.high_water_round is None
    assert r.role is Role.FOLLOWER and r.status().rounds_exhausted
    with pytest.raises(ProtocolError):
        Ballot(MAX_ROUND, "n2").next_for("n1")


def test_config_refuses_counts_a_message_could_not_carry() -> None:
    with pytest.raises(ValueError, match="max_batch_commands"):
        Config(max_batch_commands=65_537)
    with pytest.raises(ValueError, match="positive"):
        Config(catchup_batch=0)


# ------------------------------------------------------------------ bounded by bytes

def _leader_with(cfg: Config) -> tuple[Replica, Ballot]:
    r = make("n1", cfg=cfg)
    r.tick(10_000)
    b = sent(drain(r), Prepare)[0].ballot
    for n in IDS:
        r.receive(Promise(n, b, 1, (), 0, 0), 10_000)
    drain(r)
    assert r.role is Role.LEADER
    return r, b


def test_an_accept_batch_is_cut_by_bytes_as_well_as_by_count() -> None:
    r, _ = _leader_with(replace(CFG, max_batch_bytes=100, max_batch_commands=512))
    for i in range(10):
        r.propose(b"%02d" % i + b"x" * 18)                 # 20 bytes, 25 on the wire
    values = [m.value for m in sent(drain(r), Accept, "n2")]
    assert [len(v) for v in values] == [3, 3, 3, 1]        # 5 + 3 * 25 <= 100 < 5 + 4 * 25
    assert all(value_bytes(v) <= 100 for v in values)


def test_one_command_above_the_batch_budget_still_travels_alone() -> None:
    r, _ = _leader_with(replace(CFG, max_batch_bytes=64))
    r.propose(b"small")
    r.propose(b"L" * 1000)
    r.propose(b"tail")
    values = [m.value for m in sent(drain(r), Accept, "n2")]
    assert values == [(b"small",), (b"L" * 1000,), (b"tail",)]


def test_eight_one_mib_values_at_once_never_make_an_oversize_accept() -> None:
    r, _ = _leader_with(CFG)
    for i in range(8):
        assert r.propose(encode_request(Request(f"c{i}", 1, 1, Put("k" * 512, b"v" * MiB))))
    accepts = sent(drain(r), Accept, "n2")
    assert sum(len(m.value) for m in accepts) == 8
    assert all(len(encode_peer(m)) <= MAX_FRAME_BYTES for m in accepts)


def test_a_command_larger_than_any_accept_could_carry_is_refused_as_misuse() -> None:
    r, _ = _leader_with(CFG)
    with pytest.raises(UsageError):
        r.propose(b"x" * (MAX_COMMAND_BYTES + 1))
    assert r.status().pending_commands == 0


def test_propose_refuses_once_the_pending_bytes_bound_is_reached() -> None:
    r, _ = _leader_with(replace(CFG, max_pending_bytes=1000, max_inflight_slots=1))
    assert r.propose(b"a" * 10)
    drain(r)                                  # the one slot in flight holds it
    assert r.propose(b"b" * 600) and r.propose(b"c" * 400)
    assert not r.propose(b"d")                # 1000 bytes queued: past the bound
    assert r.status().pending_bytes == 1000
    assert not sent(drain(r), Accept)         # nothing more fits in flight either


def test_no_new_slot_opens_while_the_values_in_flight_exceed_the_bytes_bound() -> None:
    r, b = _leader_with(replace(CFG, max_inflight_bytes=3000, max_batch_bytes=1100))
    for _ in range(6):
        r.propose(b"v" * 1000)
    slots = [m.slot for m in sent(drain(r), Accept, "n2")]
    assert len(slots) == 3 and r.status().inflight_bytes >= 3000
    for n in ("n1", "n2"):
        r.receive(Accepted(n, b, slots[0]), 10_001)   # one slot chosen frees room for one more
    assert len(sent(drain(r), Accept, "n2")) == 1
    assert r.status().pending_commands == 2


def test_config_refuses_a_batch_budget_above_the_protocol_limit() -> None:
    with pytest.raises(ValueError, match="max_batch_bytes"):
        Config(max_batch_bytes=MESSAGE_BUDGET_BYTES + 1)
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        Config(snapshot_chunk_bytes=SNAPSHOT_CHUNK_BYTES + 1)
    with pytest.raises(ValueError, match="positive"):
        Config(max_pending_bytes=0)


# ------------------------------------------------------------------ catch-up and snapshots

def test_a_catchup_reply_is_cut_by_bytes() -> None:
    store = MemoryStore()
    for s in range(1, 11):
        store.entries[s] = LogEntry(s, Ballot(1, "n1"), (b"v" * 100,))
    store.commit_index = 10
    r = make("n1", durable=store.load(), cfg=replace(CFG, message_budget_bytes=400))
    r.receive(CatchupRequest("n2", 1, 10), 0)
    reply = sent(drain(r), CatchupReply, "n2")[0]
    assert [s for s, _ in reply.chosen] == [1, 2, 3]      # 3 * 126 <= 400 < 4 * 126
    assert sum(chosen_bytes(v) for _, v in reply.chosen) <= 400


def _behind_follower() -> Replica:
    r = make("n1")
    r.receive(Heartbeat("n2", B2, 7, 1), 0)       # the leader n2 has committed 7
    assert sent(drain(r), CatchupRequest, "n2") == [CatchupRequest("n1", 1, 7)]
    return r


def test_a_catchup_reply_from_a_peer_not_asked_changes_nothing() -> None:
    r = _behind_follower()
    r.receive(CatchupReply("n3", B2, ((1, (b"forged",)),), None, 1), 0)
    ready = drain(r)
    assert not ready.persist.entries and not ready.committed and r.commit_index == 0
    assert r.status().rejected_replies == 1
    r.receive(CatchupReply("n2", B2, ((1, (b"real",)),), None, 7), 0)
    assert [v for _, v in drain(r).committed] == [(b"real",)]


def test_a_catchup_reply_without_a_request_in_flight_changes_nothing() -> None:
    r = make("n1")
    r.receive(CatchupReply("n2", B2, ((1, (b"x",)),), None, 1), 0)
    assert not drain(r).persist.entries and r.status().rejected_replies == 1


SNAP = b"".join(b"%06d" % i for i in range(100))   # 600 bytes of "state"


def _snapshot_net(chunk: int = 64) -> tuple[Net, Replica, Replica]:
    """n1 leads with a snapshot at 5 (and entries 6..7); n3 is a blank follower behind it."""
    cfg = replace(CFG, snapshot_chunk_bytes=chunk)
    store = MemoryStore()
    store.snapshot = Snapshot(5, SNAP)
    store.commit_index = 7
    store.promised = Ballot(4, "n1")
    for s in (6, 7):
        store.entries[s] = LogEntry(s, Ballot(4, "n1"), (b"e%d" % s,))
    leader = make("n1", durable=store.load(), cfg=cfg)
    follower = make("n3", cfg=cfg)
    return Net(), leader, follower


def _shuttle(a: Replica, b: Replica, rounds: int = 100,
             tamper: Callable[[Message], Message | None] | None = None) -> list[Message]:
    """Deliver everything between a and b until quiet; return what was delivered."""
    seen: list[Message] = []
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            if not src.has_ready():
                continue
            for o in drain(src).messages:
                if o.dst != dst.id:
                    continue
                msg = tamper(o.msg) if tamper is not None else o.msg
                if msg is not None:
                    seen.append(msg)
                    dst.receive(msg, 0)
                    moved = True
        if not moved:
            return seen
    return seen


def test_a_follower_behind_the_snapshot_fetches_it_in_chunks_and_installs_it() -> None:
    _, leader, follower = _snapshot_net(chunk=64)
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 1), 0)
    installs: list[Snapshot] = []
    orig = follower.ready

    def spy() -> Ready:
        ready = orig()
        if ready.install is not None:
            installs.append(ready.install)
        return ready

    follower.ready = spy  # type: ignore[method-assign]
    seen = _shuttle(follower, leader)
    chunks = [m for m in seen if isinstance(m, SnapshotChunk)]
    assert len(chunks) == 10 and all(len(c.data) <= 64 for c in chunks)
    assert installs == [Snapshot(5, SNAP)]
    assert follower.commit_index == 7 and follower.status().fetch_peer is None


def test_a_follower_that_fetched_a_superseded_snapshot_catches_up_from_the_kept_tail() -> None:
    _, leader, follower = _snapshot_net(chunk=64)
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 1), 0)
    drain(leader)                                     # the leader applies 6..7
    paused: list[int] = []

    def pause_at_128(m: Message) -> Message | None:
        if isinstance(m, SnapshotChunk) and m.offset == 128 and not paused:
            paused.append(m.offset)
            return None
        return m

    _shuttle(follower, leader, tamper=pause_at_128)   # mid-transfer of the snapshot at 5 ...
    leader.compact(Snapshot(7, b"state through 7"))   # ... the leader compacts again
    assert sorted(leader.acceptor.log) == [6, 7]      # the fetcher's tail stays
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 2), 1_000)
    seen = _shuttle(follower, leader)
    assert follower.commit_index == 7 and follower.status().snapshot_index == 5
    assert [m.chosen for m in seen if isinstance(m, CatchupReply)] == [
        ((6, (b"e6",)), (7, (b"e7",)))]               # entries, not the snapshot at 7
    leader.tick(CFG.snapshot_retain_ms + 1)           # nobody fetches the old one now
    assert sorted(leader.acceptor.log) == []
    leader.receive(CatchupRequest("n2", 6, 7), CFG.snapshot_retain_ms + 2)
    reply = sent(drain(leader), CatchupReply, "n2")
    assert reply and reply[0].snapshot is not None and reply[0].snapshot.index == 7


def test_a_snapshot_transfer_resumes_from_its_offset_after_a_drop() -> None:
    _, leader, follower = _snapshot_net(chunk=64)
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 1), 0)
    dropped: list[int] = []

    def drop_third_chunk(m: Message) -> Message | None:
        if isinstance(m, SnapshotChunk) and m.offset == 128 and not dropped:
            dropped.append(m.offset)
            return None
        return m

    _shuttle(follower, leader, tamper=drop_third_chunk)
    st = follower.status()
    assert st.fetch_snapshot_bytes == 128 and follower.commit_index == 0
    # The leader is alive (its heartbeat comes) and our request went unanswered for
    # longer than the resend interval: ask again, from the offset we reached.
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 2), 1_000)
    req = sent(drain(follower), SnapshotRequest, "n1")
    assert req == [SnapshotRequest("n3", 5, 128)]
    leader.receive(req[0], 10_000)
    _shuttle(follower, leader)
    assert follower.commit_index == 7


def test_a_damaged_snapshot_is_never_installed() -> None:
    _, leader, follower = _snapshot_net(chunk=64)
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 1), 0)
    damaged: list[int] = []

    def flip_once(m: Message) -> Message | None:
        if isinstance(m, SnapshotChunk) and m.offset == 64 and not damaged:
            damaged.append(1)
            return SnapshotChunk(m.src, m.snapshot, m.offset, b"X" + m.data[1:])
        return m

    installs: list[Snapshot] = []
    orig = follower.ready

    def spy() -> Ready:
        ready = orig()
        if ready.install is not None:
            installs.append(ready.install)
        return ready

    follower.ready = spy  # type: ignore[method-assign]
    _shuttle(follower, leader, tamper=flip_once)
    assert follower.status().bad_snapshots == 1
    assert installs == [Snapshot(5, SNAP)]        # the good copy, fetched again from 0


def test_a_snapshot_chunk_from_a_peer_not_asked_changes_nothing() -> None:
    _, leader, follower = _snapshot_net(chunk=1000)
    follower.receive(Heartbeat("n1", Ballot(4, "n1"), 7, 1), 0)
    _shuttle(follower, leader, tamper=lambda m: None if isinstance(m, SnapshotChunk) else m)
    st = follower.status()
    assert st.fetch_snapshot_index == 5 and st.fetch_peer == "n1"
    bogus = b"Z" * len(SNAP)
    info = SnapshotInfo(5, len(bogus), checksum(bogus))
    follower.receive(SnapshotChunk("n2", info, 0, bogus), 0)
    assert follower.status().rejected_replies == 1 and follower.commit_index == 0
    assert drain(follower).install is None


def test_status_is_a_frozen_value_not_a_view_of_the_replica() -> None:
    r, _ = _leader()
    st = r.status()
    assert isinstance(st, ReplicaStatus) and st.role is Role.LEADER and st.serving
    with pytest.raises(FrozenInstanceError):
        st.role = Role.FOLLOWER  # type: ignore[misc]
    r.receive(Heartbeat("n3", Ballot(99, "n3"), 0, 1), 10_001)
    assert st.role is Role.LEADER and r.status().role is Role.FOLLOWER
