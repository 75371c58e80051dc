"""`coordctl election campaign` / `election leader` against a running 3-node cluster."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .conftest import COORDCTL, LocalCluster, assert_one_line_error, clean_env, run

PY = sys.executable


def test_campaign_runs_the_command_as_leader_and_leader_shows_it(
        cluster: LocalCluster, tmp_path: Path) -> None:
    r = run("election", "leader", "sched", "--json", *cluster.args())
    assert r.returncode == 1 and json.loads(r.stdout) is None
    assert_one_line_error(r.stderr)
    started, release = tmp_path / "started", tmp_path / "release"
    script = ("import os, sys, time, pathlib; pathlib.Path(sys.argv[1]).write_text("
              "os.environ['COORD_LEADER_TOKEN'] + ' ' + os.environ['COORD_ELECTION'] + '\\n'); "
              "p = pathlib.Path(sys.argv[2])\n"
              "while not p.exists(): time.sleep(0.02)\n"
              "sys.exit(3)")
    p = subprocess.Popen([COORDCTL, "election", "campaign", "sched", "host-a", "--ttl", "5",
                          *cluster.args(), "--", PY, "-c", script, str(started), str(release)],
                         env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (started.exists() and started.read_text().endswith("\n")):
            assert time.monotonic() < deadline and p.poll() is None, "the command never started"
            time.sleep(0.05)
        token, name = started.read_text().split()
        assert name == "sched" and int(token) > 0
        r = run("election", "leader", "sched", "--json", *cluster.args())
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"value": "host-a", "token": int(token)}
        r = run("election", "leader", "sched", *cluster.args())
        assert r.stdout.strip() == "host-a"
        release.write_text("go")
        assert p.wait(30) == 3
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    r = run("election", "leader", "sched", *cluster.args())
    assert r.returncode == 1     # it resigned when the command exited
