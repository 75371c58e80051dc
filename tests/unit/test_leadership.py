"""Leadership strategies, each alone: functional (heartbeats, election timer, pre-vote)
and external (a failure detector names the leader). Named after the rule each checks."""
from __future__ import annotations

import pytest

from coordsvc.core.messages import (
    Accept,
    Heartbeat,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    TimeoutNow,
)
from coordsvc.core.replica import Role
from coordsvc.core.types import Ballot, UsageError

from .helpers import CFG, IDS, Net, drain, make, sent

T = CFG.election_timeout_ms


# --- functional ------------------------------------------------------------------------

def test_functional_leadership_campaigns_when_the_election_timer_runs_out() -> None:
    r = make("n1")
    r.tick(T // 2 - 1)
    assert r.role is Role.FOLLOWER and not sent(drain(r), Prepare)
    r.tick(3 * T)
    assert r.role is Role.CANDIDATE and sent(drain(r), Prepare)


def test_functional_leadership_takes_no_failure_detector_input() -> None:
    r = make("n1")
    drain(r)
    before = r.status()
    with pytest.raises(UsageError):
        r.leader_is("n1")
    with pytest.raises(UsageError):
        r.suspect("n2")
    assert r.status() == before and not r.has_ready()


# --- external ----------------------------------------------------------------------------

def test_external_leadership_never_campaigns_on_a_timer() -> None:
    r = make("n1", external=True)
    for t in range(0, 20 * T, 100):
        r.tick(t)
    assert r.role is Role.FOLLOWER and not sent(drain(r), Prepare)


def test_external_candidate_nacked_by_one_live_node_while_the_third_is_down_raises_its_ballot() -> None:
    net = Net(external=True)
    net.down.add("n3")
    # n1 once promised a high ballot (an old leader's): it nacks anything below it.
    high = Ballot(5, "n3")
    net.reps["n1"].receive(Prepare("n3", high, 1), 0)
    net.stabilize()
    net.reps["n2"].leader_is("n2")
    net.stabilize()
    assert net.reps["n2"].role is Role.CANDIDATE     # one Nack, never a quorum of them
    for _ in range(20):
        net.tick(100)
        if net.reps["n2"].role is Role.LEADER:
            break
    assert net.reps["n2"].role is Role.LEADER
    assert net.reps["n2"].status().ballot > high


def test_external_leader_is_self_while_beaten_prepares_a_higher_ballot_at_once() -> None:
    r = make("n2", external=True)
    r.leader_is("n2")
    b = sent(drain(r), Prepare)[0].ballot
    r.receive(Nack("n1", b, Ballot(b.round + 3, "n1")), 1)
    drain(r)
    r.leader_is("n2")
    again = sent(drain(r), Prepare)
    assert again and all(p.ballot > Ballot(b.round + 3, "n1") for p in again)


def test_external_leader_arms_its_timer_after_taking_over() -> None:
    """A driver that sleeps until next_timer_ms() must not spin once we lead."""
    r = make("n1", external=True)
    r.leader_is("n1")
    b = sent(drain(r), Prepare)[0].ballot
    for n in IDS:
        r.receive(Promise(n, b, 1, (), 0, 0), 10)
    drain(r)
    assert r.role is Role.LEADER
    now, ticks = 10, 0
    while now < 10 + 1000:
        due = r.next_timer_ms()
        assert due > now or ticks == 0, f"timer stuck at {due} while now={now}"
        now = max(now + 1, due)
        r.tick(now)
        drain(r)
        ticks += 1
    # about one tick per heartbeat interval, not one per millisecond
    assert ticks <= 1000 // CFG.heartbeat_ms + 2


def test_external_detector_choosing_another_node_makes_the_leader_step_down() -> None:
    net = Net(external=True)
    net.reps["n1"].leader_is("n1")
    net.stabilize()
    assert net.reps["n1"].role is Role.LEADER
    net.reps["n1"].leader_is("n2")
    assert net.reps["n1"].role is Role.FOLLOWER and net.reps["n1"].leader == "n2"


# --- pre-vote ------------------------------------------------------------------------------

def test_a_follower_asks_for_prevotes_before_raising_its_ballot() -> None:
    r = make("n1", prevote=True)
    r.tick(3 * T)
    ready = drain(r)
    assert r.role is Role.FOLLOWER and not sent(ready, Prepare)
    assert ready.persist.high_water_round is None          # nothing raised, nothing saved
    assert {m.dst for m in ready.messages if isinstance(m.msg, PreVote)} == set(IDS)


def test_a_majority_of_prevotes_starts_phase1() -> None:
    r = make("n1", prevote=True)
    r.tick(3 * T)
    ask = sent(drain(r), PreVote)[0]
    r.receive(PreVoteReply("n1", ask.round, True), 3 * T)
    assert r.role is Role.FOLLOWER
    r.receive(PreVoteReply("n2", ask.round, False), 3 * T)
    assert r.role is Role.FOLLOWER
    r.receive(PreVoteReply("n3", ask.round, True), 3 * T)
    assert r.role is Role.CANDIDATE and sent(drain(r), Prepare)


def test_a_prevote_reply_to_an_older_question_counts_for_nothing() -> None:
    r = make("n1", prevote=True)
    r.tick(3 * T)
    ask = sent(drain(r), PreVote)[0]
    for n in IDS:
        r.receive(PreVoteReply(n, ask.round - 1, True), 3 * T)
    assert r.role is Role.FOLLOWER


def test_a_voter_that_hears_a_leader_refuses_a_prevote() -> None:
    r = make("n2", prevote=True)
    r.receive(Heartbeat("n1", Ballot(1, "n1"), 0, 1), 100)
    drain(r)
    r.receive(PreVote("n3", 2, 0), 100 + T - 1)
    assert sent(drain(r), PreVoteReply)[0].granted is False
    r.receive(PreVote("n3", 2, 0), 100 + T)
    assert sent(drain(r), PreVoteReply)[0].granted is True


def test_a_voter_refuses_a_prevote_from_a_node_behind_its_commit_index() -> None:
    r = make("n2", prevote=True)
    b = Ballot(1, "n1")
    r.receive(Accept("n1", b, 1, (b"a",), 0), 0)
    r.receive(Accept("n1", b, 2, (), 1), 0)
    drain(r)
    assert r.commit_index == 1
    r.receive(PreVote("n3", 2, 0), 10 * T)
    assert sent(drain(r), PreVoteReply)[0].granted is False
    r.receive(PreVote("n3", 2, 1), 10 * T)
    assert sent(drain(r), PreVoteReply)[0].granted is True


def test_a_prevote_changes_nothing_at_the_voter() -> None:
    r = make("n2", prevote=True)
    drain(r)                          # the first save records the bootstrap configuration
    before = r.status()
    r.receive(PreVote("n3", 99, 0), 10 * T)
    ready = drain(r)
    assert ready.persist.empty() and r.status() == before


def _run_partition(prevote: bool) -> tuple[str, Ballot, Ballot, str | None]:
    net = Net()
    if not prevote:
        from coordsvc.core.leadership import Functional
        for r in net.reps.values():
            r.leadership = Functional(prevote=False)
    net.tick(2000)
    leader = next(i for i, r in net.reps.items() if r.role is Role.LEADER)
    ballot = net.reps[leader].status().ballot
    lone = next(i for i in IDS if i != leader)
    net.isolate(lone)
    for _ in range(60):                # twelve election timeouts alone
        net.tick(100)
    assert net.reps[leader].role is Role.LEADER
    net.cut.clear()
    for _ in range(40):
        net.tick(50)
    now = next((i for i, r in net.reps.items() if r.role is Role.LEADER), None)
    return leader, ballot, net.reps[leader].status().ballot, now


def test_a_healed_partition_does_not_depose_a_healthy_leader() -> None:
    leader, before, after, now = _run_partition(prevote=True)
    assert now == leader and after == before


def test_without_prevote_a_healed_partition_deposes_the_leader() -> None:
    """The contrast that shows the rule above is the pre-vote's doing."""
    leader, before, after, now = _run_partition(prevote=False)
    assert (now, after) != (leader, before)


# --- transfer --------------------------------------------------------------------------------

def test_timeout_now_from_the_leader_we_follow_starts_phase1_at_once() -> None:
    r = make("n2", prevote=True)
    b = Ballot(1, "n1")
    r.receive(Heartbeat("n1", b, 0, 1), 10)
    drain(r)
    r.receive(TimeoutNow("n3", b), 11)           # not our leader: nothing
    assert r.role is Role.FOLLOWER
    r.receive(TimeoutNow("n1", Ballot(0, "n1")), 11)   # not its ballot: nothing
    assert r.role is Role.FOLLOWER
    r.receive(TimeoutNow("n1", b), 12)
    assert r.role is Role.CANDIDATE
    assert all(p.ballot > b for p in sent(drain(r), Prepare))
