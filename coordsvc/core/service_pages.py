"""Replies larger than one frame: ``list``, ``history`` and ``locks`` answered in pages,
one read.

A reply carries at most ``MESSAGE_BUDGET_BYTES`` (2 MiB) of rows, always at least one; a
row is at most a key and a 1 MiB value, so a page stays well below the 4 MiB frame cap.
The rows of one ``list`` must also be *consistent*: every page from the same revision,
as if the whole answer had been read at once (CONTRACT §6, ``lst.revision``).

How: the read is taken once, when it is safe to answer (a linearizable read at the
leader's read index, a stale one at once), and yields the first page straight from the
machine. If rows remain, the node keeps a **cursor**: the remaining rows themselves. Rows
are immutable values (``KeyValue``/``Change``) that the machine replaces rather than
mutates, so holding references to them *is* a snapshot of the read -- later writes
change the machine, never the cursor. The reply carries the cursor's id; the client
asks the same node for the next page with it, until the cursor is drained (then it is
gone). Continuation pages need no read index: their consistency point is the first
page's, which was already linearizable.

Why not the alternatives:

- Paging by ``start_after`` alone (what callers who page themselves get) re-reads the
  live state per page, so a listing could mix revisions -- not "consistent at one
  revision".
- Multi-version reads (answer page *k* "as of revision R" from each key's history) need
  every overwritten and deleted row kept until no reader could want it: unbounded, or a
  history bound that a slow reader falls off anyway, and tombstones in the key index.
  References are the same snapshot with no new state in the machine, and none of it is
  replicated: a cursor is node-local, like a parked request.

What a cursor costs: taking it copies the references of the remaining rows (O(rows) once,
the price of any consistent snapshot, paid only by reads that do not fit one page), and
it keeps alive values later overwritten or deleted (until then they are the machine's
own, not copies). So cursors are bounded: at most ``MAX_CURSORS_PER_ROUTE`` per
connection and ``MAX_CURSORS`` per node, and one unused for ``CURSOR_IDLE_MS`` is
dropped. The rows all cursors refer to are bounded by ``MAX_CURSOR_BYTES`` (twice the
default ``max_db_bytes``), except that one cursor may always open: listing everything
must stay possible whatever the database holds. Past a bound the read is refused ``busy``
(naming it); a continuation whose cursor is gone (expired, drained, or the node
restarted) is answered ``cursor_expired`` and the client starts the listing again.

A continuation names the offset it wants (rows received since the first page), so a
retried page repeats rather than skips. Cursor ids are per-node counters: anyone who
could make the read can read its pages; once requests carry an authenticated principal,
a cursor should answer only the principal that opened it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from .protocol import MESSAGE_BUDGET_BYTES, Change, KeyValue, LockRow, row_bytes
from .service_outbox import Route

__all__ = ["CURSOR_IDLE_MS", "MAX_CURSORS", "MAX_CURSORS_PER_ROUTE", "MAX_CURSOR_BYTES",
           "Cursor", "Cursors", "Kind", "Page", "first_page"]

MAX_CURSORS = 256
MAX_CURSORS_PER_ROUTE = 8
MAX_CURSOR_BYTES = 4 * 1024 * 1024 * 1024
CURSOR_IDLE_MS = 30_000

Row = TypeVar("Row", KeyValue, Change, LockRow)
AnyRow = KeyValue | Change | LockRow


@dataclass(frozen=True, slots=True)
class Page(Generic[Row]):
    """One reply's rows; ``rest`` the rows of the same read that did not fit."""

    rows: tuple[Row, ...]
    rest: tuple[Row, ...]
    rest_bytes: int


def first_page(rows: Iterator[Row], budget: int = MESSAGE_BUDGET_BYTES) -> Page[Row]:
    """Take rows while they fit ``budget`` (at least one); the rest only if there is one."""
    out: list[Row] = []
    size = 0
    for row in rows:
        n = row_bytes(row)
        if out and size + n > budget:
            rest: list[Row] = [row]
            rest.extend(rows)
            return Page(tuple(out), tuple(rest), sum(map(row_bytes, rest)))
        size += n
        out.append(row)
    return Page(tuple(out), (), 0)


Kind = Literal["list", "history", "locks"]


@dataclass(slots=True)
class Cursor:
    id: int
    kind: Kind
    route: Route
    revision: int
    rows: Sequence[AnyRow]
    more: bool           # the read's ListReply.more, repeated on every page
    pinned_bytes: int
    last_used_ms: int
    principal: str = ""  # who opened it: its rows were filtered for this caller's rights

    def page(self, offset: int, budget: int = MESSAGE_BUDGET_BYTES) -> tuple[AnyRow, ...]:
        """The rows from ``offset`` on that fit ``budget`` (at least one)."""
        i = offset
        size = 0
        while i < len(self.rows):
            n = row_bytes(self.rows[i])
            if i > offset and size + n > budget:
                break
            size += n
            i += 1
        return tuple(self.rows[offset:i])


class Cursors:
    """The open cursors of one node (each answers only reads of its own kind)."""

    __slots__ = ("_by_id", "_next_id", "_per_route", "pinned_bytes")

    def __init__(self) -> None:
        self._by_id: dict[int, Cursor] = {}
        self._per_route: dict[Route, int] = {}
        self._next_id = 0
        self.pinned_bytes = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def refusal(self, route: Route, rest_bytes: int) -> str | None:
        """Why a new cursor for ``route`` holding ``rest_bytes`` cannot be opened, or None."""
        if len(self._by_id) >= MAX_CURSORS:
            return f"too many paged reads in progress on this node (max_cursors {MAX_CURSORS})"
        if self._per_route.get(route, 0) >= MAX_CURSORS_PER_ROUTE:
            return ("too many paged reads in progress on this connection "
                    f"(max_cursors_per_connection {MAX_CURSORS_PER_ROUTE})")
        if self._by_id and self.pinned_bytes + rest_bytes > MAX_CURSOR_BYTES:
            return ("paged reads in progress hold too much data on this node "
                    f"(max_cursor_bytes {MAX_CURSOR_BYTES})")
        return None

    def open(self, kind: Kind, route: Route, revision: int, rows: Sequence[AnyRow],
             rest_bytes: int, now_ms: int, more: bool = False, principal: str = "") -> int:
        """A cursor over ``rows`` (check ``refusal`` first) for ``principal``; its id."""
        self._next_id += 1
        cid = self._next_id
        self._by_id[cid] = Cursor(cid, kind, route, revision, rows, more, rest_bytes, now_ms,
                                  principal)
        self._per_route[route] = self._per_route.get(route, 0) + 1
        self.pinned_bytes += rest_bytes
        return cid

    def get(self, kind: Kind, cid: int, now_ms: int, principal: str = "") -> Cursor | None:
        """Cursor ``cid`` if it is a ``kind`` cursor of ``principal`` (ids are guessable;
        another principal's cursor is as good as gone)."""
        c = self._by_id.get(cid)
        if c is None or c.kind != kind or c.principal != principal:
            return None
        c.last_used_ms = now_ms
        return c

    def close(self, cid: int) -> None:
        c = self._by_id.pop(cid, None)
        if c is None:
            return
        left = self._per_route[c.route] - 1
        if left:
            self._per_route[c.route] = left
        else:
            del self._per_route[c.route]
        self.pinned_bytes -= c.pinned_bytes

    def expire(self, now_ms: int) -> None:
        """Drop cursors unused for ``CURSOR_IDLE_MS`` (at most ``MAX_CURSORS`` to look at)."""
        for cid in [c.id for c in self._by_id.values() if now_ms - c.last_used_ms >= CURSOR_IDLE_MS]:
            self.close(cid)

    def clear(self) -> None:
        for cid in list(self._by_id):
            self.close(cid)
