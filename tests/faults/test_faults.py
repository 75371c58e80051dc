"""Fault injection against real clusters: each workload under kill, pause and partition.

The short runs (default, part of ``make test``) take about a minute each; the long ones
(``make faults DURATION=600``, or ``pytest tests/faults --long``, or ``FAULTS_DURATION=600``)
run every workload on five nodes for that long. ``FAULTS_SEED=<n>`` replays one seed in every
run; each run prints its seed, schedule, op counts, rates and availability (``pytest -s``).
"""
from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from ..integration.harness import LocalCluster
from .nemesis import KINDS, NFT_TABLE, NetFilter, cut_between, draw_schedule
from .runner import RunResult, run

pytestmark = pytest.mark.usefixtures("fault_host")

ALL = ("kill", "pause", "partition")
LONG_S = float(os.environ.get("FAULTS_DURATION") or 600)


def _seed(default: int) -> int:
    env = os.environ.get("FAULTS_SEED")
    return int(env) if env else default


def _assert_passed(res: RunResult, min_faults: int) -> None:
    print(res.verdict())
    assert res.ok, res.text()
    assert res.faults >= min_faults, f"only {res.faults} faults injected\n{res.text()}"
    assert res.recovery_s is not None and res.recovery_s <= 5.0
    assert table_exists() is False, "the run left its nft table behind"


def table_exists() -> bool:
    return subprocess.run(["nft", "list", "table", "inet", NFT_TABLE],
                          capture_output=True).returncode == 0


# -- the nemesis itself ------------------------------------------------------------------

def test_a_seed_determines_the_whole_schedule() -> None:
    a = draw_schedule(random.Random(42), KINDS, 600, 5)
    b = draw_schedule(random.Random(42), KINDS, 600, 5)
    c = draw_schedule(random.Random(43), KINDS, 600, 5)
    assert a == b and a != c
    assert {s.kind for s in a} == set(KINDS)
    assert all(1.0 <= s.hold_s <= 10.0 for s in a if s.kind == "pause")
    short = draw_schedule(random.Random(42), KINDS, 45, 3)
    assert all(s.hold_s <= 4.0 for s in short if s.kind == "pause")
    assert sum(s.gap_s + s.hold_s for s in short) <= 45


def test_a_partition_cuts_real_traffic_and_the_table_is_deleted_afterwards(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 3, distinct_hosts=True)
    net = NetFilter({n.id: n.host for n in c.cluster.nodes},
                    [int(a.rsplit(":", 1)[1]) for n in c.cluster.nodes for a in (n.address, n.publish)])
    try:
        c.start()
        old = c.leader()
        rest = [n for n in c.ids if n != old]
        net.apply(cut_between([old], rest))
        assert table_exists()
        new = c.leader(timeout=15, exclude={old})   # the majority side elects someone else
        assert new in rest
        deadline = time.monotonic() + 10
        while (st := c.probe.status(old)) and st["role"] == "leader" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert st is not None and st["role"] != "leader", "the isolated leader kept leading"
        assert st["leader"] != new, "the isolated node heard of the new leader through the cut"
    finally:
        net.teardown()
        c.close()
    assert not table_exists()


# -- short runs (CI) ---------------------------------------------------------------------
# 30 s each keeps the whole suite inside CI's 15 minutes; their seeds draw 6-7 faults of
# every kind asked for in 30 s (the long runs below are where hours of faults go).

def test_register_stays_linearizable_under_kills_pauses_and_partitions(tmp_path: Path) -> None:
    res = run("register", ALL, 30, _seed(1012), nodes=3, root=tmp_path)
    _assert_passed(res, min_faults=4)


def test_lock_holders_are_fenced_under_kills_pauses_and_partitions(tmp_path: Path) -> None:
    res = run("lock", ALL, 30, _seed(2046), nodes=3, root=tmp_path)
    _assert_passed(res, min_faults=4)


def test_watchers_see_every_revision_once_in_order_under_faults(tmp_path: Path) -> None:
    res = run("watch", ALL, 30, _seed(3025), nodes=3, root=tmp_path)
    _assert_passed(res, min_faults=4)


def test_register_stays_linearizable_while_members_are_replaced_and_leadership_moves(
        tmp_path: Path) -> None:
    """The membership nemesis: followers and leaders removed and added back on fresh disks
    under their ids (the replace path), leadership transferred, with kills and pauses."""
    res = run("register", ("kill", "member", "pause"), 30, _seed(4071), nodes=3, root=tmp_path)
    _assert_passed(res, min_faults=4)
    assert "] member/" in res.text(), res.text()


# -- long runs (make faults) -------------------------------------------------------------

@pytest.mark.long
@pytest.mark.timeout(int(LONG_S * 1.5) + 600)
@pytest.mark.parametrize("workload,default_seed", [("register", 11), ("lock", 22), ("watch", 33)])
def test_long_run(workload: str, default_seed: int, tmp_path: Path) -> None:
    res = run(workload, ALL, LONG_S, _seed(default_seed), nodes=5, root=tmp_path)
    _assert_passed(res, min_faults=10)


@pytest.mark.long
@pytest.mark.timeout(int(LONG_S * 1.5) + 600)
def test_long_run_with_membership_changes(tmp_path: Path) -> None:
    res = run("register", KINDS, LONG_S, _seed(44), nodes=5, root=tmp_path)
    _assert_passed(res, min_faults=10)
