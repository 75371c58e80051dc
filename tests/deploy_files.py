"""Reading deploy/: the coordctl command lines its files hold, parsed as coordctl parses them.

``parse_coordctl`` runs coordctl's own argument parser (Typer's click commands) over an
argv without running the command: an unknown option, a missing required one or a bad
value raises click's ``UsageError``. ``run_recording`` runs a shell snippet from a
manifest with a stand-in ``coordctl`` first on PATH that records the argv it was given,
so a command built by the shell (``n$(( ${HOSTNAME##*-} + 1 ))``) is checked as the
shell really builds it.
"""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main
from coordctl.main import app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COORDCTL = str(Path(sys.executable).parent / "coordctl")


def parse_coordctl(argv: list[str]) -> Any:
    """The click context coordctl would run ``argv`` (without "coordctl") in."""
    cmd: Any = typer.main.get_command(app)
    ctx = cmd.make_context("coordctl", list(argv))
    while hasattr(cmd, "resolve_command"):
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:
            protected = ctx.protected_args
        name, sub, rest = cmd.resolve_command(ctx, [*protected, *ctx.args])
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    return ctx


def command_path(ctx: Any) -> str:
    """"coordctl snapshot save" for a context from ``parse_coordctl``."""
    return str(ctx.command_path)


def coordctl_calls(script: str) -> list[list[str]]:
    """The argv of every ``coordctl`` call in a simple shell line (no expansions needed)."""
    words = shlex.split(script, comments=True)
    calls: list[list[str]] = []
    current: list[str] | None = None
    for w in words:
        if w in ("||", "&&", ";", "|"):
            current = None
        elif current is not None:
            current.append(w)
        elif w == "coordctl" or w.endswith("/coordctl"):
            current = []
            calls.append(current)
    return calls


def recorder(directory: Path) -> tuple[Path, Path]:
    """A stand-in ``coordctl`` in ``directory`` that appends its argv (JSON) to a log."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.jsonl"
    stub = directory / "coordctl"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"with open({str(log)!r}, 'a') as f:\n"
                    "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return directory, log


def run_recording(argv: list[str], stub_dir: Path, env: dict[str, str],
                  ) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run ``argv`` (e.g. ["sh", "-c", script]) with the recording coordctl first on PATH."""
    path, log = recorder(stub_dir)
    log.unlink(missing_ok=True)
    full = {**os.environ, **env, "PATH": f"{path}:{os.environ.get('PATH', '')}"}
    r = subprocess.run(argv, env=full, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return r, calls


def backup_script() -> str:
    """The shell command of coordsvc-backup.service, systemd's %% unescaped."""
    line = next(ln for ln in (DEPLOY / "systemd" / "coordsvc-backup.service").read_text().splitlines()
                if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("%%", "%"))
    assert argv[:2] == ["/bin/sh", "-ec"]
    return argv[2]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out
