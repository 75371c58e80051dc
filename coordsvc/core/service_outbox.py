"""What one node step produces for clients: reply maps, and the changes to publish.

Every part of the service answers through an ``Outbox`` rather than a list of its own, so
the rule "a reply leaves only after the Ready that produced it was saved" has one place to
hold: the runtime empties the outbox (``Service.take_outbox``) after ``step`` returns.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .protocol import Change, ErrorCode, ErrorReply, Reply, reply_map

__all__ = ["Outbox", "Route", "WireReply"]

# The runtime's opaque address of the client a reply goes to (a ZeroMQ routing id).
Route = Hashable
WireReply = dict[str, Any]


class Outbox:
    __slots__ = ("events", "replies")

    def __init__(self) -> None:
        self.replies: list[tuple[Route, WireReply]] = []
        self.events: list[Change] = []

    def reply(self, route: Route, rid: object, reply: Reply) -> None:
        self.replies.append((route, reply_map(rid, reply)))

    def error(self, route: Route, rid: object, code: ErrorCode, message: str) -> None:
        self.replies.append((route, reply_map(rid, ErrorReply(code, message))))

    def take(self) -> tuple[list[tuple[Route, WireReply]], list[Change]]:
        out = (self.replies, self.events)
        self.replies, self.events = [], []
        return out
