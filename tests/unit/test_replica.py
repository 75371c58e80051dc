"""One test per rule of the multi-Paxos replica, named after the rule."""
from __future__ import annotations

import pytest

from coordsvc.core.messages import (
    Accept,
    Accepted,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Nack,
    Prepare,
    Promise,
)
from coordsvc.core.replica import Replica, Role
from coordsvc.core.types import NOOP, Ballot, Durable, Entry, SafetyViolation, UsageError
from coordsvc.storage.memory import MemoryStore

from .helpers import IDS, Net, drain, make, sent

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
    assert ready.persist.entries == [Entry(1, B2, (b"x",))]
    assert sent(ready, Accepted, "n2") == [Accepted("n1", B2, 1)]


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
    r.receive(Promise("n2", b, 1, (Entry(1, low, (b"a",)), Entry(3, low, (b"c",))), 0, 0), 0)
    r.receive(Promise("n3", b, 1, (Entry(1, high, (b"b",)),), 0, 0), 0)
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
