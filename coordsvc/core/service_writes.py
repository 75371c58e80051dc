"""Writes in flight on the leader: who waits for which replicated request's Result.

A write is known by its exactly-once identity ``(client_id, seq)`` and the principal that
sent it. A retry that arrives while the first attempt is still in flight joins its waiters
instead of being proposed a second time, and everyone hears the one Result; another
principal naming the same client id and seq never joins (it would hear the owner's
Result, or make the owner hear the refusal of its own). The leader also keeps each request it
proposed already decoded, keyed by its bytes, so applying it need not decode them again.

All of it is leader state: dropped (waiters answered ``unavailable``) when leadership
ends, and bounded -- past ``MAX_WRITE_WAITERS`` distinct writes the client hears ``busy``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .commands import Request
from .service_outbox import Route

__all__ = ["MAX_WRITE_WAITERS", "WRITE_WAITER_TTL_MS", "PendingWrites", "WriteKey", "WriteWaiter"]

MAX_WRITE_WAITERS = 100_000
# A write whose first waiter is older than this is forgotten (its client gave up long ago;
# the Result stays in the machine for a retry).
WRITE_WAITER_TTL_MS = 30_000

WriteKey = tuple[str, str, int]   # (principal, client_id, seq)


@dataclass(frozen=True, slots=True)
class WriteWaiter:
    route: Route
    rid: object
    since_ms: int


class PendingWrites:
    __slots__ = ("_proposed", "_waiters")

    def __init__(self) -> None:
        self._waiters: dict[WriteKey, list[WriteWaiter]] = {}
        self._proposed: dict[bytes, Request] = {}

    def __len__(self) -> int:
        return len(self._waiters)

    def idle(self) -> bool:
        return not self._waiters and not self._proposed

    def full(self) -> bool:
        return len(self._waiters) >= MAX_WRITE_WAITERS

    def join(self, key: WriteKey, waiter: WriteWaiter) -> bool:
        """Wait for the write ``key`` if it is in flight already; False if it is not."""
        waiting = self._waiters.get(key)
        if waiting is None:
            return False
        waiting.append(waiter)
        return True

    def start(self, raw: bytes, request: Request, waiter: WriteWaiter) -> None:
        """``request`` (encoded as ``raw``) was proposed on behalf of ``waiter``."""
        self._waiters[(request.principal, request.client_id, request.seq)] = [waiter]
        self._proposed[raw] = request

    def proposed(self, raw: bytes) -> Request | None:
        """The request this leader proposed as ``raw``, decoded back then (forgotten now)."""
        return self._proposed.pop(raw, None)

    def finish(self, request: Request) -> list[WriteWaiter]:
        """Everyone waiting for ``request`` (no longer waiting once returned)."""
        return self._waiters.pop((request.principal, request.client_id, request.seq), [])

    def expire(self, now_ms: int) -> None:
        for key in [k for k, ws in self._waiters.items()
                    if ws and now_ms - ws[0].since_ms > WRITE_WAITER_TTL_MS]:
            del self._waiters[key]

    def drop_all(self) -> list[WriteWaiter]:
        """Leadership ended: every waiter, to be told the outcome is unknown."""
        out = [w for ws in self._waiters.values() for w in ws]
        self._waiters.clear()
        self._proposed.clear()
        return out
