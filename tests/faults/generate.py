"""Valid histories from a reference register model, for testing the checkers themselves.

Every op is given a linearization point and applied to the model in that order, so outputs
are what a correct service would return; intervals are then drawn around the points, which
keeps the history linearizable however wide (and however concurrent) they get.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .history import Op

__all__ = ["Planned", "apply_in_order", "concurrent_history", "sequential_history"]

UNKNOWN_RATE = 0.08      # share of writes whose outcome the client never learns
UNKNOWN_APPLIES = 0.5    # share of those that took effect anyway


@dataclass(slots=True)
class Planned:
    process: int
    kind: str
    key: str
    input: object
    point_ns: int          # the linearization point
    invoke_ns: int
    complete_ns: int
    unknown: bool = False
    applies: bool = True   # only False for unknown ops that never took effect


def _plan_input(rng: random.Random, kind: str, written: dict[str, list[str]], key: str,
                serial: int) -> object:
    if kind == "put":
        return f"v{serial}"
    if kind == "cas":
        older = written.get(key, [])
        choice = rng.random()
        if choice < 0.5 and older:
            expected: object = older[-1]          # usually the current value
        elif choice < 0.7 and older:
            expected = rng.choice(older)
        elif choice < 0.85:
            expected = None
        else:
            expected = f"never{serial}"
        return (expected, f"v{serial}")
    return None


def apply_in_order(plans: list[Planned]) -> list[Op]:
    """Apply `plans` to the model in linearization-point order; return the ops it yields."""
    state: dict[str, object] = {}
    revision = 0
    out: list[tuple[int, Op]] = []
    for idx in sorted(range(len(plans)), key=lambda i: plans[i].point_ns):
        p = plans[idx]
        cur = state.get(p.key)
        output: object = None
        status = "ok"
        if p.kind == "get":
            output = cur
        elif p.kind == "put":
            if p.applies:
                revision += 1
                state[p.key] = p.input
            output = revision
        elif p.kind == "cas":
            assert isinstance(p.input, tuple)
            expected, new = p.input
            if cur == expected:
                if p.applies:
                    revision += 1
                    state[p.key] = new
                output = revision
            else:
                status = "fail"
        elif p.kind == "delete":
            output = cur is not None
            if p.applies:
                state.pop(p.key, None)
        if p.unknown:
            out.append((idx, Op(p.process, p.kind, p.key, p.input, None, p.invoke_ns, None,
                                "unknown")))
        else:
            out.append((idx, Op(p.process, p.kind, p.key, p.input, output, p.invoke_ns,
                                p.complete_ns, status)))
    out.sort()
    return [op for _, op in out]


def _draw_plan(rng: random.Random, keys: list[str], written: dict[str, list[str]],
               serial: int, process: int) -> Planned:
    kind = rng.choices(("get", "put", "cas", "delete"), weights=(4, 3, 2, 1))[0]
    key = rng.choice(keys)
    inp = _plan_input(rng, kind, written, key, serial)
    if kind == "put":
        written.setdefault(key, []).append(str(inp))
    elif kind == "cas":
        assert isinstance(inp, tuple)
        written.setdefault(key, []).append(str(inp[1]))
    unknown = kind != "get" and rng.random() < UNKNOWN_RATE
    applies = not unknown or rng.random() < UNKNOWN_APPLIES
    return Planned(process, kind, key, inp, 0, 0, 0, unknown, applies)


def sequential_history(rng: random.Random, n_ops: int, n_keys: int) -> list[Planned]:
    """One op at a time: op i is linearized at 100*i + 50 within [100*i + 10, 100*i + 90]."""
    keys = [f"k{i}" for i in range(n_keys)]
    written: dict[str, list[str]] = {}
    plans = []
    for i in range(n_ops):
        p = _draw_plan(rng, keys, written, i, rng.randrange(5))
        p.point_ns, p.invoke_ns, p.complete_ns = 100 * i + 50, 100 * i + 10, 100 * i + 90
        plans.append(p)
    return plans


def widen(rng: random.Random, plans: list[Planned], max_ns: int) -> None:
    """Stretch every interval around its point by up to `max_ns` on each side."""
    for p in plans:
        p.invoke_ns = max(0, p.point_ns - rng.randrange(max_ns + 1))
        p.complete_ns = p.point_ns + rng.randrange(max_ns + 1)


def concurrent_history(rng: random.Random, n_ops: int, n_keys: int,
                       n_processes: int) -> list[Op]:
    """`n_processes` clients, each one op at a time, overlapping each other freely."""
    keys = [f"k{i}" for i in range(n_keys)]
    written: dict[str, list[str]] = {}
    clock = [rng.randrange(1_000) for _ in range(n_processes)]
    plans = []
    for serial in range(n_ops):
        proc = min(range(n_processes), key=lambda q: clock[q])
        p = _draw_plan(rng, keys, written, serial, proc)
        p.invoke_ns = clock[proc]
        p.complete_ns = p.invoke_ns + rng.randrange(50, 3_000)
        p.point_ns = rng.randrange(p.invoke_ns, p.complete_ns + 1)
        plans.append(p)
        clock[proc] = p.complete_ns + rng.randrange(1, 500)
    return apply_in_order(plans)
