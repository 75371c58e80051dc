"""What the simulated clients do, and the record of what they were told.

Workers mix linearizable reads, puts (every value unique, so a value names the write that
made it), compare-and-set, deletes, transactions on 2-3 keys (compares on revisions read
before, or on absence, that fail when another write came between), lock cycles (with
keepalives, some with a lock-delay, fenced writes and transactions, timeouts that give up
by ``Cancel``, interrupted waits that just close the session, and holders that vanish,
leaving their session to expire) and ``locks`` listings, holds of a semaphore, terms of an
election, read and write holds of read/write locks (each let go by a close, now and then
after a ``Release``; a read/write holder may vanish too), and lease cycles (a session
kept alive, ephemeral puts on it, then revoked or abandoned to expire) with reads of the
ephemeral keys, until the safety phase ends. Then each takes every lock once and holds a
read/write lock once, for reading or writing, waiting as long as it takes, and reads
every key once more, retrying until answered: after healing every lock must come free
(abandoned sessions expire, lock-delays end) and every request must be answered.
Watchers long-poll ``watch`` for one prefix from revision 0 or from "now" (a
linearizable read of the current revision), resume from the last revision fetched, and
now and then switch nodes.

What a checker needs lands in the history ``Recorder``, the ``Record`` (locks listings,
closed sessions, watch streams, ephemeral values and their reads, transactions sent) and
the clients
themselves (answers, locks held). Ephemeral keys are kept out of the linearizability
history: the deletes their lease's end makes are no client's operation; their own check
(``checks.check_ephemeral_reads``) covers them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.commands import (
    ELECTION_PREFIX,
    AcquireShared,
    Campaign,
    CloseSession,
    Delete,
    Fence,
    OpenSession,
    Put,
    Release,
    Txn,
    under,
)
from ..core.protocol import ErrorCode, Result, ResultCode
from . import requests
from .checks import EphemeralRead, LocksRead, TxnSent, WatchEvent
from .client import LOCK_WAIT_MAX_MS, Co, SimClient, SimLock, Sleep
from .history import Recorder
from .requests import BadReply

__all__ = ["Record", "WatchLog", "Workload", "watcher", "worker"]

ERROR_PAUSE_MS = 100      # client/_watch.py: after a failed poll
FINAL_HOLD_MS = 200      # the most a final hold of a read/write lock lasts


@dataclass(frozen=True, slots=True)
class Workload:
    """The drawn shape of the clients' work (part of a run's parameters)."""

    keys: tuple[str, ...]
    locks: tuple[str, ...]
    weights: tuple[int, ...]   # of each op in _OPS
    think_ms: int
    give_up_ms: int | None        # a write or read is abandoned (unknown) after this
    ttl_ms: tuple[int, ...]
    hold_ms: tuple[int, int]
    lock_timeout_ms: tuple[int, ...]
    interrupt: float              # share of lock waits the application abandons early
    fenced: float                 # share of held locks used for a fenced write
    watch_wait_ms: int
    watch_limit: int
    watch_switch: float           # chance per poll that a watcher moves to a random node
    eph_keys: tuple[str, ...] = ("e/0", "e/1")   # put only on leases
    sem_limit: int = 2            # of the one semaphore, "sem/a"
    abandon: float = 0.5          # share of lease cycles left to expire rather than revoked
    fenced_txn: float = 0.25      # share of fenced writes that are transactions
    rwlocks: tuple[str, ...] = ("rw/a",)
    lock_delay_ms: tuple[int, ...] = (0,)   # drawn per lock cycle (0: none)
    vanish: float = 0.0           # share of lock and read/write holds whose holder vanishes
    released: float = 0.3         # share of shared holds let go by Release before the close


@dataclass(slots=True)
class WatchLog:
    client: str
    prefix: str
    after: int                    # it owes every event after this revision
    fetched: int
    delivered: list[WatchEvent] = field(default_factory=list)


@dataclass(slots=True)
class Record:
    # Session id -> when a client learned it is closed (CloseSession said ok/no_session).
    gone_sessions: dict[int, int] = field(default_factory=dict)
    locks_reads: list[LocksRead] = field(default_factory=list)
    watches: list[WatchLog] = field(default_factory=list)
    # Each value put on a lease -> that lease (session id); and every read of an ephemeral key.
    eph_values: dict[bytes, int] = field(default_factory=dict)
    eph_reads: list[EphemeralRead] = field(default_factory=list)
    txns: list[TxnSent] = field(default_factory=list)


_OPS = ("get", "put", "cas", "delete", "lock", "locks", "lease", "eph_get", "sem", "elect", "txn",
        "rw")
SEMAPHORE = "sem/a"
ELECTION = "el/a"


def worker(c: SimClient, wl: Workload, record: Record, history: Recorder,
           faults_active: Callable[[], bool]) -> Co[None]:
    rng = c.rng
    while faults_active():
        yield Sleep(rng.randint(0, wl.think_ms))
        op = rng.choices(_OPS, wl.weights)[0]
        key = rng.choice(wl.keys)
        c.doing = f"{op} {key}" if op in ("get", "put", "cas", "delete") else op
        if op == "get":
            yield from _get(c, history, key, wl.give_up_ms)
        elif op == "put":
            yield from _put(c, history, key, wl.give_up_ms)
        elif op == "cas":
            yield from _cas(c, history, key, wl.give_up_ms)
        elif op == "delete":
            yield from _delete(c, history, key, wl.give_up_ms)
        elif op == "lock":
            yield from _lock_cycle(c, wl, record, history)
        elif op == "lease":
            yield from _lease_cycle(c, wl, record)
        elif op == "eph_get":
            yield from _eph_get(c, record, rng.choice(wl.eph_keys), wl.give_up_ms)
        elif op == "sem":
            yield from _shared_cycle(c, wl, record, "semaphore")
        elif op == "elect":
            yield from _shared_cycle(c, wl, record, "election")
        elif op == "rw":
            yield from _shared_cycle(c, wl, record, rng.choice(("read", "read", "write")))
        elif op == "txn":
            yield from _txn(c, wl, record, history, wl.give_up_ms)
        else:
            yield from _locks(c, record, wl.give_up_ms)
    # After healing: every lock comes free and every request is answered.
    for name in wl.locks:
        c.doing = f"final lock cycle on {name}"
        yield from _lock_cycle(c, wl, record, history, name, final=True)
    name = rng.choice(wl.rwlocks)
    c.doing = f"final hold of {name}"
    yield from _shared_cycle(c, wl, record, rng.choice(("read", "write")), name, final=True)
    for key in wl.keys:
        c.doing = f"final read of {key}"
        yield from _get(c, history, key, None)
    for key in wl.eph_keys:
        c.doing = f"final read of {key}"
        yield from _eph_get(c, record, key, None)
    c.doing = "done"


def _unexpected(c: SimClient, what: str, res: Result) -> None:
    c.env.protocol_violation(f"{c.name}: {what} answered {res.code}: {res.data}")


def _value(c: SimClient) -> bytes:
    c.values += 1
    return f"{c.name}.{c.values}".encode()


def _get(c: SimClient, history: Recorder, key: str,
         give_up_ms: int | None) -> Co[tuple[bytes | None, int] | None]:
    w = c.world
    h = history.invoke(c.process, "get", key, None, w.now)
    reply = yield from c.call(requests.get(key), leader=True, timeout_ms=give_up_ms)
    if reply is not None:
        try:
            value, revision = requests.kv_of(reply)
        except BadReply as e:
            c.env.protocol_violation(f"{c.name}: get {key}: {e}")
        else:
            history.ok(h, value, w.now)
            return value, revision
    history.unknown(h)
    return None


def _put(c: SimClient, history: Recorder, key: str, give_up_ms: int | None,
         fence: Fence | None = None) -> Co[None]:
    value = _value(c)
    h = history.invoke(c.process, "put", key, value, c.world.now)
    _, res = yield from c.write(Put(key, value, fence=fence), give_up_ms)
    if res is None:
        history.unknown(h)
    elif res.code == ResultCode.OK:
        history.ok(h, res.data.get("revision"), c.world.now)
    elif res.code == ResultCode.FENCE_REJECTED and fence is not None:
        history.fail(h, c.world.now)
    else:
        history.unknown(h)
        _unexpected(c, f"put {key}", res)


def _cas(c: SimClient, history: Recorder, key: str, give_up_ms: int | None) -> Co[None]:
    # The service compares revisions, the model compares values; with unique values the
    # two are the same question ("is the key still as I read it?").
    got = yield from _get(c, history, key, give_up_ms)
    if got is None:
        return
    expected, revision = got
    new = _value(c)
    h = history.invoke(c.process, "cas", key, (expected, new), c.world.now)
    _, res = yield from c.write(Put(key, new, if_revision=revision), give_up_ms)
    if res is None:
        history.unknown(h)
    elif res.code == ResultCode.OK:
        history.ok(h, None, c.world.now)
    elif res.code == ResultCode.COMPARE_FAILED:
        history.fail(h, c.world.now)
    else:
        history.unknown(h)
        _unexpected(c, f"cas {key}", res)


def _delete(c: SimClient, history: Recorder, key: str, give_up_ms: int | None) -> Co[None]:
    h = history.invoke(c.process, "delete", key, None, c.world.now)
    _, res = yield from c.write(Delete(key), give_up_ms)
    if res is None:
        history.unknown(h)
    elif res.code == ResultCode.OK:
        history.ok(h, res.data.get("deleted") is True, c.world.now)
    else:
        history.unknown(h)
        _unexpected(c, f"delete {key}", res)


def _txn(c: SimClient, wl: Workload, record: Record, history: Recorder,
         give_up_ms: int | None, fence: Fence | None = None) -> Co[None]:
    """Write 2-3 keys at one revision (a put each, now and then a delete; one put at least),
    comparing some of them, and sometimes one key more, on the revision a read just saw or
    on absence (0). A compare fails when another write came between, or the key exists."""
    rng = c.rng
    keys = rng.sample(wl.keys, min(len(wl.keys), rng.randint(2, 3)))
    others = [k for k in wl.keys if k not in keys]
    looked = keys + ([rng.choice(others)] if others and rng.random() < 0.3 else [])
    compare: list[tuple[str, int]] = []
    expected: list[tuple[str, bytes | None]] = []    # the same compares, on values
    for key in looked:
        draw = rng.random()
        if draw < 0.5 or key not in keys:
            got = yield from _get(c, history, key, give_up_ms)
            if got is None:
                return
            compare.append((key, got[1]))
            expected.append((key, got[0]))
        elif draw < 0.7:
            compare.append((key, 0))
            expected.append((key, None))
    deletes = [rng.random() < 0.25 for _ in keys]
    if all(deletes):
        deletes[rng.randrange(len(keys))] = False
    writes = tuple((key, None if d else _value(c)) for key, d in zip(keys, deletes, strict=True))
    cmd = Txn(tuple(compare), tuple(Delete(k) if v is None else Put(k, v) for k, v in writes),
              fence=fence)
    h = history.invoke(c.process, "txn", ",".join(sorted(looked)), (tuple(expected), writes),
                       c.world.now)
    seq, res = yield from c.write(cmd, give_up_ms)
    record.txns.append(TxnSent(c.name, seq, writes))
    succeeded = None if res is None else res.data.get("succeeded")
    if res is None:
        history.unknown(h)
    elif res.code == ResultCode.OK and type(succeeded) is bool:
        history.ok(h, succeeded, c.world.now)
    elif res.code == ResultCode.FENCE_REJECTED and fence is not None:
        history.fail(h, c.world.now)
    else:
        history.unknown(h)
        _unexpected(c, f"txn {dict(writes)}", res)


def _lease_cycle(c: SimClient, wl: Workload, record: Record) -> Co[None]:
    """Open a lease, put ephemeral keys on it, hold it, then revoke it or let it expire."""
    rng, w = c.rng, c.world
    ttl_ms = rng.choice(wl.ttl_ms)
    start = w.now
    _, res = yield from c.write(OpenSession(ttl_ms), wl.give_up_ms)
    if res is None:
        return   # unknown: a session it may have opened expires by itself
    sid = res.data.get("session_id")
    if res.code != ResultCode.OK or type(sid) is not int:
        _unexpected(c, "OpenSession", res)
        return
    ls = SimLock("", sid, ttl_ms, valid_until=start + ttl_ms)
    c.spawn(c.keepalive(ls), f"keepalive {sid}")
    for key in rng.sample(wl.eph_keys, rng.randint(1, len(wl.eph_keys))):
        value = _value(c)
        record.eph_values[value] = sid
        _, res = yield from c.write(Put(key, value, lease=sid), wl.give_up_ms)
        if res is not None and res.code not in (ResultCode.OK, ResultCode.NO_SESSION):
            _unexpected(c, f"put {key} on lease {sid}", res)
    yield Sleep(rng.randint(*wl.hold_ms))
    c.finish(ls)    # keepalives stop either way
    if rng.random() < wl.abandon:
        return      # the leader expires it
    _, res = yield from c.write(CloseSession(sid), wl.give_up_ms)
    if res is not None and res.code not in (ResultCode.OK, ResultCode.NO_SESSION):
        _unexpected(c, f"CloseSession {sid}", res)


def _shared_cycle(c: SimClient, wl: Workload, record: Record, kind: str,
                  name: str | None = None, final: bool = False) -> Co[None]:
    """A hold of the semaphore, a term of the election (checked like a lock: one leader at
    a time, tokens in order) or a side of a read/write lock (``kind`` "read" or "write"):
    a session, AcquireShared (Campaign), wait, hold, then let go -- close the session, now
    and then after a Release, or (read/write locks) vanish and leave it to expire.
    ``final`` (after healing, read/write locks): wait until granted, however long, hold a
    moment and close."""
    rng, w = c.rng, c.world
    give_up_ms = None if final else wl.give_up_ms
    ttl_ms = rng.choice(wl.ttl_ms)
    start = w.now
    _, res = yield from c.write(OpenSession(ttl_ms), give_up_ms)
    if res is None:
        return
    sid = res.data.get("session_id")
    if res.code != ResultCode.OK or type(sid) is not int:
        _unexpected(c, "OpenSession", res)
        return
    cmd: Campaign | AcquireShared
    if kind == "election":
        name, beliefs = ELECTION_PREFIX + ELECTION, c.locks
        cmd = Campaign(ELECTION, sid, c.name.encode())
    elif kind == "semaphore":
        name, beliefs = SEMAPHORE, c.sems
        cmd = AcquireShared(SEMAPHORE, sid, kind, wl.sem_limit, True)
    else:
        name, beliefs = name or rng.choice(wl.rwlocks), c.rws
        cmd = AcquireShared(name, sid, kind, 0, True)
    lk = SimLock(name, sid, ttl_ms, valid_until=start + ttl_ms,
                 mode=kind if beliefs is c.rws else "")
    beliefs.append(lk)
    c.spawn(c.keepalive(lk), f"keepalive {sid}")
    _, res = yield from c.write(cmd, give_up_ms)
    if res is not None and res.code == ResultCode.OK:
        token = res.data.get("token")
        if type(token) is int:
            c.take_grant(lk, token)
    elif res is not None and res.code == ResultCode.QUEUED:
        if final:
            while lk.granted_at is None and not lk.lost:
                yield from c.wait_for_grant(lk, w.now + LOCK_WAIT_MAX_MS, None)
        else:
            outcome = yield from c.wait_for_grant(lk, w.now + rng.choice(wl.lock_timeout_ms),
                                                  give_up_ms)
            if outcome == "timeout":
                yield from c.cancel(lk, give_up_ms)
    elif res is not None and res.code != ResultCode.NO_SESSION:
        _unexpected(c, f"{type(cmd).__name__} {name}", res)
    if lk.granted_at is not None:
        yield Sleep(rng.randint(0, FINAL_HOLD_MS) if final else rng.randint(*wl.hold_ms))
        if beliefs is c.rws and not final and rng.random() < wl.vanish:
            c.finish(lk)
            return
        if not final and rng.random() < wl.released:
            c.finish(lk)    # the belief ends as the release begins
            _, res = yield from c.write(Release(name, sid, lk.token), give_up_ms)
            if res is not None and res.code not in (ResultCode.OK, ResultCode.NOT_HELD):
                _unexpected(c, f"Release {name}", res)
    res = yield from c.close_session(lk, give_up_ms)
    if res is not None and res.code in (ResultCode.OK, ResultCode.NO_SESSION):
        record.gone_sessions[lk.session_id] = w.now
    if final and lk.granted_at is None:    # the session expired while waiting: a new one
        yield from _shared_cycle(c, wl, record, kind, name, final)


def _eph_get(c: SimClient, record: Record, key: str, give_up_ms: int | None) -> Co[None]:
    invoked = c.world.now
    reply = yield from c.call(requests.get(key), leader=True, timeout_ms=give_up_ms)
    if reply is None:
        return
    try:
        value, _ = requests.kv_of(reply)
    except BadReply as e:
        c.env.protocol_violation(f"{c.name}: get {key}: {e}")
        return
    record.eph_reads.append(EphemeralRead(c.name, key, invoked, value))


def _locks(c: SimClient, record: Record, give_up_ms: int | None) -> Co[None]:
    invoked = c.world.now
    reply = yield from c.call(requests.locks(), leader=True, timeout_ms=give_up_ms)
    if reply is None:
        return
    try:
        record.locks_reads.append(LocksRead(c.name, invoked, tuple(requests.locks_of(reply))))
    except BadReply as e:
        c.env.protocol_violation(f"{c.name}: locks: {e}")


def _lock_cycle(c: SimClient, wl: Workload, record: Record, history: Recorder,
                name: str | None = None, final: bool = False) -> Co[None]:
    """One acquire-hold-release; ``final``: retry until granted, never give up."""
    rng, w = c.rng, c.world
    name = name or rng.choice(wl.locks)
    give_up_ms = None if final else wl.give_up_ms
    lk, res = yield from c.open_and_acquire(name, rng.choice(wl.ttl_ms), give_up_ms,
                                            0 if final else rng.choice(wl.lock_delay_ms))
    if lk is None:
        if res is not None:
            _unexpected(c, f"OpenAndAcquire {name}", res)
        return  # unknown outcome: a session it may have opened expires by itself
    if final:
        while lk.granted_at is None and not lk.lost:
            yield from c.wait_for_grant(lk, w.now + LOCK_WAIT_MAX_MS, None)
        if lk.granted_at is None:   # the session expired while waiting: a new one
            yield from c.close_session(lk, None)
            yield from _lock_cycle(c, wl, record, history, name, final)
            return
    if lk.granted_at is None and not lk.lost:
        timeout_ms = rng.choice(wl.lock_timeout_ms)
        # An interrupted wait (the application gives up, as on KeyboardInterrupt) closes
        # the session without Cancel, as the real client's abandon() does.
        interrupted = rng.random() < wl.interrupt
        wait_ms = rng.randint(0, timeout_ms) if interrupted else timeout_ms
        outcome = yield from c.wait_for_grant(lk, w.now + wait_ms, wl.give_up_ms)
        if outcome == "timeout" and not interrupted:
            res = yield from c.cancel(lk, wl.give_up_ms)
            if res is not None and res.code not in (ResultCode.OK, ResultCode.NO_SESSION):
                _unexpected(c, f"Cancel {name}", res)
    if lk.granted_at is not None and not final:
        yield from _hold(c, wl, lk, record, history)
        if rng.random() < wl.vanish:
            c.finish(lk)    # gone without a word: the session expires, and any lock-delay runs
            return
    res = yield from c.close_session(lk, give_up_ms)
    if res is None:
        return
    if res.code in (ResultCode.OK, ResultCode.NO_SESSION):
        record.gone_sessions[lk.session_id] = w.now
    else:
        _unexpected(c, f"CloseSession {lk.session_id}", res)


def _hold(c: SimClient, wl: Workload, lk: SimLock, record: Record,
          history: Recorder) -> Co[None]:
    rng = c.rng
    hold_ms = rng.randint(*wl.hold_ms)
    if rng.random() < wl.fenced:
        first = rng.randint(0, hold_ms)
        yield Sleep(first)
        hold_ms -= first
        fence = Fence(lk.name, lk.token)
        if rng.random() < wl.fenced_txn:
            yield from _txn(c, wl, record, history, wl.give_up_ms, fence)
        else:
            yield from _put(c, history, rng.choice(wl.keys), wl.give_up_ms, fence)
    yield Sleep(hold_ms)


def watcher(c: SimClient, wl: Workload, record: Record, prefix: str, start_ms: int,
            from_now: bool) -> Co[None]:
    """Follow ``prefix`` as the real client's WatchHub does, for ever (the run ends it)."""
    yield Sleep(start_ms)
    after = 0
    if from_now:
        reply = None
        while reply is None:
            reply = yield from c.call(requests.get("/"), leader=True)
        try:
            after = requests.get_revision(reply)
        except BadReply as e:
            c.env.protocol_violation(f"{c.name}: revision: {e}")
            return
    wlog = WatchLog(c.name, prefix, after, after)
    record.watches.append(wlog)
    pin: list[str | None] = [None]
    while True:
        if c.rng.random() < wl.watch_switch:
            pin[0] = c.rng.choice(c.env.endpoints)
        asked = wlog.fetched
        reply = yield from c.call(
            requests.watch([prefix], asked, wl.watch_wait_ms, wl.watch_limit), leader=False,
            timeout_ms=None if wl.give_up_ms is None else wl.watch_wait_ms + wl.give_up_ms,
            long_poll_ms=wl.watch_wait_ms, pin=pin)
        if reply is None:
            yield Sleep(ERROR_PAUSE_MS)
            continue
        try:
            refusal = requests.error_of(reply)
            if refusal is not None:
                if refusal.error == ErrorCode.COMPACTED:
                    c.env.protocol_violation(
                        f"{c.name}: watch {prefix!r} after {asked}: compacted (the window is "
                        "far larger than a simulated run)")
                    return
                raise BadReply(f"refused with {refusal.error}")
            events, revision = requests.watch_events(reply)
        except BadReply as e:
            c.env.protocol_violation(f"{c.name}: watch: {e}")
            continue
        last = asked
        for ev in events:
            if ev.revision < last or ev.revision <= asked or not under(ev.key, prefix):
                c.env.protocol_violation(
                    f"{c.name}: watch {prefix!r} after {asked} answered out of order or "
                    f"outside the prefix: {[e.revision for e in events]}")
                break
            last = ev.revision
        # client/_watch.py: a full batch is complete only up to its last event; a shorter
        # one up to the node's revision.
        through = (events[-1].revision if len(events) >= wl.watch_limit
                   else max(revision, events[-1].revision if events else asked))
        before = wlog.fetched    # a transaction's events share a revision
        for ev in events:
            if ev.revision > before and under(ev.key, prefix):
                wlog.delivered.append(ev)
                wlog.fetched = ev.revision
        wlog.fetched = max(wlog.fetched, through)
