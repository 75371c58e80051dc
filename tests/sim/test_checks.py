"""The simulator's history checks accept correct histories and reject the anomalies they name.

(The linearizability and watch checks have their own hand-made histories in
tests/faults/test_checkers.py; the planted bugs in test_nodes.py show each check failing
on a real run.)
"""
from __future__ import annotations

from coordsvc.core.machine import Result
from coordsvc.sim.checks import (
    LockRow,
    LocksRead,
    Tenure,
    TxnSent,
    WatchEvent,
    check_answers,
    check_locks_reads,
    check_tenures,
    check_txns,
    check_unique_values,
)
from coordsvc.sim.history import Recorder

GRANTED = {("L", 1): 11, ("L", 2): 12, ("L", 3): 13}


def tenure(client: str, token: int, start: int, end: int) -> Tenure:
    return Tenure(client, "L", GRANTED.get(("L", token), 99), token, start, end)


def test_lock_beliefs_that_follow_each_other_pass() -> None:
    assert check_tenures([tenure("a", 1, 0, 100), tenure("b", 2, 100, 250),
                          tenure("c", 3, 300, 400)], GRANTED) == []


def test_two_clients_believing_they_hold_one_lock_at_once_fail() -> None:
    problems = check_tenures([tenure("a", 1, 0, 100), tenure("b", 2, 99, 250)], GRANTED)
    assert len(problems) == 1 and "two clients believed they held 'L' at t=99" in problems[0]


def test_an_overlap_with_a_long_earlier_belief_is_found_past_a_short_one() -> None:
    problems = check_tenures([tenure("a", 1, 0, 500), tenure("b", 2, 100, 200),
                              tenure("c", 3, 300, 400)], GRANTED)
    assert len(problems) == 2 and all("a (token 1" in p for p in problems)


def test_tokens_must_increase_in_the_order_beliefs_begin() -> None:
    problems = check_tenures([tenure("b", 2, 0, 100), tenure("a", 1, 100, 200)], GRANTED)
    assert problems == ["token of 'L' did not increase: b held 2 from t=0, then a held 1 "
                        "from t=100"]


def test_a_believed_grant_the_log_never_made_fails_even_without_overlap() -> None:
    problems = check_tenures([Tenure("a", "L", 11, 7, 0, 10)], GRANTED)
    assert problems and "granted that token to nobody" in problems[0]
    assert check_tenures([Tenure("a", "L", 12, 1, 0, 10)], GRANTED)[0].endswith("session 11")


def test_a_belief_that_ended_before_it_began_holds_nothing() -> None:
    # A grant that arrived after valid_until minus the margin: no belief, no overlap.
    assert check_tenures([tenure("a", 1, 0, 100), tenure("b", 2, 50, 40)], GRANTED) == []


def test_a_locks_listing_may_not_show_a_session_closed_before_it_was_asked() -> None:
    row = LockRow("L", 5, 3, (6,))
    gone = {5: 100, 6: 200}
    assert check_locks_reads([LocksRead("c", 99, (row,))], gone) == []
    problems = check_locks_reads([LocksRead("c", 150, (row,)), LocksRead("c", 200, (row,))], gone)
    assert len(problems) == 3
    assert "session 5 holding 'L'" in problems[0] and "session 6 waiting for 'L'" in problems[2]


def test_every_answer_must_be_the_chosen_logs_answer() -> None:
    ok = Result("ok", 4, {"revision": 4})
    log = {("c1", 1): ok, ("c1", 2): Result("compare_failed", 4, {})}
    assert check_answers({"c1": [(1, ok)]}, log) == []
    problems = check_answers({"c1": [(1, Result("ok", 5, {"revision": 5})), (3, ok)]}, log)
    assert "the chosen log says" in problems[0] and "not in the chosen log" in problems[1]


def test_a_put_value_at_two_revisions_is_a_put_applied_twice() -> None:
    events = [WatchEvent(1, "k", "put", b"v1"), WatchEvent(2, "k", "delete", b""),
              WatchEvent(3, "j", "delete", b""), WatchEvent(4, "k", "put", b"v2")]
    assert check_unique_values(events, "log") == []
    problems = check_unique_values(events + [WatchEvent(5, "k", "put", b"v1")], "log")
    assert problems == ["log: value b'v1' of 'k' was written at revisions 1 and 5: one put "
                        "applied twice"]


TXN = TxnSent("c1", 7, (("b", b"v2"), ("a", None), ("c", b"v3")))


def txn_answered(succeeded: bool, revision: int) -> dict[tuple[str, int], Result]:
    return {("c1", 7): Result("ok", revision, {"succeeded": succeeded, "revision": revision})}


def test_a_transaction_that_succeeded_has_every_write_at_its_one_revision_alone() -> None:
    before = [WatchEvent(1, "a", "put", b"v1")]
    events = before + [WatchEvent(2, "a", "delete", b""), WatchEvent(2, "b", "put", b"v2"),
                       WatchEvent(2, "c", "put", b"v3")]
    assert check_txns([TXN], txn_answered(True, 2), events) == []
    # the key it deleted was absent: no event for it
    assert check_txns([TXN], txn_answered(True, 1), [WatchEvent(1, "b", "put", b"v2"),
                                                     WatchEvent(1, "c", "put", b"v3")]) == []
    split = before + [WatchEvent(2, "a", "delete", b""), WatchEvent(2, "b", "put", b"v2"),
                      WatchEvent(3, "c", "put", b"v3")]
    (problem,) = check_txns([TXN], txn_answered(True, 2), split)
    assert "{'b': 2, 'c': 3}" in problem and "not all at one revision" in problem
    (problem,) = check_txns([TXN], txn_answered(True, 2), events[:-1])
    assert "'c': None" in problem
    shared = events + [WatchEvent(2, "d", "put", b"x")]
    (problem,) = check_txns([TXN], txn_answered(True, 2), shared)
    assert "revision 2, which also holds" in problem and "'d'" in problem


def test_a_transaction_that_failed_or_was_never_applied_wrote_nothing() -> None:
    events = [WatchEvent(1, "a", "put", b"v1")]
    assert check_txns([TXN], txn_answered(False, 1), events) == []
    assert check_txns([TXN], {}, events) == []
    leaked = events + [WatchEvent(2, "c", "put", b"v3")]
    (problem,) = check_txns([TXN], txn_answered(False, 1), leaked)
    assert "answered ok" in problem and "{'c': 2}" in problem
    (problem,) = check_txns([TXN], {}, leaked)
    assert "never applied" in problem
    refused = {("c1", 7): Result("fence_rejected", 1, {})}
    assert check_txns([TXN], refused, leaked)[0].startswith("c1 seq 7 txn")


def test_recorder_times_ops_in_simulated_ms_and_pending_ops_are_unknown() -> None:
    h = Recorder()
    a = h.invoke(1, "put", "k", b"v", 10)
    b = h.invoke(2, "get", "k", None, 11)
    h.ok(a, 3, 20)
    ops = h.ops()
    assert (ops[0].invoke_ns, ops[0].complete_ns, ops[0].status) == (10_000_000, 20_000_000, "ok")
    assert ops[1].status == "unknown" and ops[1].complete_ns is None
    h.fail(b, 30)
    assert h.ops()[1].status == "fail"
