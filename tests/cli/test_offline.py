"""coordctl commands that need no running cluster: init, discovery, usage errors, refusals."""
from __future__ import annotations

import json
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from coordsvc import clusterfile, keys

from .conftest import (
    COORDCTL,
    assert_one_line_error,
    clean_env,
    free_base_port,
    run,
)


def _init(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("cluster", "init", "--nodes", "3", "--dir", tmp_path / "c", *extra, cwd=tmp_path)


# --- cluster init -----------------------------------------------------------------------

def test_cluster_init_prints_the_path_and_prepares_every_data_dir(tmp_path: Path) -> None:
    r = _init(tmp_path, "--base-port", "7300")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / "c" / "cluster.toml"
    doc = tomllib.loads(path.read_text())
    assert [n["id"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
    assert [n["address"] for n in doc["nodes"]] == [f"tcp://127.0.0.1:{7300 + i}" for i in (1, 2, 3)]
    assert [n["publish"] for n in doc["nodes"]] == [f"tcp://127.0.0.1:{7400 + i}" for i in (1, 2, 3)]
    assert [n["http"] for n in doc["nodes"]] == [f"http://127.0.0.1:{7500 + i}" for i in (1, 2, 3)]
    for n in ("n1", "n2", "n3"):
        assert (tmp_path / "c" / n / "node.db").is_file()
    assert r.stderr == ""


def test_cluster_init_json_describes_the_cluster(tmp_path: Path) -> None:
    r = _init(tmp_path, "--host", "127.0.0.1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["path"].endswith("cluster.toml")
    assert [n["id"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
    assert doc["nodes"][0]["address"] == "tcp://127.0.0.1:7101"


def test_cluster_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    before = (tmp_path / "c" / "cluster.toml").read_text()
    r = _init(tmp_path)
    assert r.returncode == 1
    line = assert_one_line_error(r.stderr)
    assert "already exists" in line and "--force" in line
    assert (tmp_path / "c" / "cluster.toml").read_text() == before
    assert r.stdout == ""


def test_cluster_init_force_replaces_and_moves_old_data_dirs_aside(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    old_id = tomllib.loads((tmp_path / "c" / "cluster.toml").read_text())["cluster"]["id"]
    r = _init(tmp_path, "--force")
    assert r.returncode == 0, r.stderr
    new_id = tomllib.loads((tmp_path / "c" / "cluster.toml").read_text())["cluster"]["id"]
    assert new_id != old_id
    for n in ("n1", "n2", "n3"):
        assert (tmp_path / "c" / n / "node.db").is_file()
        assert len(list((tmp_path / "c").glob(f"{n}.replaced-*"))) == 1  # kept, not deleted
    # and the new data dirs belong to the new cluster: node init accepts them as they are
    r = run("node", "init", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n1")
    assert r.returncode == 0, r.stderr


def test_cluster_init_refuses_a_leftover_node_database(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    (tmp_path / "c" / "cluster.toml").unlink()
    r = _init(tmp_path)
    assert r.returncode == 1
    assert "node database" in assert_one_line_error(r.stderr)
    assert not (tmp_path / "c" / "cluster.toml").exists()


@pytest.mark.parametrize("args", [["--nodes", "0"], ["--nodes", "3", "--base-port", "65500"],
                                  ["--nodes", "3", "--host", "bad host"]])
def test_cluster_init_rejects_bad_values_with_exit_2(tmp_path: Path, args: list[str]) -> None:
    r = run("cluster", "init", "--dir", tmp_path / "c", *args)
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


# --- node init --------------------------------------------------------------------------

def test_node_init_prepares_one_nodes_data_dir(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    n2 = tmp_path / "c" / "n2"
    for f in n2.iterdir():
        f.unlink()
    n2.rmdir()
    old_key = keys.read_client_key(tmp_path / "c" / "admin.key").server_keys()
    r = run("node", "init", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n2")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == n2
    assert (n2 / "node.db").is_file()
    # Its key went with the directory: a new one, recorded where clients and members look.
    c = clusterfile.load(tmp_path / "c" / "cluster.toml")
    assert keys.read_node_key(n2 / "node.key", "n2", c.node("n2").public_key)
    assert c.node("n2").public_key != old_key[c.node("n2").address]
    assert keys.read_client_key(tmp_path / "c" / "admin.key").server_keys() == c.server_keys()
    again = run("node", "init", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n2",
                "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["node"] == "n2"


def test_node_init_unknown_node_is_a_usage_error(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    r = run("node", "init", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n9")
    assert r.returncode == 2
    assert "n9" in assert_one_line_error(r.stderr)


def test_node_init_refuses_a_data_dir_of_another_cluster(tmp_path: Path) -> None:
    assert run("cluster", "init", "--nodes", "3", "--dir", tmp_path / "a").returncode == 0
    assert run("cluster", "init", "--nodes", "3", "--dir", tmp_path / "b").returncode == 0
    # point b's n1 at a's data dir
    path = tmp_path / "b" / "cluster.toml"
    path.write_text(path.read_text().replace('data_dir = "n1"', f'data_dir = "{tmp_path / "a" / "n1"}"'))
    r = run("node", "init", "--cluster", path, "--node", "n1")
    assert r.returncode == 1
    assert "belongs to" in assert_one_line_error(r.stderr)


# --- usage errors and discovery ---------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["config", "get", "k", "--bogus"],
    ["status", "--timeout", "abc"],
    ["config", "set", "only-a-key"],
    ["config", "set", "k", "v", "--if-revision", "-1"],
    ["lock", "run", "name", "--ttl", "x", "--", "true"],
    ["cluster", "init", "--nodes", "many", "--dir", "x"],
    ["nosuchcommand"],
])
def test_bad_flags_exit_2_with_one_line_and_no_traceback(tmp_path: Path, args: list[str]) -> None:
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "(hint: see `coordctl" in assert_one_line_error(r.stderr)
    assert r.stdout == ""


def test_no_cluster_found_exits_2(tmp_path: Path) -> None:
    r = run("config", "get", "k", cwd=tmp_path)
    assert r.returncode == 2
    assert "no cluster given" in assert_one_line_error(r.stderr)


@pytest.mark.parametrize("endpoints", ["foo", "tcp://127.0.0.1", "http://127.0.0.1:7101", ","])
def test_bad_endpoints_exit_2(tmp_path: Path, endpoints: str) -> None:
    r = run("status", "--endpoints", endpoints, cwd=tmp_path)
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


def test_bad_endpoints_from_the_environment_exit_2(tmp_path: Path) -> None:
    r = run("config", "list", cwd=tmp_path, env=clean_env(COORD_ENDPOINTS="nonsense"))
    assert r.returncode == 2
    assert "nonsense" in assert_one_line_error(r.stderr)


def test_malformed_cluster_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.toml"
    bad.write_text("[cluster\nname=")
    r = run("config", "get", "k", "--cluster", bad)
    assert r.returncode == 2
    assert "unreadable" in assert_one_line_error(r.stderr)


def test_missing_cluster_file_exits_2(tmp_path: Path) -> None:
    r = run("status", "--cluster", tmp_path / "nope.toml")
    assert r.returncode == 2
    assert "not found" in assert_one_line_error(r.stderr)


HELP_COMMANDS = [
    [], ["status"], ["serve"], ["cluster"], ["cluster", "init"], ["cluster", "up"], ["node"],
    ["node", "init"], ["config"], ["config", "set"], ["config", "get"], ["config", "delete"],
    ["config", "list"], ["config", "watch"], ["config", "history"], ["config", "diff"],
    ["config", "rollback"], ["lock"], ["lock", "run"], ["lock", "list"],
]


@pytest.mark.parametrize("cmd", HELP_COMMANDS, ids=lambda c: " ".join(c) or "coordctl")
def test_every_help_has_an_example(cmd: list[str]) -> None:
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout
    assert "coordctl" in r.stdout


def test_shell_completion_stays_enabled() -> None:
    assert "--install-completion" in run("--help").stdout


def test_python_dash_m_coordctl_runs_the_same_app() -> None:
    r = subprocess.run([str(Path(COORDCTL).parent / "python"), "-m", "coordctl", "--help"],
                       capture_output=True, text=True, env=clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert "coordctl" in r.stdout


# --- serve refusals ---------------------------------------------------------------------

def test_serve_refuses_a_missing_data_dir(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    n1 = tmp_path / "c" / "n1"
    for f in n1.iterdir():
        f.unlink()
    n1.rmdir()
    r = run("serve", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n1", timeout=20)
    assert r.returncode != 0
    assert "does not exist" in assert_one_line_error(r.stderr)
    assert not n1.exists()  # nothing was recreated silently


def test_serve_refuses_an_empty_data_dir(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    (tmp_path / "c" / "n1" / "node.db").unlink()
    left = sorted((tmp_path / "c" / "n1").iterdir())   # the node's key stays
    r = run("serve", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n1", timeout=20)
    assert r.returncode != 0
    assert "node.db" in assert_one_line_error(r.stderr)
    assert sorted((tmp_path / "c" / "n1").iterdir()) == left


def test_serve_unknown_node_exits_2(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    r = run("serve", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n7")
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


def _last_line_no_traceback(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines, "expected a reason on stderr"
    return lines[-1]


def test_serve_refuses_a_corrupt_database(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    (tmp_path / "c" / "n1" / "node.db").write_bytes(b"this is not sqlite" * 20)
    r = run("serve", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n1", timeout=20)
    assert r.returncode != 0
    assert "corrupt" in _last_line_no_traceback(r.stderr)


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    base = free_base_port()
    assert _init(tmp_path, "--base-port", str(base)).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen()
        r = run("serve", "--cluster", tmp_path / "c" / "cluster.toml", "--node", "n1",
                timeout=20)
    assert r.returncode != 0
    _last_line_no_traceback(r.stderr)


# --- unreachable cluster ----------------------------------------------------------------

def test_status_of_unreachable_endpoints_exits_3(tmp_path: Path) -> None:
    base = free_base_port()
    r = run("status", "--json", "--timeout", "1", "--endpoints",
            f"tcp://127.0.0.1:{base + 1},tcp://127.0.0.1:{base + 2}", cwd=tmp_path)
    assert r.returncode == 3, (r.stdout, r.stderr)
    if r.stdout.strip():  # the status dict, every node unreachable
        st = json.loads(r.stdout)
        assert st["cluster"]["quorum"] is False
        assert all(n["reachable"] is False for n in st["nodes"])
    assert "Traceback" not in r.stderr


def test_status_table_of_a_stopped_cluster_marks_every_node_unreachable(tmp_path: Path) -> None:
    base = free_base_port()
    assert _init(tmp_path, "--base-port", str(base)).returncode == 0
    r = run("status", "--timeout", "1", "--cluster", tmp_path / "c" / "cluster.toml")
    assert r.returncode == 3
    for n in ("n1", "n2", "n3"):
        assert n in r.stdout
    assert r.stdout.count("unreachable") == 3
    assert "quorum no" in r.stdout
    assert_one_line_error(r.stderr)


@pytest.mark.parametrize("args", [["config", "get", "k"], ["config", "set", "k", "v"],
                                  ["config", "list"], ["lock", "list"]])
def test_client_commands_without_a_quorum_exit_3(tmp_path: Path, args: list[str]) -> None:
    base = free_base_port()
    assert _init(tmp_path, "--base-port", str(base)).returncode == 0
    r = run(*args, "--timeout", "1", "--cluster", tmp_path / "c" / "cluster.toml")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "unavailable" in assert_one_line_error(r.stderr)
    assert r.stdout == ""

