"""coordctl: the operator CLI of coordsvc.

Exit codes (CONTRACT §3):
  0  success
  1  refused: compare failed, lock not acquired in time, key missing for `get`, fencing
     token rejected, watch start compacted away, cluster file/data dir would be overwritten,
     a node refusing to start, permission denied (a key refused, or outside its rights)
  2  usage error: bad flags or arguments, invalid request (key/value/ttl limits), bad or
     missing cluster file or endpoints
  3  cluster unavailable or timeout: the outcome of a write is unknown

Errors are one line on stderr, ``coordctl: error: <what> (hint: <how to fix>)``; set
COORDCTL_DEBUG=1 to get the traceback of an unexpected error instead.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from coordsvc.clusterfile import ClusterFileError
from coordsvc.keys import KeyFileError
from coordsvc.storage.datadir import DataDirError

from . import auth_cmd, cluster_cmd, config_cmd, election_cmd, lock_cmd, member_cmd, snapshot_cmd
from .options import DEFAULT_TIMEOUT_S, ClusterOpt, EndpointsOpt, JsonOpt, KeyOpt, TimeoutOpt, connect
from .output import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    console,
    emit_json,
    print_error,
    status_view,
)

try:  # Typer >= 0.20 vendors click; older Typer uses the click package.
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment,unused-ignore]

__all__ = ["app", "exit_code_for"]

_EPILOG = ("Examples: coordctl cluster up  |  coordctl status --watch  |  "
           "coordctl config set app/x 1  |  coordctl lock run deploy -- ./deploy.sh. "
           "Exit codes: 0 ok, 1 refused, 2 usage error, 3 cluster unavailable/timeout.")


# --- error mapping ----------------------------------------------------------------------

_UNAVAILABLE_HINT = "check that a majority of nodes is running: `coordctl status`"


@functools.cache
def _coord_errors() -> tuple[tuple[type[Exception], int, str | None], ...]:
    """The client's exception classes -> (exit code, hint), most specific first.

    Imported on the error path only, so that offline commands (cluster init, serve) never
    load the client.
    """
    from coordsvc.client import errors as e
    return (
        (e.CompareFailed, EXIT_REFUSED,
         "read the current revision with `coordctl config get KEY --json` and retry"),
        (e.LockTimeout, EXIT_REFUSED,
         "see who holds it with `coordctl lock list`, or wait longer with --wait"),
        (e.FenceRejected, EXIT_REFUSED, "a newer holder was granted the lock; stop and re-acquire it"),
        (e.Compacted, EXIT_REFUSED, "start from a newer revision, or omit --from-revision"),
        (e.QuotaExceeded, EXIT_REFUSED,
         "delete keys to get under the quota (`coordctl status` shows the alarm), or raise "
         "[limits] in cluster.toml"),
        (e.InvalidRequest, EXIT_USAGE,
         "keys are 1..512 UTF-8 bytes without NUL, values at most 1 MiB, ttl > 0"),
        (e.Unavailable, EXIT_UNAVAILABLE, _UNAVAILABLE_HINT),
        (e.MembershipRefused, EXIT_REFUSED,
         "see `coordctl member list`; one change at a time, and a quorum of voters must stay live"),
        (e.PermissionDenied, EXIT_REFUSED,
         "use a key with the rights this needs (--key FILE, $COORD_KEY, or admin.key beside "
         "the cluster file); an admin sees every key's rights with `coordctl auth list`"),
        (e.CoordError, EXIT_REFUSED, None),
    )


def _coord_error(exc: Exception) -> tuple[int, str, str | None] | None:
    """(exit code, message, hint) for an exception of the client's tree, else None."""
    from coordsvc.client.errors import Compacted, InvalidRequest, Unavailable
    for cls, code, hint in _coord_errors():
        if isinstance(exc, cls):
            msg = str(exc) or cls.__name__
            if isinstance(exc, Compacted) and exc.oldest is not None:
                hint = f"the oldest revision still kept is {exc.oldest}; {hint}"
            if isinstance(exc, Unavailable):
                msg = f"cluster unavailable, outcome unknown: {msg}"
            if cls is InvalidRequest and "schema of prefix" in msg:
                hint = "see what it expects with `coordctl config schema get PREFIX`"
            return code, msg, hint
    return None


def exit_code_for(exc: BaseException) -> tuple[int, str, str | None]:
    """(exit code, message, hint) for any exception that reaches the top."""
    if isinstance(exc, CliError):
        return exc.code, exc.message, exc.hint
    if isinstance(exc, UsageError):
        ctx = exc.ctx
        where = ctx.command_path if ctx is not None else "coordctl"
        return EXIT_USAGE, exc.format_message(), f"see `{where} --help`"
    if isinstance(exc, ClickException):
        return exc.exit_code, exc.format_message(), None
    if isinstance(exc, (ClusterFileError, KeyFileError)):
        return EXIT_USAGE, str(exc), None
    if isinstance(exc, DataDirError):
        return EXIT_REFUSED, str(exc), None
    if isinstance(exc, Exception) and (mapped := _coord_error(exc)) is not None:
        return mapped
    if isinstance(exc, TimeoutError):
        return EXIT_UNAVAILABLE, f"timed out: {exc}", _UNAVAILABLE_HINT
    if isinstance(exc, OSError):
        what = f"{exc.strerror}: {exc.filename}" if exc.filename and exc.strerror else str(exc)
        return EXIT_REFUSED, what or type(exc).__name__, None
    return (EXIT_REFUSED, f"unexpected {type(exc).__name__}: {exc}",
            "this is a bug; rerun with COORDCTL_DEBUG=1 for the traceback and report it")


class CoordApp(typer.Typer):
    """The Typer app with one-line errors and CONTRACT exit codes instead of tracebacks."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", "coordctl")
        kwargs["standalone_mode"] = False
        try:
            rv = typer.main.get_command(self)(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(130)
        except typer.Exit as e:  # pragma: no cover - converted to a return value by Typer
            sys.exit(e.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(EXIT_REFUSED)
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_REFUSED)
        except Exception as e:
            if os.environ.get("COORDCTL_DEBUG") and not isinstance(e, (CliError, UsageError)):
                raise
            code, message, hint = exit_code_for(e)
            if message.strip():  # empty for "no arguments: help was printed instead"
                print_error(message, hint)
            sys.exit(code)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


app = CoordApp(
    name="coordctl",
    help="Operate a coordsvc cluster: locks and configuration agreed by multi-Paxos.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(cluster_cmd.cluster_app)
app.add_typer(cluster_cmd.node_app)
app.add_typer(config_cmd.app)
app.add_typer(lock_cmd.app)
app.add_typer(election_cmd.app)
app.add_typer(snapshot_cmd.app)
app.add_typer(auth_cmd.app)
app.add_typer(member_cmd.app)
app.command("serve", epilog="Example: coordctl serve --cluster .coord/cluster.toml --node n1")(
    cluster_cmd.serve)


# --- status -----------------------------------------------------------------------------

def _status_exit(status: dict[str, Any]) -> int:
    """CONTRACT §9: 0 with a leader and a quorum, 1 when nodes answered without one of
    them, 3 when no node answered."""
    nodes = status.get("nodes") or []
    if not any(n.get("reachable") for n in nodes):
        return EXIT_UNAVAILABLE
    cluster = status.get("cluster") or {}
    if not (cluster.get("leader") and cluster.get("quorum")):
        return EXIT_REFUSED
    return EXIT_OK


def _watch(fetch: Callable[[], dict[str, Any]], json: bool) -> None:
    from rich.live import Live
    from rich.text import Text

    from .output import error_line

    if json:
        while True:
            emit_json(fetch())
            time.sleep(1.0)
    with Live(Text("connecting..."), console=console, auto_refresh=False,
              screen=False) as live:
        while True:
            try:
                live.update(status_view(fetch()), refresh=True)
            except Exception as e:
                code, msg, hint = exit_code_for(e)
                if code == EXIT_USAGE:
                    raise
                live.update(Text(error_line(msg, hint), style="red"), refresh=True)
            time.sleep(1.0)


@app.command("status")
def status(
    watch: bool = typer.Option(False, "--watch", help="Refresh every second until Ctrl-C."),
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Show every node: role, leader, ballot, commit/applied index, lag, db size, ...

    The header says who leads, whether there is a quorum, how many nodes are healthy and
    how many more can be lost. An unreachable node is a row marked unreachable.
    --json prints the status dict of CONTRACT §5 (with extra per-node fields).

    Exit 0 when the cluster has a leader and a quorum; 1 when nodes answered but there is
    no leader or no quorum (the status is still printed); 3 when no node answered.

    Example: coordctl status --watch --cluster .coord/cluster.toml
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        if watch:
            try:
                _watch(c.status, json)
            except KeyboardInterrupt:
                return
        st = c.status()
    if json:
        emit_json(st)
    else:
        console.print(status_view(st))
    code = _status_exit(st)
    if code == EXIT_UNAVAILABLE:
        print_error("no node is reachable", "start the nodes, or check --cluster/--endpoints")
    elif code == EXIT_REFUSED:
        head = st.get("cluster") or {}
        why = "no leader" if not head.get("leader") else "no quorum"
        print_error(f"{why}: {head.get('healthy')} of {head.get('members')} members answered",
                    "a majority of members must be running and reach each other")
    raise typer.Exit(code)
