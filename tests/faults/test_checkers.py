"""The checkers accept every correct history and reject the classic anomalies.

A checker that passes everything is worse than none, so each anomaly the fault suite hunts
for (stale read, lost write, duplicate application, ...) has a hand-made history here, and the
random tests check both directions: widened correct histories pass, corrupted ones fail.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .checks import (
    CriticalSection,
    Watcher,
    check_fencing,
    check_no_lost_writes,
    check_watch,
)
from .generate import apply_in_order, concurrent_history, sequential_history, widen
from .history import History, Op, summarize
from .linearizability import check, check_key

K = "k"


def op(p: int, kind: str, inp: object, out: object, t0: int, t1: int | None,
       status: str = "ok", key: str = K) -> Op:
    return Op(p, kind, key, inp, out, t0, t1, status)


def put(p: int, v: object, t0: int, t1: int | None, status: str = "ok", key: str = K) -> Op:
    return op(p, "put", v, None, t0, t1, status, key)


def get(p: int, v: object, t0: int, t1: int, key: str = K) -> Op:
    return op(p, "get", None, v, t0, t1, "ok", key)


def cas(p: int, expected: object, new: object, t0: int, t1: int | None,
        status: str = "ok", key: str = K) -> Op:
    return op(p, "cas", (expected, new), None, t0, t1, status, key)


def delete(p: int, existed: bool | None, t0: int, t1: int | None, status: str = "ok") -> Op:
    return op(p, "delete", None, existed, t0, t1, status)


def assert_linearizable(ops: list[Op]) -> None:
    r = check(ops)
    assert r.ok, r.explanation


def assert_not_linearizable(ops: list[Op]) -> str:
    r = check(ops)
    assert not r.ok and not r.timed_out, r.explanation
    return r.explanation


# -- the history record ------------------------------------------------------------

def test_op_rejects_unknown_status_and_backwards_intervals() -> None:
    with pytest.raises(ValueError, match="status"):
        Op(0, "get", K, None, None, 1, 2, "maybe")
    with pytest.raises(ValueError, match="before it is invoked"):
        Op(0, "get", K, None, None, 5, 2, "ok")
    with pytest.raises(ValueError, match="needs complete_ns"):
        Op(0, "get", K, None, None, 5, None, "fail")
    Op(0, "put", K, 1, None, 5, None, "unknown")  # an unknown op needs no completion


def test_history_records_outcomes_in_invoke_order_and_pending_ops_are_unknown() -> None:
    h = History()
    a = h.invoke(1, "put", "x", "v1")
    b = h.invoke(2, "get", "x")
    c = h.invoke(3, "cas", "x", ("v1", "v2"))
    d = h.invoke(4, "put", "x", "v3")
    h.ok(b, "v1")
    h.ok(a, 7)
    h.fail(c)
    ops = h.ops()
    assert [o.process for o in ops] == [1, 2, 3, 4]
    assert [o.status for o in ops] == ["ok", "ok", "fail", "unknown"]
    assert ops[3].complete_ns is None and ops[0].output == 7
    assert all(o.complete_ns is None or o.complete_ns >= o.invoke_ns for o in ops)
    assert str(h.summary()) == "4 ops: 2 ok, 1 fail, 1 unknown"
    h.unknown(d)
    assert h.summary().unknown == 1
    with pytest.raises(ValueError, match="not pending"):
        h.ok(a, 8)


def test_history_is_thread_safe_and_a_locked_register_is_linearizable() -> None:
    h = History()
    store: dict[str, object] = {}
    lock = threading.Lock()

    def client(proc: int) -> None:
        rng = random.Random(proc)
        for i in range(150):
            key = f"k{rng.randrange(3)}"
            if rng.random() < 0.5:
                handle = h.invoke(proc, "get", key)
                with lock:
                    value = store.get(key)
                h.ok(handle, value)
            else:
                value = f"p{proc}-{i}"
                handle = h.invoke(proc, "put", key, value)
                with lock:
                    store[key] = value
                h.ok(handle)

    threads = [threading.Thread(target=client, args=(p,)) for p in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = h.ops()
    assert summarize(ops).ok == len(ops) == 900
    assert_linearizable(ops)


# -- linearizability: histories that must pass --------------------------------------

def test_correct_concurrent_history_is_linearizable() -> None:
    assert_linearizable([
        put(1, "a", 0, 10),
        get(2, None, 1, 3),           # before the put took effect
        get(3, "a", 5, 30),           # overlaps the put: sees it
        put(2, "b", 12, 40),
        cas(1, "b", "c", 20, 50),     # overlaps put b and linearizes after it
        get(3, "c", 55, 60),
        delete(1, True, 61, 70),
        get(2, None, 71, 72),
        delete(3, False, 73, 74),
    ])


@pytest.mark.parametrize("winner", ["a", "b"])
def test_overlapping_writes_may_take_effect_in_either_order(winner: str) -> None:
    loser = "b" if winner == "a" else "a"
    assert_linearizable([put(1, "a", 0, 100), put(2, "b", 10, 90), get(3, winner, 120, 130)])
    assert_linearizable([put(1, "a", 0, 100), put(2, "b", 10, 90), get(3, loser, 50, 60),
                         get(3, winner, 120, 130)])


@pytest.mark.parametrize("seen", [None, "a"])
def test_read_overlapping_a_write_may_see_either_value(seen: object) -> None:
    assert_linearizable([put(1, "a", 10, 50), get(2, seen, 20, 30)])


def test_unknown_put_that_becomes_visible_later_is_linearizable() -> None:
    assert_linearizable([
        put(1, "a", 0, 10),
        put(2, "b", 20, None, "unknown"),
        get(3, "a", 30, 40),          # well after the client gave up: not applied yet
        get(3, "b", 1_000, 1_010),    # ... then it lands
    ])


def test_unknown_put_that_never_appears_is_linearizable() -> None:
    assert_linearizable([
        put(1, "a", 0, 10),
        put(2, "b", 20, None, "unknown"),
        get(3, "a", 30, 40),
        get(3, "a", 1_000, 1_010),
    ])


def test_failed_put_never_takes_effect_so_reading_it_is_a_violation() -> None:
    assert_linearizable([put(1, "a", 0, 10), put(2, "b", 20, 30, "fail"), get(3, "a", 40, 50)])
    assert_not_linearizable([put(1, "a", 0, 10), put(2, "b", 20, 30, "fail"),
                             get(3, "b", 40, 50)])


def test_unknown_cas_may_or_may_not_apply() -> None:
    base = [put(1, "a", 0, 10), cas(2, "a", "b", 20, None, "unknown")]
    assert_linearizable(base + [get(3, "a", 30, 40), get(3, "b", 50, 60)])
    assert_linearizable(base + [get(3, "a", 30, 40), get(3, "a", 50, 60)])
    # ... but only if its compare could match
    assert_not_linearizable([put(1, "x", 0, 10), cas(2, "a", "b", 20, None, "unknown"),
                             get(3, "b", 50, 60)])


# -- linearizability: anomalies that must fail ----------------------------------------

def test_stale_read_after_a_completed_write_is_a_violation() -> None:
    explanation = assert_not_linearizable([
        put(1, "a", 0, 10),
        put(2, "b", 20, 30),
        get(3, "a", 40, 50),          # b completed before this read began
    ])
    assert "get() -> 'a'" in explanation and "leaving the value at 'b'" in explanation


def test_lost_write_acknowledged_put_never_visible_is_a_violation() -> None:
    assert_not_linearizable([
        put(1, "a", 0, 10),
        put(2, "b", 20, 30),          # acknowledged ...
        get(3, "a", 40, 50),          # ... but every later read shows the earlier value
        get(1, "a", 60, 70),
    ])
    assert_not_linearizable([put(1, "a", 0, 10), get(2, None, 20, 30)])


def test_cas_applied_twice_is_a_violation() -> None:
    assert_not_linearizable([
        put(1, "a", 0, 10),
        cas(2, "a", "b", 20, 30),     # acknowledged once
        put(3, "a", 40, 50),
        get(1, "b", 60, 70),          # only a second application of the cas explains this
    ])
    # two ok cas with the same compare, strictly sequential: the second cannot match
    assert_not_linearizable([put(1, "a", 0, 10), cas(2, "a", "b", 20, 30),
                             cas(3, "a", "b", 40, 50)])


def test_failed_cas_consistent_with_a_mismatch_passes_and_otherwise_fails() -> None:
    assert_linearizable([put(1, "a", 0, 10), cas(2, "x", "y", 20, 30, "fail")])
    assert_linearizable([put(1, "a", 0, 10), cas(2, "a", "y", 20, 30, "fail"),
                         put(3, "c", 15, 35)])      # a concurrent put explains the mismatch
    assert_linearizable([cas(2, "a", "y", 20, 30, "fail")])
    assert_not_linearizable([put(1, "a", 0, 10), cas(2, "a", "y", 20, 30, "fail")])
    assert_not_linearizable([cas(2, None, "y", 20, 30, "fail")])  # the key did not exist


def test_delete_reports_whether_the_key_existed() -> None:
    assert_not_linearizable([delete(1, True, 0, 10)])
    assert_not_linearizable([put(1, "a", 0, 10), delete(2, False, 20, 30)])
    assert_linearizable([put(1, "a", 0, 10), delete(2, None, 20, 30, "unknown"),
                         cas(3, None, "b", 40, 50)])


def test_keys_are_checked_independently_and_the_smallest_failing_key_is_reported() -> None:
    big_bad = [put(1, i, 10 * i, 10 * i + 5, key="big") for i in range(20)]
    big_bad.append(get(2, 3, 500, 510, key="big"))
    small_bad = [put(1, "a", 0, 10, key="small"), get(2, None, 20, 30, key="small")]
    fine = [put(3, "z", 0, 10, key="fine"), get(3, "z", 20, 30, key="fine")]
    r = check(fine + big_bad + small_bad)
    assert not r.ok and r.key == "small"
    assert check(fine).ok and check(fine).checked_ops == 2
    with pytest.raises(ValueError, match="2 keys"):
        check_key(fine + small_bad)


def test_explanation_names_the_op_that_could_not_be_placed_and_the_prefix() -> None:
    ops = [put(1, f"v{i}", 100 * i, 100 * i + 10) for i in range(20)]
    ops.append(get(7, "v3", 5_000, 5_010))
    r = check(ops)
    assert not r.ok and r.key == K
    assert "Longest linearizable prefix: 20 ops, leaving the value at 'v19'" in r.explanation
    assert "! p7 get() -> 'v3'" in r.explanation
    assert "12 earlier ops" in r.explanation  # the long prefix is elided, its tail shown


def test_timeout_is_reported_as_such_not_as_a_violation() -> None:
    r = check([put(1, "a", 0, 10)], timeout_s=-1.0)
    assert not r.ok and r.timed_out and "timed out" in r.explanation
    with pytest.raises(ValueError, match="kind"):
        check([op(1, "increment", 1, None, 0, 1)])


# -- linearizability: transactions, through their part on each key ------------------------

def txn(p: int, compares: dict[str, object], writes: dict[str, object], succeeded: bool | None,
        t0: int, t1: int | None, status: str = "ok") -> Op:
    return op(p, "txn", (tuple(compares.items()), tuple(writes.items())), succeeded, t0, t1,
              status, key=",".join(sorted({*compares, *writes})))


def test_a_txn_that_succeeded_wrote_every_key_and_saw_every_compared_value() -> None:
    setup = [put(1, "a0", 0, 10, key="a"), put(1, "b0", 0, 10, key="b"),
             put(1, "c0", 0, 10, key="c")]
    moved = txn(2, {"a": "a0", "c": "c0"}, {"a": "a1", "b": "b1"}, True, 20, 30)
    assert_linearizable(setup + [moved, get(3, "a1", 40, 50, key="a"),
                                 get(3, "b1", 40, 50, key="b")])
    # torn: one of its writes is missing afterwards
    explanation = assert_not_linearizable(setup + [moved, get(3, "a1", 40, 50, key="a"),
                                                   get(3, "b0", 40, 50, key="b")])
    assert "txn:put('b1')" in explanation
    # its compare on c did not hold: c changed before it began
    assert_not_linearizable(setup + [put(4, "c1", 12, 15, key="c"), moved])
    # deleting a key it compared as absent does not fit a key that exists
    assert_not_linearizable(setup + [txn(2, {"a": None}, {"a": None, "b": "b1"}, True, 20, 30)])


def test_a_txn_whose_compare_failed_changed_nothing() -> None:
    setup = [put(1, "a0", 0, 10, key="a"), put(1, "b0", 0, 10, key="b")]
    failed = txn(2, {"a": "a0"}, {"a": "a1", "b": "b1"}, False, 20, 30)
    assert_linearizable(setup + [put(4, "a9", 15, 25, key="a"), failed,   # a changed meanwhile
                                 get(3, "b0", 40, 50, key="b")])
    assert_not_linearizable(setup + [failed])            # nothing made its one compare fail
    assert_not_linearizable(setup + [put(4, "a9", 15, 25, key="a"), failed,
                                     get(3, "b1", 40, 50, key="b")])    # yet b was written
    # with two compares, no key alone can be blamed: it asserts only that nothing was written
    two = txn(2, {"a": "a0", "b": "b0"}, {"a": "a1"}, False, 20, 30)
    assert_linearizable(setup + [two, get(3, "a0", 40, 50, key="a")])
    assert_not_linearizable(setup + [two, get(3, "a1", 40, 50, key="a")])


def test_an_unknown_txn_may_apply_later_or_never_but_only_where_its_compare_held() -> None:
    setup = [put(1, "a0", 0, 10, key="a"), put(1, "b0", 0, 10, key="b")]
    lost = txn(2, {"a": "a0"}, {"a": "a1", "b": "b1"}, None, 20, None, "unknown")
    assert_linearizable(setup + [lost, get(3, "b0", 40, 50, key="b"),
                                 get(3, "b1", 90, 99, key="b"), get(3, "a1", 90, 99, key="a")])
    assert_linearizable(setup + [lost, get(3, "a0", 90, 99, key="a")])
    assert_not_linearizable(setup + [put(4, "a9", 12, 15, key="a"), lost,
                                     get(3, "a1", 90, 99, key="a")])
    refused = txn(2, {}, {"a": "a1"}, None, 20, 30, "fail")   # a fence refused it
    assert_not_linearizable(setup + [refused, get(3, "a1", 40, 50, key="a")])


def test_a_malformed_txn_is_a_harness_bug() -> None:
    with pytest.raises(ValueError, match="compares, writes"):
        check([op(1, "txn", ("a",), True, 0, 1)])
    with pytest.raises(ValueError, match="key, value"):
        check([op(1, "txn", ("a", "x"), True, 0, 1)])
    with pytest.raises(ValueError, match="twice"):
        check([op(1, "txn", ((), (("a", "x"), ("a", "y"))), True, 0, 1)])
    with pytest.raises(ValueError, match="bool"):
        check([txn(1, {}, {"a": "x"}, None, 0, 1)])


# -- random histories ------------------------------------------------------------------

# Ops are 100 ns apart, so a spread of 1,000 ns makes up to ~20 ops mutually concurrent. WGL is
# exponential in concurrency (a failing search must exhaust every order of the concurrent
# window); real histories are bounded by the number of client processes, and so are these.
SPREADS = st.sampled_from([0, 50, 200, 500, 1_000])


def _writes(ops: list[Op]) -> list[Op]:
    return [o for o in ops if o.status == "ok" and o.kind in ("put", "cas", "delete")]


def _written_value(o: Op) -> object:
    if o.kind == "put":
        return o.input
    if o.kind == "cas":
        assert isinstance(o.input, tuple)
        return o.input[1]
    return None


def _stale_candidates(ops: list[Op]) -> list[tuple[int, object]]:
    """(read index, value) pairs where the value was certainly overwritten before the read."""
    out = []
    for i, r in enumerate(ops):
        if r.kind != "get" or r.status != "ok":
            continue
        writes = [w for w in _writes(ops) if w.key == r.key]
        for a in writes:
            assert a.complete_ns is not None
            if a.kind == "delete" or _written_value(a) == r.output:
                continue
            if any(b.invoke_ns > a.complete_ns and (b.complete_ns or 0) < r.invoke_ns
                   and _written_value(b) != _written_value(a) for b in writes):
                out.append((i, _written_value(a)))
    return out

@settings(max_examples=300, deadline=None, print_blob=True)
@given(seed=st.integers(0, 2**32 - 1), n_ops=st.integers(1, 40), n_keys=st.integers(1, 3),
       spread_ns=SPREADS)
def test_widened_sequential_model_run_is_linearizable(seed: int, n_ops: int, n_keys: int,
                                                      spread_ns: int) -> None:
    """Stretching intervals around a real order of execution can never break linearizability."""
    rng = random.Random(seed)
    plans = sequential_history(rng, n_ops, n_keys)
    widen(rng, plans, spread_ns)
    ops = apply_in_order(plans)
    r = check(ops, timeout_s=10)
    assert r.ok, f"seed={seed}\n{r.explanation}"


@settings(max_examples=300, deadline=None, print_blob=True)
@given(seed=st.integers(0, 2**32 - 1), n_ops=st.integers(1, 40), n_keys=st.integers(1, 3),
       spread_ns=SPREADS)
def test_a_read_of_a_never_written_value_is_always_caught(seed: int, n_ops: int, n_keys: int,
                                                          spread_ns: int) -> None:
    rng = random.Random(seed)
    plans = sequential_history(rng, n_ops, n_keys)
    widen(rng, plans, spread_ns)
    ops = apply_in_order(plans)
    reads = [i for i, o in enumerate(ops) if o.kind == "get" and o.status == "ok"]
    if not reads:
        end = max(o.complete_ns or o.invoke_ns for o in ops)
        ops.append(get(0, None, end + 1, end + 2, key=ops[0].key))
        reads = [len(ops) - 1]
    victim = rng.choice(reads)
    ops[victim] = dataclasses.replace(ops[victim], output="never-written")
    r = check(ops, timeout_s=10)
    assert not r.ok and not r.timed_out, f"seed={seed} victim={ops[victim]}"
    assert r.key == ops[victim].key, f"seed={seed}"


@settings(max_examples=300, deadline=None, print_blob=True)
@given(seed=st.integers(0, 2**32 - 1), n_ops=st.integers(1, 40), n_keys=st.integers(1, 3),
       spread_ns=SPREADS)
def test_a_read_of_an_overwritten_value_is_always_caught(seed: int, n_ops: int, n_keys: int,
                                                         spread_ns: int) -> None:
    """A stale read of a real value: the search itself must prove no order explains it."""
    rng = random.Random(seed)
    plans = sequential_history(rng, n_ops, n_keys)
    widen(rng, plans, spread_ns)
    ops = apply_in_order(plans)
    candidates = _stale_candidates(ops)
    if not candidates:
        end = max(o.complete_ns or o.invoke_ns for o in ops) + 10_000
        ops += [put(9, "s1", end, end + 1), put(9, "s2", end + 2, end + 3),
                get(9, "s2", end + 4, end + 5)]
        candidates = [(len(ops) - 1, "s1")]
    victim, stale = rng.choice(candidates)
    ops[victim] = dataclasses.replace(ops[victim], output=stale)
    r = check(ops, timeout_s=10)
    assert not r.ok and not r.timed_out, f"seed={seed} victim={ops[victim]}"
    assert r.key == ops[victim].key, f"seed={seed}"


def _brute_force_linearizable(ops: list[Op]) -> bool:
    """The definition, by enumeration: some subset of the unknown ops plus every other
    relevant op has an order that respects real time and replays on the register model."""
    relevant = [o for o in ops if not (o.status == "fail" and o.kind != "cas")
                and not (o.status == "unknown" and o.kind == "get")]
    unknown = [o for o in relevant if o.status == "unknown"]
    known = [o for o in relevant if o.status != "unknown"]

    def end(o: Op) -> float:
        return math.inf if o.complete_ns is None or o.status == "unknown" else o.complete_ns

    def replays(order: tuple[Op, ...]) -> bool:
        value: object = None
        for o in order:
            if o.kind == "get" and o.output != value:
                return False
            if o.kind == "put":
                value = o.input
            elif o.kind == "cas":
                assert isinstance(o.input, tuple)
                matches = value == o.input[0]
                if matches != (o.status != "fail"):
                    return False
                if matches:
                    value = o.input[1]
            elif o.kind == "delete":
                if isinstance(o.output, bool) and o.status == "ok" and o.output != (value is not None):
                    return False
                value = None
        return True

    for k in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, k):
            for order in itertools.permutations(known + list(chosen)):
                if all(not (end(b) < a.invoke_ns) for x, a in enumerate(order)
                       for b in order[x + 1:]) and replays(order):
                    return True
    return False


@settings(max_examples=400, deadline=None, print_blob=True)
@given(seed=st.integers(0, 2**32 - 1), n_ops=st.integers(1, 6))
def test_checker_agrees_with_brute_force_on_small_arbitrary_histories(seed: int,
                                                                      n_ops: int) -> None:
    """Random outputs, mostly non-linearizable: checks soundness and completeness at once,
    including the shortcut that linearizes value-preserving ops greedily."""
    rng = random.Random(seed)
    values = [None, "a", "b"]
    ops = []
    for p in range(n_ops):
        t0 = rng.randrange(0, 40)
        t1 = t0 + rng.randrange(0, 20)
        kind = rng.choice(["get", "put", "cas", "delete"])
        status = rng.choices(["ok", "fail", "unknown"], weights=(6, 2, 2))[0]
        inp: object = None
        out: object = None
        if kind == "get":
            out = rng.choice(values)
        elif kind == "put":
            inp = rng.choice(values[1:])
        elif kind == "cas":
            inp = (rng.choice(values), rng.choice(values[1:]))
        else:
            out = rng.choice([True, False, None])
        ops.append(Op(p, kind, K, inp, out, t0, None if status == "unknown" else t1, status))
    expected = _brute_force_linearizable(ops)
    r = check(ops)
    assert r.ok == expected, f"seed={seed} brute force says {expected}\n{ops}\n{r.explanation}"


@pytest.mark.timeout(60)
def test_three_thousand_op_concurrent_history_checks_quickly() -> None:
    seed = 20240611
    ops = concurrent_history(random.Random(seed), 3_000, n_keys=10, n_processes=8)
    start = time.perf_counter()
    r = check(ops, timeout_s=20)
    elapsed_s = time.perf_counter() - start
    print(f"seed={seed}: checked {r.checked_ops} ops ({summarize(ops)}) in {elapsed_s:.3f}s")
    assert r.ok, f"seed={seed}\n{r.explanation}"
    assert r.checked_ops == len(ops) == 3_000


# -- fencing ------------------------------------------------------------------------------

def test_fencing_accepts_increasing_tokens_and_disjoint_sections() -> None:
    assert check_fencing([(1, "a", 0, 10), (2, "b", 15, 30), (5, "a", 31, 40)]) == []


def test_fencing_rejects_a_token_that_does_not_increase() -> None:
    problems = check_fencing([(3, "a", 0, 10), (3, "b", 20, 30)])
    assert any("did not increase" in p for p in problems)
    assert any("two tenures" in p for p in problems)
    assert check_fencing([(3, "a", 0, 10), (2, "b", 20, 30)]) != []


def test_fencing_rejects_overlapping_accepted_sections() -> None:
    problems = check_fencing([CriticalSection(1, "a", 0, 20), CriticalSection(2, "b", 10, 30)])
    assert len(problems) == 1 and "overlap" in problems[0]


def test_fencing_ignores_a_paused_holder_whose_writes_were_rejected() -> None:
    # "a" paused past its lease and woke believing it held the lock; its write was fenced off.
    assert check_fencing([(1, "a", 0, 100, False), (2, "b", 10, 30)]) == []
    with pytest.raises(ValueError, match="ends"):
        CriticalSection(1, "a", 10, 5)


# -- watches ------------------------------------------------------------------------------

EVENTS = [(1, "cfg/a", "put", "1"), (2, "lock/x", "put", ""), (3, "cfg/b", "put", "2"),
          (4, "cfg/a", "delete", None)]


def test_watch_passes_when_each_watcher_sees_its_prefix_once_in_order() -> None:
    cfg = [e for e in EVENTS if e[1].startswith("cfg/")]
    assert check_watch(EVENTS, [EVENTS, cfg, cfg[1:]],
                       [Watcher(), Watcher("cfg/"), Watcher("cfg/", start_revision=2)]) == []
    assert check_watch(EVENTS, [EVENTS[2:]]) == []  # inferred start: the first event seen


def test_watch_rejects_missing_duplicate_reordered_and_invented_events() -> None:
    cfg = Watcher("cfg/", start_revision=1)
    missing = check_watch(EVENTS, [[EVENTS[0], EVENTS[3]]], [cfg])
    assert len(missing) == 1 and "missed 1" in missing[0]
    dup = check_watch(EVENTS, [[EVENTS[0], EVENTS[0], EVENTS[2], EVENTS[3]]], [cfg])
    assert any("twice" in p for p in dup)
    swapped = check_watch(EVENTS, [[EVENTS[0], EVENTS[3], EVENTS[2]]], [cfg])
    assert any("after" in p for p in swapped)
    invented = check_watch(EVENTS, [[EVENTS[0], (3, "cfg/b", "put", "9"), EVENTS[3]]], [cfg])
    assert any("never committed" in p for p in invented)
    early = check_watch(EVENTS, [EVENTS[:1] + EVENTS[2:]], [Watcher("cfg/", 3)])
    assert any("before its start" in p for p in early)
    foreign = check_watch(EVENTS, [[EVENTS[0], EVENTS[1], EVENTS[2], EVENTS[3]]], [cfg])
    assert any("outside its prefix" in p for p in foreign)


def test_watch_owes_every_change_a_transaction_made_at_its_one_revision() -> None:
    events = EVENTS + [(5, "cfg/a", "put", "3"), (5, "cfg/c", "delete", None)]
    cfg = [e for e in events if e[1].startswith("cfg/")]
    assert check_watch(events, [cfg], [Watcher("cfg/", 1)]) == []
    half = check_watch(events, [cfg[:-1]], [Watcher("cfg/", 1)])
    assert len(half) == 1 and "missed 1" in half[0] and "cfg/c" in half[0]


def test_watch_closed_early_owes_only_events_up_to_its_end() -> None:
    assert check_watch(EVENTS, [EVENTS[:2]], [Watcher(end_revision=2)]) == []
    assert check_watch(EVENTS, [EVENTS[:2]], [Watcher()]) != []


# -- lost writes --------------------------------------------------------------------------

def test_no_lost_writes_accepts_a_final_state_at_or_after_each_acked_write() -> None:
    final = {"a": (5, "x"), "b": (9, "later")}
    assert check_no_lost_writes({"a": (5, "x"), "b": (7, "y"), "c": (8, None)}, final) == []
    assert check_no_lost_writes({"d": (3, "v")}, final, maybe_deleted={"d"}) == []
    assert check_no_lost_writes({"a": 5}, final) == []


def test_no_lost_writes_rejects_rollback_missing_key_and_wrong_value() -> None:
    final = {"a": (4, "old"), "b": (6, "z"), "c": (8, "back")}
    problems = check_no_lost_writes(
        {"a": (5, "x"), "b": (6, "y"), "c": (8, None), "d": (2, "v")}, final)
    assert len(problems) == 4, problems
    assert any("'a'" in p and "lost" in p for p in problems)
    assert any("'b'" in p and "holds 'z'" in p for p in problems)
    assert any("'c'" in p and "delete" in p for p in problems)
    assert any("'d'" in p and "does not exist" in p for p in problems)
