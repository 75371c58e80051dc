"""Local node processes: the one way coordsvc starts them, finds their ports and stops them.

`coordctl cluster up`, the test harnesses and the benchmarks all start nodes through
``start_node`` and stop them through ``stop``/``kill``, so a node is started one way
(``python -m coordsvc.runtime``, or a caller's own command such as ``coordctl serve``),
its stdout and stderr go to one log file, and it is stopped by the PID its caller keeps:
SIGCONT (a paused node must be able to act on what follows), SIGTERM, a grace period,
then SIGKILL, and always reaped. ``free_base_port`` finds room on 127.0.0.1 for the
ports ``clusterfile.write_new`` assigns (the benchmarks use the same layout for etcd and
PySyncObj members).

Standard library only, and nothing else from coordsvc: the benchmark anchors import this
module from a virtualenv where coordsvc's dependencies are not installed.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from random import Random

__all__ = ["ephemeral_ports", "free_base_port", "kill", "node_command", "node_ports", "start", "start_node", "stop"]

Proc = subprocess.Popen[bytes]

_GRACE_SLICE_S = 0.05


def node_command() -> list[str]:
    """The node entry point in this interpreter: ``python -m coordsvc.runtime``."""
    return [sys.executable, "-m", "coordsvc.runtime"]


def start(argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Start ``argv`` with stdin from /dev/null and stdout and stderr appended to ``log``.

    The caller keeps the returned process (its PID) and stops it with ``stop`` or ``kill``.
    """
    with open(log, "ab") as f:   # the child holds its own copy of the descriptor
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)


def start_node(cluster_file: Path, node_id: str, log: Path, *args: str,
               command: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> Proc:
    """Start node ``node_id`` of ``cluster_file``: ``command`` (default ``node_command()``)
    followed by ``--cluster FILE --node ID`` and ``args`` (extra ``serve`` flags)."""
    head = list(command) if command is not None else node_command()
    return start([*head, "--cluster", str(cluster_file), "--node", node_id, *args], log,
                 env=env, cwd=cwd)


def stop(procs: Iterable[Proc], grace_s: float = 5.0,
         on_kill: Callable[[Proc], None] | None = None) -> None:
    """Ask every process still running to stop (SIGCONT, SIGTERM), wait up to ``grace_s``
    for all of them together, then SIGKILL what is left (``on_kill`` is told first)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    # The grace is counted in short waits rather than against one deadline, so a stall of
    # this process (a paused test runner, a loaded machine, a clock step) does not spend a
    # child's grace while the child itself never got to run.
    slices = max(1, round(grace_s / _GRACE_SLICE_S))
    for p in procs:
        while p.poll() is None and slices > 0:
            slices -= 1
            try:
                p.wait(timeout=_GRACE_SLICE_S)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is None:
            if on_kill is not None:
                on_kill(p)
            kill(p)


def kill(proc: Proc) -> int:
    """SIGKILL (after SIGCONT, so a paused process goes too) and reap; the exit code."""
    try:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    except ProcessLookupError:
        pass
    return proc.wait()


def node_ports(base_port: int, nodes: int) -> list[int]:
    """Every port ``clusterfile.write_new`` assigns: node i listens on base+i, publishes on
    base+100+i and serves HTTP on base+200+i."""
    return [base_port + offset + i for offset in (0, 100, 200) for i in range(1, nodes + 1)]


def ephemeral_ports() -> range:
    """The ports the kernel picks from for outgoing connections (Linux's
    ``ip_local_port_range``). A port free now but in this range can be taken by any
    connection made before the node binds it ("Address already in use", seen in CI)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first, last = (int(x) for x in f.read().split())
        return range(first, last + 1)
    except (OSError, ValueError):
        return range(32768, 61000)      # Linux's default


def free_base_port(nodes: int, rng: Random, low: int = 10000, high: int = 20000) -> int:
    """A base port whose every node port is free on 127.0.0.1 right now and outside the
    ephemeral range (tests, benchmarks)."""
    ephemeral = ephemeral_ports()
    for _ in range(500):
        base = rng.randrange(low, high)
        ports = node_ports(base, nodes)
        if not any(p in ephemeral for p in ports) and all(_port_free(p) for p in ports):
            return base
    raise OSError(f"no free block of ports for {nodes} nodes in {low}..{high} outside the "
                  f"ephemeral range {ephemeral.start}..{ephemeral.stop - 1}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
