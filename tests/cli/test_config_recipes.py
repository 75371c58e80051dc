"""`coordctl config set --file/--lease-ttl` and `config schema` against a running cluster."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from .conftest import COORDCTL, LocalCluster, assert_one_line_error, clean_env, run


def test_set_from_a_file_or_stdin_stores_the_bytes_exactly(cluster: LocalCluster, tmp_path: Path) -> None:
    blob = bytes(range(256)) + b"\n\x00tail"
    f = tmp_path / "blob"
    f.write_bytes(blob)
    r = run("config", "set", "bin/a", "--file", str(f), *cluster.args())
    assert r.returncode == 0, r.stderr
    got = subprocess.run([COORDCTL, "config", "get", "bin/a", "--json", *cluster.args()],
                         capture_output=True, text=True, env=clean_env(), timeout=30)
    assert got.returncode == 0, got.stderr
    p = subprocess.run([COORDCTL, "config", "set", "bin/b", "--file", "-", *cluster.args()],
                       input=blob, capture_output=True, env=clean_env(), timeout=30)
    assert p.returncode == 0, p.stderr
    with __import__("coordsvc").Client.from_cluster_file(cluster.file) as c:
        assert c.get("bin/a").value == blob and c.get("bin/b").value == blob  # type: ignore[union-attr]
    r = run("config", "set", "bin/c", "v", "--file", str(f), *cluster.args())
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


def test_set_with_a_lease_ttl_keeps_the_key_until_ctrl_c(cluster: LocalCluster) -> None:
    p = subprocess.Popen([COORDCTL, "config", "set", "svc/web/n1", "10.0.0.5:80", "--lease-ttl", "5",
                          *cluster.args()], env=clean_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        rev = int(p.stdout.readline())  # type: ignore[union-attr]
        assert rev > 0
        r = run("config", "get", "svc/web/n1", *cluster.args())
        assert r.returncode == 0 and r.stdout.strip() == "10.0.0.5:80"
        assert p.poll() is None                          # still in the foreground
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    r = run("config", "get", "svc/web/n1", *cluster.args())
    assert r.returncode == 1        # revoked on the way out: the key is gone


def test_schema_set_get_delete_and_a_refused_put(cluster: LocalCluster, tmp_path: Path) -> None:
    schema = tmp_path / "flags.schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"rollout": {"type": "integer"}},
                                  "required": ["rollout"]}))
    r = run("config", "schema", "set", "app/flags/", str(schema), *cluster.args())
    assert r.returncode == 0, r.stderr
    r = run("config", "schema", "get", "app/flags/", "--json", *cluster.args())
    assert r.returncode == 0 and json.loads(r.stdout)["schema"]["required"] == ["rollout"]
    r = run("config", "set", "app/flags/a", '{"rollout": "x"}', *cluster.args())
    line = assert_one_line_error(r.stderr)      # InvalidRequest: a bad value, exit 2
    assert r.returncode == 2 and "$.rollout" in line and "config schema get" in line
    r = run("config", "set", "app/flags/a", '{"rollout": 3}', *cluster.args())
    assert r.returncode == 0, r.stderr
    r = run("config", "schema", "delete", "app/flags/", *cluster.args())
    assert r.returncode == 0
    r = run("config", "schema", "get", "app/flags/", *cluster.args())
    assert r.returncode == 1


def test_lock_list_shows_semaphores_rwlocks_and_elections(cluster: LocalCluster) -> None:
    from coordsvc import Client
    with Client.from_cluster_file(cluster.file) as c:
        with c.semaphore("batch", limit=3, timeout=5.0), c.semaphore("batch", limit=3, timeout=5.0), \
                c.rwlock("schema").read(timeout=5.0), \
                c.election("sched").campaign("host-a", timeout=5.0):
            r = run("lock", "list", "--json", *cluster.args())
            assert r.returncode == 0, r.stderr
            rows = {row["name"]: row for row in json.loads(r.stdout)}
            batch, schema = rows["batch"], rows["schema"]
            assert (batch["kind"], batch["limit"], len(batch["holders"])) == ("semaphore", 3, 2)
            assert batch["holders"][0]["token"] < batch["holders"][1]["token"]
            assert schema["kind"] == "rwlock" and schema["holders"][0]["mode"] == "read"
            assert [row for name, row in rows.items() if name.endswith("sched")]
            table = run("lock", "list", *cluster.args())
            assert "semaphore 2/3" in table.stdout and "rwlock" in table.stdout
