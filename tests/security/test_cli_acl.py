"""Rights as an operator meets them through `coordctl` (CONTRACT §7): `auth add/list/remove`,
the ACL matrix per op, and key rotation. Every refusal is exit 1, one line, and changes
nothing (checked with the admin key from Python)."""
from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordsvc import Client, keys

from ..cli.conftest import COORDCTL, LocalCluster, assert_one_line_error, clean_env, run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cli-acl"))
    try:
        c.start_all()
        c.wait_for_leader(15.0)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Client]:
    with Client.from_cluster_file(cluster.file) as c:
        yield c


def cc(cluster: LocalCluster, *args: str | Path, key: Path | None = None,
       timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    extra = ["--key", str(key)] if key is not None else []
    cut = args.index("--") if "--" in args else len(args)    # options go before `-- CMD`
    return run(*args[:cut], *cluster.args(), *extra, *args[cut:], timeout=timeout)


def world(admin: Client) -> tuple[object, ...]:
    return (admin.revision(), [(e.key, e.value, e.revision) for e in admin.list("")],
            [(i.name, i.holder, i.token) for i in admin.locks()], admin.auth_list())


RIGHTS: dict[str, list[str]] = {
    "reader": ["--read", "app/"],
    "writer": ["--write", "app/"],
    "locker": ["--lock", "jobs/"],
    "nobody": [],
}


@pytest.fixture(scope="module")
def key_files(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli-keys")
    out = {}
    for name, flags in RIGHTS.items():
        path = tmp / f"{name}.key"
        r = cc(cluster, "auth", "add", name, *flags, "--out", path)
        assert r.returncode == 0, r.stderr
        out[name] = path
    return out


def test_auth_add_writes_a_0600_key_file_whose_secret_never_reaches_the_cluster(
        cluster: LocalCluster, key_files: dict[str, Path]) -> None:
    ck = keys.read_client_key(key_files["reader"])
    assert ck.name == "reader" and key_files["reader"].stat().st_mode & 0o777 == 0o600
    assert {n.id for n in ck.nodes} == set(cluster.nodes)
    listed = cc(cluster, "auth", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {p["name"]: p for p in json.loads(listed.stdout)}
    assert rows["reader"] == {"name": "reader", "public": ck.pair.public, "read": ["app/"],
                              "write": [], "lock": [], "admin": False}
    assert rows["admin"]["admin"] is True and "secret" not in listed.stdout
    secret = ck.pair.secret.encode()
    for path in cluster.dir.rglob("*"):          # node.db, WAL, logs, cluster.toml, ...
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_auth_commands_need_an_admin_key_and_leave_no_file_behind(
        cluster: LocalCluster, key_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.key"
    for args in (("auth", "add", "x", "--admin", "--out", out), ("auth", "list"),
                 ("auth", "remove", "reader")):
        r = cc(cluster, *args, key=key_files["writer"])
        assert r.returncode == 1 and "permission denied" in assert_one_line_error(r.stderr)
    assert not out.exists() and not list(tmp_path.iterdir())
    r = cc(cluster, "auth", "add", "reader", "--out", out)          # the name is taken
    assert r.returncode == 1 and "exists" in assert_one_line_error(r.stderr)
    assert not out.exists()
    r = cc(cluster, "auth", "remove", "nobody-at-all")
    assert r.returncode == 1 and "no principal" in assert_one_line_error(r.stderr)


def _watch_one(cluster: LocalCluster, key: Path) -> tuple[int, str, str]:
    """`config watch app/ --from-revision 1` until its first line (or its exit)."""
    p = subprocess.Popen([COORDCTL, "config", "watch", "app/", "--from-revision", "1",
                          *cluster.args(), "--key", str(key)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert p.stdout is not None
        assert select.select([p.stdout], [], [], 30)[0], "watch: no line and no exit in 30 s"
        line = p.stdout.readline()
        if line:
            return 0, line, ""
        return p.wait(30), "", p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(10)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


OPS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "get": (("config", "get", "app/seed"), {"reader", "writer"}),
    "list": (("config", "list", "app/"), {"reader", "writer"}),
    "history": (("config", "history", "app/seed"), {"reader", "writer"}),
    "watch": ((), {"reader", "writer"}),
    "put": (("config", "set", "app/m", "v"), {"writer"}),
    "delete": (("config", "delete", "app/seed2"), {"writer"}),
    "cas": (("config", "set", "app/cas", "v", "--if-revision", "0"), {"writer"}),
    "lock": (("lock", "run", "jobs/m", "--wait", "5", "--", "true"), {"locker"}),
    "locks": (("lock", "list"), {"locker"}),
    "status": (("status",), {"reader", "writer", "locker", "nobody"}),
    "auth": (("auth", "list"), set()),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_op_from_coordctl_is_allowed_exactly_by_its_right(
        cluster: LocalCluster, admin: Client, key_files: dict[str, Path], op: str) -> None:
    args, allowed = OPS[op]

    def reset() -> None:
        admin.put("app/seed", "s")
        admin.put("app/seed2", "s")
        admin.delete("app/cas")
    for who in sorted(RIGHTS):
        reset()
        before = world(admin)
        if op == "watch":
            code, out, err = _watch_one(cluster, key_files[who])
        else:
            r = cc(cluster, *args, key=key_files[who])
            code, out, err = r.returncode, r.stdout, r.stderr
        if who in allowed:
            assert code == 0, (who, err)
        else:
            assert code == 1, (who, out, err)
            assert "permission denied" in assert_one_line_error(err), who
            assert world(admin) == before, who
    reset()
    code = _watch_one(cluster, cluster.dir / "admin.key")[0] if op == "watch" else cc(
        cluster, *args).returncode
    assert code == 0, f"the admin key may {op}"


def test_lock_list_names_the_holding_identity(cluster: LocalCluster,
                                              key_files: dict[str, Path]) -> None:
    holder = subprocess.Popen([COORDCTL, "lock", "run", "jobs/held", *cluster.args(), "--key",
                               str(key_files["locker"]), "--", "sleep", "30"], env=clean_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            r = cc(cluster, "lock", "list", "--json")
            locks = {lk["name"]: lk for lk in json.loads(r.stdout or "[]")}
            if "jobs/held" in locks or time.monotonic() > deadline:
                break
        lk = locks["jobs/held"]
        assert lk["holder"] == "locker" and isinstance(lk["session"], int) and lk["token"] > 0
    finally:
        holder.terminate()
        holder.wait(10)


def test_rotation_the_old_key_is_refused_at_once_and_its_watch_ends(
        cluster: LocalCluster, admin: Client, tmp_path: Path) -> None:
    old, new = tmp_path / "svc1.key", tmp_path / "svc2.key"
    assert cc(cluster, "auth", "add", "svc1", "--read", "app/", "--out", old).returncode == 0
    rev = admin.put("app/rot", "1")
    watch = subprocess.Popen([COORDCTL, "config", "watch", "app/", "--from-revision", str(rev),
                              *cluster.args(), "--key", str(old)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert watch.stdout is not None
        assert select.select([watch.stdout], [], [], 30)[0], "the watch printed nothing in 30 s"
        assert "app/rot" in watch.stdout.readline()     # the watch is open and delivering
        assert cc(cluster, "auth", "add", "svc2", "--read", "app/", "--out", new).returncode == 0
        r = cc(cluster, "auth", "remove", "svc1")
        assert r.returncode == 0, r.stderr
        assert watch.wait(15) == 1
        assert watch.stderr is not None
        assert "permission denied" in assert_one_line_error(watch.stderr.read())
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        for f in (watch.stdout, watch.stderr):
            if f is not None:
                f.close()
    t0 = time.monotonic()
    r = cc(cluster, "config", "get", "app/rot", key=old)
    assert r.returncode == 1 and "rejected this client's key" in assert_one_line_error(r.stderr)
    assert time.monotonic() - t0 < 5.0
    r = cc(cluster, "config", "get", "app/rot", key=new)
    assert r.returncode == 0 and r.stdout.strip() == "1"
