"""Checks over the client-visible history of a run, shared by the simulator and tests/faults.

Each check returns a list of human-readable violations; an empty list means the run passed.
Malformed input raises ValueError instead: that is a bug in the harness, not in the service.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WatchEvent", "Watcher", "check_watch"]


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
