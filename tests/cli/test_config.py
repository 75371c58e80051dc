"""`coordctl config ...` against a running 3-node cluster: output and exit codes."""
from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

from .conftest import COORDCTL, LocalCluster, assert_one_line_error, clean_env

Run = Any  # the `cc` fixture: cc(*args) -> CompletedProcess[str]


def _set(cc: Run, key: str, value: str, *extra: str) -> int:
    r = cc("config", "set", key, value, *extra)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_set_prints_the_new_revision_and_get_prints_the_value(cc: Run) -> None:
    rev = _set(cc, "t1/db_url", "postgres://db/app")
    assert rev > 0
    r = cc("config", "get", "t1/db_url")
    assert (r.returncode, r.stdout) == (0, "postgres://db/app\n")
    r = cc("config", "get", "t1/db_url", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"key": "t1/db_url", "value": "postgres://db/app",
                                    "revision": rev}
    assert _set(cc, "t1/db_url", "other") > rev


def test_set_json(cc: Run) -> None:
    r = cc("config", "set", "t2/k", "v", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["key"] == "t2/k" and isinstance(doc["revision"], int)


def test_get_of_a_missing_key_exits_1_with_one_line(cc: Run) -> None:
    r = cc("config", "get", "t3/missing")
    assert r.returncode == 1
    assert "not found" in assert_one_line_error(r.stderr)
    assert r.stdout == ""
    r = cc("config", "get", "t3/missing", "--json")
    assert r.returncode == 1 and r.stdout == ""


def test_if_revision_0_only_creates(cc: Run) -> None:
    assert _set(cc, "t4/k", "first", "--if-revision", "0") > 0
    r = cc("config", "set", "t4/k", "second", "--if-revision", "0")
    assert r.returncode == 1
    assert_one_line_error(r.stderr)
    assert cc("config", "get", "t4/k").stdout == "first\n"


def test_if_revision_compare_and_set(cc: Run) -> None:
    rev = _set(cc, "t5/k", "a")
    r = cc("config", "set", "t5/k", "b", "--if-revision", str(rev + 1000))
    assert r.returncode == 1
    assert_one_line_error(r.stderr)
    rev2 = _set(cc, "t5/k", "b", "--if-revision", str(rev))
    assert rev2 > rev
    assert cc("config", "get", "t5/k").stdout == "b\n"


def test_delete(cc: Run) -> None:
    rev = _set(cc, "t6/k", "v")
    r = cc("config", "delete", "t6/k", "--if-revision", str(rev + 1000))
    assert r.returncode == 1
    assert_one_line_error(r.stderr)
    r = cc("config", "delete", "t6/k", "--if-revision", str(rev), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"key": "t6/k", "deleted": True}
    assert cc("config", "get", "t6/k").returncode == 1
    r = cc("config", "delete", "t6/k")
    assert r.returncode == 0
    assert "did not exist" in r.stdout


def test_list_is_sorted_and_limited_to_the_prefix(cc: Run) -> None:
    revs = {k: _set(cc, f"t7/{k}", f"value-{k}") for k in ("b", "a", "c")}
    _set(cc, "t7x/other", "no")
    r = cc("config", "list", "t7/", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"key": f"t7/{k}", "value": f"value-{k}", "revision": revs[k]} for k in ("a", "b", "c")]
    r = cc("config", "list", "t7/")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "key" in lines[0] and "revision" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["t7/a", "t7/b", "t7/c"]


def test_history_diff_and_rollback(cc: Run) -> None:
    r1 = _set(cc, "t8/conf", "a\nb\nc\n")
    r2 = _set(cc, "t8/conf", "a\nB\nc\n")
    assert cc("config", "delete", "t8/conf").returncode == 0
    r = cc("config", "history", "t8/conf", "--json")
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)
    assert [(e["type"], e["revision"]) for e in events][:2] == [("put", r1), ("put", r2)]
    assert events[2]["type"] == "delete" and events[2]["revision"] > r2
    assert set(events[0]) >= {"type", "key", "value", "revision"}
    assert "put" in cc("config", "history", "t8/conf").stdout

    d = cc("config", "diff", "t8/conf", str(r1), str(r2))
    assert d.returncode == 0, d.stderr
    assert f"--- t8/conf@{r1}" in d.stdout and f"+++ t8/conf@{r2}" in d.stdout
    assert "-b\n" in d.stdout and "+B\n" in d.stdout
    assert cc("config", "diff", "t8/conf", str(r2), str(r2)).stdout == ""

    rb = cc("config", "rollback", "t8/conf", str(r1))
    assert rb.returncode == 0, rb.stderr
    new_rev = int(rb.stdout.strip())
    assert new_rev > events[2]["revision"]
    got = json.loads(cc("config", "get", "t8/conf", "--json").stdout)
    assert got == {"key": "t8/conf", "value": "a\nb\nc\n", "revision": new_rev}

    r = cc("config", "rollback", "t8/conf", str(events[2]["revision"]))  # deleted then
    assert r.returncode == 1
    assert_one_line_error(r.stderr)


def test_watch_prints_one_json_line_per_event_until_interrupted(cluster: LocalCluster,
                                                               cc: Run) -> None:
    start = _set(cc, "t9/a", "1")
    proc = subprocess.Popen(
        [COORDCTL, "config", "watch", "t9/", "--from-revision", str(start), "--json",
         *cluster.args()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        _set(cc, "t9/b", "2")
        assert cc("config", "delete", "t9/a").returncode == 0
        _set(cc, "t8/not-watched", "x")
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert [(e["type"], e["key"]) for e in lines] == [
        ("put", "t9/a"), ("put", "t9/b"), ("delete", "t9/a")]
    assert lines[0] == {"type": "put", "key": "t9/a", "value": "1", "revision": start}
    assert lines[0]["revision"] < lines[1]["revision"] < lines[2]["revision"]
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_watch_text_lines(cluster: LocalCluster, cc: Run) -> None:
    start = _set(cc, "t10/a", "hello")
    proc = subprocess.Popen(
        [COORDCTL, "config", "watch", "t10/", "--from-revision", str(start), *cluster.args()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert line.rstrip("\n").split("\t") == [str(start), "put", "t10/a", "hello"]
    assert proc.returncode == 0


def test_an_invalid_key_is_a_usage_error(cc: Run) -> None:
    r = cc("config", "set", "k" * 600, "v")
    assert r.returncode == 2
    assert_one_line_error(r.stderr)
