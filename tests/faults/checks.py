"""Per-run checks besides linearizability: fencing, watches, lost writes.

Each check returns a list of human-readable violations; an empty list means the run passed.
Malformed input (a section that ends before it starts, ...) raises ValueError instead: that
is a bug in the test harness, not in the service. The watch check is shared with the
simulator and lives in ``coordsvc.sim.checks``.
"""
from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

from coordsvc.sim.checks import Watcher, WatchEvent, check_watch

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
