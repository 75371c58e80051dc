"""The client <-> node protocol, written once: every request, reply and row as a typed record.

Bodies travel as ``wire.CLIENT_REQUEST`` / ``wire.CLIENT_REPLY`` msgpack maps. A request
map is ``{"id": ..., "op": ..., <the op's fields>}``; the node echoes ``id`` (any value,
the client's to choose) in the reply. A reply map is ``{"id", "ok": True, <fields>}`` or
``{"id", "ok": False, "error": <ErrorCode>, "message": str, ...}``. The envelope (``id``)
belongs to the transport; the records here describe everything else.

Every record has ``to_wire()`` and a validating ``from_wire()`` that returns a fully typed
value or raises :class:`SchemaError` -- never anything else -- so the node answers
``bad_request`` and the client reports a malformed reply, each from one place. Field names
and shapes are the ones the first client spoke; rows (kv, change, lock) are positional
lists that only ever grow at the end, and readers ignore fields they do not know, so an
older reader keeps working against a newer node.

Ops (request fields -> reply fields):

``write``      req: bytes (commands.encode_request) -> result: Result.to_wire()
               Leader only. Applied exactly once per (client_id, seq), across retries.
``keepalive``  session_id -> known: bool. Leader only; not replicated (a new leader
               restarts every session's clock at its takeover). Batch form: session_ids
               (1..``MAX_KEEPALIVE_BATCH`` of them) instead of session_id -> known (all
               known) and sessions: one ``KeepaliveStatus`` per id, in request order --
               ``known`` (renewed), ``unknown`` (no such session), ``denied`` (another
               principal's: not renewed, and no error for the others). One client sends
               one batch for all its sessions; the reply is ~8 bytes per id, far below
               ``MESSAGE_BUDGET_BYTES``.
``get``        key, stale -> kv: KeyValue | nil, revision. Linearizable unless stale (then
               any node answers). ``list``/``history``/``locks`` take ``stale`` as well.
``list``       prefix, stale, start_after, limit, cursor -> kvs: [KeyValue, ...] sorted by
               key, revision, more, cursor. Keys under ``prefix`` after ``start_after``, at
               most ``limit`` of them (0: all). A reply carries at most
               ``MESSAGE_BUDGET_BYTES`` of rows (always one); when the read holds more, the
               reply's ``cursor`` (non-zero) asks the same node for the next page of the
               same read, at the same ``revision``: ``cursor`` and ``offset`` (the rows
               received since the first page: a retried page repeats, never skips), other
               fields ignored.
               ``more``: keys beyond ``limit`` exist. Error ``cursor_expired`` when the node
               no longer holds the cursor: start the listing again.
``history``    key, stale, cursor -> events: [Change, ...] oldest first, revision, cursor;
               paged like ``list``.
``watch``      prefix or prefixes (non-empty wins), after, wait_ms, limit -> events, revision,
               more. Events under the prefix (or any of the prefixes: one poll serves all
               of a client's watches), in revision order, at most ``limit`` of them and
               ``MESSAGE_BUDGET_BYTES`` of rows (always one); ``more``: the reply was cut
               and is complete only up to its last event. Any node; parks up to wait_ms
               until an event with revision > after exists. Error ``compacted``
               (+ ``oldest``) when ``after`` is older than the window.
``lock_wait``  name, session_id, wait_ms -> state: LockState, token (0 unless held).
               Leader only; parks up to wait_ms while "waiting".
``locks``      stale, cursor -> locks: [LockRow, ...], revision, cursor. Linearizable; paged
               like ``list`` (a node before paging answered every row at once).
``status``     -> status: NodeStatus. Answered locally by any node, even without a quorum.
``snapshot_save``  -> export_id, index, revision, keys, snapshot_index, snapshot_bytes,
               entries, body_bytes, node. Leader only, at a linearizable point: the node
               pins the state as of ``index`` for this save (``core.export``) and serves it
               with ``snapshot_chunk``; ``busy`` while ``MAX_EXPORTS`` saves are open.
``snapshot_chunk`` export_id, offset -> offset, data, done, sha256 (of the whole body, with
               the last chunk). Only the node that answered ``snapshot_save``; offsets go
               in order (the last one may be asked again). Error ``snapshot_gone`` when the
               node no longer holds the save (restarted, idle too long): start over.
``revision``   -> revision. Linearizable; any client key may ask (no right to a key needed).
``auth_list``  -> principals: [PrincipalRow, ...], revision. Linearizable; admin only.
               (``auth add``/``auth remove`` are writes: commands.AuthAdd/AuthRemove.)

Every request is checked against the rights of the principal that sent it (``core.acl``)
before anything else; a refusal is ``permission_denied`` and changes nothing.
``members``    -> members: [MemberRow, ...], leader, change_in_flight. Leader only: the
               latest chosen configuration, learners with the commit index they reported.
``member_change`` action ("add" | "remove" | "transfer"), node, address, publish, http,
               public_key -> message. Leader only. Accepted for proposal, not yet chosen
               (the client polls ``members`` until it is); ``refused`` with the reason
               otherwise (a change in flight, no live quorum left, not a member, ...).

Adding an op, all in this module: a member of :class:`Op`; a request record with
``op: ClassVar[Op]`` and ``from_wire``/``to_wire``, listed in ``REQUEST_TYPES``; a reply
record the same way. The import-time check below refuses an op without a request record,
and ``service_ops.HANDLERS`` (checked by a test) one without a handler.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeGuard, TypeVar

from .commands import MAX_INT, MAX_KEY_BYTES, Request, decode_request, encode_request, nul_error
from .types import MAX_COMMAND_BYTES, MESSAGE_BUDGET_BYTES, SNAPSHOT_CHUNK_BYTES, ProtocolError

__all__ = [
    "MAX_KEEPALIVE_BATCH", "MAX_WAIT_MS", "MAX_WATCH_BATCH", "MAX_WATCH_PREFIXES", "MESSAGE_BUDGET_BYTES",
    "Change", "ChangeType", "ClientRequest", "ErrorCode", "ErrorReply", "GetReply", "GetRequest",
    "AuthListReply", "AuthListRequest",
    "HistoryReply", "HistoryRequest", "KeepaliveReply", "KeepaliveRequest", "KeepaliveStatus", "KeyValue",
    "ListReply", "ListRequest", "LockRow", "LockState", "LockWaitReply", "LockWaitRequest",
    "LocksReply", "LocksRequest", "MemberChangeReply", "MemberChangeRequest", "MemberRow",
    "MembersReply", "MembersRequest", "NodeStatus", "Op", "PrincipalRow", "REQUEST_TYPES",
    "Result", "ResultCode", "RevisionReply", "RevisionRequest", "SchemaError",
    "SnapshotChunkReply", "SnapshotChunkRequest", "SnapshotSaveReply", "SnapshotSaveRequest",
    "StatusReply", "StatusRequest", "WatchReply", "WatchRequest", "WriteReply", "WriteRequest",
    "decode_client_request", "reply_map", "row_bytes",
]

MAX_WAIT_MS = 30_000
MAX_WATCH_BATCH = 1_000
# Ids in one batch keepalive: the request and reply stay ~10 KiB, far within
# MESSAGE_BUDGET_BYTES, and one batch costs the leader well under a millisecond.
MAX_KEEPALIVE_BATCH = 1_000
MAX_WATCH_PREFIXES = 1_000


class SchemaError(ProtocolError):
    """A request or reply map that does not fit its record (the node answers ``bad_request``)."""


# -- vocabularies -------------------------------------------------------------------------
# StrEnum members are str: msgpack and json write them as the plain strings they equal.

class Op(StrEnum):
    WRITE = "write"
    KEEPALIVE = "keepalive"
    GET = "get"
    LIST = "list"
    HISTORY = "history"
    WATCH = "watch"
    LOCK_WAIT = "lock_wait"
    LOCKS = "locks"
    STATUS = "status"
    SNAPSHOT_SAVE = "snapshot_save"
    SNAPSHOT_CHUNK = "snapshot_chunk"
    REVISION = "revision"
    AUTH_LIST = "auth_list"
    MEMBERS = "members"
    MEMBER_CHANGE = "member_change"


class ErrorCode(StrEnum):
    """Why a node refused a request (``ok: false``)."""

    NOT_LEADER = "not_leader"    # + leader (node id or nil), leader_address (endpoint or nil)
    UNAVAILABLE = "unavailable"  # the outcome is unknown; the same request may be retried
    BAD_REQUEST = "bad_request"  # the request does not fit the schema
    COMPACTED = "compacted"      # + oldest: the first revision a watch can still start after
    BUSY = "busy"                # a bounded queue is full: retry later
    PERMISSION_DENIED = "permission_denied"   # outside the caller's rights: nothing was done
    REFUSED = "refused"          # a membership change refused; the message says why
    INTERNAL = "internal"        # the node failed answering this request (a bug, logged)
    QUOTA_EXCEEDED = "quota_exceeded"    # a put past [limits] max_keys / max_db_bytes
    CURSOR_EXPIRED = "cursor_expired"    # a page's cursor is gone: start the read again
    SNAPSHOT_GONE = "snapshot_gone"      # the node no longer holds that save: start it again


class ResultCode(StrEnum):
    """The outcome of a replicated write (``Result.code``): part of the log's results."""

    OK = "ok"
    COMPARE_FAILED = "compare_failed"
    FENCE_REJECTED = "fence_rejected"
    INVALID = "invalid"
    LOCK_BUSY = "lock_busy"
    QUEUED = "queued"
    NO_SESSION = "no_session"
    NOT_HELD = "not_held"
    STALE_REQUEST = "stale_request"
    LIMIT = "limit"
    # The stamped principal may not run the command (its rights, or another principal's
    # session or client id): nothing changed.
    PERMISSION_DENIED = "permission_denied"
    # The identity table refused the change (name or key taken, no such principal, the
    # last admin): nothing changed.
    REFUSED = "refused"


class ChangeType(StrEnum):
    PUT = "put"
    DELETE = "delete"


class KeepaliveStatus(StrEnum):
    """One session's outcome in a batch keepalive."""

    KNOWN = "known"        # renewed
    UNKNOWN = "unknown"    # no such session (expired or closed)
    DENIED = "denied"      # another principal's session: not renewed


class LockState(StrEnum):
    """Where a session stands on one lock (``lock_wait``)."""

    HELD = "held"
    WAITING = "waiting"
    NONE = "none"    # neither held nor queued: the session is gone or left the queue


# Plain dict lookups: an Enum call costs eight times as much on the reply paths.
_RESULT_CODES: dict[str, ResultCode] = {c.value: c for c in ResultCode}
_CHANGE_TYPES: dict[str, ChangeType] = {c.value: c for c in ChangeType}
_LOCK_STATES: dict[str, LockState] = {c.value: c for c in LockState}
_KEEPALIVE_STATUSES: dict[str, KeepaliveStatus] = {c.value: c for c in KeepaliveStatus}
_ERROR_CODES: dict[str, ErrorCode] = {c.value: c for c in ErrorCode}
_T = TypeVar("_T")


def _lookup(table: dict[str, _T], v: object) -> _T | None:
    """``table[v]`` for a str ``v``, else None (a list from the wire is not even hashable)."""
    return table.get(v) if type(v) is str else None


# -- field readers --------------------------------------------------------------------------

_MISSING: Any = object()


def _is_int(v: object) -> TypeGuard[int]:
    return type(v) is int


def _get(m: Mapping[str, Any], name: str, default: Any) -> Any:
    v = m.get(name, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise SchemaError(f"missing field {name!r}")
        return default
    if v is None:
        raise SchemaError(f"field {name!r} must not be nil")
    return v


def _str(m: Mapping[str, Any], name: str, default: Any = _MISSING) -> str:
    v = _get(m, name, default)
    if type(v) is not str:
        raise SchemaError(f"field {name!r} must be str")
    return v


def _int(m: Mapping[str, Any], name: str, default: Any = _MISSING) -> int:
    v = _get(m, name, default)
    if type(v) is not int:
        raise SchemaError(f"field {name!r} must be int")
    return v


def _bool(m: Mapping[str, Any], name: str, default: Any = _MISSING) -> bool:
    v = _get(m, name, default)
    if type(v) is not bool:
        raise SchemaError(f"field {name!r} must be bool")
    return v


def _key_error(v: str, what: str, allow_empty: bool) -> str | None:
    """Why ``v`` is not a key to read by (1..512 UTF-8 bytes, no NUL, or a record's name:
    RESERVED_PREFIX and a key), or None. Most keys are short ASCII: at most 128 characters
    cannot exceed 512 bytes, so they skip the encode."""
    n = len(v)
    if n > MAX_KEY_BYTES // 4:
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{what} is not valid UTF-8"
    if n > MAX_KEY_BYTES or (n == 0 and not allow_empty):
        return f"{what} must be {0 if allow_empty else 1}..{MAX_KEY_BYTES} UTF-8 bytes, got {n}"
    return nul_error(what, v, records=True)


def _key(v: object, what: str, allow_empty: bool = False) -> str:
    if type(v) is not str:
        raise SchemaError(f"{what} must be str")
    err = _key_error(v, what, allow_empty)
    if err is not None:
        raise SchemaError(err)
    return v


def _count(m: Mapping[str, Any], name: str, default: int) -> int:
    """A non-negative int field that msgpack can carry back (at most 2**63 - 1)."""
    v = _int(m, name, default)
    if not 0 <= v <= MAX_INT:
        raise SchemaError(f"field {name!r} must be in [0, 2**63 - 1]")
    return v


def row_bytes(row: KeyValue | Change | LockRow) -> int:
    """An upper bound of one row's encoded size, for packing replies within a budget."""
    if isinstance(row, LockRow):
        # Integers take at most 9 bytes; a str at most 4 per character plus 5.
        return (160 + 4 * len(row.name) + 4 * len(row.holder or "") + 9 * len(row.waiters)
                + sum(4 * len(w) + 32 for w in row.waiter_names)
                + sum(4 * len(m) + 8 for m in row.waiter_modes) + 9 * len(row.waits_ms)
                + sum(4 * (len(h[2]) + len(h[3])) + 40 for h in row.holders) + 4 * len(row.kind))
    return len(row.value) + 4 * len(row.key) + 48


def _opt_int(v: object, what: str) -> int | None:
    if v is None or type(v) is int:
        return v
    raise SchemaError(f"{what} must be int or nil")


def _clamp(v: int, low: int, high: int) -> int:
    return low if v < low else high if v > high else v


def _map(w: object, what: str) -> Mapping[str, Any]:
    if type(w) is not dict:
        raise SchemaError(f"{what} must be a map")
    return w


def _list(w: object, what: str) -> list[Any]:
    if type(w) is not list:
        raise SchemaError(f"{what} must be a list")
    return w


# -- rows -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Result:
    """A replicated write's outcome, the same on every replica: cached for retries."""

    code: ResultCode
    revision: int
    data: dict[str, object] = field(default_factory=dict)

    def to_wire(self) -> list[object]:
        return [self.code, self.revision, self.data]

    @classmethod
    def from_wire(cls, w: object) -> Result:
        if isinstance(w, (list, tuple)) and len(w) == 3:
            code, revision, data = w
            if (type(code) is str and code in _RESULT_CODES and _is_int(revision) and type(data) is dict
                    and all(type(k) is str for k in data)):
                return cls(_RESULT_CODES[code], revision, dict(data))
        raise SchemaError(f"malformed result {w!r:.200}")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's current value: ``[key, value, revision, create_revision, version]``."""

    key: str
    value: bytes
    revision: int
    create_revision: int
    version: int

    def to_wire(self) -> list[object]:
        return [self.key, self.value, self.revision, self.create_revision, self.version]

    @classmethod
    def from_wire(cls, w: object) -> KeyValue:
        if (type(w) is list and len(w) >= 5 and type(w[0]) is str and type(w[1]) is bytes
                and type(w[2]) is int and type(w[3]) is int and type(w[4]) is int):
            return cls(w[0], w[1], w[2], w[3], w[4])
        raise SchemaError("malformed kv row")


@dataclass(frozen=True, slots=True)
class Change:
    """One applied change of a key: ``[type, key, value, revision]`` (a delete's value is empty)."""

    type: ChangeType
    key: str
    value: bytes
    revision: int

    def to_wire(self) -> list[object]:
        return [self.type, self.key, self.value, self.revision]

    def to_map(self) -> dict[str, object]:
        """The same change as the PUB stream publishes it (wire.EVENT)."""
        return {"type": self.type, "key": self.key, "value": self.value, "revision": self.revision}

    @classmethod
    def from_wire(cls, w: object) -> Change:
        if (type(w) is list and len(w) >= 4 and (t := _lookup(_CHANGE_TYPES, w[0])) is not None
                and type(w[1]) is str and type(w[2]) is bytes and type(w[3]) is int):
            return cls(t, w[1], w[2], w[3])
        raise SchemaError("malformed event row")


def _changes(w: object) -> tuple[Change, ...]:
    return tuple(Change.from_wire(e) for e in _list(w, "events"))


@dataclass(frozen=True, slots=True)
class LockRow:
    """One held lock as ``locks`` reports it. Times are the leader's own clock, in ms;
    None where this leader has not seen the event (it took over after it).

    Wire: ``[name, holder_session, token, granted_index, [waiter, ...],
    holder_ttl_left_ms, holder_ttl_ms, age_ms, [wait_ms, ...], holder, [waiter_name, ...]]``;
    nodes before the last five fields sent six, which still decode. ``holder`` and
    ``waiter_names`` are the principals that own the sessions (None/empty from older nodes).
    """

    name: str
    holder_session: int
    token: int
    granted_index: int
    waiters: tuple[int, ...]
    holder_ttl_left_ms: int | None
    holder_ttl_ms: int | None = None
    age_ms: int | None = None
    waits_ms: tuple[int | None, ...] = ()    # per waiter, in queue order
    holder: str | None = None                # the principal that owns the holding session
    waiter_names: tuple[str, ...] = ()       # per waiter, in queue order
    # Wire fields 12-15 (w2/recipes): "lock" | "semaphore" | "rwlock"; a semaphore's slots;
    # every holder of a semaphore or rwlock as (session, token, principal, mode); each
    # waiter's mode ("semaphore", "read", "write"). A plain lock's row has none of them.
    kind: str = "lock"
    limit: int = 0
    holders: tuple[tuple[int, int, str, str], ...] = ()
    waiter_modes: tuple[str, ...] = ()

    def to_wire(self) -> list[object]:
        out: list[object] = [
            self.name, self.holder_session, self.token, self.granted_index,
            list(self.waiters), self.holder_ttl_left_ms, self.holder_ttl_ms, self.age_ms,
            list(self.waits_ms), self.holder, list(self.waiter_names)]
        if self.kind != "lock":
            out += [self.kind, self.limit, [list(h) for h in self.holders], list(self.waiter_modes)]
        return out

    @classmethod
    def from_wire(cls, w: object) -> LockRow:
        if not (type(w) is list and len(w) >= 6 and type(w[0]) is str and type(w[1]) is int
                and type(w[2]) is int and type(w[3]) is int and type(w[4]) is list
                and all(type(x) is int for x in w[4])):
            raise SchemaError("malformed lock row")
        waits = _list(w[8], "lock row waits") if len(w) > 8 else []
        holder = w[9] if len(w) > 9 else None
        names = _list(w[10], "lock row waiter names") if len(w) > 10 else []
        if not (holder is None or type(holder) is str) or not all(type(x) is str for x in names):
            raise SchemaError("malformed lock row owners")
        kind, limit = (w[11], w[12]) if len(w) > 12 else ("lock", 0)
        holders = _list(w[13], "lock row holders") if len(w) > 13 else []
        modes = _strs(w[14], "lock row waiter modes") if len(w) > 14 else ()
        if type(kind) is not str or type(limit) is not int or not all(
                type(h) is list and len(h) >= 4 and type(h[0]) is int and type(h[1]) is int
                and type(h[2]) is str and type(h[3]) is str for h in holders):
            raise SchemaError("malformed lock row holders")
        return cls(w[0], w[1], w[2], w[3], tuple(w[4]),
                   _opt_int(w[5], "lock row ttl left"),
                   _opt_int(w[6], "lock row ttl") if len(w) > 6 else None,
                   _opt_int(w[7], "lock row age") if len(w) > 7 else None,
                   tuple(_opt_int(x, "lock row wait") for x in waits), holder, tuple(names),
                   kind, limit, tuple((h[0], h[1], h[2], h[3]) for h in holders), modes)


def _strs(w: object, what: str) -> tuple[str, ...]:
    items = _list(w, what)
    if not all(type(x) is str for x in items):
        raise SchemaError(f"{what} must be a list of strings")
    return tuple(items)


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    """One principal of the identity table (``auth_list``): ``[name, public_key, [read],
    [write], [lock], admin]``. ``public_key`` is None for the bootstrap admin on a node that
    does not know it (its key is in cluster.toml, not in the log). Never a secret."""

    name: str
    public_key: str | None
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()
    admin: bool = False

    def to_wire(self) -> list[object]:
        return [self.name, self.public_key, list(self.read), list(self.write), list(self.lock),
                self.admin]

    @classmethod
    def from_wire(cls, w: object) -> PrincipalRow:
        if not (type(w) is list and len(w) >= 6 and type(w[0]) is str
                and (w[1] is None or type(w[1]) is str) and type(w[5]) is bool):
            raise SchemaError("malformed principal row")
        return cls(w[0], w[1], _strs(w[2], "read"), _strs(w[3], "write"), _strs(w[4], "lock"), w[5])


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's own view, as ``status`` answers it: the node's entry of CONTRACT §5's
    ``nodes`` plus extras. ``extra`` holds what the runtime adds (disk size, fsync latency,
    transport counters); it goes first on the wire, so a named field always wins."""

    id: str
    address: str | None
    role: str                     # "leader" | "follower" | "candidate"
    leader: str | None
    voting: bool
    ballot: tuple[int, str]
    commit_index: int
    applied_index: int
    uptime_s: float
    sessions: int
    locks_held: int
    keys: int
    revision: int
    last_leader_contact_ms: int | None
    bad_frames: int
    snapshot_index: int
    pending_writes: int
    parked_watches: int
    rejected_replies: int = 0     # catch-up replies/chunks from a peer not asked (dropped)
    rounds_exhausted: bool = False   # someone promised round 2**62: this node cannot campaign
    security: str | None = None   # "curve" | "insecure" (None: a node that does not say)
    public_key: str | None = None   # this node's CURVE public key (secure clusters)
    rejected_peer: int = 0        # peer messages whose src was not the connection's member
    denied: int = 0               # client requests refused as outside their principal's rights
    internal_errors: int = 0      # requests answered ``internal`` (a handler raised)
    alarms: tuple[str, ...] = ()  # quotas this node sees exceeded ("max_keys", "max_db_bytes")
    cursors: int = 0              # open page cursors (list/history reads in progress)
    parked_lock_waits: int = 0
    extra: Mapping[str, object] = field(default_factory=dict)

    _INTS: ClassVar[tuple[str, ...]] = (
        "commit_index", "applied_index", "sessions", "locks_held", "keys", "revision",
        "bad_frames", "snapshot_index", "pending_writes", "parked_watches")

    def to_wire(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id, "address": self.address, "reachable": True, "role": self.role,
            "leader": self.leader, "voting": self.voting, "ballot": list(self.ballot),
            "commit_index": self.commit_index, "applied_index": self.applied_index,
            "uptime_s": self.uptime_s, "sessions": self.sessions, "locks_held": self.locks_held,
            "keys": self.keys, "revision": self.revision,
            "last_leader_contact_ms": self.last_leader_contact_ms, "bad_frames": self.bad_frames,
            "snapshot_index": self.snapshot_index, "pending_writes": self.pending_writes,
            "parked_watches": self.parked_watches, "rejected_replies": self.rejected_replies,
            "rounds_exhausted": self.rounds_exhausted, "security": self.security,
            "public_key": self.public_key, "rejected_peer": self.rejected_peer,
            "denied": self.denied,
            "internal_errors": self.internal_errors,
            "alarms": list(self.alarms), "cursors": self.cursors,
            "parked_lock_waits": self.parked_lock_waits,
        }

    @classmethod
    def from_wire(cls, w: object) -> NodeStatus:
        m = _map(w, "status")
        ballot = _list(_get(m, "ballot", _MISSING), "ballot")
        if not (len(ballot) == 2 and type(ballot[0]) is int and type(ballot[1]) is str):
            raise SchemaError("field 'ballot' must be [round, node]")
        role = _str(m, "role")
        if role not in ("leader", "follower", "candidate"):
            raise SchemaError(f"unknown role {role!r}")
        address, leader = m.get("address"), m.get("leader")
        uptime = _get(m, "uptime_s", _MISSING)
        if not (address is None or type(address) is str) or not (leader is None or type(leader) is str):
            raise SchemaError("fields 'address' and 'leader' must be str or nil")
        if type(uptime) not in (int, float) or not math.isfinite(uptime):
            raise SchemaError("field 'uptime_s' must be a number")
        ints = {f: _int(m, f) for f in cls._INTS}
        for f in ("rejected_replies", "rejected_peer", "denied", "internal_errors", "cursors",
                  "parked_lock_waits"):
            ints[f] = _int(m, f, 0)
        alarms = _list(m.get("alarms", []), "alarms")
        if not all(type(a) is str for a in alarms):
            raise SchemaError("field 'alarms' must be a list of str")
        security, public_key = m.get("security"), m.get("public_key")
        if not (security is None or type(security) is str) or not (
                public_key is None or type(public_key) is str):
            raise SchemaError("fields 'security' and 'public_key' must be str or nil")
        named = {f for f in _STATUS_FIELDS}
        return cls(
            id=_str(m, "id"), address=address, role=role, leader=leader, voting=_bool(m, "voting"),
            ballot=(ballot[0], ballot[1]), uptime_s=float(uptime),
            last_leader_contact_ms=_opt_int(m.get("last_leader_contact_ms"), "last_leader_contact_ms"),
            rounds_exhausted=_bool(m, "rounds_exhausted", False), alarms=tuple(alarms),
            security=security, public_key=public_key,
            extra={k: v for k, v in m.items() if k not in named}, **ints)


_STATUS_FIELDS = ("reachable", *(f for f in NodeStatus.__dataclass_fields__ if f != "extra"))


# -- requests -------------------------------------------------------------------------------
# ``from_wire`` takes the whole request map (``id`` and ``op`` included, both ignored here);
# ``to_wire`` gives the map without ``id``, which the transport adds per attempt.

@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A replicated command; ``raw`` are the exact bytes the leader proposes and dedupes by."""

    op: ClassVar[Op] = Op.WRITE
    raw: bytes
    request: Request

    @classmethod
    def of(cls, request: Request) -> WriteRequest:
        """Encode ``request`` once: every retry sends identical bytes."""
        return cls(encode_request(request), request)

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.WRITE, "req": self.raw}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> WriteRequest:
        raw = m.get("req")
        if type(raw) is not bytes:
            _get(m, "req", _MISSING)   # missing or nil: say which
            raise SchemaError("field 'req' must be bytes")
        if len(raw) > MAX_COMMAND_BYTES:    # a key and a 1 MiB value fit with room to spare
            raise SchemaError(f"write request of {len(raw)} bytes exceeds {MAX_COMMAND_BYTES}")
        try:
            request = decode_request(raw)
        except ProtocolError as e:
            raise SchemaError(f"undecodable write: {e}") from None
        if request.client_id == "":
            raise SchemaError("internal requests are the leader's alone")
        if request.principal:
            raise SchemaError("a write names no principal: the leader stamps the sender's")
        return cls(raw, request)


@dataclass(frozen=True, slots=True)
class KeepaliveRequest:
    """Renew ``session_id``; or, in the batch form (``session_ids`` non-empty, the wire
    then carries no ``session_id``), every session of ``session_ids``."""

    op: ClassVar[Op] = Op.KEEPALIVE
    session_id: int
    session_ids: tuple[int, ...] = ()

    @classmethod
    def batch(cls, session_ids: Sequence[int]) -> KeepaliveRequest:
        return cls(session_ids[0], tuple(session_ids))

    @property
    def ids(self) -> tuple[int, ...]:
        return self.session_ids or (self.session_id,)

    def to_wire(self) -> dict[str, Any]:
        if self.session_ids:
            return {"op": Op.KEEPALIVE, "session_ids": list(self.session_ids)}
        return {"op": Op.KEEPALIVE, "session_id": self.session_id}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> KeepaliveRequest:
        if "session_ids" not in m:
            sid = m.get("session_id")
            return cls(sid if type(sid) is int else _int(m, "session_id"))
        ids = _list(m["session_ids"], "session_ids")
        if not 1 <= len(ids) <= MAX_KEEPALIVE_BATCH:
            raise SchemaError(f"session_ids must hold 1..{MAX_KEEPALIVE_BATCH} ids, got {len(ids)}")
        if not all(type(i) is int for i in ids):
            raise SchemaError("session_ids must be ints")
        return cls.batch(ids)


@dataclass(frozen=True, slots=True)
class GetRequest:
    op: ClassVar[Op] = Op.GET
    key: str
    stale: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.GET, "key": self.key, "stale": self.stale}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> GetRequest:
        key, stale = m.get("key"), m.get("stale", False)
        if (type(key) is str and type(stale) is bool and 0 < len(key) <= MAX_KEY_BYTES // 4
                and "\x00" not in key):   # the hot path: a short key, no error to word
            return cls(key, stale)
        return cls(_key(_str(m, "key"), "key"), _bool(m, "stale", False))


@dataclass(frozen=True, slots=True)
class ListRequest:
    """Keys under ``prefix`` after ``start_after``, at most ``limit`` (0: all); or, with
    ``cursor``, the page of an earlier list read that starts ``offset`` rows after its
    first page (the other fields are then unused)."""

    op: ClassVar[Op] = Op.LIST
    prefix: str = ""
    stale: bool = False
    start_after: str = ""
    limit: int = 0
    cursor: int = 0
    offset: int = 0

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": Op.LIST, "prefix": self.prefix, "stale": self.stale}
        if self.start_after:
            out["start_after"] = self.start_after
        if self.limit:
            out["limit"] = self.limit
        if self.cursor:
            out["cursor"], out["offset"] = self.cursor, self.offset
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> ListRequest:
        return cls(_key(_str(m, "prefix", ""), "prefix", allow_empty=True),
                   _bool(m, "stale", False),
                   _key(_str(m, "start_after", ""), "start_after", allow_empty=True),
                   _count(m, "limit", 0), _count(m, "cursor", 0), _count(m, "offset", 0))


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    op: ClassVar[Op] = Op.HISTORY
    key: str
    stale: bool = False
    cursor: int = 0
    offset: int = 0

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": Op.HISTORY, "key": self.key, "stale": self.stale}
        if self.cursor:
            out["cursor"], out["offset"] = self.cursor, self.offset
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> HistoryRequest:
        return cls(_key(_str(m, "key"), "key"), _bool(m, "stale", False),
                   _count(m, "cursor", 0), _count(m, "offset", 0))


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """Events after revision ``after`` under ``prefixes`` (if any) or ``prefix``.

    ``wait_ms`` and ``limit`` are clamped into range rather than refused, as they always were.
    """

    op: ClassVar[Op] = Op.WATCH
    after: int
    prefix: str = ""
    prefixes: tuple[str, ...] = ()
    wait_ms: int = 0
    limit: int = MAX_WATCH_BATCH

    @property
    def selector(self) -> str | tuple[str, ...]:
        """What ``Machine.events_since`` matches keys against."""
        return self.prefixes or self.prefix

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.WATCH, "prefix": self.prefix, "prefixes": list(self.prefixes),
                "after": self.after, "wait_ms": self.wait_ms, "limit": self.limit}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> WatchRequest:
        prefix = m.get("prefix", "")
        if not (type(prefix) is str and len(prefix) <= MAX_KEY_BYTES // 4 and "\x00" not in prefix):
            prefix = _key(_str(m, "prefix", ""), "prefix", allow_empty=True)
        prefixes = m.get("prefixes", [])
        if not (type(prefixes) is list and len(prefixes) <= MAX_WATCH_PREFIXES
                and all(type(x) is str for x in prefixes)):
            raise SchemaError(f"prefixes must be a list of at most {MAX_WATCH_PREFIXES} strings")
        for x in prefixes:
            if not (len(x) <= MAX_KEY_BYTES // 4 and "\x00" not in x):   # else say why, if so
                _key(x, "prefix", allow_empty=True)
        after = m.get("after")
        if not (type(after) is int and 0 <= after <= MAX_INT):
            after = _count(m, "after", _MISSING)
        return cls(after, prefix, tuple(prefixes),
                   _clamp(_int(m, "wait_ms", 0), 0, MAX_WAIT_MS),
                   _clamp(_int(m, "limit", MAX_WATCH_BATCH), 1, MAX_WATCH_BATCH))


@dataclass(frozen=True, slots=True)
class LockWaitRequest:
    op: ClassVar[Op] = Op.LOCK_WAIT
    name: str
    session_id: int
    wait_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.LOCK_WAIT, "name": self.name, "session_id": self.session_id,
                "wait_ms": self.wait_ms}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> LockWaitRequest:
        return cls(_key(_str(m, "name"), "name"), _count(m, "session_id", _MISSING),
                   _clamp(_int(m, "wait_ms", 0), 0, MAX_WAIT_MS))


@dataclass(frozen=True, slots=True)
class LocksRequest:
    """Every held lock; or, with ``cursor``, the page of an earlier ``locks`` read that
    starts ``offset`` rows after its first page (as ``ListRequest``)."""

    op: ClassVar[Op] = Op.LOCKS
    stale: bool = False
    cursor: int = 0
    offset: int = 0

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": Op.LOCKS, "stale": self.stale}
        if self.cursor:
            out["cursor"], out["offset"] = self.cursor, self.offset
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> LocksRequest:
        return cls(_bool(m, "stale", False), _count(m, "cursor", 0), _count(m, "offset", 0))


@dataclass(frozen=True, slots=True)
class StatusRequest:
    op: ClassVar[Op] = Op.STATUS

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.STATUS}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> StatusRequest:
        return cls()


@dataclass(frozen=True, slots=True)
class SnapshotSaveRequest:
    op: ClassVar[Op] = Op.SNAPSHOT_SAVE

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.SNAPSHOT_SAVE}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> SnapshotSaveRequest:
        return cls()


@dataclass(frozen=True, slots=True)
class RevisionRequest:
    op: ClassVar[Op] = Op.REVISION

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.REVISION}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> RevisionRequest:
        return cls()


@dataclass(frozen=True, slots=True)
class SnapshotChunkRequest:
    op: ClassVar[Op] = Op.SNAPSHOT_CHUNK
    export_id: int
    offset: int

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.SNAPSHOT_CHUNK, "export_id": self.export_id, "offset": self.offset}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> SnapshotChunkRequest:
        export_id, offset = _int(m, "export_id"), _int(m, "offset")
        if export_id < 0 or offset < 0:
            raise SchemaError("export_id and offset must be >= 0")
        return cls(export_id, offset)


@dataclass(frozen=True, slots=True)
class AuthListRequest:
    op: ClassVar[Op] = Op.AUTH_LIST
    stale: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.AUTH_LIST, "stale": self.stale}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> AuthListRequest:
        return cls(_bool(m, "stale", False))


@dataclass(frozen=True, slots=True)
class MembersRequest:
    op: ClassVar[Op] = Op.MEMBERS

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.MEMBERS}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> MembersRequest:
        return cls()


MEMBER_ACTIONS = ("add", "remove", "transfer")
_MAX_MEMBER_FIELD = 512


@dataclass(frozen=True, slots=True)
class MemberChangeRequest:
    op: ClassVar[Op] = Op.MEMBER_CHANGE
    action: str
    node: str
    address: str = ""
    publish: str = ""
    http: str = ""
    public_key: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"op": Op.MEMBER_CHANGE, "action": self.action, "node": self.node,
                "address": self.address, "publish": self.publish, "http": self.http,
                "public_key": self.public_key}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> MemberChangeRequest:
        action, node = _str(m, "action"), _str(m, "node")
        if action not in MEMBER_ACTIONS:
            raise SchemaError(f"action must be one of {', '.join(MEMBER_ACTIONS)}")
        if not 0 < len(node) <= 64:
            raise SchemaError("node must be an id of 1..64 characters")
        rest = [_str(m, f, "") for f in ("address", "publish", "http", "public_key")]
        if any(len(v) > _MAX_MEMBER_FIELD for v in rest):
            raise SchemaError(f"addresses and keys are at most {_MAX_MEMBER_FIELD} characters")
        if action == "add" and not rest[0]:
            raise SchemaError("add needs the new member's address")
        return cls(action, node, *rest)


ClientRequest = (WriteRequest | KeepaliveRequest | GetRequest | ListRequest | HistoryRequest
                 | WatchRequest | LockWaitRequest | LocksRequest | StatusRequest | RevisionRequest
                 | AuthListRequest | SnapshotSaveRequest | SnapshotChunkRequest
                 | MembersRequest | MemberChangeRequest)
REQUEST_TYPES: tuple[type[ClientRequest], ...] = (
    WriteRequest, KeepaliveRequest, GetRequest, ListRequest, HistoryRequest, WatchRequest,
    LockWaitRequest, LocksRequest, StatusRequest, RevisionRequest, AuthListRequest,
    SnapshotSaveRequest, SnapshotChunkRequest, MembersRequest, MemberChangeRequest)
_BY_OP: dict[str, type[ClientRequest]] = {t.op.value: t for t in REQUEST_TYPES}
if set(_BY_OP) != {o.value for o in Op} or len(_BY_OP) != len(REQUEST_TYPES):
    raise ImportError("protocol: every Op needs exactly one request record in REQUEST_TYPES")


def decode_client_request(w: object) -> ClientRequest:
    """The request record a decoded map holds, or ``SchemaError``."""
    if type(w) is not dict:
        raise SchemaError("request must be a map")
    cls = _lookup(_BY_OP, w.get("op"))
    if cls is None:
        raise SchemaError(f"unknown op {w.get('op')!r:.100}")
    return cls.from_wire(w)


# -- replies --------------------------------------------------------------------------------
# ``to_wire`` gives the map without ``id``; ``from_wire`` takes a map whose ``ok`` is true
# (the client looks at ``ok`` first and reads an ``ErrorReply`` otherwise).

def reply_map(rid: object, reply: Reply) -> dict[str, Any]:
    """The whole reply map: ``reply``'s fields under the request's ``id``."""
    out = reply.to_wire()
    out["id"] = rid
    return out


@dataclass(frozen=True, slots=True)
class WriteReply:
    result: Result

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "result": self.result.to_wire()}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> WriteReply:
        return cls(Result.from_wire(m.get("result")))


@dataclass(frozen=True, slots=True)
class KeepaliveReply:
    """``known``: every session asked about is known (and was renewed). ``sessions``: in
    the batch form, one status per requested id, in order."""

    known: bool
    sessions: tuple[KeepaliveStatus, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        if not self.sessions:
            return {"ok": True, "known": self.known}
        return {"ok": True, "known": self.known, "sessions": [s.value for s in self.sessions]}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> KeepaliveReply:
        known = _bool(m, "known")
        if "sessions" not in m:
            return cls(known)
        raw = _list(m["sessions"], "sessions")
        if len(raw) > MAX_KEEPALIVE_BATCH:
            raise SchemaError(f"sessions must hold at most {MAX_KEEPALIVE_BATCH} statuses")
        out = []
        for v in raw:
            st = _lookup(_KEEPALIVE_STATUSES, v)
            if st is None:
                raise SchemaError(f"unknown keepalive status {v!r}")
            out.append(st)
        return cls(known, tuple(out))


@dataclass(frozen=True, slots=True)
class GetReply:
    kv: KeyValue | None
    revision: int

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "kv": None if self.kv is None else self.kv.to_wire(),
                "revision": self.revision}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> GetReply:
        kv, revision = m.get("kv"), m.get("revision")
        if type(revision) is not int:
            revision = _int(m, "revision")    # raises, saying why
        return cls(None if kv is None else KeyValue.from_wire(kv), revision)


@dataclass(frozen=True, slots=True)
class ListReply:
    """One page of a list read taken at ``revision``. ``cursor`` (non-zero): the read holds
    more rows, fetched with ``ListRequest(cursor=...)``; ``more``: keys beyond the request's
    ``limit`` exist (continue with ``start_after`` = the last key)."""

    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool = False
    cursor: int = 0

    def to_wire(self) -> dict[str, Any]:
        out = {"ok": True, "kvs": [kv.to_wire() for kv in self.kvs], "revision": self.revision}
        if self.more:
            out["more"] = True
        if self.cursor:
            out["cursor"] = self.cursor
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> ListReply:
        return cls(tuple(KeyValue.from_wire(kv) for kv in _list(m.get("kvs"), "kvs")),
                   _int(m, "revision"), _bool(m, "more", False), _count(m, "cursor", 0))


@dataclass(frozen=True, slots=True)
class HistoryReply:
    """One page of a key's history (oldest first) read at ``revision``; ``cursor`` as in
    ``ListReply``."""

    events: tuple[Change, ...]
    revision: int
    cursor: int = 0

    def to_wire(self) -> dict[str, Any]:
        out = {"ok": True, "events": [e.to_wire() for e in self.events], "revision": self.revision}
        if self.cursor:
            out["cursor"] = self.cursor
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> HistoryReply:
        return cls(_changes(m.get("events")), _int(m, "revision"), _count(m, "cursor", 0))


@dataclass(frozen=True, slots=True)
class WatchReply:
    """``events`` after the request's ``after``, in revision order; complete up to
    ``revision`` (the node's) unless ``more``: then only up to its last event (the reply
    reached the request's ``limit`` or the byte budget)."""

    events: tuple[Change, ...]
    revision: int
    more: bool = False

    def to_wire(self) -> dict[str, Any]:
        out = {"ok": True, "events": [e.to_wire() for e in self.events], "revision": self.revision}
        if self.more:
            out["more"] = True
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> WatchReply:
        return cls(_changes(m.get("events")), _int(m, "revision"), _bool(m, "more", False))


@dataclass(frozen=True, slots=True)
class LockWaitReply:
    state: LockState
    token: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "state": self.state, "token": self.token}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> LockWaitReply:
        state = _lookup(_LOCK_STATES, m.get("state"))
        if state is None:
            raise SchemaError(f"unknown lock state {m.get('state')!r:.100}")
        return cls(state, _int(m, "token"))


@dataclass(frozen=True, slots=True)
class LocksReply:
    """One page of a locks read taken at ``revision``; ``cursor`` as in ``ListReply``."""

    locks: tuple[LockRow, ...]
    revision: int
    cursor: int = 0

    def to_wire(self) -> dict[str, Any]:
        out = {"ok": True, "locks": [lk.to_wire() for lk in self.locks], "revision": self.revision}
        if self.cursor:
            out["cursor"] = self.cursor
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> LocksReply:
        return cls(tuple(LockRow.from_wire(r) for r in _list(m.get("locks"), "locks")),
                   _int(m, "revision"), _count(m, "cursor", 0))


@dataclass(frozen=True, slots=True)
class StatusReply:
    status: NodeStatus

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "status": self.status.to_wire()}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> StatusReply:
        return cls(NodeStatus.from_wire(m.get("status")))


@dataclass(frozen=True, slots=True)
class SnapshotSaveReply:
    """A save opened at log index ``index``: its body is ``snapshot_bytes`` of the
    snapshot taken at ``snapshot_index``, then ``entries`` records (``core.export``)."""

    export_id: int
    index: int
    revision: int
    keys: int
    snapshot_index: int
    snapshot_bytes: int
    entries: int
    body_bytes: int
    node: str

    _INTS: ClassVar[tuple[str, ...]] = ("export_id", "index", "revision", "keys", "snapshot_index",
                                        "snapshot_bytes", "entries", "body_bytes")

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, **{f: getattr(self, f) for f in self._INTS}, "node": self.node}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> SnapshotSaveReply:
        ints = {f: _int(m, f) for f in cls._INTS}
        if min(ints.values()) < 0 or ints["snapshot_index"] > ints["index"] or (
                ints["snapshot_bytes"] > ints["body_bytes"]
                or ints["entries"] != ints["index"] - ints["snapshot_index"]):
            raise SchemaError(f"inconsistent snapshot_save reply {ints}")
        return cls(node=_str(m, "node"), **ints)


@dataclass(frozen=True, slots=True)
class SnapshotChunkReply:
    offset: int
    data: bytes
    done: bool
    sha256: bytes = b""     # the whole body's, with the last chunk

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "offset": self.offset, "data": self.data, "done": self.done,
                "sha256": self.sha256}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> SnapshotChunkReply:
        data, sha = m.get("data"), m.get("sha256", b"")
        if type(data) is not bytes or len(data) > SNAPSHOT_CHUNK_BYTES:
            raise SchemaError(f"field 'data' must be bytes, at most {SNAPSHOT_CHUNK_BYTES}")
        done = _bool(m, "done")
        if type(sha) is not bytes or len(sha) != (32 if done else 0):
            raise SchemaError("field 'sha256' must be 32 bytes with the last chunk, empty before")
        offset = _int(m, "offset")
        if offset < 0:
            raise SchemaError("offset must be >= 0")
        return cls(offset, data, done, sha)


@dataclass(frozen=True, slots=True)
class RevisionReply:
    revision: int

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "revision": self.revision}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> RevisionReply:
        return cls(_int(m, "revision"))


@dataclass(frozen=True, slots=True)
class AuthListReply:
    principals: tuple[PrincipalRow, ...]
    revision: int

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "principals": [p.to_wire() for p in self.principals],
                "revision": self.revision}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> AuthListReply:
        return cls(tuple(PrincipalRow.from_wire(r) for r in _list(m.get("principals"), "principals")),
                   _int(m, "revision"))


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member: [id, incarnation, voting, address, publish, http, public_key, progress,
    live]; ``progress`` is the commit index it last reported (-1: not heard yet), ``live``
    whether the leader heard it within an election timeout."""

    id: str
    incarnation: int
    voting: bool
    address: str
    publish: str
    http: str
    public_key: str
    progress: int = -1
    live: bool = False

    def to_wire(self) -> list[object]:
        return [self.id, self.incarnation, self.voting, self.address, self.publish, self.http,
                self.public_key, self.progress, self.live]

    @classmethod
    def from_wire(cls, w: object) -> MemberRow:
        r = _list(w, "member row")
        if (len(r) < 8 or type(r[0]) is not str or type(r[1]) is not int
                or type(r[2]) is not bool or not all(type(x) is str for x in r[3:7])
                or type(r[7]) is not int):
            raise SchemaError("member row must be [id, incarnation, voting, address, publish, "
                              "http, public_key, progress]")
        live = r[8] if len(r) > 8 and type(r[8]) is bool else False
        return cls(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], live)


@dataclass(frozen=True, slots=True)
class MembersReply:
    members: tuple[MemberRow, ...]
    leader: str | None
    change_in_flight: bool

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "members": [r.to_wire() for r in self.members],
                "leader": self.leader, "change_in_flight": self.change_in_flight}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> MembersReply:
        leader = m.get("leader")
        return cls(tuple(MemberRow.from_wire(r) for r in _list(m.get("members"), "members")),
                   leader if type(leader) is str else None,
                   _bool(m, "change_in_flight", False))


@dataclass(frozen=True, slots=True)
class MemberChangeReply:
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "message": self.message}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> MemberChangeReply:
        return cls(_str(m, "message", ""))


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal. ``error`` is a plain str when a newer node sends a code this one lacks."""

    error: ErrorCode | str
    message: str
    leader: str | None = None            # not_leader: who leads, if known
    leader_address: str | None = None    # not_leader: where to send the request instead
    oldest: int | None = None            # compacted: the oldest revision still kept
    leader_public_key: str | None = None  # not_leader: the leader's CURVE key (secure clusters)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error": self.error, "message": self.message}
        if self.error == ErrorCode.NOT_LEADER:
            out["leader"], out["leader_address"] = self.leader, self.leader_address
            if self.leader_public_key is not None:    # secure clusters only
                out["leader_public_key"] = self.leader_public_key
        elif self.error == ErrorCode.COMPACTED:
            out["oldest"] = self.oldest
        return out

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> ErrorReply:
        error = _str(m, "error")
        message = m.get("message")
        leader, address = m.get("leader"), m.get("leader_address")
        oldest, public = m.get("oldest"), m.get("leader_public_key")
        return cls(_ERROR_CODES.get(error, error),
                   message if type(message) is str and message else error,
                   leader if type(leader) is str else None,
                   address if type(address) is str and address else None,
                   oldest if type(oldest) is int else None,
                   public if type(public) is str and public else None)


Reply = (WriteReply | KeepaliveReply | GetReply | ListReply | HistoryReply | WatchReply
         | LockWaitReply | LocksReply | StatusReply | RevisionReply | AuthListReply
         | SnapshotSaveReply | SnapshotChunkReply | MembersReply | MemberChangeReply
         | ErrorReply)
