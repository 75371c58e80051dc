"""Which key a client uses (CONTRACT §7): key= / --key, then $COORD_KEY, then admin.key
beside the cluster file; an insecure cluster file means no key at all."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coordsvc import PermissionDenied, clusterfile, keys
from coordsvc.client._credentials import resolve
from coordsvc.clusterfile import Cluster


@pytest.fixture
def secure(tmp_path: Path) -> Cluster:
    ck = keys.ClusterKeys.generate(["n1", "n2"])
    c = clusterfile.write_new(tmp_path / "c", 2, base_port=20000, cluster_keys=ck)
    clusterfile.write_keys(c, ck)
    return c


def _other_key(c: Cluster, path: Path, name: str) -> Path:
    admin = keys.read_client_key(c.admin_key_file)  # type: ignore[arg-type]
    keys.write_client_key(path, dataclasses.replace(admin, name=name, pair=keys.KeyPair.generate()))
    return path


def test_the_admin_key_beside_the_cluster_file_is_the_default(secure: Cluster,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORD_KEY", raising=False)
    creds = resolve(secure, None)
    assert creds is not None and creds.name == "admin"
    assert all(creds.server_key(n.address) == n.public_key for n in secure.nodes)


def test_coord_key_comes_before_the_admin_key_and_key_before_coord_key(
        secure: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORD_KEY", str(_other_key(secure, tmp_path / "env.key", "env")))
    assert resolve(secure, None).name == "env"  # type: ignore[union-attr]
    assert resolve(secure, _other_key(secure, tmp_path / "arg.key", "arg")).name == "arg"  # type: ignore[union-attr]


def test_endpoints_alone_are_plain_tcp_unless_a_key_is_given(
        secure: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORD_KEY", raising=False)
    assert resolve(None, None) is None
    creds = resolve(None, secure.admin_key_file)
    assert creds is not None and creds.server_key(secure.nodes[0].address) == secure.nodes[0].public_key


def test_an_insecure_cluster_file_means_no_key_whatever_is_around(
        tmp_path: Path, secure: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORD_KEY", str(secure.admin_key_file))
    plain = clusterfile.write_new(tmp_path / "plain", 2, base_port=20000)
    assert resolve(plain, None) is None


def test_a_secure_cluster_file_without_any_key_is_refused_up_front(
        secure: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORD_KEY", raising=False)
    secure.admin_key_file.unlink()  # type: ignore[union-attr]
    with pytest.raises(PermissionDenied, match="has no key"):
        resolve(secure, None)


def test_keys_are_learned_from_members_only_when_well_formed(secure: Cluster) -> None:
    creds = resolve(secure, secure.admin_key_file)
    assert creds is not None
    fresh = keys.KeyPair.generate().public
    creds.learn("tcp://127.0.0.1:9999", fresh)
    creds.learn("tcp://127.0.0.1:9998", "not a key")
    creds.learn(None, fresh)
    assert creds.server_key("tcp://127.0.0.1:9999") == fresh
    assert creds.server_key("tcp://127.0.0.1:9998") is None
    assert creds.pair.secret not in repr(creds)
