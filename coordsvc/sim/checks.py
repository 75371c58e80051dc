"""Checks over the client-visible history of a run (the watch check is shared with tests/faults).

Each check returns a list of human-readable violations; an empty list means the run passed.
Malformed input raises ValueError instead: that is a bug in the harness, not in the service.

Besides linearizability per key (``linearizability.py``) a run is checked for:

- lock exclusivity (``check_tenures``): no two clients believe they hold one lock at the
  same simulated instant, tokens increase in the order the beliefs begin, and every
  believed grant is one the chosen log made, to that session with that token; a
  semaphore's slots (``check_semaphore``) are never believed held by more than its limit;
- read/write locks (``check_rwlocks``): a writer's belief overlaps no other belief of its
  lock (readers' may overlap each other), and of a writer's belief and another one, the
  earlier has the smaller token;
- FIFO grants (``check_fifo``, from the chosen log): no lock, semaphore or rwlock is
  granted to a request while one queued before it still waits, and each one's tokens
  increase in grant order;
- lock-delays (``check_lock_delays``, from the chosen log): after a holder's session
  expired holding a lock it asked for with a lock-delay, the lock's next grant comes no
  sooner than the delay allows;
- no lock held by a dead session (``check_locks_reads``): a ``locks`` listing never names
  a session whose close a client had already seen acknowledged;
- exactly once (``check_answers``, ``check_unique_values``): every answer a write got is
  the answer the chosen log gives its (client id, seq), and no put's value appears at two
  revisions (values are unique, so that would be one put applied twice);
- watch completeness (``check_watch``): each watcher saw every committed event under its
  prefix after its start exactly once, in revision order;
- ephemeral keys die with their lease (``check_ephemeral_reads``): a linearizable read
  invoked after some node applied the end of a lease never returns a value put on it;
- transactions are all or nothing at one revision (``check_txns``): one that succeeded has
  every write at the revision it was answered with, alone there; one that failed or was
  never applied has none. Per-key linearizability cannot see this: it checks each key on
  its own.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..core.commands import under
from ..core.protocol import Result, ResultCode

__all__ = [
    "EphemeralRead", "LockRow", "LockStep", "LocksRead", "Tenure", "TxnSent", "WatchEvent",
    "Watcher", "check_answers", "check_ephemeral_reads", "check_fifo", "check_lock_delays",
    "check_locks_reads", "check_rwlocks", "check_semaphore", "check_tenures", "check_txns",
    "check_unique_values", "check_watch",
]


@dataclass(frozen=True, slots=True)
class Tenure:
    """A lock as one client believed it held: from the grant's arrival to the end of its
    belief (its release began, or ``valid_until`` minus its safety margin passed)."""

    client: str
    lock: str
    session_id: int
    token: int
    start_ms: int
    end_ms: int
    mode: str = ""    # of a read/write lock: "read" or "write"


@dataclass(frozen=True, slots=True)
class LockRow:
    name: str
    holder_session: int
    token: int
    waiters: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LocksRead:
    """A linearizable ``locks`` listing and when it was asked for."""

    client: str
    invoke_ms: int
    rows: tuple[LockRow, ...]


def check_tenures(tenures: Sequence[Tenure], granted: Mapping[tuple[str, int], int]) -> list[str]:
    """Exclusivity and token order per lock; ``granted[(lock, token)]`` is the session the
    chosen log granted that token to."""
    problems: list[str] = []
    by_lock: dict[str, list[Tenure]] = {}
    for t in tenures:
        owner = granted.get((t.lock, t.token))
        if owner != t.session_id:
            problems.append(f"{t.client} believed it held {t.lock!r} with token {t.token} "
                            f"(session {t.session_id}), but the log granted that token to "
                            f"{'nobody' if owner is None else f'session {owner}'}")
        if t.end_ms > t.start_ms:
            by_lock.setdefault(t.lock, []).append(t)
    for name in sorted(by_lock):
        ts = sorted(by_lock[name], key=lambda t: (t.start_ms, t.end_ms, t.token))
        latest = ts[0]   # of the tenures begun so far, the one believed longest
        for t in ts[1:]:
            if t.start_ms < latest.end_ms:
                problems.append(
                    f"two clients believed they held {name!r} at t={t.start_ms}: "
                    f"{latest.client} (token {latest.token}, [{latest.start_ms}, "
                    f"{latest.end_ms})) and {t.client} (token {t.token}, [{t.start_ms}, "
                    f"{t.end_ms}))")
            if t.token <= latest.token:
                problems.append(f"token of {name!r} did not increase: {latest.client} held "
                                f"{latest.token} from t={latest.start_ms}, then {t.client} "
                                f"held {t.token} from t={t.start_ms}")
            if t.end_ms >= latest.end_ms:
                latest = t
    return problems


def check_semaphore(tenures: Sequence[Tenure], limit: int,
                    granted: Mapping[tuple[str, int], int]) -> list[str]:
    """At no instant more than ``limit`` clients believe they hold a slot, and every believed
    slot is one the chosen log granted, to that session with that token."""
    problems = _never_granted(tenures, granted, "a slot of ")
    edges: list[tuple[int, int, Tenure]] = []
    for t in tenures:
        if t.end_ms > t.start_ms:
            edges += [(t.start_ms, 1, t), (t.end_ms, -1, t)]
    holding: list[Tenure] = []
    for at, step, t in sorted(edges, key=lambda e: (e[0], e[1])):   # ends before starts
        if step < 0:
            holding.remove(t)
            continue
        holding.append(t)
        if len(holding) > limit:
            problems.append(f"{len(holding)} clients believed they held a slot of {t.lock!r} "
                            f"(limit {limit}) at t={at}: "
                            + ", ".join(f"{h.client} token {h.token}" for h in holding))
            break
    return problems


def _never_granted(tenures: Sequence[Tenure], granted: Mapping[tuple[str, int], int],
                   what: str) -> list[str]:
    return [f"{t.client} believed it held {what}{t.lock!r} with token {t.token} (session "
            f"{t.session_id}) that the log never granted it"
            for t in tenures if granted.get((t.lock, t.token)) != t.session_id]


def check_rwlocks(tenures: Sequence[Tenure], granted: Mapping[tuple[str, int], int]) -> list[str]:
    """Read/write locks (each tenure's ``mode`` "read" or "write"): every believed hold is
    one the chosen log granted, to that session with that token; a writer's belief
    overlaps no other belief of its lock, while readers' may overlap each other; and of a
    writer's belief and another one, the earlier has the smaller token.

    Each belief lies within the time the log had it granted (the lease argument the
    exclusive check rests on too), and a writer's time is apart from every other's, so
    the one that comes first in time was granted first. Two readers' beliefs say nothing
    of their order: one may learn of an earlier grant only after the other let go."""
    problems = _never_granted(tenures, granted, "")
    by_lock: dict[str, list[Tenure]] = {}
    for t in tenures:
        if t.end_ms > t.start_ms:
            by_lock.setdefault(t.lock, []).append(t)
    for name in sorted(by_lock):
        ts = sorted(by_lock[name], key=lambda t: (t.start_ms, t.end_ms, t.token))
        for i, a in enumerate(ts):
            for b in ts[i + 1:]:          # b began no earlier than a
                if a.mode != "write" and b.mode != "write":
                    continue
                if b.start_ms < a.end_ms:
                    problems.append(
                        f"{a.client} ({a.mode}, token {a.token}, [{a.start_ms}, {a.end_ms})) "
                        f"and {b.client} ({b.mode}, token {b.token}, [{b.start_ms}, "
                        f"{b.end_ms})) believed they held {name!r} at t={b.start_ms}: "
                        "a writer held with someone else")
                elif b.token <= a.token:
                    problems.append(
                        f"token of {name!r} did not increase: {a.client} held it for "
                        f"{a.mode} with {a.token} until t={a.end_ms}, then {b.client} for "
                        f"{b.mode} with {b.token} from t={b.start_ms}")
    return problems


@dataclass(frozen=True, slots=True)
class LockStep:
    """One thing the chosen log did to a lock (plain, semaphore, rwlock or an election's),
    in apply order; ``reference.Reference`` reads them off each command, its result and
    the grants it made.

    ``kind`` is one of: "asked" -- session ``session_id`` asked for ``name`` and holds it
    or, with ``waits``, joined its queue; ``delay_ms`` is the lock-delay it asked for;
    "granted", with ``token``; "left" -- it left the queue (Cancel); "released" -- it let
    go (Release, Cancel); "closed" and "expired" (``name`` "") -- the session ended,
    leaving every queue and letting go of every lock, when it expired involuntarily."""

    slot: int
    kind: str
    name: str
    session_id: int
    token: int = 0
    delay_ms: int = 0
    waits: bool = False


def check_fifo(steps: Sequence[LockStep]) -> list[str]:
    """Grants come in the order they were asked for, as the machine defines it for locks,
    semaphores and rwlocks alike: a request is granted at once only if nobody waits, and a
    waiter only once every request queued before it was granted or left -- a waiter that
    does not fit holds back all behind it (readers behind a waiting writer too). Tokens of
    one lock strictly increase in grant order."""
    waiting: dict[str, list[int]] = {}
    last_token: dict[str, tuple[int, int]] = {}     # lock -> (token, slot)
    problems: list[str] = []
    for s in steps:
        if s.kind == "asked" and s.waits:
            q = waiting.setdefault(s.name, [])
            if s.session_id not in q:
                q.append(s.session_id)
        elif s.kind == "left" and s.session_id in waiting.get(s.name, ()):
            waiting[s.name].remove(s.session_id)
        elif s.kind in ("closed", "expired"):
            for q in waiting.values():
                if s.session_id in q:
                    q.remove(s.session_id)
        elif s.kind == "granted":
            q = waiting.get(s.name, [])
            ahead = q[:q.index(s.session_id)] if s.session_id in q else list(q)
            if ahead:
                problems.append(f"slot {s.slot}: {s.name!r} was granted to session "
                                f"{s.session_id} (token {s.token}) while sessions {ahead}, "
                                "queued before it, still waited: not FIFO")
            if s.session_id in q:
                q.remove(s.session_id)
            before, at = last_token.get(s.name, (0, 0))
            if s.token <= before:
                problems.append(f"slot {s.slot}: {s.name!r} was granted with token {s.token} "
                                f"after token {before} (slot {at}): tokens did not increase")
            last_token[s.name] = (s.token, s.slot)
    return problems


def check_lock_delays(steps: Sequence[LockStep], applied_at: Mapping[int, int],
                      fastest_rate: float) -> list[str]:
    """After a holder's session expired while it held a lock it had asked for with a
    lock-delay of D ms, the lock's next grant comes no sooner than D later. A voluntary
    end (release, close) is not delayed.

    Time is the simulated world's, ``applied_at[slot]`` the first moment any node applied
    a slot. The leader that ends the delay starts timing it when it applies the expiry, or
    at its takeover (later still), and proposes the end once its own clock advanced D ms;
    that clock counts whole ms and runs at most ``fastest_rate`` times the world's time.
    So the grant's slot, proposed after that, is applied more than (D - 1) / fastest_rate
    after the expiry's was first applied: an earlier grant is one the delay did not hold
    back. (A delay measured in the world's time is not quite D: a fast clock ends it early.)"""
    asked: dict[tuple[int, str], int] = {}   # (session, lock) -> its lock-delay
    holder: dict[str, int] = {}
    delayed: dict[str, tuple[LockStep, int]] = {}   # lock -> (its holder's expiry, D)
    problems: list[str] = []
    for s in steps:
        if s.kind == "asked" and s.delay_ms:
            asked[(s.session_id, s.name)] = s.delay_ms
        elif s.kind == "left":
            asked.pop((s.session_id, s.name), None)
        elif s.kind == "released" and holder.get(s.name) == s.session_id:
            del holder[s.name]
        elif s.kind in ("closed", "expired"):
            for name in sorted(n for n, h in holder.items() if h == s.session_id):
                del holder[name]
                delay_ms = asked.get((s.session_id, name), 0)
                if s.kind == "expired" and delay_ms:
                    delayed[name] = (s, delay_ms)
        elif s.kind == "granted":
            holder[s.name] = s.session_id
            episode = delayed.pop(s.name, None)
            if episode is None:
                continue
            expiry, delay_ms = episode
            began, granted = applied_at.get(expiry.slot), applied_at.get(s.slot)
            if began is None or granted is None:
                continue
            if (granted - began) * fastest_rate < delay_ms - 1:
                problems.append(
                    f"{s.name!r} was granted to session {s.session_id} (token {s.token}, slot "
                    f"{s.slot}, first applied at t={granted}) {granted - began} ms after its "
                    f"holder, session {expiry.session_id}, expired (slot {expiry.slot}, t={began}) with a lock-delay "
                    f"of {delay_ms} ms: granted before the lock-delay ended")
    return problems


def check_locks_reads(reads: Sequence[LocksRead], gone: Mapping[int, int]) -> list[str]:
    """``gone[session]``: when a client learned the session was closed (it never returns)."""
    problems: list[str] = []
    for r in reads:
        for row in r.rows:
            for sid, role in [(row.holder_session, "holding")] + [(w, "waiting for")
                                                                   for w in row.waiters]:
                closed = gone.get(sid)
                if closed is not None and closed <= r.invoke_ms:
                    problems.append(f"{r.client}'s locks listing at t={r.invoke_ms} shows "
                                    f"session {sid} {role} {row.name!r} (token {row.token}), "
                                    f"but it was closed by t={closed}")
    return problems


@dataclass(frozen=True, slots=True)
class EphemeralRead:
    """A linearizable get of an ephemeral key, when it was asked for, and what it returned."""

    client: str
    key: str
    invoke_ms: int
    value: bytes | None


def check_ephemeral_reads(reads: Sequence[EphemeralRead], lease_of_value: Mapping[bytes, int],
                          ended: Mapping[int, int]) -> list[str]:
    """``lease_of_value[v]``: the lease value ``v`` was put on (values are unique);
    ``ended[lease]``: when a node first applied its end. Once a node applied the end, the
    deletes of its keys are committed, so a read invoked after that must not see them."""
    problems: list[str] = []
    for r in reads:
        if r.value is None:
            continue
        sid = lease_of_value.get(r.value)
        end = None if sid is None else ended.get(sid)
        if end is not None and end < r.invoke_ms:
            problems.append(f"{r.client} read {r.key!r} = {r.value!r} at t={r.invoke_ms}, "
                            f"but that value lived on lease {sid}, whose end was applied at "
                            f"t={end}: an ephemeral key outlived its lease")
    return problems


def check_answers(answers: Mapping[str, Sequence[tuple[int, Result]]],
                  applied: Mapping[tuple[str, int], Result]) -> list[str]:
    """Each answer ``(seq, result)`` of client ``c`` equals the log's first result of (c, seq)."""
    problems: list[str] = []
    for client in sorted(answers):
        for seq, result in answers[client]:
            truth = applied.get((client, seq))
            if truth is None:
                problems.append(f"{client} seq {seq} was answered {result} but is not in "
                                "the chosen log")
            elif truth != result:
                problems.append(f"{client} seq {seq} was answered {result}; the chosen log "
                                f"says {truth}")
    return problems


def check_unique_values(events: Iterable[WatchEvent], where: str) -> list[str]:
    """Every put value is written once, so it must sit at one revision only."""
    at: dict[object, int] = {}
    problems: list[str] = []
    for e in events:
        if e.type != "put":
            continue
        first = at.setdefault(e.value, e.revision)
        if first != e.revision:
            problems.append(f"{where}: value {e.value!r} of {e.key!r} was written at "
                            f"revisions {first} and {e.revision}: one put applied twice")
    return problems


@dataclass(frozen=True, slots=True)
class TxnSent:
    """A transaction a client sent, whatever it was told: its write's (client id, seq) and
    the writes of the branch it applies on success, ``(key, value)`` with None for a
    delete. Its failure branch is empty; it puts at least once; values are unique."""

    client: str
    seq: int
    writes: tuple[tuple[str, bytes | None], ...]


def check_txns(txns: Sequence[TxnSent], applied: Mapping[tuple[str, int], Result],
               events: Sequence[WatchEvent]) -> list[str]:
    """All or nothing, at one revision. ``applied[(c, seq)]``: the chosen log's result of
    each write; ``events``: every committed event, which every watcher is held to
    (``check_watch``). A transaction the log answered ``succeeded`` at revision R has each
    put at R, and R holds nothing else than its writes (a delete of a key that was absent
    leaves no event). Any other -- a compare that failed, a refusal, never applied -- wrote
    nothing: none of its values is anywhere in the log."""
    at_revision: dict[int, list[WatchEvent]] = {}
    written_at: dict[object, int] = {}
    for e in events:
        at_revision.setdefault(e.revision, []).append(e)
        if e.type == "put":
            written_at.setdefault(e.value, e.revision)
    problems: list[str] = []
    for t in txns:
        res = applied.get((t.client, t.seq))
        name = f"{t.client} seq {t.seq} txn {dict(t.writes)}"
        landed = {k: written_at[v] for k, v in t.writes if v is not None and v in written_at}
        rev = None if res is None else res.data.get("revision")
        if res is None or res.code != ResultCode.OK or res.data.get("succeeded") is not True:
            if landed:
                told = "never applied" if res is None else f"answered {res.code} {res.data}"
                problems.append(f"{name} was {told}, yet the log has its puts at {landed}")
            continue
        if type(rev) is not int:
            problems.append(f"{name} succeeded without a revision: {res}")
            continue
        puts = [k for k, v in t.writes if v is not None]
        if any(landed.get(k) != rev for k in puts):
            problems.append(f"{name} succeeded at revision {rev}, but the log has its puts at "
                            f"{ {k: landed.get(k) for k in puts} } (None: nowhere): not all at one revision")
        want = {k: ("delete", None) if v is None else ("put", v) for k, v in t.writes}
        strays = [e for e in at_revision.get(rev, ())
                  if want.get(e.key) != (e.type, None if e.type == "delete" else e.value)]
        if strays:
            problems.append(f"{name} succeeded at revision {rev}, which also holds {strays}")
    return problems


@dataclass(frozen=True, slots=True)
class WatchEvent:
    revision: int
    key: str
    type: str  # "put" | "delete"
    value: object = None


@dataclass(frozen=True, slots=True)
class Watcher:
    """What a watcher asked for.

    ``start_revision``: the first revision it may be sent; ``None`` means the revision of the
    first event it saw (a watcher that saw nothing then owes nothing). ``end_revision``: the
    last revision it must have seen (``None``: the last committed one) -- set it for a watcher
    that was closed, or crashed with its client, before the run ended.
    """

    prefix: str = ""
    start_revision: int | None = None
    end_revision: int | None = None


EventLike = WatchEvent | tuple[int, str, str] | tuple[int, str, str, object]


def _event(e: EventLike) -> WatchEvent:
    return e if isinstance(e, WatchEvent) else WatchEvent(*e)


def check_watch(expected: Sequence[EventLike], seen: Sequence[Sequence[EventLike]],
                watchers: Sequence[Watcher] | None = None) -> list[str]:
    """Each watcher saw each committed event for its prefix in its range exactly once, in order.

    ``expected``: every committed event of the run (from the final machine's history), as
    ``(revision, key, type, value)``. ``seen[w]``: what watcher ``w`` delivered, in delivery
    order. ``watchers[w]`` (default: ``Watcher()`` for all) says what it watched.
    """
    committed = sorted((_event(e) for e in expected), key=lambda e: e.revision)
    by_revision: dict[int, list[WatchEvent]] = {}
    for e in committed:
        by_revision.setdefault(e.revision, []).append(e)
    last_committed = committed[-1].revision if committed else 0
    specs = list(watchers) if watchers is not None else [Watcher() for _ in seen]
    if len(specs) != len(seen):
        raise ValueError(f"{len(seen)} watchers' events but {len(specs)} watcher specs")
    problems: list[str] = []
    for w, (spec, got_raw) in enumerate(zip(specs, seen, strict=True)):
        got = [_event(e) for e in got_raw]
        start = spec.start_revision
        if start is None:
            start = got[0].revision if got else last_committed + 1
        end = last_committed if spec.end_revision is None else spec.end_revision
        name = f"watcher {w} (prefix {spec.prefix!r}, revisions {start}..{end})"
        delivered: set[WatchEvent] = set()
        previous = None
        for e in got:
            if previous is not None and e.revision < previous.revision:
                problems.append(f"{name}: revision {e.revision} delivered after "
                                f"{previous.revision}")
            previous = e
            if e in delivered:
                problems.append(f"{name}: delivered twice: {e}")
                continue
            delivered.add(e)
            if not under(e.key, spec.prefix):
                problems.append(f"{name}: delivered an event outside its prefix: {e}")
            elif e.revision < start:
                problems.append(f"{name}: delivered an event before its start revision: {e}")
            elif e not in by_revision.get(e.revision, ()):
                problems.append(f"{name}: delivered an event that was never committed: {e}")
        missing = [e for e in committed
                   if start <= e.revision <= end and under(e.key, spec.prefix)
                   and e not in delivered]
        if missing:
            shown = ", ".join(str(e) for e in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append(f"{name}: missed {len(missing)} committed events: {shown}{more}")
    return problems
