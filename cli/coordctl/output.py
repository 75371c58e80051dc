"""Everything coordctl writes: one-line errors, JSON on stdout, rich tables for people.

Errors are exactly one line on stderr, ``coordctl: error: <what> (hint: <how to fix>)``,
and map to the CONTRACT exit codes; nothing here ever lets a traceback out.
"""
from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = [
    "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "EXIT_UNAVAILABLE",
    "CliError", "console", "emit_json", "error_line", "fail", "human_bytes", "human_ms",
    "print_value", "status_header", "status_table", "value_json", "value_text",
]

EXIT_OK = 0
EXIT_REFUSED = 1       # compare failed, lock not acquired in time, key missing for get
EXIT_USAGE = 2         # bad flags, bad request, bad/missing cluster file or endpoints
EXIT_UNAVAILABLE = 3   # no quorum / timeout: the outcome is unknown

# soft_wrap: a long value or address is never broken across lines in plain output.
console = Console(soft_wrap=False, highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 250  # piped or captured: never squeeze table rows into ellipses


class CliError(Exception):
    """A failure coordctl itself diagnosed: message, hint and exit code."""

    def __init__(self, message: str, hint: str | None = None, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


def _one_line(s: str) -> str:
    return " ".join(s.split())


def error_line(message: str, hint: str | None = None) -> str:
    line = f"coordctl: error: {_one_line(message)}"
    if hint:
        line += f" (hint: {_one_line(hint)})"
    return line


def print_error(message: str, hint: str | None = None) -> None:
    sys.stdout.flush()
    sys.stderr.write(error_line(message, hint) + "\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"coordctl: {_one_line(message)}\n")
    sys.stderr.flush()


def fail(message: str, hint: str | None = None, code: int = EXIT_REFUSED) -> NoReturn:
    raise CliError(message, hint, code)


def emit_json(obj: Any, *, indent: int | None = None) -> None:
    sys.stdout.write(json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


# --- values -----------------------------------------------------------------------------

def value_text(value: bytes | str | None) -> str:
    """A value for people: UTF-8 when it is, otherwise a marked base64 rendering."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def value_json(value: bytes | str | None) -> dict[str, Any]:
    """JSON fields for a value: ``value`` (a string), plus ``encoding: base64`` if not UTF-8."""
    if value is None:
        return {"value": None}
    if isinstance(value, str):
        return {"value": value}
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}


def print_value(value: bytes) -> None:
    """`config get`: the exact bytes, plus a newline so shells print it cleanly."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    out.write(value)
    if not value.endswith(b"\n"):
        out.write(b"\n")
    out.flush()


# --- units ------------------------------------------------------------------------------

def human_bytes(n: object) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_ms(ms: object) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 or float(ms).is_integer() else f"{ms:.1f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.0f} min"


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


# --- status -----------------------------------------------------------------------------

def _can_lose(cluster: Mapping[str, Any]) -> tuple[int, int]:
    members = int(cluster.get("members") or 0)
    if isinstance(cluster.get("can_lose"), int):
        return int(cluster["can_lose"]), members
    healthy = int(cluster.get("healthy") or 0)
    return max(0, healthy - (members // 2 + 1)), members


def status_header(status: Mapping[str, Any]) -> Text:
    c: Mapping[str, Any] = status.get("cluster") or {}
    k, m = _can_lose(c)
    leader = c.get("leader")
    quorum = bool(c.get("quorum"))
    t = Text()
    t.append(f"cluster {c.get('name') or '?'}  ", style="bold")
    t.append("leader ")
    t.append(str(leader) if leader else "none", style="green" if leader else "bold red")
    t.append("  quorum ")
    t.append("yes" if quorum else "no", style="green" if quorum else "bold red")
    t.append(f"  healthy {c.get('healthy', '?')}/{m}")
    t.append(f"  can lose {k} of {m}", style="yellow" if k == 0 else "")
    if c.get("revision") is not None:
        t.append(f"  revision {c['revision']}")
    if c.get("commit_index") is not None:
        t.append(f"  commit {c['commit_index']}")
    if c.get("security") == "insecure":
        t.append("  INSECURE (no keys, plain TCP)", style="bold red")
    elif c.get("security"):
        t.append(f"  security {c['security']}")
    alarms = c.get("alarms") or []
    t.append("  alarms ")
    t.append(", ".join(map(str, alarms)) if alarms else "none",
             style="bold red" if alarms else "")
    return t


_COLUMNS = ("id", "address", "reachable", "role", "leader", "ballot", "commit", "applied",
            "lag", "last contact", "db size", "sessions", "locks", "keys", "bad frames",
            "fsync p99")
# On a terminal too narrow for every column these go first (the header keeps the leader).
_NARROW_DROP = frozenset({"leader", "applied", "sessions", "bad frames", "fsync p99"})
_FULL_WIDTH = 165


def _ballot(b: object) -> str:
    if isinstance(b, Sequence) and not isinstance(b, str) and len(b) == 2:
        return f"{b[0]}/{b[1]}"
    return _cell(b)


def status_table(status: Mapping[str, Any], width: int | None = None) -> Table:
    """One row per node; on a terminal narrower than the full table, fewer columns."""
    width = console.width if width is None else width
    narrow = console.is_terminal and width < _FULL_WIDTH
    cols = [c for c in _COLUMNS if not (narrow and c in _NARROW_DROP)]
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in cols:
        table.add_column(col, no_wrap=True,
                         justify="right" if col in {"commit", "applied", "lag", "sessions",
                                                    "locks", "keys", "bad frames"} else "left")
    nodes: Sequence[Mapping[str, Any]] = status.get("nodes") or []
    for n in nodes:
        address = _cell(n.get("address"))
        if narrow:
            address = address.removeprefix("tcp://")
        if not n.get("reachable"):
            table.add_row(_cell(n.get("id")), address, Text("unreachable", style="bold red"),
                          *["-"] * (len(cols) - 3))
            continue
        role = str(n.get("role") or "-")
        lag = n.get("lag")
        cells: dict[str, RenderableType] = dict(zip(_COLUMNS, (
            _cell(n.get("id")), address, Text("yes", style="green"),
            Text(role, style="bold cyan" if role == "leader" else ""),
            _cell(n.get("leader")), _ballot(n.get("ballot")),
            _cell(n.get("commit_index")), _cell(n.get("applied_index")),
            Text(_cell(lag), style="yellow" if isinstance(lag, int) and lag > 0 else ""),
            "-" if role == "leader" else human_ms(n.get("last_leader_contact_ms")),
            human_bytes(n.get("db_bytes")), _cell(n.get("sessions")),
            _cell(n.get("locks_held")), _cell(n.get("keys")),
            _cell(n.get("bad_frames")), human_ms(n.get("fsync_p99_ms")),
        ), strict=True))
        table.add_row(*(cells[c] for c in cols))
    return table


def status_view(status: Mapping[str, Any]) -> RenderableType:
    return Group(status_header(status), Text(""), status_table(status))
