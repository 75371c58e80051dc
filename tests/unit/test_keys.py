"""Key files and the security section of cluster.toml: what is written, and every way a
file is refused (one line, naming the file)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from coordsvc import clusterfile, keys
from coordsvc.clusterfile import ClusterFileError
from coordsvc.keys import KeyFileError, KeyPair


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _one_line(e: BaseException) -> str:
    s = str(e)
    assert "\n" not in s, s
    return s


def test_a_generated_pair_is_z85_and_its_secret_never_shows_in_repr() -> None:
    pair = KeyPair.generate()
    assert keys.check_public(pair.public, "k") == pair.public
    assert zmq.curve_public(pair.secret.encode()).decode() == pair.public
    assert pair.secret not in repr(pair)


def test_a_new_secure_cluster_has_public_keys_in_the_file_and_secrets_in_0600_files(tmp_path: Path) -> None:
    ck = keys.ClusterKeys.generate(["n1", "n2", "n3"])
    c = clusterfile.write_new(tmp_path, 3, base_port=20000, cluster_keys=ck)
    clusterfile.write_keys(c, ck)
    assert c.secure and c.admin_public_key == ck.admin.public
    text = (tmp_path / "cluster.toml").read_text()
    for n in c.nodes:
        assert n.public_key == ck.nodes[n.id].public
        assert ck.nodes[n.id].secret not in text
        assert _mode(n.key_file) == 0o600
        assert keys.read_node_key(n.key_file, n.id, n.public_key) == ck.nodes[n.id]
    assert ck.admin.secret not in text
    admin = keys.read_client_key(tmp_path / "admin.key")
    assert _mode(tmp_path / "admin.key") == 0o600
    assert admin.name == "admin" and admin.pair == ck.admin
    assert admin.server_keys() == c.server_keys() == {n.address: n.public_key for n in c.nodes}


def test_key_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keys.write_node_key(tmp_path / "node.key", "n1", KeyPair.generate())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "node.key") == 0o600


def test_an_insecure_cluster_file_has_no_keys(tmp_path: Path) -> None:
    c = clusterfile.write_new(tmp_path, 3, base_port=20000)
    assert not c.secure and c.admin_public_key is None
    assert all(n.public_key is None for n in c.nodes) and c.server_keys() == {}
    assert 'mode = "insecure"' in (tmp_path / "cluster.toml").read_text()


def test_a_cluster_file_from_before_keys_is_insecure(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(
        '[cluster]\nname = "x"\nid = "y"\n[[nodes]]\nid = "n1"\naddress = "tcp://127.0.0.1:7101"\n'
        'publish = "tcp://127.0.0.1:7201"\ndata_dir = "n1"\n')
    assert clusterfile.load(tmp_path / "cluster.toml").secure is False


@pytest.mark.parametrize("edit, why", [
    (lambda t, pk: t.replace(f'public_key = "{pk}"', 'public_key = "short"'), "not a CURVE key"),
    (lambda t, pk: t.replace(f'public_key = "{pk}"\n', ""), "not a CURVE key"),
    (lambda t, pk: t.replace('mode = "curve"', 'mode = "maybe"'), "mode must be"),
    (lambda t, pk: t.replace("admin_public_key", "admin_public"), "admin_public_key"),
])
def test_a_secure_cluster_file_with_a_bad_key_is_refused_in_one_line(tmp_path: Path, edit, why) -> None:  # type: ignore[no-untyped-def]
    ck = keys.ClusterKeys.generate(["n1", "n2"])
    c = clusterfile.write_new(tmp_path, 2, base_port=20000, cluster_keys=ck)
    path = tmp_path / "cluster.toml"
    path.write_text(edit(path.read_text(), c.nodes[0].public_key))
    with pytest.raises(ClusterFileError) as e:
        clusterfile.load(path)
    assert why in _one_line(e.value) and str(path) in str(e.value)


def test_two_members_with_one_key_are_refused(tmp_path: Path) -> None:
    ck = keys.ClusterKeys.generate(["n1", "n2"])
    ck.nodes["n2"] = ck.nodes["n1"]
    with pytest.raises(ClusterFileError, match="own key"):
        clusterfile.write_new(tmp_path, 2, base_port=20000, cluster_keys=ck)


def _admin(tmp_path: Path) -> Path:
    ck = keys.ClusterKeys.generate(["n1"])
    c = clusterfile.write_new(tmp_path, 1, base_port=20000, cluster_keys=ck)
    clusterfile.write_keys(c, ck)
    return tmp_path / "admin.key"


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = _admin(tmp_path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as e:
        keys.read_client_key(path)
    assert "chmod 600" in _one_line(e.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        keys.read_client_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="node replace"):
        keys.read_node_key(tmp_path / "node.key", "n1")


@pytest.mark.parametrize("content, why", [
    ("not toml [", "not valid TOML"),
    ("[other]\nx = 1\n", "no [client] table"),
    ('[client]\nname = "a b"\npublic = "x"\nsecret = "y"\n', "name must be"),
    ("\x00\xff", "not valid TOML"),
])
def test_a_malformed_client_key_file_is_refused_in_one_line(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(content.encode("latin-1"))
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as e:
        keys.read_client_key(path)
    assert why in _one_line(e.value)


def test_a_key_file_whose_halves_do_not_belong_together_is_refused(tmp_path: Path) -> None:
    path = _admin(tmp_path)
    other = KeyPair.generate()
    text = path.read_text()
    ck = keys.read_client_key(path)
    path.write_text(text.replace(ck.pair.public, other.public))
    with pytest.raises(KeyFileError, match="does not belong"):
        keys.read_client_key(path)


def test_a_huge_or_special_file_is_not_read_as_a_key(tmp_path: Path) -> None:
    big = tmp_path / "big.key"
    big.write_bytes(b"#" * (keys.MAX_KEY_FILE_BYTES + 1))
    big.chmod(0o600)
    with pytest.raises(KeyFileError, match="too large"):
        keys.read_client_key(big)
    with pytest.raises(KeyFileError, match="not a regular file"):
        keys.read_client_key(tmp_path)


def test_a_node_key_must_match_the_cluster_file(tmp_path: Path) -> None:
    pair = KeyPair.generate()
    keys.write_node_key(tmp_path / "node.key", "n1", pair)
    with pytest.raises(KeyFileError, match="does not match"):
        keys.read_node_key(tmp_path / "node.key", "n1", KeyPair.generate().public)
    with pytest.raises(KeyFileError, match="key of node n1, not n2"):
        keys.read_node_key(tmp_path / "node.key", "n2")


def test_a_replacement_key_is_recorded_in_the_cluster_file(tmp_path: Path) -> None:
    ck = keys.ClusterKeys.generate(["n1", "n2"])
    c = clusterfile.write_new(tmp_path, 2, base_port=20000, cluster_keys=ck)
    new = KeyPair.generate()
    c2 = clusterfile.set_node_key(c, "n2", new.public)
    assert c2.node("n2").public_key == new.public
    assert c2.node("n1").public_key == c.node("n1").public_key
    assert clusterfile.load(tmp_path / "cluster.toml").node("n2").public_key == new.public


def test_one_host_per_node_puts_each_node_and_its_key_entry_on_its_host(tmp_path: Path) -> None:
    ck = keys.ClusterKeys.generate(["n1", "n2", "n3"])
    c = clusterfile.write_new(tmp_path, 3, host=["10.0.0.11", "10.0.0.12", "10.0.0.13"],
                              base_port=7100, cluster_keys=ck)
    assert c.endpoints == ["tcp://10.0.0.11:7101", "tcp://10.0.0.12:7102", "tcp://10.0.0.13:7103"]
    clusterfile.write_keys(c, ck)
    assert keys.read_client_key(tmp_path / "admin.key").server_keys() == c.server_keys()
    with pytest.raises(ClusterFileError, match="one per node"):
        clusterfile.write_new(tmp_path / "x", 3, host=["10.0.0.11", "10.0.0.12"])


def test_a_clients_file_keys_are_taken_again_only_once_the_cluster_file_changed(
        tmp_path: Path) -> None:
    from coordsvc.client._credentials import FileKeys
    ck = keys.ClusterKeys.generate(["n1", "n2"])
    c = clusterfile.write_new(tmp_path, 2, base_port=20000, cluster_keys=ck)
    learned: list[tuple[object, object]] = []
    fk = FileKeys(c)
    fk.refresh(lambda a, k: learned.append((a, k)))
    assert learned == []                       # unchanged: not even read
    new = KeyPair.generate()
    c2 = clusterfile.mark_added(c, "n2", new.public)
    fk.refresh(lambda a, k: learned.append((a, k)))
    assert (c2.node("n2").address, new.public) in learned and len(learned) == 2
    learned.clear()
    fk.refresh(lambda a, k: learned.append((a, k)))
    assert learned == []                       # taken once per change
    FileKeys(None).refresh(lambda a, k: learned.append((a, k)))   # endpoints only: no file
    assert learned == []
