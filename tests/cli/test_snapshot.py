"""`coordctl snapshot save|info|restore` as an operator types them (CONTRACT §9)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordsvc import clusterfile, keys

from .conftest import LocalCluster, assert_one_line_error, free_base_port, run


@pytest.fixture(scope="module")
def backup(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good backup of the shared cluster, holding a few keys."""
    for i in range(20):
        r = run("config", "set", f"snap/{i}", f"v{i}", *cluster.args())
        assert r.returncode == 0, r.stderr
    path = tmp_path_factory.mktemp("backups") / "good.snap"
    r = run("snapshot", "save", path, *cluster.args())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"saved {path}: revision ") and " keys, " in r.stdout
    return path


def _info(path: Path) -> tuple[int, dict[str, Any], str]:
    r = run("snapshot", "info", path, "--json")
    return r.returncode, json.loads(r.stdout), r.stderr


def test_info_shows_revision_keys_index_created_size_and_a_good_checksum(backup: Path) -> None:
    code, info, err = _info(backup)
    assert code == 0 and err == ""
    assert info["checksum"] == "ok" and info["verified"] and info["format_version"] == 1
    assert info["keys"] >= 20 and info["revision"] >= 20 and info["index"] >= 1
    assert info["size"] == backup.stat().st_size and info["created"].endswith("Z")
    r = run("snapshot", "info", backup)
    assert r.returncode == 0
    for field in ("checksum  ok (sha256", "revision", "keys", "index", "created", "size"):
        assert field in r.stdout


def _damaged(backup: Path, tmp_path: Path) -> dict[str, Path]:
    data = backup.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    out = {"flipped": tmp_path / "flipped.snap", "truncated": tmp_path / "truncated.snap",
           "header": tmp_path / "header.snap"}
    out["flipped"].write_bytes(bytes(flipped))
    out["truncated"].write_bytes(data[: len(data) - 100])
    head = bytearray(data)
    head[20] ^= 0x10          # inside the metadata (revision, keys, ...)
    out["header"].write_bytes(bytes(head))
    return out


@pytest.mark.parametrize("damage", ["flipped", "truncated", "header"])
def test_a_damaged_backup_is_refused_in_one_line_and_leaves_no_cluster_behind(
        backup: Path, tmp_path: Path, damage: str) -> None:
    bad = _damaged(backup, tmp_path)[damage]
    absent = tmp_path / "absent" / "restored"
    r = run("snapshot", "restore", bad, "--nodes", "3", "--dir", absent,
            "--base-port", str(free_base_port()))
    assert r.returncode == 1, r
    line = assert_one_line_error(r.stderr)
    assert str(bad) in line and ("damaged" in line or "truncated" in line), line
    assert not absent.parent.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("snapshot", "restore", bad, "--nodes", "3", "--dir", empty)
    assert r.returncode == 1 and list(empty.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # info shows what the header still says, unverified, and fails in one line too.
    code, info, err = _info(bad)
    assert code == 1 and info["checksum"] == "bad" and not info["verified"]
    assert assert_one_line_error(err) == line
    if damage == "truncated":
        assert info["size"] < info["expected_size"] and "truncated" in info["problem"]


def test_restore_refuses_a_directory_that_is_not_empty_and_changes_nothing(
        backup: Path, tmp_path: Path) -> None:
    d = tmp_path / "taken"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    r = run("snapshot", "restore", backup, "--nodes", "3", "--dir", d)
    assert r.returncode == 1
    assert "not an empty directory" in assert_one_line_error(r.stderr)
    assert [p.name for p in d.iterdir()] == ["notes.txt"]


def test_restore_into_an_empty_directory_prepares_every_node_and_keys(
        backup: Path, tmp_path: Path) -> None:
    d = tmp_path / "new"
    d.mkdir()
    r = run("snapshot", "restore", backup, "--nodes", "5", "--dir", d, "--base-port",
            str(free_base_port(5)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(d / "cluster.toml")
    assert "into a new cluster" in lines[1] and "coordctl cluster up --dir" in lines[2]
    names = sorted(p.name for p in d.iterdir())
    assert names == ["admin.key", "cluster.toml", "n1", "n2", "n3", "n4", "n5"]
    assert all((d / f"n{i}" / "node.db").exists() and (d / f"n{i}" / "node.key").exists()
               for i in range(1, 6))
    assert (d / "admin.key").stat().st_mode & 0o777 == 0o600


def test_save_to_a_directory_that_does_not_exist_fails_in_one_line(
        cluster: LocalCluster, tmp_path: Path) -> None:
    r = run("snapshot", "save", tmp_path / "missing" / "b.snap", *cluster.args())
    assert r.returncode == 1
    assert "missing" in assert_one_line_error(r.stderr)


def test_info_on_a_file_that_is_not_a_backup_fails_in_one_line(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    r = run("snapshot", "info", p)
    assert r.returncode == 1 and "not a coordsvc snapshot" in assert_one_line_error(r.stderr)
    r = run("snapshot", "info", tmp_path / "nothing.snap")
    assert r.returncode == 1 and "does not exist" in assert_one_line_error(r.stderr)


def test_restore_takes_exactly_the_contracts_flags_and_makes_a_new_cluster_with_coherent_keys(
        cluster: LocalCluster, backup: Path, tmp_path: Path) -> None:
    """CONTRACT §9: `snapshot restore FILE --nodes N --dir DIR [--base-port P]`: a new cluster
    id, its own keys and admin.key, every data directory prepared; node i on P+i, P+100+i
    and HTTP on P+200+i (§9's port plan)."""
    base = free_base_port(3)
    d = tmp_path / "restored"
    r = run("snapshot", "restore", backup, "--nodes", "3", "--dir", d, "--base-port", str(base))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    new, old = clusterfile.load(d / "cluster.toml"), clusterfile.load(cluster.file)
    assert new.id != old.id and new.secure
    for i, n in enumerate(new.nodes, start=1):
        assert (n.address, n.publish, n.http) == (
            f"tcp://127.0.0.1:{base + i}", f"tcp://127.0.0.1:{base + 100 + i}",
            f"http://127.0.0.1:{base + 200 + i}")
        assert (n.data_dir / "node.db").is_file()
        # node.key is the secret half of the public key cluster.toml gives the node.
        assert n.public_key is not None
        keys.read_node_key(n.key_file, n.id, expect_public=n.public_key)
        assert n.public_key not in {m.public_key for m in old.nodes}
    admin = keys.read_client_key(d / "admin.key")
    assert admin.pair.public == new.admin_public_key != old.admin_public_key
    assert admin.server_keys() == new.server_keys()


def test_info_shows_revision_and_keys_as_text_and_json(backup: Path) -> None:
    """CONTRACT §9: `snapshot info FILE [--json]` shows at least revision and keys."""
    code, info, _ = _info(backup)
    assert code == 0 and type(info["revision"]) is int and type(info["keys"]) is int
    text = run("snapshot", "info", backup)
    assert text.returncode == 0
    rows = dict(line.split(None, 1) for line in text.stdout.splitlines() if line.strip())
    assert (int(rows["revision"]), int(rows["keys"])) == (info["revision"], info["keys"])


@pytest.mark.parametrize("args", [
    ["snapshot", "save"],                                                  # FILE missing
    ["snapshot", "restore", "{backup}", "--dir", "{dir}"],                 # --nodes missing
    ["snapshot", "restore", "{backup}", "--nodes", "3"],                   # --dir missing
    ["snapshot", "restore", "{backup}", "--nodes", "0", "--dir", "{dir}"],
    ["snapshot", "restore", "{backup}", "--nodes", "3", "--dir", "{dir}", "--base-port", "70000"],
    ["snapshot", "restore", "{backup}", "--nodes", "3", "--dir", "{dir}", "--same-ports"],
    ["snapshot", "info"],
])
def test_snapshot_usage_errors_exit_2_in_one_line_and_create_nothing(
        backup: Path, tmp_path: Path, args: list[str]) -> None:
    d = tmp_path / "never"
    r = run(*[a.format(backup=backup, dir=d) for a in args])
    assert r.returncode == 2, r
    assert_one_line_error(r.stderr)
    assert list(tmp_path.iterdir()) == []


def test_save_with_no_node_answering_exits_3_and_leaves_no_file(tmp_path: Path) -> None:
    dead = f"tcp://127.0.0.1:{free_base_port(1) + 1}"
    r = run("snapshot", "save", tmp_path / "b.snap", "--endpoints", dead, "--timeout", "1")
    assert r.returncode == 3, r
    assert "unavailable" in assert_one_line_error(r.stderr)
    assert list(tmp_path.iterdir()) == []
