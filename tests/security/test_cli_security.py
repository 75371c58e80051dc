"""Secure by default, as an operator sees it through `coordctl`: keys at `cluster init`,
where each credential comes from, what a refused key looks like, and the insecure opt-out
that status and the node log announce."""
from __future__ import annotations

import dataclasses
import json
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordsvc import keys

from ..cli.conftest import (
    COORDCTL,
    LocalCluster,
    assert_one_line_error,
    clean_env,
    free_base_port,
    run,
)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("secure"))
    try:
        c.start_all()
        c.wait_for_leader(15.0)
        yield c
    finally:
        c.stop()


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _stranger(c: LocalCluster, where: Path) -> Path:
    admin = keys.read_client_key(c.dir / "admin.key")
    path = where / "mallory.key"
    keys.write_client_key(path, dataclasses.replace(admin, name="mallory",
                                                    pair=keys.KeyPair.generate()))
    return path


def test_cluster_init_makes_keys_with_secrets_only_in_0600_files(secure: LocalCluster) -> None:
    text = secure.file.read_text()
    admin = keys.read_client_key(secure.dir / "admin.key")
    assert _mode(secure.dir / "admin.key") == 0o600 and admin.name == "admin"
    assert admin.pair.secret not in text and admin.pair.public in text
    for n in secure.nodes:
        key_file = secure.dir / n / "node.key"
        pair = keys.read_node_key(key_file, n)
        assert _mode(key_file) == 0o600
        assert pair.secret not in text and pair.public in text


def test_status_says_curve_and_every_node_agrees(secure: LocalCluster) -> None:
    st = secure.status()
    assert st is not None and st["cluster"]["security"] == "curve"
    assert {n["security"] for n in st["nodes"]} == {"curve"}
    r = run("status", *secure.args())
    assert r.returncode == 0 and "security curve" in r.stdout


def test_a_refused_key_is_exit_1_in_one_line_not_a_timeout(secure: LocalCluster,
                                                           tmp_path: Path) -> None:
    bad = _stranger(secure, tmp_path)
    t0 = time.monotonic()
    r = run("config", "get", "k", "--key", bad, *secure.args())
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert "rejected this client's key" in assert_one_line_error(r.stderr)
    assert elapsed < 5.0, f"{elapsed:.1f}s: the CLI waited for a timeout"   # --timeout is 5 s


def test_coord_key_comes_before_the_admin_key_and_key_before_both(secure: LocalCluster,
                                                                  tmp_path: Path) -> None:
    bad = _stranger(secure, tmp_path)
    env = clean_env(COORD_KEY=str(bad))
    r = run("config", "get", "k", *secure.args(), env=env)
    assert r.returncode == 1 and "rejected" in r.stderr
    r = run("config", "set", "order/k", "v", "--key", secure.dir / "admin.key", *secure.args(),
            env=env)
    assert r.returncode == 0, r.stderr


def test_a_cluster_file_without_a_key_beside_it_says_so(secure: LocalCluster,
                                                        tmp_path: Path) -> None:
    alone = tmp_path / "cluster.toml"
    shutil.copy(secure.file, alone)
    r = run("config", "get", "k", "--cluster", alone)
    assert r.returncode == 1
    assert "has no key" in assert_one_line_error(r.stderr)


def test_a_key_file_others_can_read_is_refused(secure: LocalCluster, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copy(secure.dir / "admin.key", loose)
    loose.chmod(0o644)
    r = run("status", "--key", loose, *secure.args())
    assert r.returncode == 2
    assert "chmod 600" in assert_one_line_error(r.stderr)


def test_an_insecure_cluster_is_announced_by_status_and_the_node_log(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, insecure=True)
    try:
        assert not (c.dir / "admin.key").exists()
        assert not any((c.dir / n / "node.key").exists() for n in c.nodes)
        c.start_all()
        c.wait_for_leader(15.0)
        st = c.status()
        assert st is not None and st["cluster"]["security"] == "insecure"
        assert {n["security"] for n in st["nodes"]} == {"insecure"}
        table = run("status", *c.args())
        assert "INSECURE" in table.stdout
        assert run("config", "set", "plain/k", "v", *c.args()).returncode == 0
    finally:
        c.stop()
    assert all("INSECURE" in (tmp_path / f"{n}.log").read_text() for n in c.nodes)


def test_cluster_up_as_make_run_starts_a_secure_cluster(tmp_path: Path) -> None:
    d = tmp_path / "up"
    proc = subprocess.Popen([COORDCTL, "cluster", "up", "--dir", str(d), "--base-port",
                             str(free_base_port(3)), "--json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env(), cwd=tmp_path)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "cluster up printed nothing in 60 s"
        doc = json.loads(proc.stdout.readline())
        assert doc["status"]["cluster"]["leader"], doc
        assert doc["status"]["cluster"]["security"] == "curve"
        assert _mode(d / "admin.key") == 0o600
        assert "[security]" in (d / "cluster.toml").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert rc == 0
    for n in ("n1", "n2", "n3"):   # it stopped every node it started, cleanly
        log = (d / "logs" / f"{n}.log").read_text()
        assert "security: curve" in log and "stop: stopped" in log.rstrip().splitlines()[-1], log
