"""The op table: one handler per request record, and one dispatch.

``Service.on_client`` turns the map into its record (``protocol.decode_client_request``:
the only place a field is checked), refuses it if it is outside the caller's rights
(``acl.request_refusal``), and calls ``HANDLERS[type(record)]`` with the ``Caller``. A
handler may answer at once, propose a write, wait for the read index, or park the
request. What rights alone cannot decide is decided here: which rows and events a caller
may see (``list``, ``watch``, ``locks`` filter to them), and who owns a session
(``keepalive``, ``lock_wait``). Writes carry their principal to the log: the leader
stamps it into the replicated request, and the machine checks rights and ownership again
when it applies it.

Reads are written as *answers* -- a function of the machine -- and ``_read`` makes the
handler: a stale read is answered on the spot by any node, a linearizable one by the
leader once its read index is applied. The answer runs then, so it sees that state.
``list`` and ``history`` answers larger than one reply leave a cursor behind
(``service_pages``); a request naming a cursor is answered from it at once.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from .acl import Caller
from .commands import AuthAdd, AuthRemove, Put, Request, Txn, is_record, stamp
from .export import ExportPoint
from .membership import ChangeKind, Member, MembershipChange
from .protocol import (
    AuthListReply,
    AuthListRequest,
    Change,
    ErrorCode,
    ErrorReply,
    GetReply,
    GetRequest,
    HistoryReply,
    HistoryRequest,
    KeepaliveReply,
    KeepaliveRequest,
    KeepaliveStatus,
    KeyValue,
    ListReply,
    ListRequest,
    LockRow,
    LocksReply,
    LocksRequest,
    LockWaitRequest,
    MemberChangeReply,
    MemberChangeRequest,
    MemberRow,
    MembersReply,
    MembersRequest,
    PrincipalRow,
    Reply,
    RevisionReply,
    RevisionRequest,
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
from .service_pages import Kind, first_page
from .service_reads import PendingRead
from .service_writes import WriteWaiter

if TYPE_CHECKING:
    from .service import Service

__all__ = ["HANDLERS", "Handler"]

_Req = TypeVar("_Req")
_ReadReq = TypeVar("_ReadReq", bound="_Read")
Handler = Callable[["Service", Route, object, Any, Caller], None]

HANDLERS: dict[type, Handler] = {}


def _handles(cls: type[_Req]) -> Callable[[Callable[[Service, Route, object, _Req, Caller], None]],
                                          Callable[[Service, Route, object, _Req, Caller], None]]:
    def register(fn: Callable[[Service, Route, object, _Req, Caller], None]
                 ) -> Callable[[Service, Route, object, _Req, Caller], None]:
        if cls in HANDLERS:
            raise ImportError(f"two handlers for {cls.__name__}")
        HANDLERS[cls] = fn
        return fn
    return register


# -- writes -----------------------------------------------------------------------------------

@_handles(WriteRequest)
def _write(svc: Service, route: Route, rid: object, req: WriteRequest, caller: Caller) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    r, who = req.request, caller.principal
    waiter = WriteWaiter(route, rid, svc.now_ms)
    if svc.writes.join((who, r.client_id, r.seq), waiter):
        return    # a retry while the first attempt is in flight: both hear one Result
    if type(r.cmd) in (AuthAdd, AuthRemove):
        refused = svc.auth_refusal(r.cmd)
        if refused is not None:
            svc.out.error(route, rid, ErrorCode.BAD_REQUEST, refused)
            return
    q, m = svc.quota, svc.machine
    puts = ((r.cmd.key,) if type(r.cmd) is Put else
            tuple(op.key for op in r.cmd.success + r.cmd.failure if type(op) is Put)
            if type(r.cmd) is Txn else ())
    if (puts and (svc.db_bytes >= q.max_db_bytes or m.key_count >= q.max_keys)
            and not m.has_result(r.client_id, r.seq)):
        # A retry of an applied put gets its cached Result whatever the quotas say now.
        for key in puts:
            refused = q.refuse_put(m, key, svc.db_bytes)
            if refused is not None:
                svc.out.error(route, rid, ErrorCode.QUOTA_EXCEEDED, refused)
                return
    # The sender, as the connection authenticated it, goes into the log with the request.
    raw = stamp(req.raw, who)
    if svc.writes.full() or not svc.replica.propose(raw):
        svc.out.error(route, rid, ErrorCode.BUSY, "the leader's proposal queue is full; retry shortly")
        return
    svc.counters.writes += 1
    svc.writes.start(raw, Request(r.client_id, r.seq, r.first_unacked, r.cmd, who), waiter)


def _session_refusal(svc: Service, session_id: int, caller: Caller) -> str | None:
    """Leader-local ops on a session (not replicated, so the machine cannot check them)
    are its owner's, or an admin's."""
    owner = svc.machine.session_owner(session_id)
    if owner is None or owner == caller.principal or caller.rights.admin:
        return None
    return f"{caller.principal}: session {session_id} belongs to another principal"


@_handles(KeepaliveRequest)
def _keepalive(svc: Service, route: Route, rid: object, req: KeepaliveRequest,
               caller: Caller) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    if not req.session_ids:
        refused = _session_refusal(svc, req.session_id, caller)
        if refused is not None:
            svc.out.error(route, rid, ErrorCode.PERMISSION_DENIED, refused)
            return
        svc.out.reply(route, rid, KeepaliveReply(_renew(svc, req.session_id)))
        return
    # The batch form: ownership is checked per id, exactly as for one. A session of another
    # principal is "denied" -- not renewed -- and the others are renewed all the same.
    out = tuple(KeepaliveStatus.DENIED if _session_refusal(svc, sid, caller) is not None
                else KeepaliveStatus.KNOWN if _renew(svc, sid) else KeepaliveStatus.UNKNOWN
                for sid in req.session_ids)
    svc.out.reply(route, rid, KeepaliveReply(
        all(st is KeepaliveStatus.KNOWN for st in out), out))


def _renew(svc: Service, session_id: int) -> bool:
    """Restart the session's clock on this leader; False if there is no such session."""
    ttl_ms = svc.machine.session_ttl_ms(session_id)
    if ttl_ms is None:
        return False
    svc.sessions.renewed(session_id, svc.now_ms, ttl_ms)
    return True


# -- reads ------------------------------------------------------------------------------------

class _Read(Protocol):
    @property
    def stale(self) -> bool: ...


Answer = Callable[["Service", Route, _ReadReq, Caller], Reply]


def _read_handler(answer: Answer[_ReadReq]) -> Callable[[Service, Route, object, _ReadReq, Caller], None]:
    """The handler of a read answered by ``answer`` for the caller."""
    def handle(svc: Service, route: Route, rid: object, req: _ReadReq, caller: Caller) -> None:
        if req.stale:
            svc.out.reply(route, rid, answer(svc, route, req, caller))
            return
        if not svc.leading() or not svc.reads.begin(
                svc.replica, PendingRead(route, rid, partial(answer, svc, route, req, caller))):
            svc.not_leader(route, rid)
            return
        svc.counters.reads += 1
    return handle


def _read(cls: type[_ReadReq], answer: Answer[_ReadReq]) -> None:
    """Register the handler of read ``cls``, answered by ``answer``."""
    _handles(cls)(_read_handler(answer))


def _get(svc: Service, route: Route, req: GetRequest, caller: Caller) -> GetReply:
    return GetReply(svc.machine.get(req.key), svc.machine.revision)


def _list(svc: Service, route: Route, req: ListRequest, caller: Caller) -> Reply:
    m, rights = svc.machine, caller.rights
    rows = m.scan(req.prefix, req.start_after, hide_records=True)
    if not rights.reads_all_under(req.prefix):
        rows = (kv for kv in rows if rights.may_read(kv.key))
    page = first_page(islice(rows, req.limit) if req.limit else rows)
    more = req.limit > 0 and next(rows, None) is not None
    cursor = _cursor(svc, route, caller, "list", page.rest, page.rest_bytes, more)
    if isinstance(cursor, ErrorReply):
        return cursor
    return ListReply(page.rows, m.revision, more, cursor)


def _history(svc: Service, route: Route, req: HistoryRequest, caller: Caller) -> Reply:
    page = first_page(iter(svc.machine.history(req.key)))
    cursor = _cursor(svc, route, caller, "history", page.rest, page.rest_bytes, False)
    if isinstance(cursor, ErrorReply):
        return cursor
    return HistoryReply(page.rows, svc.machine.revision, cursor)


def _cursor(svc: Service, route: Route, caller: Caller, kind: Kind,
            rest: tuple[KeyValue, ...] | tuple[Change, ...] | tuple[LockRow, ...],
            rest_bytes: int, more: bool) -> int | ErrorReply:
    """A cursor over the rows that did not fit the first page (0: none did not)."""
    if not rest:
        return 0
    refused = svc.cursors.refusal(route, rest_bytes)
    if refused is not None:
        return ErrorReply(ErrorCode.BUSY, refused)
    return svc.cursors.open(kind, route, svc.machine.revision, rest, rest_bytes, svc.now_ms, more,
                            caller.principal)


def _paged(cls: type[ListRequest] | type[HistoryRequest] | type[LocksRequest], kind: Kind,
           answer: Answer[Any]) -> None:
    """Register ``cls``: its first page is a read, later pages come from its cursor."""
    first = _read_handler(answer)

    @_handles(cls)
    def handle(svc: Service, route: Route, rid: object,
               req: ListRequest | HistoryRequest | LocksRequest, caller: Caller) -> None:
        if not req.cursor:
            first(svc, route, rid, req, caller)
            return
        c = svc.cursors.get(kind, req.cursor, svc.now_ms, caller.principal)
        if c is None or req.offset >= len(c.rows):
            svc.out.error(route, rid, ErrorCode.CURSOR_EXPIRED,
                          f"{kind} cursor {req.cursor} is gone (drained, unused for a while, "
                          "or this node restarted): start the read again")
            return
        rows = c.page(req.offset)
        left = 0 if req.offset + len(rows) >= len(c.rows) else c.id
        if not left:
            svc.cursors.close(c.id)
        if kind == "list":
            svc.out.reply(route, rid, ListReply(cast(tuple[KeyValue, ...], rows), c.revision,
                                                c.more, left))
        elif kind == "history":
            svc.out.reply(route, rid, HistoryReply(cast(tuple[Change, ...], rows), c.revision, left))
        else:
            svc.out.reply(route, rid, LocksReply(cast(tuple[LockRow, ...], rows), c.revision, left))


def _locks(svc: Service, route: Route, req: LocksRequest, caller: Caller) -> Reply:
    m, now, times, rights = svc.machine, svc.now_ms, svc.lock_times, caller.rights
    sessions = m.sessions()
    rows = []
    for lk in m.locks():
        if not rights.may_lock(lk.name):
            continue
        deadline = svc.sessions.deadline_ms(lk.holder_session)
        holder = sessions.get(lk.holder_session)
        rows.append(LockRow(
            lk.name, lk.holder_session, lk.token, lk.granted_index, lk.waiters,
            holder_ttl_left_ms=None if deadline is None else max(0, deadline - now),
            holder_ttl_ms=None if holder is None else holder.ttl_ms,
            age_ms=times.age_ms(lk.name, lk.token, now),
            waits_ms=tuple(times.wait_ms(lk.name, w, now) for w in lk.waiters),
            holder=lk.holder, waiter_names=lk.waiter_names, kind=lk.kind, limit=lk.limit,
            holders=lk.holders, waiter_modes=lk.waiter_modes))
    page = first_page(iter(rows))
    cursor = _cursor(svc, route, caller, "locks", page.rest, page.rest_bytes, False)
    if isinstance(cursor, ErrorReply):
        return cursor
    return LocksReply(page.rows, m.revision, cursor)


def _revision(svc: Service, route: Route, req: RevisionRequest, caller: Caller) -> RevisionReply:
    return RevisionReply(svc.machine.revision)


def _auth_list(svc: Service, route: Route, req: AuthListRequest, caller: Caller) -> AuthListReply:
    rows = tuple(PrincipalRow(p.name, svc.public_key_of(p.name, p.public_key), p.rights.read,
                              p.rights.write, p.rights.lock, p.rights.admin)
                 for p in svc.machine.principals())
    return AuthListReply(rows, svc.machine.revision)


_read(GetRequest, _get)
_paged(ListRequest, "list", _list)
_paged(HistoryRequest, "history", _history)
_paged(LocksRequest, "locks", _locks)
_read(AuthListRequest, _auth_list)


# -- long polls and local answers -------------------------------------------------------------

@_handles(WatchRequest)
def _watch(svc: Service, route: Route, rid: object, req: WatchRequest, caller: Caller) -> None:
    rights = caller.rights
    readable = None
    selector = req.prefixes or (req.prefix,)
    if not rights.admin and not all(rights.reads_all_under(p) for p in selector):
        # Some keys under the prefixes are not the caller's. Records are read by other
        # rights than their names' prefixes (an election's by the lock right on its name):
        # the prefixes of records it may read whole are readable too.
        readable = rights.readable + tuple(
            p for p in selector if is_record(p) and rights.reads_all_under(p))
    svc.parking.watch(svc.machine, route, rid, req, svc.now_ms, caller.principal, readable)


@_handles(LockWaitRequest)
def _lock_wait(svc: Service, route: Route, rid: object, req: LockWaitRequest,
               caller: Caller) -> None:
    if not svc.leading():
        svc.not_leader(route, rid)
        return
    refused = _session_refusal(svc, req.session_id, caller)
    if refused is not None:
        svc.out.error(route, rid, ErrorCode.PERMISSION_DENIED, refused)
        return
    svc.parking.lock_wait(svc.machine, route, rid, req, svc.now_ms, caller.principal)


@_handles(StatusRequest)
def _status(svc: Service, route: Route, rid: object, req: StatusRequest, caller: Caller) -> None:
    svc.out.reply(route, rid, StatusReply(svc.node_status()))


@_handles(RevisionRequest)
def _revision_handler(svc: Service, route: Route, rid: object, req: RevisionRequest,
                      caller: Caller) -> None:
    # Linearizable, like ``get``: the leader answers once its read index is applied.
    if not svc.leading() or not svc.reads.begin(
            svc.replica, PendingRead(route, rid, partial(_revision, svc, route, req, caller))):
        svc.not_leader(route, rid)
        return
    svc.counters.reads += 1


# -- backups (core/export.py) -----------------------------------------------------------------

_EXPORTS_FULL = "too many snapshot saves in progress on this node; retry shortly"


@_handles(SnapshotSaveRequest)
def _snapshot_save(svc: Service, route: Route, rid: object, req: SnapshotSaveRequest,
                   caller: Caller) -> None:
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
def _snapshot_chunk(svc: Service, route: Route, rid: object, req: SnapshotChunkRequest,
                    caller: Caller) -> None:
    ex = svc.exports.get(req.export_id)
    chunk = None if ex is None else ex.chunk(req.offset, svc.now_ms)
    if chunk is None:
        svc.out.error(route, rid, ErrorCode.SNAPSHOT_GONE,
                      f"{svc.id} holds no save {req.export_id} at offset {req.offset} (the node "
                      "restarted, or the save sat idle too long); start the save again")
        return
    svc.out.reply(route, rid, SnapshotChunkReply(chunk.offset, chunk.data, chunk.done, chunk.sha256))


# -- membership (core/membership.py) ---------------------------------------------------------

@_handles(MembersRequest)
def _members(svc: Service, route: Route, rid: object, req: MembersRequest,
             caller: Caller) -> None:
    if not svc.serving():
        svc.not_leader(route, rid)
        return
    st = svc.replica.status()
    progress = {n: (inc, c) for n, inc, c in st.progress}
    rows = []
    for m in st.config.members:
        p = progress.get(m.id)
        heard = p[1] if p is not None and p[0] == m.incarnation else -1
        if m.id == svc.id:
            heard = st.commit_index
        rows.append(MemberRow(m.id, m.incarnation, m.voting, m.address, m.publish, m.http,
                              m.public_key, heard, svc.replica.is_live(m.id)))
    svc.out.reply(route, rid, MembersReply(tuple(rows), svc.id, st.change_in_flight))


@_handles(MemberChangeRequest)
def _member_change(svc: Service, route: Route, rid: object, req: MemberChangeRequest,
                   caller: Caller) -> None:
    if not svc.serving():
        svc.not_leader(route, rid)
        return
    r = svc.replica
    if req.action == "transfer":
        why = r.transfer_leadership(req.node)
        done = f"handing leadership to {req.node}"
    else:
        if req.action == "add":
            if svc.identities.secure and not req.public_key:
                svc.out.error(route, rid, ErrorCode.REFUSED,
                              f"a secure cluster needs {req.node}'s public key to add it")
                return
            member = Member(req.node, 0, False, req.address, req.publish, req.http,
                            req.public_key)
            change = MembershipChange(ChangeKind.ADD, member)
        else:
            found = r.config.get(req.node)
            if found is None:
                svc.out.error(route, rid, ErrorCode.REFUSED, f"{req.node} is not a member")
                return
            change = MembershipChange(ChangeKind.REMOVE, found)
        why = r.request_change(change)
        done = f"{req.action} {req.node}: proposed"
    if why is None:
        svc.out.reply(route, rid, MemberChangeReply(done))
    elif "hands leadership" in why or why.startswith("leadership is being handed"):
        # Removing the leader: it hands over first; the client retries and is redirected.
        svc.out.error(route, rid, ErrorCode.UNAVAILABLE, why)
    else:
        svc.out.error(route, rid, ErrorCode.REFUSED, why)
