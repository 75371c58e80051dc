"""The op table: one handler per request record, and one dispatch.

``Service.on_client`` turns the map into its record (``protocol.decode_client_request``:
the only place a field is checked) and calls ``HANDLERS[type(record)]``. A handler may
answer at once, propose a write, wait for the read index, or park the request.

Reads are written as *answers* -- a function of the machine -- and ``_read`` makes the
handler: a stale read is answered on the spot by any node, a linearizable one by the
leader once its read index is applied. The answer runs then, so it sees that state.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .export import ExportPoint
from .protocol import (
    ErrorCode,
    ErrorReply,
    GetReply,
    GetRequest,
    HistoryReply,
    HistoryRequest,
    KeepaliveReply,
    KeepaliveRequest,
    ListReply,
    ListRequest,
    LockRow,
    LocksReply,
    LocksRequest,
    LockWaitRequest,
    Reply,
    SnapshotChunkReply,
    SnapshotChunkRequest,
    SnapshotSaveReply,
    SnapshotSaveRequest,
    StatusReply,
    StatusRequest,
    WatchRequest,
    WriteRequest,
)
from .service_outbox import Route
from .service_reads import PendingRead
from .service_writes import WriteWaiter

if TYPE_CHECKING:
    from .service import Service

__all__ = ["HANDLERS", "Handler"]

_Req = TypeVar("_Req")
_ReadReq = TypeVar("_ReadReq", bound="_Read")
Handler = Callable[["Service", Route, object, Any], None]

HANDLERS: dict[type, Handler] = {}


def _handles(cls: type[_Req]) -> Callable[[Callable[[Service, Route, object, _Req], None]],
                                          Callable[[Service, Route, object, _Req], None]]:
    def register(fn: Callable[[Service, Route, object, _Req], None]
                 ) -> Callable[[Service, Route, object, _Req], None]:
        if cls in HANDLERS:
            raise ImportError(f"two handlers for {cls.__name__}")
        HANDLERS[cls] = fn
        return fn
    return register


# -- writes -----------------------------------------------------------------------------------

@_handles(WriteRequest)
def _write(svc: Service, route: Route, rid: object, req: WriteRequest) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    r = req.request
    waiter = WriteWaiter(route, rid, svc.now_ms)
    if svc.writes.join((r.client_id, r.seq), waiter):
        return    # a retry while the first attempt is in flight: both hear one Result
    if svc.writes.full() or not svc.replica.propose(req.raw):
        svc.out.error(route, rid, ErrorCode.BUSY, "the leader's proposal queue is full; retry shortly")
        return
    svc.counters.writes += 1
    svc.writes.start(req.raw, r, waiter)


@_handles(KeepaliveRequest)
def _keepalive(svc: Service, route: Route, rid: object, req: KeepaliveRequest) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    ttl_ms = svc.machine.session_ttl_ms(req.session_id)
    if ttl_ms is not None:
        svc.sessions.renewed(req.session_id, svc.now_ms, ttl_ms)
        svc.replica.note_renewal(req.session_id)
    svc.out.reply(route, rid, KeepaliveReply(ttl_ms is not None))


# -- reads ------------------------------------------------------------------------------------

class _Read(Protocol):
    @property
    def stale(self) -> bool: ...


def _read(cls: type[_ReadReq], answer: Callable[[Service, _ReadReq], Reply]) -> None:
    """Register the handler of read ``cls``, answered by ``answer``."""
    @_handles(cls)
    def handle(svc: Service, route: Route, rid: object, req: _ReadReq) -> None:
        if req.stale:
            svc.out.reply(route, rid, answer(svc, req))
            return
        if not svc.leading() or not svc.reads.begin(
                svc.replica, PendingRead(route, rid, partial(answer, svc, req))):
            svc.not_leader(route, rid)
            return
        svc.counters.reads += 1


def _get(svc: Service, req: GetRequest) -> GetReply:
    return GetReply(svc.machine.get(req.key), svc.machine.revision)


def _list(svc: Service, req: ListRequest) -> ListReply:
    return ListReply(tuple(svc.machine.list(req.prefix)), svc.machine.revision)


def _history(svc: Service, req: HistoryRequest) -> HistoryReply:
    return HistoryReply(tuple(svc.machine.history(req.key)), svc.machine.revision)


def _locks(svc: Service, req: LocksRequest) -> LocksReply:
    m, now, times = svc.machine, svc.now_ms, svc.lock_times
    sessions = m.sessions()
    rows = []
    for lk in m.locks():
        deadline = svc.sessions.deadline_ms(lk.holder_session)
        holder = sessions.get(lk.holder_session)
        rows.append(LockRow(
            lk.name, lk.holder_session, lk.token, lk.granted_index, lk.waiters,
            holder_ttl_left_ms=None if deadline is None else max(0, deadline - now),
            holder_ttl_ms=None if holder is None else holder.ttl_ms,
            age_ms=times.age_ms(lk.name, lk.token, now),
            waits_ms=tuple(times.wait_ms(lk.name, w, now) for w in lk.waiters)))
    return LocksReply(tuple(rows), m.revision)


_read(GetRequest, _get)
_read(ListRequest, _list)
_read(HistoryRequest, _history)
_read(LocksRequest, _locks)


# -- long polls and local answers -------------------------------------------------------------

@_handles(WatchRequest)
def _watch(svc: Service, route: Route, rid: object, req: WatchRequest) -> None:
    svc.parking.watch(svc.machine, route, rid, req, svc.now_ms)


@_handles(LockWaitRequest)
def _lock_wait(svc: Service, route: Route, rid: object, req: LockWaitRequest) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    svc.parking.lock_wait(svc.machine, route, rid, req, svc.now_ms)


@_handles(StatusRequest)
def _status(svc: Service, route: Route, rid: object, req: StatusRequest) -> None:
    svc.out.reply(route, rid, StatusReply(svc.node_status()))


# -- backups (core/export.py) -----------------------------------------------------------------

_EXPORTS_FULL = "too many snapshot saves in progress on this node; retry shortly"


@_handles(SnapshotSaveRequest)
def _snapshot_save(svc: Service, route: Route, rid: object, req: SnapshotSaveRequest) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    if svc.exports.full():
        svc.out.error(route, rid, ErrorCode.BUSY, _EXPORTS_FULL)
        return
    if not svc.reads.begin(svc.replica, PendingRead(route, rid, partial(_pin_export, svc))):
        svc.not_leader(route, rid)


def _pin_export(svc: Service) -> Reply:
    """At the read point: pin the snapshot and the values after it (no copy of the state)."""
    if svc.exports.full():     # other saves reached their read point first
        return ErrorReply(ErrorCode.BUSY, _EXPORTS_FULL)
    snap, entries = svc.replica.export_point()
    m = svc.machine
    ex = svc.exports.open(ExportPoint(svc.replica.applied, m.revision, m.key_count, snap, entries),
                          svc.now_ms)
    return SnapshotSaveReply(ex.id, ex.index, ex.revision, ex.keys, ex.snapshot_index,
                             ex.snapshot_bytes, ex.entries, ex.body_bytes, svc.id)


@_handles(SnapshotChunkRequest)
def _snapshot_chunk(svc: Service, route: Route, rid: object, req: SnapshotChunkRequest) -> None:
    ex = svc.exports.get(req.export_id)
    chunk = None if ex is None else ex.chunk(req.offset, svc.now_ms)
    if chunk is None:
        svc.out.error(route, rid, ErrorCode.SNAPSHOT_GONE,
                      f"{svc.id} holds no save {req.export_id} at offset {req.offset} (the node "
                      "restarted, or the save sat idle too long); start the save again")
        return
    svc.out.reply(route, rid, SnapshotChunkReply(chunk.offset, chunk.data, chunk.done, chunk.sha256))
