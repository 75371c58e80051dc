"""`coordctl config ...`: keys with revisions, compare-and-set, watch, history, diff, rollback."""
from __future__ import annotations

import difflib
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from .options import DEFAULT_TIMEOUT_S, ClusterOpt, EndpointsOpt, JsonOpt, KeyOpt, TimeoutOpt, connect
from .output import (
    EXIT_REFUSED,
    EXIT_USAGE,
    console,
    emit_json,
    fail,
    print_value,
    value_json,
    value_text,
    warn,
)

if TYPE_CHECKING:
    from coordsvc.client import Entry, Event

app = typer.Typer(
    name="config",
    help="Read and write configuration keys.",
    epilog="Example: coordctl config set app/db_url postgres://db/app && "
           "coordctl config get app/db_url",
    no_args_is_help=True,
)

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Key (1..512 UTF-8 bytes, no NUL).")]
IfRevisionOpt = Annotated[Optional[int], typer.Option(
    "--if-revision", metavar="N", min=0,
    help="Only if KEY is at revision N (0: only if KEY does not exist); else exit 1.")]


def _entry_json(e: Entry) -> dict[str, Any]:
    return {"key": e.key, **value_json(e.value), "revision": e.revision}


def _event_json(ev: Event) -> dict[str, Any]:
    return {"type": ev.type, "key": ev.key, **value_json(ev.value), "revision": ev.revision}


def _read_file(path: str) -> bytes:
    """The exact bytes of PATH, or of stdin for "-"."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}", "check the path given to --file", EXIT_USAGE)


@app.command("set")
def set_(
    key: KeyArg,
    value: Annotated[Optional[str], typer.Argument(
        metavar="[VALUE]", help="The new value (or --file).")] = None,
    if_revision: IfRevisionOpt = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", metavar="PATH|-", help="Take the value from PATH (- for stdin), byte for byte.")] = None,
    lease_ttl: Annotated[Optional[float], typer.Option(
        "--lease-ttl", metavar="S", min=1.0, max=300.0,
        help="Make KEY ephemeral: it lives while this command, kept in the foreground, keeps "
             "its lease alive; Ctrl-C (or SIGTERM) deletes it.")] = None,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Write KEY = VALUE (or the bytes of --file) and print the new revision.

    With --lease-ttl the key is ephemeral: the command stays in the foreground keeping its
    lease alive, and the key is deleted when it ends (Ctrl-C, SIGTERM, or the process dies
    and the lease expires after S seconds).

    Example: coordctl config set app/db_url postgres://db/app --if-revision 0
    Example: coordctl config set app/tls.pem --file ./tls.pem
    Example: coordctl config set svc/web/n1 10.0.0.5:80 --lease-ttl 10
    """
    if (value is None) == (file is None):
        fail("give either VALUE or --file PATH (- for stdin)", "see `coordctl config set --help`",
             EXIT_USAGE)
    data: str | bytes = value if value is not None else _read_file(file or "-")
    with connect(cluster, endpoints, timeout, key_file) as c:
        if lease_ttl is None:
            rev = c.put(key, data, if_revision=if_revision)
        else:
            ls = c.lease(ttl=lease_ttl)
            rev = c.put(key, data, if_revision=if_revision, lease=ls)
        if json:
            emit_json({"key": key, "revision": rev})
        else:
            print(rev, flush=True)
        if lease_ttl is not None:
            _hold_lease(ls)


def _hold_lease(ls: Any) -> None:
    """Keep ``ls`` alive until SIGINT/SIGTERM (then revoke it: its keys go) or until it is
    lost (exit 1)."""
    done = threading.Event()
    ls_lost = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        done.set()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.2):
            if ls.lost:
                ls_lost.set()
                break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if ls_lost.is_set():
        fail("the lease was lost (no keepalive reached the cluster in time); the key is gone",
             "check the cluster's health with `coordctl status`", EXIT_REFUSED)
    ls.revoke()


@app.command("get")
def get(
    key: KeyArg,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Print the value of KEY (exit 1 if it does not exist). Linearizable.

    Example: coordctl config get app/db_url --json
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        e = c.get(key)
    if e is None:
        fail(f"key {key!r} not found", "list keys with `coordctl config list PREFIX`",
             EXIT_REFUSED)
    if json:
        emit_json(_entry_json(e))
    else:
        print_value(e.value)


@app.command("delete")
def delete(
    key: KeyArg,
    if_revision: IfRevisionOpt = None,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Delete KEY. Deleting a key that does not exist succeeds and says so.

    Example: coordctl config delete app/db_url --if-revision 12
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        deleted = c.delete(key, if_revision=if_revision)
    if json:
        emit_json({"key": key, "deleted": deleted})
    else:
        print(f"deleted {key}" if deleted else f"{key} did not exist")


@app.command("list")
def list_(
    prefix: Annotated[str, typer.Argument(metavar="[PREFIX]", help="Key prefix (default: all).")] = "",
    limit: Annotated[Optional[int], typer.Option(
        "--limit", metavar="N", min=1,
        help="At most N keys (after --start-after); says on stderr how to get the next page.")] = None,
    start_after: Annotated[Optional[str], typer.Option(
        "--start-after", metavar="KEY", help="Only keys after KEY (for paging with --limit).")] = None,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """List keys under PREFIX, sorted by key, with their revisions and values.

    Every key is listed, however many and however large, all as of one revision. With
    --limit N, one page of at most N keys.

    Example: coordctl config list app/ --json  |  coordctl config list app/ --limit 100
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        entries = c.list(prefix, limit=limit, start_after=start_after)
    if entries.more:
        warn(f"more keys follow; next page: coordctl config list {shlex.quote(prefix or '')} "
             f"--limit {limit} --start-after {shlex.quote(entries[-1].key)}")
    if json:
        emit_json([_entry_json(e) for e in entries])
        return
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("key", no_wrap=True)
    table.add_column("revision", justify="right", no_wrap=True)
    table.add_column("value", no_wrap=True, overflow="ellipsis", max_width=80)
    for e in entries:
        table.add_row(e.key, str(e.revision), value_text(e.value))
    console.print(table)


def _event_line(ev: Event) -> str:
    value = value_text(ev.value) if ev.type == "put" else ""
    return f"{ev.revision}\t{ev.type}\t{ev.key}\t{value}".rstrip("\t")


@app.command("watch")
def watch(
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help="Key prefix to watch ('' for all).")],
    from_revision: Annotated[Optional[int], typer.Option(
        "--from-revision", metavar="N", min=1,
        help="Replay events from revision N (inclusive) before following new ones.")] = None,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Print one line per change under PREFIX until Ctrl-C.

    Text lines are REVISION<TAB>TYPE<TAB>KEY<TAB>VALUE; with --json, one object per line
    with type (put|delete), key, value and revision.

    Example: coordctl config watch app/ --from-revision 1 --json
    """
    try:
        with connect(cluster, endpoints, timeout, key_file) as c:
            for ev in c.watch(prefix, start_revision=from_revision):
                if json:
                    emit_json(_event_json(ev))
                else:
                    sys.stdout.write(_event_line(ev) + "\n")
                    sys.stdout.flush()
    except KeyboardInterrupt:
        return


@app.command("history")
def history(
    key: KeyArg,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Show the retained changes of KEY, oldest first.

    Example: coordctl config history app/db_url
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        events = c.history(key)
    if json:
        emit_json([_event_json(ev) for ev in events])
        return
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("revision", justify="right", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("value", no_wrap=True, overflow="ellipsis", max_width=80)
    for ev in events:
        table.add_row(str(ev.revision), ev.type, value_text(ev.value) if ev.type == "put" else "")
    console.print(table)


def value_at(events: Sequence[Event], revision: int) -> Event | None:
    """The put that gave KEY its value as of ``revision``; None if absent then.

    History is the retained window: before its first event the value is unknown, and
    we report it as absent.
    """
    last: Event | None = None
    for ev in events:
        if ev.revision > revision:
            break
        last = ev
    return last if last is not None and last.type == "put" else None


RevArg = Annotated[int, typer.Argument(min=1, metavar="REV")]


@app.command("diff")
def diff(
    key: KeyArg,
    rev_a: Annotated[int, typer.Argument(min=1, metavar="REV_A", help="Older revision.")],
    rev_b: Annotated[int, typer.Argument(min=1, metavar="REV_B", help="Newer revision.")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Unified diff of KEY's value as of REV_A and as of REV_B (from its history).

    The value "as of" a revision is the latest change at or before it; a key deleted
    (or not yet created) then diffs as empty. Prints nothing if the values are equal.

    Example: coordctl config diff app/db_url 12 17
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        events = c.history(key)
    a, b = value_at(events, rev_a), value_at(events, rev_b)
    a_text = value_text(a.value) if a else ""
    b_text = value_text(b.value) if b else ""
    if a_text and b_text and not a_text.endswith("\n") and not b_text.endswith("\n"):
        # Most values are one line without a newline: no "\ No newline" noise for them.
        a_text, b_text = a_text + "\n", b_text + "\n"
    name_a = f"{key}@{rev_a}" if a else "/dev/null"
    name_b = f"{key}@{rev_b}" if b else "/dev/null"
    lines = list(difflib.unified_diff(a_text.splitlines(keepends=True),
                                      b_text.splitlines(keepends=True), name_a, name_b))
    text = "".join(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of value\n"
                   for ln in lines)
    if json:
        emit_json({"key": key,
                   "a": {"revision": rev_a, "exists": a is not None,
                         **value_json(a.value if a else None)},
                   "b": {"revision": rev_b, "exists": b is not None,
                         **value_json(b.value if b else None)},
                   "diff": text})
    else:
        sys.stdout.write(text)


@app.command("rollback")
def rollback(
    key: KeyArg,
    rev: Annotated[int, typer.Argument(min=1, metavar="REV", help="Revision whose value to restore.")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Write KEY's value as of REV as a new revision and print that revision.

    The write is a compare-and-set against KEY's current revision, so a concurrent
    change makes rollback exit 1 instead of silently overwriting it.

    Example: coordctl config rollback app/db_url 12
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        events = c.history(key)
        old = value_at(events, rev)
        if old is None:
            fail(f"key {key!r} had no value at revision {rev}",
                 f"pick a revision from `coordctl config history {key}`", EXIT_REFUSED)
        current = c.get(key)
        new_rev = c.put(key, old.value, if_revision=current.revision if current else 0)
    if json:
        emit_json({"key": key, "revision": new_rev, "restored_from": old.revision})
    else:
        print(new_rev)


schema_app = typer.Typer(
    name="schema",
    help="JSON Schemas that puts under a prefix must validate against.",
    epilog="Example: coordctl config schema set app/flags/ ./flags.schema.json",
    no_args_is_help=True,
)
app.add_typer(schema_app)
PrefixArg = Annotated[str, typer.Argument(metavar="PREFIX", help="Key prefix the schema covers.")]


@schema_app.command("set")
def schema_set(
    prefix: PrefixArg,
    file: Annotated[str, typer.Argument(metavar="FILE", help="The JSON Schema (- for stdin).")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Attach the JSON Schema in FILE to PREFIX: from then on every put and transaction
    under PREFIX must write JSON that validates (refused, exit 1, naming the failing path).
    Values already stored are not checked. Prints the revision.

    Example: coordctl config schema set app/flags/ ./flags.schema.json
    """
    raw = _read_file(file)
    with connect(cluster, endpoints, timeout, key_file) as c:
        rev = c.schema_set(prefix, raw)
    if json:
        emit_json({"prefix": prefix, "revision": rev})
    else:
        print(rev)


@schema_app.command("get")
def schema_get(
    prefix: PrefixArg,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Print the JSON Schema attached to PREFIX (exit 1 if none).

    Example: coordctl config schema get app/flags/ --json
    """
    import json as jsonlib
    with connect(cluster, endpoints, timeout, key_file) as c:
        raw = c.schema_get(prefix)
    if raw is None:
        fail(f"prefix {prefix!r} has no schema", "attach one with `coordctl config schema set`",
             EXIT_REFUSED)
    if json:
        emit_json({"prefix": prefix, "schema": jsonlib.loads(raw)})
    else:
        print_value(raw)


@schema_app.command("delete")
def schema_delete(
    prefix: PrefixArg,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Detach the schema of PREFIX (puts under it are no longer checked).

    Example: coordctl config schema delete app/flags/
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        deleted = c.schema_delete(prefix)
    if json:
        emit_json({"prefix": prefix, "deleted": deleted})
    else:
        print(f"deleted the schema of {prefix}" if deleted else f"{prefix} had no schema")
