"""Per-run checks besides linearizability: fencing, watches, lost writes.

Each check returns a list of human-readable violations; an empty list means the run passed.
Malformed input (a section that ends before it starts, ...) raises ValueError instead: that
is a bug in the test harness, not in the service.
"""
from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CriticalSection", "WatchEvent", "Watcher",
    "check_fencing", "check_watch", "check_no_lost_writes",
]


@dataclass(frozen=True, slots=True)
class CriticalSection:
    """One lock tenure as a client saw it.

    ``start_ns``: when the holder's acquire returned ok (the grant happened before that).
    ``end_ns``: when the holder *invoked* its last fenced write that the service accepted
    (the write applied after that, so the holder still held ``token`` then).

    The lock is therefore certainly held with ``token`` during [start_ns, end_ns], whatever the
    clocks and timeouts did; a tenure with no accepted fenced write proves nothing (the holder
    may have lost the lock before acting) and is passed with ``write_accepted=False`` or left
    out. The check never relies on the client believing it holds the lock.
    """

    token: int
    holder: Hashable
    start_ns: int
    end_ns: int
    write_accepted: bool = True

    def __post_init__(self) -> None:
        if self.end_ns < self.start_ns:
            raise ValueError(f"section with token {self.token} ends ({self.end_ns}) before it "
                             f"starts ({self.start_ns})")


SectionLike = CriticalSection | tuple[int, Hashable, int, int] | tuple[int, Hashable, int, int, bool]


def check_fencing(grants: Sequence[SectionLike]) -> list[str]:
    """Fencing tokens and mutual exclusion for ONE lock.

    ``grants`` lists the tenures in grant order (the order the service granted them, e.g. by
    log index); plain tuples are ``(token, holder, start_ns, end_ns[, write_accepted])``.
    Checked: tokens strictly increase in grant order, and -- among tenures whose fenced write
    was accepted -- no two overlap in time and their real-time order is the token order.
    """
    sections = [g if isinstance(g, CriticalSection) else CriticalSection(*g) for g in grants]
    problems: list[str] = []
    for a, b in itertools.pairwise(sections):
        if b.token <= a.token:
            problems.append(f"token did not increase in grant order: {a.holder!r} got "
                            f"{a.token}, then {b.holder!r} got {b.token}")
    held = sorted((s for s in sections if s.write_accepted), key=lambda s: s.token)
    for a, b in itertools.pairwise(held):
        if a.token == b.token:
            problems.append(f"token {a.token} was accepted from two tenures: {a.holder!r} "
                            f"[{a.start_ns}, {a.end_ns}] and {b.holder!r} "
                            f"[{b.start_ns}, {b.end_ns}]")
        elif b.start_ns < a.end_ns:
            # Token order is the order the lock passed on, so the earlier token must have
            # finished before the later one began; anything else is two holders at once
            # (overlap) or a grant that went backwards in time.
            problems.append(f"critical sections overlap: {a.holder!r} (token {a.token}) held "
                            f"[{a.start_ns}, {a.end_ns}] and {b.holder!r} (token {b.token}) "
                            f"held [{b.start_ns}, {b.end_ns}]")
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
            if not e.key.startswith(spec.prefix):
                problems.append(f"{name}: delivered an event outside its prefix: {e}")
            elif e.revision < start:
                problems.append(f"{name}: delivered an event before its start revision: {e}")
            elif e not in by_revision.get(e.revision, ()):
                problems.append(f"{name}: delivered an event that was never committed: {e}")
        missing = [e for e in committed
                   if start <= e.revision <= end and e.key.startswith(spec.prefix)
                   and e not in delivered]
        if missing:
            shown = ", ".join(str(e) for e in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append(f"{name}: missed {len(missing)} committed events: {shown}{more}")
    return problems


def check_no_lost_writes(acked: Mapping[str, int | tuple[int, object]],
                         final_state: Mapping[str, tuple[int, object]],
                         maybe_deleted: Collection[str] = ()) -> list[str]:
    """Every acknowledged write is still reflected in the final state.

    ``acked[key]``: the acknowledged write to ``key`` with the highest revision, as
    ``(revision, value)`` -- ``value`` None for an acknowledged delete -- or a bare revision
    when the value should not be compared. ``final_state``: ``key -> (mod_revision, value)``
    for every live key, read after healing. ``maybe_deleted``: keys on which a delete was
    attempted (acknowledged or of unknown outcome) without being the last acked write; a
    missing such key is not a lost write.

    Rules: a live key's revision must be >= the acked one, with the same value when equal; a
    key whose last acked write was a put must be live unless it may have been deleted; a key
    whose last acked write was a delete may be live only at a later revision.
    """
    problems: list[str] = []
    for key in sorted(acked):
        a = acked[key]
        revision, value, compare = (a, None, False) if isinstance(a, int) else (a[0], a[1], True)
        deleted = compare and value is None
        final = final_state.get(key)
        if final is None:
            if not deleted and key not in maybe_deleted:
                problems.append(f"{key!r}: acknowledged write at revision {revision} lost: "
                                "the key does not exist")
            continue
        final_revision, final_value = final
        if final_revision < revision:
            what = "delete" if deleted else "write"
            problems.append(f"{key!r}: acknowledged {what} at revision {revision} lost: the "
                            f"key is at revision {final_revision} ({final_value!r})")
        elif final_revision == revision and deleted:
            problems.append(f"{key!r}: acknowledged delete at revision {revision} lost: the "
                            f"key is live at that revision ({final_value!r})")
        elif final_revision == revision and compare and final_value != value:
            problems.append(f"{key!r}: revision {revision} was acknowledged with {value!r} but "
                            f"holds {final_value!r}")
    return problems
