"""Where results go and what they say about the run: the machine, the code, the file.

Result JSON lands under ``bench/results/`` (ignored by git; the markdown summaries and the
plots that the README links are committed). Standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "host": platform.node()}


def code_version() -> dict[str, Any]:
    """The commit, and a digest of uncommitted changes under coordsvc/ (others edit it
    concurrently: two runs compare only if these match)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "coordsvc"], cwd=REPO_DIR,
                              capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"head": head, "coordsvc_dirty": bool(diff),
            "coordsvc_diff_sha1": hashlib.sha1(diff).hexdigest()[:12] if diff else None}


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def write_result(system: str, doc: dict[str, Any], path: Path | None) -> Path:
    """``doc`` as JSON at ``path``, default ``bench/results/<system>-<timestamp>.json``."""
    if path is None:
        path = RESULTS_DIR / f"{system}-{stamp()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path
