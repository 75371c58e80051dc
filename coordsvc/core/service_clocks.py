"""Node-local clocks: when each session expires, when each lock changed hands.

Neither enters the replicated machine. Time is not part of the log, so replicas cannot
disagree about it; instead only the leader decides that a session expired, and proposes
``ExpireSession`` into the log. Keep-alives renew a leader-local deadline. Whoever takes
over restarts every session's clock at its takeover, with the full ttl plus one election
timeout of grace: a leader change never expires a live client. Not "from the last renewal
that reached it": a follower cut off from the leader hears of no renewal, and the old
leader answers keep-alives until it notices it lost its quorum -- up to an election
timeout after the takeover -- so a renewal it granted may never reach the new leader.
The cost: a dead client's session outlives each leader change by up to a ttl.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from .machine import Grant, HeldLock, SessionInfo

__all__ = ["EXPIRE_RETRY_MS", "LOCK_TIMES_PRUNE_AT", "LockDelayClocks", "LockTimes", "SessionClocks"]

# An ExpireSession proposed but not applied yet (the slot may have been lost with a
# leader change) is proposed again after this long.
EXPIRE_RETRY_MS = 1_000
# LockTimes drops entries of locks no longer held or queued for once it has this many.
LOCK_TIMES_PRUNE_AT = 100_000


class SessionClocks:
    """Per session, on the serving leader only: the deadline past which it proposes the
    session's expiry."""

    __slots__ = ("_deadline_ms", "_expiring_ms", "_next_ms")

    def __init__(self) -> None:
        self._deadline_ms: dict[int, int] = {}
        self._expiring_ms: dict[int, int] = {}   # when we last proposed its expiry
        # No session is due before this: ``due`` looks at every session only past it (a
        # tick every heartbeat sorting 10,000 sessions was a quarter of an idle leader's
        # CPU). Every deadline set lowers it if it is sooner (a keep-alive seldom is).
        self._next_ms = 0

    def renewed(self, session_id: int, now_ms: int, ttl_ms: int) -> None:
        """A keep-alive reached us as leader."""
        self._deadline_ms[session_id] = deadline = now_ms + ttl_ms
        if deadline < self._next_ms:
            self._next_ms = deadline

    def opened(self, session_id: int, now_ms: int, ttl_ms: int, leading: bool) -> None:
        if leading:
            self.renewed(session_id, now_ms, ttl_ms)

    def forget(self, session_id: int) -> None:
        self._deadline_ms.pop(session_id, None)
        self._expiring_ms.pop(session_id, None)

    def deadline_ms(self, session_id: int) -> int | None:
        return self._deadline_ms.get(session_id)

    def take_over(self, sessions: Mapping[int, SessionInfo], now_ms: int, grace_ms: int) -> None:
        """We began serving as leader: every live session gets its full ttl from now,
        plus ``grace_ms`` (see the module's docstring for why not less)."""
        self._deadline_ms = {sid: now_ms + info.ttl_ms + grace_ms
                             for sid, info in sessions.items()}
        self._expiring_ms.clear()
        self._next_ms = 0

    def stop_leading(self) -> None:
        self._deadline_ms.clear()
        self._expiring_ms.clear()
        self._next_ms = 0

    def due(self, now_ms: int) -> list[int]:
        """Sessions whose expiry to propose now, in id order (each at most once per
        ``EXPIRE_RETRY_MS``)."""
        if now_ms <= self._next_ms:
            return []
        out = []
        soonest = now_ms + EXPIRE_RETRY_MS     # when to look again at the latest
        for sid, deadline in sorted(self._deadline_ms.items()):
            if now_ms <= deadline:
                soonest = min(soonest, deadline)
                continue
            proposed = self._expiring_ms.get(sid)
            if proposed is None or now_ms - proposed > EXPIRE_RETRY_MS:
                self._expiring_ms[sid] = proposed = now_ms
                out.append(sid)
            soonest = min(soonest, proposed + EXPIRE_RETRY_MS)
        self._next_ms = soonest
        return out


class LockDelayClocks:
    """Per lock in its lock-delay, on the serving leader only: when to propose
    ``EndLockDelay``. Like sessions, a new leader restarts every delay at its takeover
    (never shorter than the holder asked for; longer by the time the old leader had run)."""

    __slots__ = ("_deadline_ms", "_proposed_ms")

    def __init__(self) -> None:
        self._deadline_ms: dict[str, int] = {}
        self._proposed_ms: dict[str, int] = {}

    def started(self, name: str, now_ms: int, delay_ms: int, leading: bool) -> None:
        if leading:
            self._deadline_ms[name] = now_ms + delay_ms

    def forget(self, name: str) -> None:
        self._deadline_ms.pop(name, None)
        self._proposed_ms.pop(name, None)

    def take_over(self, delayed: Mapping[str, int], now_ms: int) -> None:
        self._deadline_ms = {n: now_ms + ms for n, ms in delayed.items()}
        self._proposed_ms.clear()

    def stop_leading(self) -> None:
        self._deadline_ms.clear()
        self._proposed_ms.clear()

    def due(self, now_ms: int) -> list[str]:
        """Locks whose delay ended, in name order (each proposed at most once per
        ``EXPIRE_RETRY_MS``)."""
        out = []
        for name, deadline in sorted(self._deadline_ms.items()):
            if now_ms >= deadline and now_ms - self._proposed_ms.get(name, -10**12) > EXPIRE_RETRY_MS:
                self._proposed_ms[name] = now_ms
                out.append(name)
        return out


class LockTimes:
    """When this node applied each grant and each queued acquire, by its own clock: the
    age and wait times ``locks`` reports (None where it has not seen the event)."""

    __slots__ = ("_granted_ms", "_queued_ms")

    def __init__(self) -> None:
        self._granted_ms: dict[tuple[str, int], int] = {}   # (name, token) -> when granted
        self._queued_ms: dict[tuple[str, int], int] = {}    # (name, session id) -> when queued

    def queued(self, name: str, session_id: int, now_ms: int) -> None:
        self._queued_ms.setdefault((name, session_id), now_ms)

    def granted(self, grants: Iterable[Grant], now_ms: int) -> None:
        for g in grants:
            self._granted_ms.setdefault((g.name, g.token), now_ms)
            self._queued_ms.pop((g.name, g.session_id), None)

    def age_ms(self, name: str, token: int, now_ms: int) -> int | None:
        t = self._granted_ms.get((name, token))
        return None if t is None else now_ms - t

    def wait_ms(self, name: str, session_id: int, now_ms: int) -> int | None:
        t = self._queued_ms.get((name, session_id))
        return None if t is None else now_ms - t

    def oversized(self) -> bool:
        return len(self._granted_ms) + len(self._queued_ms) > LOCK_TIMES_PRUNE_AT

    def prune(self, locks: list[HeldLock]) -> None:
        """Forget locks no longer held and waits no longer queued."""
        live = {(lk.name, lk.token) for lk in locks}
        waiting = {(lk.name, w) for lk in locks for w in lk.waiters}
        self._granted_ms = {k: v for k, v in self._granted_ms.items() if k in live}
        self._queued_ms = {k: v for k, v in self._queued_ms.items() if k in waiting}
