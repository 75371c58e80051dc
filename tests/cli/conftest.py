"""Drive the installed `coordctl` console script as a subprocess, against real nodes."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordsvc.runtime import launch


def coordctl_path() -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "coordctl"
    if here.exists():
        return str(here)
    found = shutil.which("coordctl")
    if found is None:
        pytest.fail("coordctl is not installed: run `.venv/bin/pip install -e '.[test]'`")
    return found


COORDCTL = coordctl_path()


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without COORD_* (discovery must come from the test), wide tables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD")}
    env.update(COLUMNS="250", TERM="dumb", NO_COLOR="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COORDCTL, *map(str, args)], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(stderr: str) -> str:
    """stderr is exactly one `coordctl: error: ...` line, and never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got: {stderr!r}"
    assert lines[0].startswith("coordctl: error: "), lines[0]
    return lines[0]


_ports = random.Random()


def free_base_port(nodes: int = 3) -> int:
    """A base port whose node ports are all free on 127.0.0.1 right now."""
    return launch.free_base_port(nodes, _ports)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 5.0) -> int:
    """SIGTERM by pid, then SIGKILL after grace_s; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class LocalCluster:
    """`coordctl cluster init` + one `coordctl serve` process per node. Secure (CURVE) like
    `cluster init` itself; commands find the admin key beside the cluster file."""

    def __init__(self, root: Path, nodes: int = 3, insecure: bool = False) -> None:
        self.root = root
        self.dir = root / "coord"
        self.base_port = free_base_port(nodes)
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        r = run("cluster", "init", "--nodes", str(nodes), "--dir", self.dir,
                "--base-port", str(self.base_port), *(["--insecure"] if insecure else []))
        assert r.returncode == 0, r.stderr
        self.file = Path(r.stdout.strip())
        assert self.file == self.dir / "cluster.toml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def args(self) -> list[str]:
        return ["--cluster", str(self.file)]

    def start(self, node: str) -> None:
        self.procs[node] = launch.start_node(self.file, node, self.root / f"{node}.log",
                                             command=[COORDCTL, "serve"], env=clean_env())

    def start_all(self) -> None:
        for n in self.nodes:
            self.start(n)

    def kill(self, node: str) -> None:
        launch.kill(self.procs[node])

    def status(self, timeout: float = 1.0) -> dict[str, Any] | None:
        r = run("status", "--json", "--timeout", str(timeout), *self.args(), timeout=30)
        if not r.stdout.strip():
            return None
        parsed: dict[str, Any] = json.loads(r.stdout)
        return parsed

    def wait_for_leader(self, limit_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                pytest.fail(f"nodes exited during start-up: {dead}\n{self.log_tail()}")
            last = self.status()
            if last and last["cluster"].get("leader"):
                return last
            time.sleep(0.2)
        pytest.fail(f"no leader within {limit_s} s; last status {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for n in self.nodes:
            p = self.root / f"{n}.log"
            if p.exists():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {n}.log\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        launch.stop(self.procs.values(), grace_s=5.0)


def _up(root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(root)
    try:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running 3-node cluster shared by a test module (tests use distinct keys)."""
    yield from _up(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A running 3-node cluster of its own, for tests that kill nodes."""
    yield from _up(tmp_path)


@pytest.fixture
def cc(cluster: LocalCluster) -> Any:
    """`cc("config", "get", "k")` runs coordctl against the shared cluster."""
    def call(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run(*args, *cluster.args(), timeout=timeout)
    return call
