"""Membership as replicated state (WAVE2 §6): one test per rule, named after it."""
from __future__ import annotations

import random

import pytest

from coordsvc.core.leadership import Functional
from coordsvc.core.membership import (
    ChangeKind,
    ConfigHistory,
    Member,
    Membership,
    MembershipChange,
    change_in,
)
from coordsvc.core.messages import (
    Accept,
    Accepted,
    HeartbeatAck,
    Prepare,
    Promise,
    TimeoutNow,
)
from coordsvc.core.replica import Replica, Role
from coordsvc.core.types import Ballot, Config, Durable, LogEntry, Snapshot, UsageError

from .helpers import BOOT, MNet, add, remove

CFG = Config(heartbeat_ms=50, election_timeout_ms=500)




# --- config(s) ---------------------------------------------------------------------

def test_config_of_a_slot_is_the_bootstrap_with_every_change_chosen_below_it() -> None:
    boot = Membership.bootstrap(BOOT)
    log = [LogEntry(1, Ballot(1, "n1"), (b"x",)), LogEntry(2, Ballot(1, "n1"), add("n4").value())]
    r = Replica("n1", BOOT, Durable(entries=tuple(log), commit_index=2), random.Random(1), 0, CFG)
    assert r.config_for(2) == boot
    after = r.config_for(3)
    assert after.get("n4") == Member("n4", 2, False, "tcp://127.0.0.1:714")
    assert after.voter_keys == boot.voter_keys and r.config == after


def test_a_change_not_yet_chosen_does_not_decide_any_quorum_at_a_follower() -> None:
    log = [LogEntry(1, Ballot(1, "n1"), add("n4").value())]
    r = Replica("n1", BOOT, Durable(entries=tuple(log), commit_index=0), random.Random(1), 0, CFG)
    assert r.config == Membership.bootstrap(BOOT) and r.config_for(2).get("n4") is None


def test_a_change_value_never_collides_with_a_client_command() -> None:
    from coordsvc.core.commands import Put, Request, encode_request
    assert change_in((encode_request(Request("c", 1, 0, Put("k", b"\xc1v"))),)) is None
    assert change_in(add("n4").value()) == add("n4")


def test_config_history_forgets_only_what_compacted_slots_needed() -> None:
    boot = Membership.bootstrap(BOOT)
    h = ConfigHistory(1, boot)
    with_n4 = boot.apply(add("n4"), 5)
    h.add(5, with_n4)
    h.compact(3)
    assert h.at(4) == boot and h.at(6) == with_n4
    h.compact(5)
    assert h.at(6) == with_n4 and h.at(1) == with_n4


def test_each_change_adds_or_removes_at_most_one_voter() -> None:
    boot = Membership.bootstrap(BOOT)
    a = boot.apply(add("n4"), 7)
    assert a.voter_keys == boot.voter_keys                       # a learner: no voter
    b = a.apply(MembershipChange(ChangeKind.PROMOTE, Member("n4", 7)), 9)
    assert len(b.voter_keys - a.voter_keys) == 1 and a.voter_keys <= b.voter_keys
    with pytest.raises(UsageError, match="already a member"):
        b.apply(add("n4"), 11)
    with pytest.raises(UsageError, match="not a member"):
        b.apply(remove(Member("n4", 3)), 11)                      # another incarnation


# --- one change at a time, pipeline drained -----------------------------------------

def test_a_change_waits_until_everything_before_it_is_chosen() -> None:
    net = MNet()
    lead = net.elect()
    net.down |= {i for i in BOOT if i != lead.id}          # nothing gets chosen
    assert lead.propose(b"w1")
    net.stabilize()
    assert lead.request_change(add("n4")) is None
    ready = lead.ready()
    lead.advance()
    assert not [o for o in ready.messages if isinstance(o.msg, Accept)
                and change_in(o.msg.value) is not None]
    net.down.clear()
    net.tick(100)                                          # w1 chosen, then the change
    assert lead.config.get("n4") is not None


def test_nothing_is_proposed_after_a_change_until_it_is_chosen() -> None:
    net = MNet()
    lead = net.elect()
    net.down |= {i for i in BOOT if i != lead.id}
    assert lead.request_change(add("n4")) is None
    lead.ready()
    lead.advance()
    change_slot = lead.change_slot
    assert change_slot is not None
    assert lead.propose(b"after")
    ready = lead.ready()
    lead.advance()
    assert not [o for o in ready.messages if isinstance(o.msg, Accept) and o.msg.slot > change_slot]
    net.down.clear()
    net.tick(100, 3)
    assert lead.commit_index > change_slot            # and then "after" went through


def test_a_second_change_while_one_is_in_flight_is_refused_with_a_reason() -> None:
    net = MNet()
    lead = net.elect()
    net.down |= {i for i in BOOT if i != lead.id}
    assert lead.request_change(add("n4")) is None
    why = lead.request_change(add("n5"))
    assert why is not None and "in flight" in why
    net.stabilize()
    assert "in flight" in (lead.request_change(add("n5")) or "")


# --- learners ------------------------------------------------------------------------

def _grow(net: MNet, node: str) -> Replica:
    net.change(add(node))
    new = net.join(node)
    net.tick(50, 10)
    return new


def test_a_joining_node_learns_the_configuration_then_which_member_it_is() -> None:
    net = MNet()
    net.elect()
    net.write(5)
    n4 = _grow(net, "n4")
    assert n4.history is not None and n4.incarnation is not None
    assert n4.config.get("n4").incarnation == n4.incarnation   # type: ignore[union-attr]
    assert net.stores["n4"].incarnation == n4.incarnation       # persisted


def test_a_learner_is_promoted_once_caught_up_and_then_counts() -> None:
    net = MNet()
    net.elect()
    n4 = _grow(net, "n4")
    net.tick(50, 10)
    assert net.leader().config.votes("n4", n4.incarnation or 0)
    net.down |= {"n2", "n3"} - {net.leader().id}
    # 4 voters: the leader and n4 alone are not a quorum; with a third they are
    net.write(0)
    assert n4.config.quorum == 3


def test_a_learner_is_not_promoted_while_it_lags() -> None:
    net = MNet()
    lead = net.elect()
    for _ in range(40):
        net.write(1)
    net.change(add("n4"))
    m4 = lead.config.get("n4")
    assert m4 is not None and lead.commit_index > 40
    # n4 reports a commit index far behind: no promotion
    for _ in range(5):
        lead.receive(HeartbeatAck("n4", lead.ballot, lead.hb_round, 0, m4.incarnation), net.now)
        net.tick(50)
    assert not lead.config.get("n4").voting                     # type: ignore[union-attr]


def test_a_learner_acceptance_never_counts_toward_a_quorum() -> None:
    net = MNet()
    lead = net.elect()
    net.change(add("n4"))
    m4 = lead.config.get("n4")
    assert m4 is not None
    net.down |= {i for i in BOOT if i != lead.id}
    assert lead.propose(b"x")
    net.stabilize()                                  # its own vote only
    slot = max(lead.inflight)
    before = lead.commit_index
    lead.receive(Accepted("n4", lead.ballot, slot, m4.incarnation), net.now)
    assert lead.commit_index == before             # leader + learner is no majority of 3


def test_a_vote_from_another_incarnation_of_the_same_id_is_not_counted() -> None:
    net = MNet()
    lead = net.elect()
    other = next(i for i in BOOT if i != lead.id)
    net.down |= {i for i in BOOT if i != lead.id}
    assert lead.propose(b"x")
    net.stabilize()                                  # its own vote only
    slot = max(lead.inflight)
    before = lead.commit_index
    lead.receive(Accepted(other, lead.ballot, slot, 99), net.now)    # not incarnation 0
    assert lead.commit_index == before
    lead.receive(Accepted(other, lead.ballot, slot, 0), net.now)
    assert lead.commit_index == slot


def test_a_learner_never_campaigns() -> None:
    net = MNet()
    net.elect()
    net.change(add("n4"))
    n4 = net.join("n4")
    n4.promote_gap = -1
    for r in net.reps.values():
        r.promote_gap = -1                             # never promote in this test
    net.tick(50, 10)
    net.down |= set(BOOT)
    for _ in range(30):
        net.tick(100)
    assert n4.role is Role.FOLLOWER and n4.ballot.round == 0


# --- phase 1 over the chain ------------------------------------------------------------

def test_phase1_needs_a_majority_of_every_configuration_in_the_recovered_chain() -> None:
    """A candidate with commit 0 recovers "remove n3" at slot 1 from n2's promise: it
    must then also hold a majority of {n1, n2}, i.e. n2's promise *and* its own."""
    boot = Membership.bootstrap(BOOT)
    rm = remove(Member("n3")).value()
    r = Replica("n1", BOOT, Durable(), random.Random(1), 0, CFG, leadership=Functional(False))
    r.tick(10_000)
    ready = r.ready()
    r.advance()
    b = next(o.msg.ballot for o in ready.messages if isinstance(o.msg, Prepare))
    old = Ballot(0, "n2").next_for("n2")
    # n3 and n2 promise (a majority of config(1)); n2 lists the change at slot 1
    r.receive(Promise("n3", b, 1, (), 0, 0), 1)
    assert r.role is Role.CANDIDATE
    r.receive(Promise("n2", b, 1, (LogEntry(1, old, rm),), 0, 0), 1)
    # {n2, n3} is a majority of config(1) but only n2 of config(2) = {n1, n2}: not yet
    assert r.role is Role.CANDIDATE and boot.is_quorum({("n2", 0), ("n3", 0)})
    r.receive(Promise("n1", b, 1, (), 0, 0), 1)
    assert r.role is Role.LEADER
    assert r.config_for(2).get("n3") is None          # the recovered chain decides slot 2 on


# --- removal and transfer --------------------------------------------------------------

def test_a_removed_node_stops_says_why_and_is_ignored_from_then_on() -> None:
    net = MNet()
    lead = net.elect()
    victim = next(i for i in BOOT if i != lead.id)
    net.change(remove(Member(victim)))
    v = net.reps[victim]
    assert v.removed and victim in v.removed and net.stores[victim].removed == v.removed
    assert victim not in lead.members
    # its stale messages change nothing
    before = lead.status()
    lead.receive(Prepare(victim, Ballot(lead.ballot.round + 5, victim), 1), net.now)
    assert lead.role is Role.LEADER and lead.status().promised == before.promised
    # and it does nothing itself
    v.tick(net.now + 10_000)
    assert not v.has_ready() or v.ready().messages == []


def test_a_removal_that_would_leave_no_live_quorum_is_refused() -> None:
    net = MNet()
    lead = net.elect()
    a, b = (i for i in BOOT if i != lead.id)
    net.down.add(a)
    net.tick(100, 12)                                   # a is silent for > election timeout
    why = lead.request_change(remove(Member(b)))
    assert why is not None and "no quorum" in why
    assert lead.request_change(remove(Member(a))) is None   # removing the dead one is fine


def test_a_new_leader_counts_as_live_only_the_members_it_has_heard() -> None:
    """Found by tests/integration/test_membership: removing the leader hands over, and the
    new leader took every member as live for its first election timeout (the grace its
    quorum check gives them), so the retried removal left a dead voter as half of a
    two-voter quorum. Live means heard: a promise or an ack in this term."""
    net = MNet()
    lead = net.elect()
    a, b = (i for i in BOOT if i != lead.id)
    net.down.add(a)
    net.tick(100, 12)                                   # a is silent for > election timeout
    why = lead.request_change(remove(Member(lead.id)))
    assert why is not None and "hands leadership to " + b in why
    for _ in range(20):
        net.tick(10)
        if net.reps[b].role is Role.LEADER and net.reps[b].serving:
            break
    new = net.reps[b]
    assert new.role is Role.LEADER and new.serving
    assert not new.is_live(a) and new.is_live(lead.id)
    why = new.request_change(remove(Member(lead.id)))
    assert why is not None and "no quorum" in why
    assert lead.id in new.config.ids


def test_removing_the_leader_hands_over_first() -> None:
    net = MNet()
    lead = net.elect()
    net.write(3)
    why = lead.request_change(remove(Member(lead.id)))
    assert why is not None and "hands leadership" in why
    net.tick(50, 10)
    new = net.leader()
    assert new.id != lead.id
    net.change(remove(Member(lead.id)))
    assert lead.removed and lead.id not in new.config.ids


def test_transfer_sends_timeout_now_only_once_the_target_has_the_last_slot() -> None:
    net = MNet()
    lead = net.elect()
    target = next(i for i in BOOT if i != lead.id)
    net.down.add(target)
    net.write(0)
    assert lead.propose(b"x")
    net.stabilize()
    assert lead.transfer_leadership(target) is None
    assert not lead.propose(b"y")                       # nothing new while handing over
    for _ in range(3):
        lead.tick(net.now)
        ready = lead.ready()
        lead.advance()
        assert not [o for o in ready.messages if isinstance(o.msg, TimeoutNow)]
    net.down.clear()
    net.tick(50, 6)
    assert net.leader().id == target


# --- durability --------------------------------------------------------------------------

def test_a_restart_takes_the_configuration_from_the_log_not_the_bootstrap_members() -> None:
    net = MNet()
    lead = net.elect()
    n4 = _grow(net, "n4")
    net.tick(50, 10)
    want = lead.config
    assert want.votes("n4", n4.incarnation or 0)
    for i in list(net.reps):
        net.restart(i)                                 # BOOT is still n1..n3
    assert all(r.config == want for r in net.reps.values())
    net.elect()


def test_a_snapshot_carries_the_configuration() -> None:
    net = MNet()
    lead = net.elect()
    _grow(net, "n4")
    net.tick(50, 10)
    want = lead.config
    lead.compact(Snapshot(lead.applied, b"state"))
    net.stabilize()
    st = net.stores[lead.id]
    assert st.snapshot.config == want and st.snapshot.index == lead.applied
    r = net.restart(lead.id)
    assert r.config == want
