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
    LockStep,
    Tenure,
    TxnSent,
    WatchEvent,
    check_answers,
    check_fifo,
    check_lock_delays,
    check_locks_reads,
    check_rwlocks,
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


def side(client: str, mode: str, token: int, start: int, end: int) -> Tenure:
    return Tenure(client, "RW", 10 + token, token, start, end, mode)


RW_GRANTED = {("RW", t): 10 + t for t in range(1, 6)}


def test_readers_may_hold_together_and_a_writer_alone() -> None:
    assert check_rwlocks([side("a", "read", 1, 0, 100), side("b", "read", 2, 50, 150),
                          side("c", "write", 3, 150, 200), side("d", "read", 4, 200, 300),
                          side("e", "read", 5, 210, 250)], RW_GRANTED) == []


def test_a_writer_believed_held_with_a_reader_or_a_writer_fails() -> None:
    (problem,) = check_rwlocks([side("a", "read", 1, 0, 100), side("b", "write", 2, 99, 150)],
                               RW_GRANTED)
    assert "a writer held with someone else" in problem and "at t=99" in problem
    (problem,) = check_rwlocks([side("a", "write", 1, 0, 100), side("b", "write", 2, 50, 60)],
                               RW_GRANTED)
    assert "a (write, token 1" in problem and "b (write, token 2" in problem


def test_tokens_order_a_writer_against_the_rest_but_not_readers_among_themselves() -> None:
    # a reader may learn of an earlier grant after another reader let go
    assert check_rwlocks([side("b", "read", 2, 0, 50), side("a", "read", 1, 60, 90)],
                         RW_GRANTED) == []
    (problem,) = check_rwlocks([side("b", "write", 2, 0, 50), side("a", "read", 1, 60, 90)],
                               RW_GRANTED)
    assert problem.startswith("token of 'RW' did not increase: b held it for write with 2")
    assert check_rwlocks([side("a", "read", 1, 0, 10)], {})[0].endswith("never granted it")


def ask(slot: int, name: str, sid: int, waits: bool = True, delay_ms: int = 0) -> LockStep:
    return LockStep(slot, "asked", name, sid, delay_ms=delay_ms, waits=waits)


def grant(slot: int, name: str, sid: int, token: int) -> LockStep:
    return LockStep(slot, "granted", name, sid, token)


def test_grants_in_the_order_asked_pass() -> None:
    steps = [ask(1, "L", 1, waits=False), grant(1, "L", 1, 1), ask(2, "L", 2), ask(3, "L", 3),
             ask(4, "L", 4), LockStep(5, "left", "L", 2), LockStep(6, "expired", "", 1),
             grant(6, "L", 3, 2), LockStep(7, "closed", "", 3), grant(7, "L", 4, 3),
             ask(8, "M", 5, waits=False), grant(8, "M", 5, 4)]
    assert check_fifo(steps) == []


def test_a_grant_past_an_earlier_waiter_is_not_fifo() -> None:
    # a reader let in beside the readers while a writer queued before it waits
    steps = [ask(1, "RW", 1, waits=False), grant(1, "RW", 1, 1), ask(2, "RW", 2),
             ask(3, "RW", 3, waits=False), grant(3, "RW", 3, 2)]
    (problem,) = check_fifo(steps)
    assert "granted to session 3 (token 2) while sessions [2], queued before it" in problem
    # a waiter admitted past the head of the queue
    steps = steps[:3] + [ask(3, "RW", 3), LockStep(4, "released", "RW", 1), grant(4, "RW", 3, 2)]
    assert "while sessions [2]" in check_fifo(steps)[0]


def test_tokens_of_a_lock_must_increase_in_grant_order() -> None:
    (problem,) = check_fifo([grant(1, "L", 1, 5), LockStep(2, "closed", "", 1),
                             grant(3, "L", 2, 5)])
    assert problem == ("slot 3: 'L' was granted with token 5 after token 5 (slot 1): tokens "
                       "did not increase")


DELAYED = [ask(1, "L", 1, waits=False, delay_ms=1000), grant(1, "L", 1, 1), ask(2, "L", 2),
           LockStep(3, "expired", "", 1), grant(4, "L", 2, 2)]


def test_a_grant_after_an_expiry_waits_out_the_lock_delay_on_the_fastest_clock() -> None:
    # 910 ms of world time is 1001 ms on a clock 10% fast: the delay may end then
    assert check_lock_delays(DELAYED, {3: 100, 4: 1010}, 1.1) == []
    (problem,) = check_lock_delays(DELAYED, {3: 100, 4: 1000}, 1.1)
    assert "granted to session 2 (token 2, slot 4" in problem
    assert "900 ms after its holder, session 1, expired (slot 3, t=100) with a lock-delay of " \
        "1000 ms: granted before the lock-delay ended" in problem


def test_a_voluntary_end_or_a_lock_without_a_delay_passes_at_once() -> None:
    at_once = {3: 100, 4: 100}
    closed = DELAYED[:3] + [LockStep(3, "closed", "", 1), DELAYED[4]]
    released = DELAYED[:3] + [LockStep(3, "released", "L", 1), LockStep(3, "expired", "", 1),
                              DELAYED[4]]
    undelayed = [ask(1, "L", 1, waits=False)] + DELAYED[1:]
    for steps in (closed, released, undelayed):
        assert check_lock_delays(steps, at_once, 1.0) == []
    assert check_lock_delays(DELAYED, at_once, 1.0) != []


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
