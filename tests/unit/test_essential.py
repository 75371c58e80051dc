"""The seed's scenarios on the single-decree layer."""
from __future__ import annotations

import pytest

from coordsvc.core.essential import (
    Accept,
    Accepted,
    Nack,
    Prepare,
    SingleAcceptor,
    SingleLearner,
    SingleProposer,
)
from coordsvc.core.types import Ballot, SafetyViolation


def test_acceptor_promises_a_higher_ballot() -> None:
    a = SingleAcceptor("a")
    r = a.receive_prepare(Prepare("p", Ballot(1, "p")))
    assert not isinstance(r, Nack) and a.promised == Ballot(1, "p")


def test_acceptor_refuses_a_lower_ballot_with_the_ballot_to_beat() -> None:
    a = SingleAcceptor("a")
    a.receive_prepare(Prepare("p", Ballot(5, "p")))
    r = a.receive_prepare(Prepare("q", Ballot(4, "q")))
    assert r == Nack("a", Ballot(4, "q"), Ballot(5, "p"))
    assert isinstance(a.receive_accept(Accept("q", Ballot(4, "q"), "x")), Nack)
    assert a.accepted_value is None


def test_acceptor_two_values_at_one_ballot_is_a_hard_error() -> None:
    a = SingleAcceptor("a")
    a.receive_accept(Accept("p", Ballot(1, "p"), "x"))
    with pytest.raises(SafetyViolation):
        a.receive_accept(Accept("p", Ballot(1, "p"), "y"))


def test_proposer_adopts_the_highest_ballot_accepted_value() -> None:
    p = SingleProposer("p", quorum=2)
    p.propose("mine")
    m = p.prepare()
    a1, a2 = SingleAcceptor("a1"), SingleAcceptor("a2")
    a1.receive_accept(Accept("old", Ballot(0, "old"), "low"))
    a1.accepted_ballot = Ballot(0, "z")  # lowest possible but non-zero ordering
    a2.receive_accept(Accept("old2", Ballot(0, "zz"), "high"))
    replies = [a1.receive_prepare(m), a2.receive_prepare(m)]
    out = [p.receive_promise(r) for r in replies if not isinstance(r, Nack)]
    assert out[-1] == Accept("p", m.ballot, "high")


def test_proposer_keeps_its_value_when_nothing_was_accepted() -> None:
    p = SingleProposer("p", quorum=2)
    p.propose("mine")
    m = p.prepare()
    out = [p.receive_promise(SingleAcceptor(n).receive_prepare(m)) for n in ("a", "b")]  # type: ignore[arg-type]
    assert out[-1] == Accept("p", m.ballot, "mine")


def test_proposer_next_ballot_beats_the_highest_refusal() -> None:
    p = SingleProposer("p", quorum=2)
    p.prepare()
    p.receive_nack(Nack("a", p.ballot, Ballot(9, "q")))
    assert p.prepare().ballot == Ballot(10, "p")


def test_a_single_refusal_does_not_demand_a_new_prepare() -> None:
    p = SingleProposer("p", quorum=2)
    p.prepare()
    assert p.receive_nack(Nack("a", p.ballot, Ballot(9, "q"))) is False
    assert p.receive_nack(Nack("b", p.ballot, Ballot(9, "q"))) is True


def test_learner_resolves_at_quorum() -> None:
    learner = SingleLearner(quorum=2)
    assert learner.receive_accepted(Accepted("a", Ballot(1, "p"), "v")) is None
    assert learner.receive_accepted(Accepted("b", Ballot(1, "p"), "v")) == "v"


def test_learner_ignores_duplicate_votes() -> None:
    learner = SingleLearner(quorum=2)
    learner.receive_accepted(Accepted("a", Ballot(1, "p"), "v"))
    assert learner.receive_accepted(Accepted("a", Ballot(1, "p"), "v")) is None


def test_learner_ignores_stale_votes() -> None:
    learner = SingleLearner(quorum=2)
    learner.receive_accepted(Accepted("a", Ballot(2, "p"), "new"))
    assert learner.receive_accepted(Accepted("a", Ballot(1, "p"), "old")) is None
    assert learner.receive_accepted(Accepted("b", Ballot(1, "p"), "old")) is None
    assert learner.receive_accepted(Accepted("b", Ballot(2, "p"), "new")) == "new"
