"""`coordctl lock ...`: run a command while holding a lock, and list the held locks."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from .options import DEFAULT_TIMEOUT_S, ClusterOpt, EndpointsOpt, JsonOpt, KeyOpt, TimeoutOpt, connect
from .output import EXIT_USAGE, console, emit_json, fail, human_ms, warn

if TYPE_CHECKING:
    from coordsvc.client import Lock, LockInfo

app = typer.Typer(
    name="lock",
    help="Distributed locks with fencing tokens.",
    epilog="Example: coordctl lock run deploy --ttl 10 --wait 60 -- ./deploy.sh prod",
    no_args_is_help=True,
)

EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _run_child(argv: list[str], env: dict[str, str],
               started: Callable[[subprocess.Popen[bytes]], None]) -> int:
    """Run argv to completion, forwarding SIGTERM/SIGINT/SIGHUP to it; its exit code."""
    try:
        proc = subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        fail(f"command not found: {argv[0]}", "check the command after `--`", EXIT_NOT_FOUND)
    except PermissionError:
        fail(f"command not executable: {argv[0]}", "check its permissions", EXIT_NOT_EXECUTABLE)

    def forward(signum: int, _frame: FrameType | None) -> None:
        # The child shares our process group, so a terminal's Ctrl-C reaches it directly
        # too; forwarding covers `kill <coordctl pid>` from a supervisor or script.
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    started(proc)
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, as shells report it


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Lock name.")],
    cmd: Annotated[list[str], typer.Argument(metavar="CMD",
                                             help="The command to run while holding the lock.")],
    ttl: Annotated[float, typer.Option(
        "--ttl", metavar="S", min=0.1,
        help="Seconds the lock survives after coordctl stops heartbeating (e.g. is killed).")] = 10.0,
    wait: Annotated[float, typer.Option(
        "--wait", metavar="S", min=0.0,
        help="Seconds to wait for the lock (0: try once); exit 1 if not acquired.")] = 30.0,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    json: Annotated[bool, typer.Option(
        "--json", help="After CMD exits, print {name, token, exit_code, held_s} on stdout.")] = False,
) -> None:
    """Acquire lock NAME, run CMD while holding it, release it; exit with CMD's code.

    Waiters are served first come, first served. CMD sees the fencing token in
    $COORD_LOCK_TOKEN (strictly increasing across grants of NAME) and the lock name in
    $COORD_LOCK_NAME. The lock is kept alive while CMD runs; SIGTERM/SIGINT are forwarded
    to CMD. Exit 1 if the lock is not acquired within --wait. Put `--` before CMD.

    Example: coordctl lock run deploy --wait 60 -- ./deploy.sh prod
    """
    if not cmd:
        fail("no command given", "put the command after `--`: coordctl lock run NAME -- CMD",
             EXIT_USAGE)
    child: list[subprocess.Popen[bytes]] = []

    def on_lost(lock: Lock) -> None:
        # Keepalives failed for so long that another client may now hold NAME: running on
        # would break mutual exclusion, so stop CMD (it may trap SIGTERM to clean up).
        warn(f"lock {name!r} (token {lock.token}) was lost; sending SIGTERM to the command")
        for p in child:
            if p.poll() is None:
                p.terminate()

    with connect(cluster, endpoints, timeout, key_file) as c:
        lk = c.acquire(name, ttl=ttl, timeout=wait, on_lost=on_lost)
        started = time.monotonic()
        try:
            env = dict(os.environ, COORD_LOCK_TOKEN=str(lk.token), COORD_LOCK_NAME=name)
            rc = _run_child(cmd, env, child.append)
            if lk.lost:
                warn(f"lock {name!r} was lost while the command ran")
        finally:
            try:
                lk.release()
            except Exception as e:  # the ttl frees it anyway; CMD's exit code matters more
                warn(f"could not release lock {name!r} ({e}); it expires after {ttl:g} s")
        if json:
            emit_json({"name": name, "token": lk.token, "exit_code": rc,
                       "held_s": round(time.monotonic() - started, 3)})
    raise typer.Exit(rc)


def lock_json(info: LockInfo) -> dict[str, Any]:
    """One held lock as JSON: name, holder (the identity holding it), token, ttl_left_s,
    waiters (identities, first in line first), age_s, waits_s; and the sessions behind
    them (session, waiter_sessions). A session id is no capability: only its owner (or an
    admin) may act on it. ``delayed``: nobody holds it -- its holder's session expired and
    its lock-delay has not passed (session and token are then 0). ``kind``: lock,
    semaphore or rwlock; the last two list every holder in ``holders`` (identity, session,
    token, mode) and each waiter's mode in ``waiter_modes``; a semaphore has its ``limit``."""
    return {"name": info.name, "holder": info.holder, "token": info.token,
            "kind": info.kind, "limit": info.limit,
            "holders": [{"holder": h[2], "session": h[0], "token": h[1], "mode": h[3]}
                        for h in info.holders],
            "waiter_modes": list(info.waiter_modes),
            "delayed": info.kind == "lock" and info.holder_session == 0,
            "ttl_left_s": info.ttl_left_s, "waiters": list(info.waiter_names), "age_s": info.age_s,
            "waits_s": list(info.waits_s), "session": info.holder_session,
            "waiter_sessions": list(info.waiters)}


def _seconds(v: object) -> str:
    return human_ms(v * 1000) if isinstance(v, (int, float)) else "-"


@app.command("list")
def list_(
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """List held locks: name, holder, fencing token, age, ttl left, FIFO waiters.

    Holders and waiters are the identities (key names) holding or waiting; each waiter is
    shown as NAME (waiting for DURATION), first in line first. Only locks whose names your
    key may lock are listed.

    Example: coordctl lock list --json
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        locks = [lock_json(info) for info in c.locks()]
    if json:
        emit_json(locks)
        return
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for col in ("name", "holder", "token", "age", "ttl left", "waiters"):
        table.add_column(col, no_wrap=True, justify="right" if col == "token" else "left")
    for lk in locks:
        waiters = lk["waiters"]
        waits = lk["waits_s"] + [None] * (len(waiters) - len(lk["waits_s"]))
        queue = ", ".join(f"{w} ({_seconds(t)})" for w, t in zip(waiters, waits, strict=False))
        holder = "(lock-delay)" if lk["delayed"] else str(lk["holder"])
        if lk["kind"] != "lock":
            shown = ", ".join(f"{h['holder']} ({h['mode']})" if lk["kind"] == "rwlock" else str(h["holder"])
                              for h in lk["holders"])
            room = f" {len(lk['holders'])}/{lk['limit']}" if lk["kind"] == "semaphore" else ""
            holder = f"{lk['kind']}{room}: {shown}"
        table.add_row(str(lk["name"]), holder, str(lk["token"]),
                      _seconds(lk["age_s"]), _seconds(lk["ttl_left_s"]),
                      f"{len(waiters)}: {queue}" if waiters else "0")
    console.print(table)
