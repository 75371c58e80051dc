"""Membership changes under faults (coordsvc/sim/membership.py): safety and progress, and
the planted bugs each caught.

Every failure message starts with the seed; `pytest tests/sim --seed N` replays it.
"""
from __future__ import annotations

import pytest

from coordsvc.core.membership import ChangeKind, Member, MembershipChange
from coordsvc.core.replica import Replica, Role
from coordsvc.sim.membership import MUTATIONS, MembershipSim, _IgnoreChainReplica
from tests.unit.helpers import BOOT, MNet, add, remove

from .seeds import seeds as _seeds

# Whole runs of changes under loss, partitions and crashes; `make sim` runs many more.
CI_SEEDS = 60


def test_membership_changes_stay_safe_and_converge(pytestconfig: pytest.Config) -> None:
    seeds = _seeds(pytestconfig, CI_SEEDS)
    failures, totals = [], {"changes_chosen": 0, "joined": 0, "removed": 0, "refused": 0}
    for seed in seeds:
        r = MembershipSim(seed).run()
        for k in totals:
            totals[k] += r.stats.get(k, 0)
        if r.violations:
            failures.append(f"seed={r.seed} params={r.params} stats={r.stats}\n  "
                            + "\n  ".join(r.violations[:3]))
    print(f"membership: {len(seeds)} seeds from {seeds[0]}: {totals}; {len(failures)} failed")
    assert totals["changes_chosen"] > len(seeds) and totals["removed"] > 0
    assert not failures, "replay with: pytest tests/sim --seed N\n" + "\n".join(failures)


# Seeds searched per planted bug; each is caught well within (see the report in the output).
MUTATION_SEEDS = 60


@pytest.mark.parametrize("mutation", [m for m in MUTATIONS if m != "ignore_recovered_config"])
def test_simulator_catches_planted_membership_bug(mutation: str) -> None:
    """Each guard matters: without it a safety violation shows within the CI seeds."""
    for seed in range(MUTATION_SEEDS):
        r = MembershipSim(seed, mutation).run()
        safety = [v for v in r.violations if "after healing" not in v]
        if safety:
            print(f"{mutation}: caught at seed {seed}: {safety[0][:160]}")
            return
    pytest.fail(f"{mutation} survived {MUTATION_SEEDS} seeds: the simulator is blind to it")


# --- a candidate two changes behind: a scripted schedule -----------------------------------
# Random runs seldom leave a candidate two voter changes behind with only old-config
# acceptors to promise it (with one change behind, the two majorities meet anyway), so
# this schedule builds the case step by step.

def _two_changes_behind(cls: type[Replica]) -> tuple[MNet, str, str]:
    """A (down) misses "promote n4" and "remove B"; B accepts both but never learns the
    removal is chosen; L and n4 choose v at the next slot; then only A and B run, and
    n4 comes back. Returns the net, L, and A."""
    net = MNet(prevote=False, classes={i: cls for i in BOOT + ["n4"]})
    lead = net.elect()
    L = lead.id
    A, B = sorted(i for i in BOOT if i != L)
    for r in net.reps.values():
        r.promote_gap = -1                         # promotions by hand in this script
    net.change(add("n4"))
    net.join("n4").promote_gap = -1
    net.tick(50, 10)
    m4 = lead.config.get("n4")
    assert m4 is not None and net.reps["n4"].incarnation == m4.incarnation
    net.down.add(A)
    net.change(MembershipChange(ChangeKind.PROMOTE, m4))        # chosen by L and B
    assert lead.request_change(remove(Member(B))) is None
    net.stabilize(max_rounds=2, must_settle=False)              # B accepts; L learns chosen
    net.down.add(B)                                              # ... and B never hears it
    net.stabilize()
    assert lead.config.get(B) is None
    assert lead.propose(b"v")
    net.stabilize()                                              # v chosen by L and n4
    net.down = {L, "n4"}
    for _ in range(40):
        net.tick(100)
        if net.reps[A].role is Role.LEADER:
            break
    net.down.discard("n4")
    net.tick(100, 10)
    if net.reps[A].role is Role.LEADER and net.reps[A].serving:
        net.reps[A].propose(b"w")
        net.tick(100, 5)
    return net, L, A


def _disagreement(net: MNet) -> str | None:
    chosen: dict[int, tuple[str, object]] = {}
    for node, log in net.applied.items():
        for slot, value in log:
            seen = chosen.setdefault(slot, (node, value))
            if seen[1] != value:
                return f"slot {slot}: {seen[0]} applied {seen[1]!r}, {node} applied {value!r}"
    return None


def test_phase1_ignoring_the_recovered_chain_chooses_two_values_for_one_slot() -> None:
    net, _, _ = _two_changes_behind(_IgnoreChainReplica)
    why = _disagreement(net)
    print(f"ignore_recovered_config: caught by the scripted schedule: {why}")
    assert why is not None


def test_phase1_over_the_recovered_chain_keeps_one_value_per_slot_in_that_schedule() -> None:
    net, _, A = _two_changes_behind(Replica)
    assert _disagreement(net) is None
    assert net.reps[A].role is Role.LEADER       # it did lead, once n4 had promised
