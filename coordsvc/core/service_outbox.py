"""What one node step produces for clients: reply maps, and the changes to publish.

Every part of the service answers through an ``Outbox`` rather than a list of its own, so
the rule "a reply leaves only after the Ready that produced it was saved" has one place to
hold: the runtime empties the outbox (``Service.take_outbox``) after ``step`` returns.

It is also where a failure to answer becomes an answer: ``internal`` replies ``internal``
to the request whose handling raised, counts it, and keeps the exception as an
*incident* for the runtime to log once, with its traceback (the core does no I/O).
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .protocol import Change, ErrorCode, ErrorReply, Reply, reply_map

__all__ = ["MAX_INCIDENTS", "Incident", "Outbox", "Route", "WireReply"]

# The runtime's opaque address of the client a reply goes to (a ZeroMQ routing id).
Route = Hashable
WireReply = dict[str, Any]
# (what failed, the exception); kept until the runtime takes them, at most this many.
Incident = tuple[str, BaseException]
MAX_INCIDENTS = 100


class Outbox:
    __slots__ = ("events", "incidents", "internal_errors", "replies")

    def __init__(self) -> None:
        self.replies: list[tuple[Route, WireReply]] = []
        self.events: list[Change] = []
        self.incidents: list[Incident] = []
        self.internal_errors = 0

    def reply(self, route: Route, rid: object, reply: Reply) -> None:
        self.replies.append((route, reply_map(rid, reply)))

    def error(self, route: Route, rid: object, code: ErrorCode, message: str) -> None:
        self.replies.append((route, reply_map(rid, ErrorReply(code, message))))

    def internal(self, route: Route, rid: object, what: str, exc: Exception) -> None:
        """Handling request ``rid`` raised ``exc``: answer ``internal``, count, keep it."""
        self.internal_errors += 1
        if len(self.incidents) < MAX_INCIDENTS:
            self.incidents.append((f"{what} (request id {rid!r:.40})", exc))
        self.error(route, rid, ErrorCode.INTERNAL,
                   f"the node failed answering this request ({type(exc).__name__}: a bug, "
                   "logged on the node); retrying may fail the same way")

    def take_incidents(self) -> list[Incident]:
        out, self.incidents = self.incidents, []
        return out

    def take(self) -> tuple[list[tuple[Route, WireReply]], list[Change]]:
        out = (self.replies, self.events)
        self.replies, self.events = [], []
        return out
