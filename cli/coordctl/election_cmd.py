"""`coordctl election ...`: run a command while leading an election, and show the leader."""
from __future__ import annotations

import os
import subprocess
import time
from typing import TYPE_CHECKING, Annotated

import typer

from .lock_cmd import _run_child
from .options import DEFAULT_TIMEOUT_S, ClusterOpt, EndpointsOpt, JsonOpt, KeyOpt, TimeoutOpt, connect
from .output import EXIT_USAGE, console, emit_json, fail, warn

if TYPE_CHECKING:
    from coordsvc.client import Lock

app = typer.Typer(
    name="election",
    help="Leader elections with a value others can read, and a fencing token.",
    epilog="Example: coordctl election campaign scheduler host-a -- ./run-scheduler.sh",
    no_args_is_help=True,
)

EXIT_NO_LEADER = 1


@app.command("campaign")
def campaign(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Election name.")],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="This candidate's value (e.g. its address).")],
    cmd: Annotated[list[str], typer.Argument(metavar="CMD", help="The command to run while leader.")],
    ttl: Annotated[float, typer.Option(
        "--ttl", metavar="S", min=0.1,
        help="Seconds leadership survives after coordctl stops heartbeating (e.g. is killed).")] = 10.0,
    wait: Annotated[float | None, typer.Option(
        "--wait", metavar="S", min=0.0,
        help="Seconds to wait to become leader (default: as long as it takes); exit 1 if not.")] = None,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    json: Annotated[bool, typer.Option(
        "--json", help="After CMD exits, print {name, value, token, exit_code, led_s} on stdout.")] = False,
) -> None:
    """Campaign in election NAME with VALUE; once leader, run CMD, then resign; exit with
    CMD's code.

    Candidates become leader first come, first served. CMD sees the term's fencing token in
    $COORD_LEADER_TOKEN (strictly increasing across terms) and NAME in $COORD_ELECTION.
    Leadership is kept alive while CMD runs; if it is lost, CMD gets SIGTERM. Put `--`
    before CMD.

    Example: coordctl election campaign scheduler host-a -- ./run-scheduler.sh
    """
    if not cmd:
        fail("no command given", "put the command after `--`: coordctl election campaign NAME VALUE -- CMD",
             EXIT_USAGE)
    child: list[subprocess.Popen[bytes]] = []

    def on_lost(lock: Lock) -> None:
        warn(f"leadership of {name!r} (token {lock.token}) was lost; sending SIGTERM to the command")
        for p in child:
            if p.poll() is None:
                p.terminate()

    with connect(cluster, endpoints, timeout, key_file) as c:
        term = c.election(name).campaign(value, ttl=ttl, timeout=wait, on_lost=on_lost)
        started = time.monotonic()
        try:
            env = dict(os.environ, COORD_LEADER_TOKEN=str(term.token), COORD_ELECTION=name)
            rc = _run_child(cmd, env, child.append)
            if term.lost:
                warn(f"leadership of {name!r} was lost while the command ran")
        finally:
            try:
                term.resign()
            except Exception as e:  # the ttl ends it anyway; CMD's exit code matters more
                warn(f"could not resign from {name!r} ({e}); leadership ends after {ttl:g} s")
        if json:
            emit_json({"name": name, "value": value, "token": term.token, "exit_code": rc,
                       "led_s": round(time.monotonic() - started, 3)})
    raise typer.Exit(rc)


@app.command("leader")
def leader(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Election name.")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Print the leader of election NAME: its value (JSON: {"value", "token"}); exit 1 when
    nobody leads.

    Example: coordctl election leader scheduler --json
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        ld = c.election(name).leader()
    if ld is None:
        if json:
            emit_json(None)
        fail(f"election {name!r} has no leader", "start a candidate with `coordctl election campaign`",
             EXIT_NO_LEADER)
    value = ld.value.decode("utf-8", errors="replace")
    if json:
        emit_json({"value": value, "token": ld.token})
    else:
        console.print(value, markup=False, highlight=False)
