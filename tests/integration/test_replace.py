"""A node whose disk was lost is refused, replaced through `coordctl node replace`, and
regains its vote without the cluster losing anything."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

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
