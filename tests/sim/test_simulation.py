"""Deterministic simulation: safety under faults, then liveness after healing.

Every failure message starts with the seed; `pytest tests/sim --seed N` replays it.
"""
from __future__ import annotations

import pytest

from coordsvc.sim.cluster import MUTATIONS, Result, run

from .seeds import seeds

CI_SEEDS = 300


def _seeds(config: pytest.Config) -> list[int]:
    return seeds(config, CI_SEEDS)


def _describe(r: Result) -> str:
    return (f"seed={r.seed} params={r.params} stats={r.stats}\n  "
            + "\n  ".join(r.violations[:5]))


def test_no_safety_violation_and_progress_after_healing(pytestconfig: pytest.Config) -> None:
    failures = []
    seeds = _seeds(pytestconfig)
    for seed in seeds:
        r = run(seed)
        if r.violations:
            failures.append(_describe(r))
    print(f"simulated {len(seeds)} seeds from {seeds[0]}: {len(failures)} failed")
    assert not failures, "replay with: pytest tests/sim --seed N\n" + "\n".join(failures)


def test_five_node_clusters_stay_safe(pytestconfig: pytest.Config) -> None:
    seeds = _seeds(pytestconfig)[:40]
    bad = [_describe(r) for r in (run(s, nodes=5) for s in seeds) if r.violations]
    assert not bad, "\n".join(bad)


def test_same_seed_gives_same_trace() -> None:
    a, b = run(4242), run(4242)
    assert a.trace_hash == b.trace_hash
    assert a.chosen == b.chosen and a.stats == b.stats
    assert run(4243).trace_hash != a.trace_hash


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_simulator_catches_known_bad_variant(mutation: str) -> None:
    """Each safety guard matters: without it the simulator finds a violation quickly."""
    for seed in range(60):
        r = run(seed, mutation)
        if r.violations:
            print(f"{mutation}: caught at seed {seed}: {r.violations[0]}")
            return
    pytest.fail(f"{mutation} survived 60 seeds: the simulator is blind to it")
