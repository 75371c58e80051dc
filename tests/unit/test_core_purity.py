"""The dependency rule: the core is pure and imports nothing that does I/O or reads time."""
from __future__ import annotations

import ast
from pathlib import Path

import coordsvc.core

FORBIDDEN = {"zmq", "sqlite3", "socket", "time", "random", "threading", "asyncio", "os",
             "subprocess", "signal", "select"}
ALLOWED_INTERNAL = ("coordsvc.core", ".")


def _imports(path: Path) -> list[tuple[str, bool]]:
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        guarded = False
        if isinstance(node, ast.Import):
            found.extend((a.name, guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            found.append((mod, guarded))
    return found


def _type_checking_only(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    names.add(sub.module)
                elif isinstance(sub, ast.Import):
                    names.update(a.name for a in sub.names)
    return names


def test_core_imports_no_io_clock_or_global_randomness() -> None:
    root = Path(coordsvc.core.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        typing_only = _type_checking_only(path)
        for mod, _ in _imports(path):
            top = mod.lstrip(".").split(".")[0]
            if top in FORBIDDEN and mod not in typing_only:
                offenders.append(f"{path.name}: {mod}")
            if mod.startswith("coordsvc.") and not mod.startswith("coordsvc.core"):
                offenders.append(f"{path.name}: {mod} (core must not import outer layers)")
            if mod.startswith("..") :
                offenders.append(f"{path.name}: {mod} (core must not import outer layers)")
    assert not offenders, offenders


def test_purity_check_would_flag_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom os import path\n")
    mods = {m for m, _ in _imports(bad)}
    assert {"time", "os"} <= mods
