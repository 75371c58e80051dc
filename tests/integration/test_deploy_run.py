"""What of deploy/ can run on this machine, run for real (paths moved under a temp dir).

- the systemd unit's ExecStart, one per node, on a cluster laid out as the unit expects:
  a leader, a graceful SIGTERM stop (exit 0), and a refused start (exit 1, one line);
- the Kubernetes init container's script, as a pod would run it, on a fresh and on an
  existing volume, and on a volume of another cluster;
- the compose file's one-shot init command, twice.
No Docker engine or Kubernetes cluster exists here: the images and pods themselves are
not run (tests/unit/test_deploy.py validates those files).
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from coordsvc import Client, clusterfile, snapshotfile

from ..deploy_files import COORDCTL, DEPLOY, backup_script
from .harness import free_base_port


def _unit_argv(node: str, srv: Path) -> list[str]:
    text = (DEPLOY / "systemd" / "coordsvc@.service").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", node))
    return [COORDCTL if a == "/opt/coordsvc/venv/bin/coordctl" else a.replace("/srv/coord", str(srv))
            for a in argv]


def test_the_units_command_runs_each_node_and_stops_it_gracefully(tmp_path: Path) -> None:
    srv = tmp_path / "srv" / "coord"
    r = subprocess.run([COORDCTL, "cluster", "init", "--nodes", "3", "--dir", str(srv),
                        "--base-port", str(free_base_port(3))], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in ("n1", "n2", "n3"):
            with open(tmp_path / f"{n}.log", "wb") as log:
                procs[n] = subprocess.Popen(_unit_argv(n, srv), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        with Client.from_cluster_file(srv / "cluster.toml", timeout=1.0) as c:
            deadline = time.monotonic() + 20
            while not (c.status()["cluster"]["quorum"] and c.status()["cluster"]["leader"]):
                assert time.monotonic() < deadline, "no leader"
                time.sleep(0.1)
            assert c.put("deployed/by", "systemd unit") >= 1
        # coordsvc-backup.service's command, against this cluster.
        backups = tmp_path / "backups"
        backups.mkdir()
        script = (backup_script().replace("/opt/coordsvc/venv/bin/coordctl", COORDCTL)
                  .replace("/var/backups/coordsvc", str(backups)).replace("/srv/coord", str(srv)))
        r = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        (saved,) = backups.iterdir()
        assert snapshotfile.verify(saved).keys == 1
        # KillSignal=SIGTERM: each stops within TimeoutStopSec=30 with exit 0.
        for n, p in procs.items():
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0, n
        # A refused start: exit 1 with one line (the unit's start limit ends such a loop).
        shutil.rmtree(srv / "n2")
        (srv / "n2").mkdir()
        refused = subprocess.run(_unit_argv("n2", srv), capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1 and "n2" in refused.stderr
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def _prepare_script(tmp_path: Path) -> str:
    sts = yaml.safe_load((DEPLOY / "kubernetes" / "statefulset.yaml").read_text())
    (prepare,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert prepare["command"][:2] == ["sh", "-ec"]
    script: str = prepare["command"][2]
    return (script.replace("/srv/coord", str(tmp_path / "volume"))
                  .replace("/etc/coordsvc", str(tmp_path / "etc")))


def _secrets(tmp_path: Path, admin: Path) -> None:
    """The ConfigMap and Secret mounts deploy/README.md says to create, as files."""
    (tmp_path / "etc" / "cluster").mkdir(parents=True)
    (tmp_path / "etc" / "keys").mkdir()
    shutil.copy(admin / "cluster.toml", tmp_path / "etc" / "cluster" / "cluster.toml")
    for i in (1, 2, 3):
        key = tmp_path / "etc" / "keys" / f"n{i}.key"
        shutil.copy(admin / f"n{i}" / "node.key", key)
        key.chmod(0o440)            # the Secret's defaultMode


def test_the_pods_init_script_lays_out_its_node_and_is_safe_to_repeat(tmp_path: Path) -> None:
    hosts = [a for i in range(3) for a in ("--host", f"coordsvc-{i}.coordsvc.default.svc.cluster.local")]
    r = subprocess.run([COORDCTL, "cluster", "init", "--nodes", "3", "--dir", str(tmp_path / "admin"),
                        "--same-ports", "--bind-host", "0.0.0.0", *hosts],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    _secrets(tmp_path, tmp_path / "admin")
    (tmp_path / "volume").mkdir()
    env = {**os.environ, "HOSTNAME": "coordsvc-1",
           "PATH": f"{Path(COORDCTL).parent}:{os.environ['PATH']}"}
    script = _prepare_script(tmp_path)
    first = subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    vol = tmp_path / "volume"
    assert first.stdout.strip() == str(vol / "n2")
    assert (vol / "n2" / "node.db").is_file()
    assert (vol / "n2" / "node.key").stat().st_mode & 0o777 == 0o600
    assert (vol / "n2" / "node.key").read_bytes() == (tmp_path / "admin" / "n2" / "node.key").read_bytes()
    c = clusterfile.load(vol / "cluster.toml")
    assert c.node("n2").data_dir == vol / "n2" and c.node("n2").listen == "tcp://0.0.0.0:7101"
    again = subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr           # a restarted pod
    # A volume of another cluster is refused in one line: the pod does not start.
    other = tmp_path / "other"
    r = subprocess.run([COORDCTL, "cluster", "init", "--nodes", "3", "--dir", str(other)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(vol / "n2")
    shutil.copytree(other / "n2", vol / "n2")
    refused = subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "coordctl: error:" in refused.stderr


def test_the_compose_init_command_creates_the_cluster_once(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    init = compose["services"]["init"]
    script = init["command"][0].replace("/srv/coord", str(tmp_path / "coord"))
    env = {**os.environ, "PATH": f"{Path(COORDCTL).parent}:{os.environ['PATH']}"}
    for _ in range(2):   # `docker compose up` again: the init service does nothing
        r = subprocess.run([*init["entrypoint"], script], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    c = clusterfile.load(tmp_path / "coord" / "cluster.toml")
    assert [n.address for n in c.nodes] == [f"tcp://coord{i}:7101" for i in (1, 2, 3)]
    assert [n.listen for n in c.nodes] == ["tcp://0.0.0.0:7101"] * 3
    assert c.secure and (tmp_path / "coord" / "admin.key").exists()
