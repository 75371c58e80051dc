"""`coordctl lock run` / `lock list` against a running 3-node cluster."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import COORDCTL, LocalCluster, assert_one_line_error, clean_env, run

PY = sys.executable


def _lock_run(cluster: LocalCluster, name: str, *cmd: str, wait: str = "20",
              extra: tuple[str, ...] = ()) -> list[str]:
    return [COORDCTL, "lock", "run", name, "--wait", wait, "--ttl", "5", *extra,
            *cluster.args(), "--", *cmd]


def _wait_for(path: Path, limit_s: float = 15.0) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {limit_s} s")


def test_lock_run_passes_the_token_and_returns_the_commands_exit_code(
        cluster: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "token"
    script = ("import os, sys; open(sys.argv[1], 'w').write("
              "os.environ['COORD_LOCK_TOKEN'] + ' ' + os.environ['COORD_LOCK_NAME'] + '\\n'); "
              "sys.exit(7)")
    r = subprocess.run(_lock_run(cluster, "l1", PY, "-c", script, str(out)),
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 7, r.stderr
    token, name = out.read_text().split()
    assert int(token) > 0 and name == "l1"
    # released on exit: a try-lock succeeds at once, with a larger token
    r = subprocess.run(_lock_run(cluster, "l1", PY, "-c", script, str(out), wait="0"),
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 7, r.stderr
    assert int(out.read_text().split()[0]) > int(token)


def test_lock_run_json_reports_token_and_exit_code(cluster: LocalCluster) -> None:
    r = subprocess.run(_lock_run(cluster, "l2", "true", extra=("--json",)),
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "l2" and doc["exit_code"] == 0 and doc["token"] > 0


def test_two_contenders_run_one_after_the_other_with_growing_tokens(
        cluster: LocalCluster, tmp_path: Path) -> None:
    script = ("import os, sys, time; p = sys.argv[1]; "
              "open(p, 'w').write(f\"{os.environ['COORD_LOCK_TOKEN']} {time.time()}\\n\"); "
              "time.sleep(float(sys.argv[2])); "
              "open(p, 'a').write(f'end {time.time()}\\n')")
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    first = subprocess.Popen(_lock_run(cluster, "l3", PY, "-c", script, str(first_out), "2"),
                             env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(first_out)  # the first holds the lock now
        second = subprocess.Popen(
            _lock_run(cluster, "l3", PY, "-c", script, str(second_out), "0"),
            env=clean_env(), stderr=subprocess.PIPE, text=True)
        try:
            assert second.wait(timeout=60) == 0, second.stderr.read() if second.stderr else ""
        finally:
            if second.poll() is None:
                second.kill()
            second.communicate()
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    f_token, _ = first_out.read_text().splitlines()[0].split()
    f_end = float(first_out.read_text().splitlines()[1].split()[1])
    s_token, s_start = second_out.read_text().splitlines()[0].split()
    assert float(s_start) >= f_end, "the second ran while the first still held the lock"
    assert int(s_token) > int(f_token)


def test_lock_not_acquired_within_wait_exits_1_and_lock_list_shows_the_holder(
        cluster: LocalCluster, tmp_path: Path) -> None:
    marker = tmp_path / "holding"
    holder = subprocess.Popen(
        _lock_run(cluster, "l4", PY, "-c",
                  "import sys, time; open(sys.argv[1], 'w').write('x\\n'); time.sleep(30)",
                  str(marker)),
        env=clean_env(), stderr=subprocess.DEVNULL)
    try:
        _wait_for(marker)
        r = subprocess.run(_lock_run(cluster, "l4", "true", wait="0.5"),
                           capture_output=True, text=True, env=clean_env(), timeout=60)
        assert r.returncode == 1
        assert_one_line_error(r.stderr)

        r = run("lock", "list", "--json", *cluster.args())
        assert r.returncode == 0, r.stderr
        locks = {lk["name"]: lk for lk in json.loads(r.stdout)}
        assert "l4" in locks
        assert set(locks["l4"]) >= {"name", "holder", "token", "ttl_left_s", "waiters"}
        assert locks["l4"]["token"] > 0

        r = run("lock", "list", *cluster.args())
        assert r.returncode == 0
        assert "l4" in r.stdout and "holder" in r.stdout
    finally:
        holder.send_signal(signal.SIGTERM)
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
    # SIGTERM was forwarded to the command; the lock was released on the way out
    assert holder.returncode == 128 + signal.SIGTERM
    r = run("lock", "list", "--json", *cluster.args())
    assert "l4" not in {lk["name"] for lk in json.loads(r.stdout)}


def test_sigterm_is_forwarded_to_the_command(cluster: LocalCluster, tmp_path: Path) -> None:
    ready, got = tmp_path / "ready", tmp_path / "got"
    script = ("import signal, sys, time\n"
              "def h(s, f):\n"
              "    open(sys.argv[2], 'w').write('term\\n'); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, h)\n"
              "open(sys.argv[1], 'w').write('ready\\n')\n"
              "time.sleep(30)\n")
    proc = subprocess.Popen(_lock_run(cluster, "l5", PY, "-c", script, str(ready), str(got)),
                            env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert got.read_text() == "term\n"


def test_lock_run_without_a_command_is_a_usage_error(cluster: LocalCluster) -> None:
    r = run("lock", "run", "l6", *cluster.args())
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


def test_lock_run_of_a_missing_command_exits_127(cluster: LocalCluster) -> None:
    r = subprocess.run(_lock_run(cluster, "l7", "/nonexistent/cmd"), capture_output=True,
                       text=True, env=clean_env(), timeout=60)
    assert r.returncode == 127
    assert "command not found" in assert_one_line_error(r.stderr)
