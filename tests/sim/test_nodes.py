"""Whole nodes in simulation: production Services, simulated clients, a history checker.

Every failure message starts with the seed and lists every drawn parameter;
`pytest tests/sim --seed N` replays one seed, `make sim SEEDS=N` runs many.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coordsvc.sim.nodes import MUTATIONS, Result, run

from .seeds import seeds

# About 30 ms of CPU a seed. Each real bug the simulator found (see the fix commits) shows
# up in roughly one seed in 100-250 -- of seeds 0-999, 4 catch the old session clocks at
# takeover, 7 the old rebuilding timer, 10 the parked watches left parked by an install --
# so a thousand seeds catch each of them several times over.
CI_SEEDS = 1000


def _seeds(config: pytest.Config) -> list[int]:
    return seeds(config, CI_SEEDS)


def _fail_on_violations(results: list[Result]) -> None:
    bad = [r.describe() for r in results if r.violations]
    if bad:
        pytest.fail(f"{len(bad)} of {len(results)} seeds failed; replay with: pytest tests/sim "
                    "--seed N\n" + "\n".join(bad), pytrace=False)


def test_whole_nodes_stay_safe_under_faults_and_every_client_finishes_after_healing(
        pytestconfig: pytest.Config) -> None:
    seeds = _seeds(pytestconfig)
    results = [run(seed) for seed in seeds]
    ops = sum(r.stats["ops_ok"] for r in results)
    grants = sum(r.stats["grants_believed"] for r in results)
    txns = sum(r.stats["txns_succeeded"] for r in results)
    compare_failed = sum(r.stats["txns_compare_failed"] for r in results)
    rw = sum(r.stats["rw_holds_believed"] for r in results)
    delays = sum(r.stats["lock_delays_begun"] for r in results)
    print(f"whole nodes: {len(seeds)} seeds from {seeds[0]}: {ops} ops answered, "
          f"{grants} lock grants held, {rw} read/write holds, {delays} lock-delays begun, "
          f"{txns} txns applied and {compare_failed} whose compare failed, "
          f"{sum(bool(r.violations) for r in results)} failed")
    _fail_on_violations(results)


def test_five_whole_nodes_stay_safe(pytestconfig: pytest.Config) -> None:
    _fail_on_violations([run(seed, nodes=5) for seed in _seeds(pytestconfig)[:20]])


def test_the_same_seed_gives_the_same_trace() -> None:
    a, b = run(4242), run(4242)
    assert a.trace_hash == b.trace_hash and a.stats == b.stats and a.violations == b.violations
    assert run(4243).trace_hash != a.trace_hash


def test_the_trace_does_not_depend_on_the_process_hash_seed() -> None:
    """Iterating a set of strings would make a seed replay differently in another process."""
    code = "from coordsvc.sim.nodes import run; print(run(4242).trace_hash)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == run(4242).trace_hash


# Which check must give each planted bug away: the point is that the check can fail.
CAUGHT_BY = {
    # The lock stays with a session nobody can close: a listing shows the dead holder,
    # or the final acquires after healing never get it.
    "grant_to_closed_session": ("locks listing", "no progress"),
    "skip_watch_event": ("watcher",),
    # A read after the expiry was applied still returns the ephemeral value.
    "keep_ephemeral_keys": ("outlived its lease",),
    # More clients than the limit believe they hold a slot at once.
    "over_admit": ("(limit 2)",),
    # A node applies (and answers for) a slot no quorum has on disk yet.
    "reply_before_save": ("chosen is None",),
    "skip_adopt": ("chosen twice", "linearizable", "chosen log", "no progress"),
    # A write the answer counted is missing, or sits at another revision.
    "txn_first_write_only": ("not all at one revision", "not linearizable"),
    "txn_split_revisions": ("not all at one revision",),
    # A writer and a reader believe they hold one read/write lock at once.
    "writer_joins_readers": ("a writer held with someone else",),
    # A reader is granted while a writer queued before it waits.
    "reader_overtakes_writer": ("not FIFO",),
    # The lock passes on in the step that expired its holder (or to the next acquire),
    # well inside the delay.
    "ignore_lock_delay": ("before the lock-delay ended",),
}
MUTATION_SEEDS = 100


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_checker_catches_a_planted_bug(mutation: str) -> None:
    assert set(CAUGHT_BY) == set(MUTATIONS)
    for seed in range(MUTATION_SEEDS):
        r = run(seed, mutation)
        hits = [v for v in r.violations if any(k in v for k in CAUGHT_BY[mutation])]
        if hits:
            print(f"{mutation}: caught at seed {seed}: {hits[0][:300]}")
            return
    pytest.fail(f"{mutation} survived {MUTATION_SEEDS} seeds: the checker is blind to it")
