"""Linearizable reads waiting for their read index (etcd raft's ReadIndex).

A read that reaches the leader gets a token. The replica confirms, with one heartbeat
round, that it still leads, and hands the token back in ``Ready.reads`` once everything
committed when the read arrived has been applied; only then is the read answered, from
the machine as it stands, so the answer is never older than the request. Had leadership
moved, the token comes back in ``Ready.aborted_reads`` instead and the client retries.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .protocol import Reply
from .service_outbox import Route

if TYPE_CHECKING:
    from .replica import Replica

__all__ = ["PendingRead", "ReadIndex"]


@dataclass(frozen=True, slots=True)
class PendingRead:
    route: Route
    rid: object
    answer: Callable[[], Reply]    # computes the reply from the machine when it is safe


class ReadIndex:
    __slots__ = ("_pending", "_seq")

    def __init__(self) -> None:
        self._pending: dict[Hashable, PendingRead] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._pending)

    def begin(self, replica: Replica, read: PendingRead) -> bool:
        """Ask ``replica`` for a read point for ``read``; False if it does not lead."""
        self._seq += 1
        if not replica.read(self._seq):
            return False
        self._pending[self._seq] = read
        return True

    def take(self, token: Hashable) -> PendingRead | None:
        return self._pending.pop(token, None)
