"""The simulator is deterministic by construction: it imports the pure core, the memory
store and itself, never a clock, a thread, a socket or the process environment."""
from __future__ import annotations

import ast
from pathlib import Path

import coordsvc.sim

FORBIDDEN = {"zmq", "sqlite3", "socket", "time", "threading", "asyncio", "os", "subprocess",
             "signal", "select", "datetime", "secrets", "uuid"}
ALLOWED_COORDSVC = ("coordsvc.core", "coordsvc.storage.memory", "coordsvc.sim")


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:   # relative: resolve against coordsvc.sim
                base = ["coordsvc", "sim"][: 3 - node.level]
                mod = ".".join(base + ([mod] if mod else []))
            found.append(mod)
    return found


def test_the_simulator_imports_no_clock_threads_or_io() -> None:
    offenders = []
    for path in sorted(Path(coordsvc.sim.__file__).parent.glob("*.py")):
        for mod in _imports(path):
            if mod.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.name}: {mod}")
            elif mod.startswith("coordsvc") and not mod.startswith(ALLOWED_COORDSVC):
                offenders.append(f"{path.name}: {mod} (the simulator runs the core only)")
    assert not offenders, offenders
