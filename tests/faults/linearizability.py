"""The linearizability checker with a wall-clock limit, as the fault suite runs it.

The checker itself lives in ``coordsvc.sim.linearizability`` (the simulator checks every
run's history with it, under a step budget so that a seed's verdict never depends on the
machine); this module only turns ``timeout_s`` into a deadline.
"""
from __future__ import annotations

import time

from coordsvc.sim import linearizability as _checker
from coordsvc.sim.linearizability import Result

from .history import Op

__all__ = ["Result", "check", "check_key"]


def _deadline(timeout_s: float) -> tuple[_checker.OutOfTime, str]:
    deadline = time.monotonic() + timeout_s
    return (lambda: time.monotonic() > deadline), f"{timeout_s:g}s"


def check(ops: list[Op], timeout_s: float = 30.0) -> Result:
    """Check the whole history; stop at the first failing key, trying small keys first."""
    return _checker.check(ops, *_deadline(timeout_s))


def check_key(ops: list[Op], timeout_s: float = 30.0) -> Result:
    """Check ops that all belong to one key (the per-key entry point, handy in tests)."""
    return _checker.check_key(ops, *_deadline(timeout_s))
