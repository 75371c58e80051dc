"""A node whose disk was lost is refused, replaced through `coordctl node replace`, and
regains its vote without the cluster losing anything."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from coordsvc import Client

from .harness import LocalCluster

COORDCTL = str(Path(sys.executable).with_name("coordctl"))


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COORDCTL, *args], capture_output=True, text=True, timeout=30)


def test_a_wiped_node_is_refused_then_replaced_and_votes_again(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    lost = next(n for n in cluster.ids if n != leader)
    with cluster.client(timeout=10.0) as c:
        revs = [c.put(f"r/{i}", str(i)) for i in range(50)]
        cluster.kill(lost)
        data_dir = cluster.cluster.node(lost).data_dir
        shutil.rmtree(data_dir)
        data_dir.mkdir()
        f = str(cluster.file)
        refused = _ctl("serve", "--cluster", f, "--node", lost)
        assert refused.returncode != 0 and "replace" in refused.stderr
        init = _ctl("node", "init", "--cluster", f, "--node", lost)
        assert init.returncode == 1 and "node replace" in init.stderr, init.stderr
        rep = _ctl("node", "replace", "--cluster", f, "--node", lost)
        assert rep.returncode == 0, rep.stderr
        assert _ctl("node", "replace", "--cluster", f, "--node", lost).returncode == 1  # intact now
        cluster.start(lost)
        deadline = time.monotonic() + 20
        while True:
            st = cluster.probe.status(lost)
            if st and st["voting"] and st["revision"] >= revs[-1]:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        # It is a voter again: the cluster survives losing one of the *other* nodes.
        other = next(n for n in cluster.ids if n != lost and n in cluster.procs)
        cluster.kill(other)
        assert c.put("after", "ok") > revs[-1]
        assert [c.get(f"r/{i}").value for i in range(50)] == [str(i).encode() for i in range(50)]  # type: ignore[union-attr]


def _remove_and_add_back(cluster: LocalCluster, node: str) -> None:
    """Remove ``node`` through the log, then add it back under its id on a fresh disk with
    a new key (a learner, promoted once caught up), as an operator replaces a machine with
    `member remove` and `member add`; the new key is in the cluster file before the add."""
    with cluster.client(timeout=20.0) as c:
        c.member_remove(node)
        assert cluster.procs.pop(node).wait(20) == 0   # it stops once it learns the removal
        seen = {n: cluster.log(n).count(f"new public key for {node}") for n in cluster.procs}
        public = cluster.new_machine(node)
        # The members read the file's new key while the node is not one of them (they
        # once crashed on it, trying to reconnect to a peer they had dropped).
        for n, count in seen.items():
            _wait_for(lambda: cluster.log(n).count(f"new public key for {node}") > count,  # noqa: B023
                      f"{n} to read {node}'s new key")
            cluster.probe.status(n)     # a turn of its loop after the one that read it
            assert cluster.procs[n].poll() is None, cluster.log(n)[-2000:]
        cluster.add_back(c, node, public)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _voting_at(cluster: LocalCluster, node: str, revision: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = cluster.probe.status(node)
        if st and st["voting"] and st["revision"] >= revision:
            return
        assert time.monotonic() < deadline, f"{node} did not catch up and vote: {st}"
        time.sleep(0.1)


def test_a_node_replaced_last_copies_history_naming_old_keys_and_still_votes(
        tmp_path: Path) -> None:
    """Three replacements in turn (remove, then add back on a fresh disk with a new key).
    The last one copies the log from slot 1, through configurations that still name the
    second one's old key, from that very node, now the leader. It must go on talking to it
    with its new key (not cut itself off from where it copies), catch up and vote; and a
    client made before any of it still reaches the cluster.

    Small catch-up replies (and many slots after the first replacement) make the copy
    stop between replies at the configurations that name the old key."""
    cluster = LocalCluster(tmp_path, catchup_batch=8)
    try:
        cluster.start()
        _three_replacements(cluster)
    finally:
        cluster.close()


def _put_some(cluster: LocalCluster, n: int) -> int:
    with cluster.client(timeout=10.0) as c:
        return max(c.put(f"fill/{i}", str(i)) for i in range(n))


def _three_replacements(cluster: LocalCluster) -> None:
    last = cluster.leader()
    first, second = (n for n in cluster.ids if n != last)
    # A client from before every key changed: it reads the cluster file again when nodes
    # stop answering (no member is left to redirect it with a key it trusts).
    early = Client.from_cluster_file(cluster.file, timeout=20.0, key=cluster.key)
    early.put("early", "0")
    _remove_and_add_back(cluster, first)
    rev = _put_some(cluster, 300)
    _voting_at(cluster, first, rev)
    _remove_and_add_back(cluster, second)
    rev = _put_some(cluster, 10)
    _voting_at(cluster, second, rev)
    with cluster.client(timeout=10.0) as c:
        c.transfer_leader(second)
        rev = c.put("before", "1")
    _remove_and_add_back(cluster, last)
    _voting_at(cluster, last, rev)
    cluster.kill(first)       # the two others are a quorum: the last one votes with second
    with early:
        assert early.put("after", "2") > rev
        assert early.get("before").value == b"1"  # type: ignore[union-attr]
