"""Linearizability checker for a per-key register/KV history (Wing-Gong with Lowe's memoization).

Keys are independent objects, so the history is linearizable iff each key's sub-history is
(P-compositionality, Horn & Kroening): each key is checked on its own, smallest first.

Model of one key: its value, ``None`` meaning "does not exist". Operations:

========  ================  ==================  ==============================================
kind      input             output (if ok)      effect
========  ================  ==================  ==============================================
get       --                value or None       must equal the current value
put       value             revision (ignored)  value := input
cas       (expected, new)   ignored             ok: current == expected, value := new
                                                fail: current != expected, nothing changes
delete    --                bool existed/None   value := None; the bool, if given, is checked
========  ================  ==================  ==============================================

``expected is None`` in a cas means "the key must not exist".

A transaction spans keys: ``txn`` (input ``(compares, writes)``, output ``succeeded``) has
``compares`` as ``((key, expected value or None), ...)`` -- a compare on a revision is a
compare on the value written at it, values being unique -- and ``writes`` as ``((key, new
value, or None for a delete), ...)``, the branch applied on success; its failure branch must
be empty. Its ``key`` only names it in reports. It is checked through its projection onto
each key it touches, which every linearizable history satisfies (a linearization of the
whole orders each key's ops as well):

- it succeeded: a written key that was compared is a cas ok ``(expected, new)``, one not
  compared a put ok (a delete ok, existence unknown), a key compared but not written a get
  returning ``expected``;
- its compare failed: with one compare, that key is a failed cas (its value differed from
  ``expected``); with several, no single key can be blamed, so it asserts nothing -- its
  writes did not happen, and a read that sees one of their values fits no history;
- unknown: each written key is an unknown cas (compared) or put/delete, as on its own;
- fail (refused, e.g. by a fence): nothing happened.

The projection loses atomicity across keys (two keys may linearize a transaction at
different points); ``checks.check_txns`` holds each one to a single revision instead.

Outcomes: an ``unknown`` op may take effect at any point after its invocation or never; it
is given a completion at +infinity, and the search succeeds as soon as only such ops remain,
which is how "never" is allowed. An unknown get constrains nothing and is dropped, and so is a
``fail`` op other than cas (it did not happen). A failed cas is kept: it asserts that at some
point in its interval the value differed from ``expected``.

The search is Lowe's iterative version of Wing & Gong: entries (call and return events) in
time order in a doubly-linked list; a call is "lifted" out of the list together with its
return when it is linearized, and restored when the search backtracks. A set of
(linearized-bitmask, state) pairs prunes configurations already known to be dead ends.

The search is bounded by ``out_of_time``, asked every few thousand steps: the fault suite
passes a wall-clock deadline (``tests/faults/linearizability.py``), the simulator a step
budget, so that the same seed gives the same verdict on any machine.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from .history import Op

__all__ = ["OutOfTime", "Result", "check", "check_key", "step_budget"]

_GET, _PUT, _CAS_OK, _CAS_FAIL, _CAS_MAYBE, _DEL_ANY, _DEL_EXISTED, _DEL_ABSENT = range(8)
_READ_ONLY = frozenset((_GET, _CAS_FAIL, _DEL_ABSENT))
_KINDS = ("get", "put", "cas", "delete")
_TXN = "txn"
_PART = "txn:"          # the kind of a transaction's part on one key: "txn:cas", ...
_POLL_EVERY = 2048  # search steps between two out_of_time() polls
_CONTEXT_OPS = 8        # linearized ops shown before the stuck one


@dataclass(frozen=True, slots=True)
class Result:
    """``ok`` is False both for a violation and for a timeout; ``timed_out`` tells them apart.

    ``key`` is the failing (or timed-out) key; ``checked_ops`` counts the ops of every key that
    was searched, after dropping the ones that constrain nothing.
    """

    ok: bool
    key: str | None
    explanation: str
    checked_ops: int
    timed_out: bool = False


class _Timeout(Exception):
    pass


OutOfTime = Callable[[], bool]


def _never() -> bool:
    return False


def step_budget(checks: int) -> OutOfTime:
    """An ``out_of_time`` that allows ``checks`` polls (each after a few thousand steps)."""
    left = [checks]

    def out_of_time() -> bool:
        left[0] -= 1
        return left[0] < 0

    return out_of_time


def check(ops: list[Op], out_of_time: OutOfTime = _never,
          budget: str = "its budget") -> Result:
    """Check the whole history; stop at the first failing key, trying small keys first.

    ``out_of_time()`` True ends the search as timed out; ``budget`` names the limit in the
    explanation ("30s", "200 polls").
    """
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in _per_key(ops):
        by_key[op.key].append(op)
    t0 = min((op.invoke_ns for op in ops), default=0)
    checked = 0
    for key in sorted(by_key, key=lambda k: (len(by_key[k]), k)):
        kept = _relevant(by_key[key])
        checked += len(kept)
        try:
            failure = _search(kept, out_of_time)
        except _Timeout:
            return Result(False, key, f"timed out after {budget} while checking key "
                          f"{key!r} ({len(kept)} ops); no violation found so far", checked,
                          timed_out=True)
        if failure is not None:
            return Result(False, key, _explain(key, kept, failure, t0), checked)
    return Result(True, None, f"linearizable: {checked} ops on {len(by_key)} keys", checked)


def check_key(ops: list[Op], out_of_time: OutOfTime = _never,
              budget: str = "its budget") -> Result:
    """Check ops that all belong to one key (the per-key entry point, handy in tests)."""
    keys = sorted({op.key for op in _per_key(ops)})
    if len(keys) > 1:
        raise ValueError(f"check_key got ops on {len(keys)} keys: {keys[:5]}")
    return check(ops, out_of_time, budget)


def _per_key(ops: list[Op]) -> list[Op]:
    """Every op on one key: a transaction replaced by its parts (the module docstring)."""
    out = []
    for op in ops:
        if op.kind == _TXN:
            out += _parts(op)
        elif op.kind in _KINDS:
            out.append(op)
        else:
            raise ValueError(f"unknown op kind {op.kind!r} (expected one of {_KINDS + (_TXN,)})")
    return out


def _parts(op: Op) -> list[Op]:
    if not (isinstance(op.input, tuple) and len(op.input) == 2):
        raise ValueError(f"txn input must be (compares, writes), got {op.input!r}")
    compares, writes = _pairs(op.input[0]), _pairs(op.input[1])
    if op.status == "ok" and type(op.output) is not bool:
        raise ValueError(f"an ok txn's output must be a bool (succeeded), got {op.output!r}")

    def part(kind: str, key: str, input: object, output: object = None,
             status: str = op.status) -> Op:
        return Op(op.process, _PART + kind, key, input, output, op.invoke_ns, op.complete_ns,
                  status)

    if op.status == "fail":
        return []
    if op.status == "ok" and op.output is False:
        if len(compares) != 1:
            return []
        ((key, expected),) = compares.items()
        return [part("cas", key, (expected, expected), status="fail")]
    out = []
    for key, new in writes.items():
        if key in compares:
            out.append(part("cas", key, (compares[key], new)))
        elif new is None:
            out.append(part("delete", key, None))
        else:
            out.append(part("put", key, new))
    out += [part("get", key, None, expected) for key, expected in compares.items()
            if key not in writes]
    return out


def _pairs(x: object) -> dict[str, object]:
    """A txn's compares or writes, ``((key, value), ...)``, as a map."""
    if not (isinstance(x, tuple) and all(isinstance(p, tuple) and len(p) == 2
                                         and isinstance(p[0], str) for p in x)):
        raise ValueError(f"a txn's compares and writes are ((key, value), ...), got {x!r}")
    out = dict(x)
    if len(out) != len(x):
        raise ValueError(f"a txn names a key twice: {x!r}")
    return out


def _kind(op: Op) -> str:
    """What the op is on its one key: a transaction's part is checked as that kind."""
    return op.kind.removeprefix(_PART)


def _relevant(ops: list[Op]) -> list[Op]:
    out = []
    for op in ops:
        if op.status == "fail" and _kind(op) != "cas":
            continue
        if op.status == "unknown" and _kind(op) == "get":
            continue
        out.append(op)
    return out


def _encode(op: Op) -> tuple[int, object, object]:
    """(code, a, b) for the inner loop; raises on malformed input rather than guessing."""
    kind = _kind(op)
    if kind == "get":
        return _GET, op.output, None
    if kind == "put":
        return _PUT, op.input, None
    if kind == "cas":
        if not (isinstance(op.input, tuple) and len(op.input) == 2):
            raise ValueError(f"cas input must be (expected, new), got {op.input!r}")
        expected, new = op.input
        code = {"ok": _CAS_OK, "fail": _CAS_FAIL, "unknown": _CAS_MAYBE}[op.status]
        return code, expected, new
    # delete
    if op.status == "unknown" or op.output is None:
        return _DEL_ANY, None, None
    if not isinstance(op.output, bool):
        raise ValueError(f"delete output must be a bool (existed) or None, got {op.output!r}")
    return (_DEL_EXISTED if op.output else _DEL_ABSENT), None, None


@dataclass(frozen=True, slots=True)
class _Failure:
    prefix: list[int]       # op indices, in the order the deepest attempt linearized them
    stuck: int              # op whose completion was reached while still unlinearized
    state: object           # model state after the prefix


def _search(ops: list[Op], out_of_time: OutOfTime) -> _Failure | None:
    if out_of_time():
        raise _Timeout
    n = len(ops)
    if n == 0:
        return None
    code: list[int] = []
    arg_a: list[object] = []
    arg_b: list[object] = []
    for op in ops:
        c, a, b = _encode(op)
        code.append(c)
        arg_a.append(a)
        arg_b.append(b)

    # Entries: node 0 is the head sentinel; op i has call node 2i+1 and return node 2i+2.
    # Calls sort before returns at equal times, so touching intervals count as concurrent.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        ret = math.inf if op.status == "unknown" or op.complete_ns is None else op.complete_ns
        events.append((op.invoke_ns, 0, i))
        events.append((ret, 1, i))
    events.sort()
    size = 2 * n + 1
    nil = -1
    nxt = [nil] * size
    prv = [nil] * size
    prev_node = 0
    for _, is_ret, i in events:
        node = 2 * i + 2 if is_ret else 2 * i + 1
        nxt[prev_node] = node
        prv[node] = prev_node
        prev_node = node
    open_ended = [op.status == "unknown" for op in ops]

    cache: set[tuple[int, object]] = set()
    stack: list[tuple[int, object, bool]] = []  # (call node, state before it, forced)
    linearized = 0
    state: object = None
    best: _Failure | None = None
    steps = 0
    entry = nxt[0]
    while entry != nil:
        steps += 1
        if steps % _POLL_EVERY == 0 and out_of_time():
            raise _Timeout
        if entry & 1:  # a call: try to linearize it here
            i = entry >> 1
            c = code[i]
            ok = True
            new_state = state
            if c == _GET:
                ok = state == arg_a[i]
            elif c == _PUT:
                new_state = arg_a[i]
            elif c == _CAS_OK or c == _CAS_MAYBE:
                # An unknown cas whose compare fails changed nothing, which is the same as
                # never linearizing it, so only the matching case needs exploring.
                ok = state == arg_a[i]
                new_state = arg_b[i]
            elif c == _CAS_FAIL:
                ok = state != arg_a[i]
            elif c == _DEL_ANY:
                new_state = None
            elif c == _DEL_EXISTED:
                ok = state is not None
                new_state = None
            else:  # _DEL_ABSENT
                ok = state is None
            if ok:
                lin = linearized | (1 << i)
                memo = (lin, new_state)
                if memo not in cache:
                    cache.add(memo)
                    # An op that never changes the value in ANY state (a get, a failed cas,
                    # a delete of an absent key) can be linearized as soon as it fits: every
                    # op still in the list returns after this call, so moving it to the front
                    # of any completion of the search keeps real-time order and every later
                    # op's view. Not trying the alternative stops the search enumerating
                    # subsets of concurrent reads, the usual blow-up. An op that merely
                    # happens to keep the value here (an unknown delete of an absent key)
                    # does not qualify: a completion may need it later, where it does change
                    # the value.
                    stack.append((entry, state, c in _READ_ONLY))
                    linearized = lin
                    state = new_state
                    # lift the call and its return out of the list
                    ret = entry + 1
                    nxt[prv[entry]] = nxt[entry]
                    if nxt[entry] != nil:
                        prv[nxt[entry]] = prv[entry]
                    nxt[prv[ret]] = nxt[ret]
                    if nxt[ret] != nil:
                        prv[nxt[ret]] = prv[ret]
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
        else:  # a return whose op is not linearized yet
            i = (entry >> 1) - 1
            if open_ended[i]:
                # Returns at +infinity sort last, so everything left is an unknown op that
                # is allowed never to take effect.
                return None
            if best is None or len(stack) > len(best.prefix):
                best = _Failure([(call >> 1) for call, _, _ in stack], i, state)
            forced = True
            while forced:
                if not stack:
                    return best
                entry, state, forced = stack.pop()
                linearized &= ~(1 << (entry >> 1))
                # unlift in reverse order of lifting
                ret = entry + 1
                nxt[prv[ret]] = ret
                if nxt[ret] != nil:
                    prv[nxt[ret]] = ret
                nxt[prv[entry]] = entry
                if nxt[entry] != nil:
                    prv[nxt[entry]] = entry
            entry = nxt[entry]
    return None  # the list emptied: every op is linearized


def _fmt_time(ns: int | None, t0: int) -> str:
    if ns is None:
        return "inf"
    return f"{(ns - t0) / 1e6:+.3f}ms"


def _fmt_op(op: Op, t0: int) -> str:
    if _kind(op) == "get":
        call = f"{op.kind}()"
    elif _kind(op) == "delete":
        call = f"{op.kind}()"
    else:
        call = f"{op.kind}({op.input!r})"
    if op.status == "unknown":
        result = "?"
    elif op.status == "fail":
        result = f"FAIL {op.output!r}" if op.output is not None else "FAIL"
    else:
        result = repr(op.output)
    end = None if op.status == "unknown" else op.complete_ns
    return (f"p{op.process} {call} -> {result}  [{_fmt_time(op.invoke_ns, t0)} .. "
            f"{_fmt_time(end, t0)}] {op.status}")


def _explain(key: str, ops: list[Op], f: _Failure, t0: int) -> str:
    stuck = ops[f.stuck]
    lines = [f"key {key!r} is not linearizable ({len(ops)} ops on this key).",
             f"Longest linearizable prefix: {len(f.prefix)} ops, leaving the value at "
             f"{f.state!r}. Its last ops, in linearization order:"]
    shown = f.prefix[-_CONTEXT_OPS:]
    if len(f.prefix) > len(shown):
        lines.append(f"    ... {len(f.prefix) - len(shown)} earlier ops")
    lines += [f"    {_fmt_op(ops[i], t0)}" for i in shown]
    lines.append("This op completed before it could be placed after that prefix:")
    lines.append(f"  ! {_fmt_op(stuck, t0)}")
    in_prefix = set(f.prefix)
    stuck_end = stuck.complete_ns if stuck.complete_ns is not None else math.inf
    rivals = [i for i, op in enumerate(ops)
              if i not in in_prefix and i != f.stuck and op.invoke_ns <= stuck_end
              and (op.complete_ns is None or op.status == "unknown"
                   or op.complete_ns >= stuck.invoke_ns)]
    # Unknown ops stay concurrent with everything after them; show only the latest few.
    bounded = sorted((i for i in rivals if ops[i].status != "unknown"),
                     key=lambda i: ops[i].invoke_ns)
    open_ended = sorted((i for i in rivals if ops[i].status == "unknown"),
                        key=lambda i: ops[i].invoke_ns)
    shown_rivals = bounded[-2 * _CONTEXT_OPS:] + open_ended[-_CONTEXT_OPS // 2:]
    if shown_rivals:
        lines.append("Unplaced ops concurrent with it (no order of them makes it fit):")
        lines += [f"    {_fmt_op(ops[i], t0)}" for i in shown_rivals]
        hidden = len(rivals) - len(shown_rivals)
        if hidden:
            lines.append(f"    ... and {hidden} more (mostly older unknown-outcome ops)")
    return "\n".join(lines)
