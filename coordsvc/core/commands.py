"""Replicated client commands and their compact msgpack encoding.

A log entry's batch holds encoded ``Request``s. Decoding checks *types* only and
raises ``ProtocolError`` for anything malformed, because the bytes come from a peer
or a client. Checking *values* (key length, ttl range, ...) is ``validate``'s job:
the state machine runs it too and answers ``invalid`` instead of raising, so a bad
value from a client is an ordinary, replicated, cacheable outcome.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs published

from .types import ProtocolError

__all__ = [
    "Acquire", "AuthAdd", "AuthRemove", "Cancel", "CloseSession", "Command", "Delete",
    "ExpireSession", "Fence", "Noop", "OpenAndAcquire", "OpenSession", "Put", "Release", "Request",
    "Txn", "MAX_TXN_BYTES", "MAX_TXN_OPS", "EndLockDelay", "MAX_LOCK_DELAY_MS",
    "AcquireShared", "MAX_SEMAPHORE_LIMIT", "SHARED_MODES", "Campaign", "ELECTION_PREFIX",
    "MAX_CAMPAIGN_VALUE_BYTES", "RESERVED_PREFIX", "SCHEMA_PREFIX", "SchemaDelete", "SchemaSet",
    "BOOTSTRAP_ADMIN", "MAX_CLIENT_ID_CHARS", "MAX_INT", "MAX_KEY_BYTES", "MAX_PRINCIPAL_CHARS",
    "MAX_RIGHT_PREFIXES", "MAX_TTL_MS", "MAX_VALUE_BYTES", "MIN_TTL_MS", "NAME_RE",
    "decode_request", "encode_request", "is_public_key", "is_record", "name_error", "stamp", "under",
    "validate", "validate_request",
]

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 1_048_576
MIN_TTL_MS = 1_000
MAX_TTL_MS = 300_000
MAX_CLIENT_ID_CHARS = 64
# A principal is a client name (<= 64 characters) or "node:<id>" (ids <= 64 characters).
MAX_PRINCIPAL_CHARS = 128
# Per right (read, write, lock) of one principal: enough for any real policy, and it keeps
# an AuthAdd far below one command's byte bound (3 x 64 x 512 B).
MAX_RIGHT_PREFIXES = 64
# The bootstrap admin key's principal (cluster init writes it to admin.key). Its key lives
# in cluster.toml, not in the log, so ``AuthAdd`` never takes this name.
BOOTSTRAP_ADMIN = "admin"
# A principal's name: 1..64 letters, digits, '_', '.', '-', not starting with one of the
# last three (keys.check_name is this rule). No colon, so no name is a member's.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_Z85_KEY_CHARS = 40
_Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          ".-:+=^!/*?&<>()[]{}@%$#")
# Counters and client-chosen numbers must survive a msgpack round trip (snapshots).
MAX_INT = 2**63 - 1
# A transaction: compares, and ops per branch (etcd's default max-txn-ops is 128); keys and
# values in all at most one value's limit, so the encoded command stays under
# types.MAX_COMMAND_BYTES (1 MiB + 8 KiB: 192 entries of framing fit in the 8 KiB).
MAX_TXN_OPS = 64
MAX_TXN_BYTES = 1_048_576
# Consul caps its lock-delay at 60 s too: longer, and a crashed holder blocks everyone.
MAX_LOCK_DELAY_MS = 60_000
# A semaphore's slots (its holders are listed in ``locks`` answers, so bounded).
MAX_SEMAPHORE_LIMIT = 1_000
SHARED_MODES = ("semaphore", "read", "write")
# The cluster's own records (elections, schemas) are named RESERVED_PREFIX + a name. A
# client's key or lock name never holds NUL, so no client name is a record's, and every
# legal key stays the client's; clients read records (get, list, history, watch of a
# record's name) but only the machine writes them. NUL also sorts before every client key.
RESERVED_PREFIX = "\x00"
# Election NAME is the lock ELECTION_PREFIX + NAME, and its leader's record is the key of
# that same name.
ELECTION_PREFIX = RESERVED_PREFIX + "election/"
# The schema of config prefix P is the key SCHEMA_PREFIX + P (core.schemas).
SCHEMA_PREFIX = RESERVED_PREFIX + "schema/"
MAX_CAMPAIGN_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fence:
    """Write only if ``lock`` is currently held with exactly ``token``."""

    lock: str
    token: int


@dataclass(frozen=True, slots=True)
class Put:
    """Set ``key``. ``lease`` (a session id, 0: none) makes the key ephemeral: it is
    deleted when that session ends (closed, expired or revoked). A put without a lease
    makes the key persistent again."""

    key: str
    value: bytes
    if_revision: int | None = None
    fence: Fence | None = None
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    if_revision: int | None = None
    fence: Fence | None = None


# A lease is a session opened with OpenSession; locks taken on a lease use Acquire and
# Release on its session (a lock of its own session uses OpenAndAcquire/CloseSession).
@dataclass(frozen=True, slots=True)
class OpenSession:
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class CloseSession:
    session_id: int


@dataclass(frozen=True, slots=True)
class ExpireSession:
    """Proposed by the leader only, as an internal request (client_id "", seq 0)."""

    session_id: int


@dataclass(frozen=True, slots=True)
class Acquire:
    """Acquire (or queue for) ``name`` on session ``session_id``. ``lock_delay_ms``: should
    the session expire while it holds the lock, nobody gets it for that long."""

    name: str
    session_id: int
    wait: bool
    lock_delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class OpenAndAcquire:
    """Open a session of ``ttl_ms`` and acquire (or queue for) ``name`` on it, in one
    command: a lock cycle is then two replicated writes, this and ``CloseSession``.

    When nothing is held or queued (busy with ``wait=False``, or a limit) no session is
    left behind.
    """

    name: str
    ttl_ms: int
    wait: bool
    lock_delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class AcquireShared:
    """Take (or queue for) a slot of semaphore ``name`` (``mode`` "semaphore", at most
    ``limit`` holders) or read/write lock ``name`` (``mode`` "read": shared with readers,
    "write": alone; ``limit`` unused, 0) on session ``session_id``. Waiters are granted in
    FIFO order, each with a fencing token; ``Release`` and ``Cancel`` work as for locks."""

    name: str
    session_id: int
    mode: str
    limit: int
    wait: bool


@dataclass(frozen=True, slots=True)
class Campaign:
    """Stand for election ``name`` with ``value`` on session ``session_id``: queue (FIFO)
    for its lock; whoever holds it leads, and its record key says so."""

    name: str
    session_id: int
    value: bytes
    wait: bool = True


@dataclass(frozen=True, slots=True)
class SchemaSet:
    """Attach JSON Schema ``schema`` (JSON text) to config prefix ``prefix``: from then on
    every put under it must be JSON that validates (core.schemas)."""

    prefix: str
    schema: bytes


@dataclass(frozen=True, slots=True)
class SchemaDelete:
    prefix: str


@dataclass(frozen=True, slots=True)
class EndLockDelay:
    """Proposed by the leader only, as an internal request, once a lock's delay passed on
    its clock: the lock goes to its first waiter (or away)."""

    name: str


@dataclass(frozen=True, slots=True)
class Release:
    name: str
    session_id: int
    token: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Leave the wait queue of ``name``, or release it if already granted.

    Sent when a client's lock timeout fires: a grant may have raced the timeout,
    and "LockTimeout: nothing is held" must stay true.
    """

    name: str
    session_id: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class AuthAdd:
    """Record principal ``name``: a client known by CURVE key ``public_key`` with these
    rights (``core.acl``). Only the public key is replicated; the secret never leaves the
    machine that generated it."""

    name: str
    public_key: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()
    admin: bool = False


@dataclass(frozen=True, slots=True)
class AuthRemove:
    """Forget principal ``name``: its key is refused from then on, its sessions close."""

    name: str


@dataclass(frozen=True, slots=True)
class Txn:
    """Compare revisions, then apply ``success`` if every compare holds, else ``failure``:
    all or nothing, every write of the applied branch at one revision.

    ``compare`` is ``(key, revision)`` pairs (0: the key is absent); the branches hold
    ``Put``s and ``Delete``s without their own ``if_revision`` or ``fence`` (a put may name a
    ``lease``), each key at most once per branch. ``fence`` guards the whole transaction
    as it guards a single put. Bounded: at most ``MAX_TXN_OPS`` compares and as many ops per
    branch, and ``MAX_TXN_BYTES`` of keys and values in all, so one fits one command.
    """

    compare: tuple[tuple[str, int], ...] = ()
    success: tuple[Put | Delete, ...] = ()
    failure: tuple[Put | Delete, ...] = ()
    fence: Fence | None = None


Command = (Put | Delete | OpenSession | CloseSession | ExpireSession | Acquire | Release | Cancel
           | OpenAndAcquire | Noop | AuthAdd | AuthRemove | Txn | EndLockDelay | AcquireShared
           | Campaign | SchemaSet | SchemaDelete)


@dataclass(frozen=True, slots=True)
class Request:
    """One element of a log entry's batch: a command plus its exactly-once identity.

    ``client_id == ""`` with ``seq == 0`` marks an internal request (no dedupe).
    ``first_unacked`` is the client's promise never to retry a lower seq.

    ``principal`` is who sent it, stamped by the leader that proposed it (:func:`stamp`)
    from the connection's authenticated identity; a client cannot set it (the schema
    refuses a write that carries one). ``""``: not stamped -- an internal request, or an
    entry written before principals existed, which the machine treats as the bootstrap
    admin's (every client was, then).
    """

    client_id: str
    seq: int
    first_unacked: int
    cmd: Command
    principal: str = ""


# -- validation ----------------------------------------------------------------------

def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def is_record(name: str) -> bool:
    """Whether ``name`` is one of the cluster's own records (or its lock), never a client's."""
    return name.startswith(RESERVED_PREFIX)


def under(key: str, prefix: str) -> bool:
    """Whether ``key`` is under ``prefix`` as clients list and watch: "" is every client key,
    and a record is under a prefix that names records (begins with RESERVED_PREFIX) only."""
    return key.startswith(prefix) and (prefix != "" or not key.startswith(RESERVED_PREFIX))


def nul_error(what: str, v: str, records: bool) -> str | None:
    """Why the NULs in ``v`` refuse it, or None. No name holds one; with ``records``, a
    record's name -- RESERVED_PREFIX, then a name -- is accepted too (to read it, or to
    release, cancel or fence by an election's lock)."""
    if "\x00" not in v:
        return None
    if records:
        body = v[len(RESERVED_PREFIX):]
        if v.startswith(RESERVED_PREFIX) and body and "\x00" not in body:
            return None
        return f"{what} must not contain NUL (but the one leading a record's name)"
    return f"{what} must not contain NUL"


def name_error(what: str, v: object, records: bool = False) -> str | None:
    """Why ``v`` is no key or lock name (1..512 UTF-8 bytes, no NUL), or None; ``records``
    as for :func:`nul_error`."""
    if not isinstance(v, str):
        return f"{what} must be a string"
    try:
        n = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8"
    if not 1 <= n <= MAX_KEY_BYTES:
        return f"{what} must be 1..{MAX_KEY_BYTES} UTF-8 bytes, got {n}"
    return nul_error(what, v, records)



def _check_int(what: str, v: object, low: int, high: int = MAX_INT) -> str | None:
    if not _is_int(v):
        return f"{what} must be an int"
    if not low <= v <= high:
        return f"{what} must be in [{low}, {high}], got {v}"
    return None


def _check_write(key: object, if_revision: object, fence: object) -> str | None:
    err = name_error("key", key)
    if err is None and if_revision is not None:
        err = _check_int("if_revision", if_revision, 0)
    if err is None and fence is not None:
        if not isinstance(fence, Fence):
            return "fence must be a Fence"
        err = name_error("fence lock name", fence.lock, records=True) or _check_int("fence token", fence.token, 1)
    return err


def validate(cmd: object) -> str | None:
    """The user-limit error message for ``cmd``, or None when it is acceptable."""
    if isinstance(cmd, Put):
        if not isinstance(cmd.value, bytes):
            return "value must be bytes"
        if len(cmd.value) > MAX_VALUE_BYTES:
            return f"value must be at most {MAX_VALUE_BYTES} bytes, got {len(cmd.value)}"
        return (_check_write(cmd.key, cmd.if_revision, cmd.fence)
                or _check_int("lease", cmd.lease, 0))
    if isinstance(cmd, Delete):
        return _check_write(cmd.key, cmd.if_revision, cmd.fence)
    if isinstance(cmd, OpenSession):
        return _check_int("ttl_ms", cmd.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)
    if isinstance(cmd, (CloseSession, ExpireSession)):
        return _check_int("session_id", cmd.session_id, 1)
    if isinstance(cmd, Acquire):
        if not isinstance(cmd.wait, bool):
            return "wait must be a bool"
        return (name_error("lock name", cmd.name) or _check_int("session_id", cmd.session_id, 1)
                or _check_int("lock_delay_ms", cmd.lock_delay_ms, 0, MAX_LOCK_DELAY_MS))
    if isinstance(cmd, OpenAndAcquire):
        if not isinstance(cmd.wait, bool):
            return "wait must be a bool"
        return (name_error("lock name", cmd.name) or _check_int("ttl_ms", cmd.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)
                or _check_int("lock_delay_ms", cmd.lock_delay_ms, 0, MAX_LOCK_DELAY_MS))
    if isinstance(cmd, EndLockDelay):
        return name_error("lock name", cmd.name)
    if isinstance(cmd, (SchemaSet, SchemaDelete)):
        if not isinstance(cmd.prefix, str):
            return "prefix must be a string"
        err = name_error("schema key", SCHEMA_PREFIX + cmd.prefix, records=True)
        if err is None and isinstance(cmd, SchemaSet):
            if not isinstance(cmd.schema, bytes) or len(cmd.schema) > 64 * 1024:
                return "a schema is JSON text of at most 65536 bytes"
        return err
    if isinstance(cmd, Campaign):
        if not isinstance(cmd.wait, bool) or not isinstance(cmd.value, bytes):
            return "wait must be a bool and value bytes"
        if len(cmd.value) > MAX_CAMPAIGN_VALUE_BYTES:
            return f"a campaign's value is at most {MAX_CAMPAIGN_VALUE_BYTES} bytes, got {len(cmd.value)}"
        err = name_error("election name", cmd.name)
        if err is None and isinstance(cmd.name, str):
            err = name_error("election name", ELECTION_PREFIX + cmd.name, records=True)
        return err or _check_int("session_id", cmd.session_id, 1)
    if isinstance(cmd, AcquireShared):
        if not isinstance(cmd.wait, bool):
            return "wait must be a bool"
        if cmd.mode not in SHARED_MODES:
            return f"mode must be one of {SHARED_MODES}, got {cmd.mode!r:.40}"
        low, high = (1, MAX_SEMAPHORE_LIMIT) if cmd.mode == "semaphore" else (0, 0)
        return (name_error("lock name", cmd.name) or _check_int("session_id", cmd.session_id, 1)
                or _check_int("limit", cmd.limit, low, high))
    # Release and Cancel also name an election's lock (its record's name): a candidate
    # resigns, or gives up waiting, by it. Taking one is Campaign's alone.
    if isinstance(cmd, Release):
        return (name_error("lock name", cmd.name, records=True)
                or _check_int("session_id", cmd.session_id, 1) or _check_int("token", cmd.token, 1))
    if isinstance(cmd, Cancel):
        return (name_error("lock name", cmd.name, records=True)
                or _check_int("session_id", cmd.session_id, 1))
    if isinstance(cmd, Noop):
        return None
    if isinstance(cmd, AuthAdd):
        return _check_auth_add(cmd)
    if isinstance(cmd, AuthRemove):
        return _check_principal_name(cmd.name)
    if isinstance(cmd, Txn):
        return _check_txn(cmd)
    return f"unknown command {type(cmd).__name__}"


def _check_txn(cmd: Txn) -> str | None:
    if not (isinstance(cmd.compare, tuple) and isinstance(cmd.success, tuple)
            and isinstance(cmd.failure, tuple)):
        return "a transaction's compare, success and failure must be tuples"
    total = 0
    if len(cmd.compare) > MAX_TXN_OPS:
        return f"a transaction takes at most {MAX_TXN_OPS} compares, got {len(cmd.compare)}"
    for c in cmd.compare:
        if not (isinstance(c, tuple) and len(c) == 2):
            return "a compare is (key, revision)"
        err = name_error("compare key", c[0], records=True) or _check_int("compare revision", c[1], 0)
        if err is not None:
            return err
        total += len(c[0].encode("utf-8"))
    for branch, ops in (("success", cmd.success), ("failure", cmd.failure)):
        if len(ops) > MAX_TXN_OPS:
            return f"a transaction's {branch} takes at most {MAX_TXN_OPS} ops, got {len(ops)}"
        keys: set[str] = set()
        for op in ops:
            if not isinstance(op, (Put, Delete)):
                return f"a transaction's {branch} holds puts and deletes only"
            if op.if_revision is not None or op.fence is not None:
                return "ops inside a transaction take no if_revision or fence (use compare and fence=)"
            err = validate(op)
            if err is not None:
                return f"{branch}: {err}"
            if op.key in keys:
                return f"{branch}: key {op.key!r} appears twice"
            keys.add(op.key)
            total += len(op.key.encode("utf-8")) + (len(op.value) if isinstance(op, Put) else 0)
    if total > MAX_TXN_BYTES:
        return f"a transaction holds at most {MAX_TXN_BYTES} bytes of keys and values, got {total}"
    if cmd.fence is not None:
        if not isinstance(cmd.fence, Fence):
            return "fence must be a Fence"
        return name_error("fence lock name", cmd.fence.lock, records=True) or _check_int("fence token", cmd.fence.token, 1)
    return None


def is_public_key(v: object) -> TypeGuard[str]:
    """A Z85-encoded 32-byte CURVE key (as ``zmq.curve_keypair()`` gives it)."""
    return isinstance(v, str) and len(v) == _Z85_KEY_CHARS and set(v) <= _Z85_ALPHABET


def _check_principal_name(v: object) -> str | None:
    if not (isinstance(v, str) and NAME_RE.match(v)):
        return ("a principal's name is 1..64 letters, digits, '_', '.' or '-' "
                f"(not starting with one of the last three), got {v!r:.80}")
    return None


def _check_auth_add(cmd: AuthAdd) -> str | None:
    err = _check_principal_name(cmd.name)
    if err is not None:
        return err
    if cmd.name == BOOTSTRAP_ADMIN:
        return f"{BOOTSTRAP_ADMIN!r} is the bootstrap key's name; pick another"
    if not is_public_key(cmd.public_key):
        return "public_key must be a CURVE public key (40 Z85 characters)"
    if not isinstance(cmd.admin, bool):
        return "admin must be a bool"
    for kind, prefixes in (("read", cmd.read), ("write", cmd.write), ("lock", cmd.lock)):
        if not isinstance(prefixes, tuple) or len(prefixes) > MAX_RIGHT_PREFIXES:
            return f"{kind} must be a tuple of at most {MAX_RIGHT_PREFIXES} prefixes"
        for p in prefixes:
            if p != "":   # "" is every key
                perr = name_error(f"{kind} prefix", p)
                if perr is not None:
                    return perr
            elif not isinstance(p, str):
                return f"{kind} prefixes must be strings"
    return None


def validate_request(r: object) -> str | None:
    """Errors in the exactly-once envelope (the command itself is ``validate``'s)."""
    if not isinstance(r, Request):
        return "not a Request"
    if not isinstance(r.client_id, str):
        return "client_id must be a string"
    if not isinstance(r.principal, str) or len(r.principal) > MAX_PRINCIPAL_CHARS:
        return f"principal must be a string of at most {MAX_PRINCIPAL_CHARS} characters"
    if r.client_id == "":
        if r.seq != 0 or r.first_unacked != 0 or not _is_int(r.seq) or not _is_int(r.first_unacked):
            return "internal requests (empty client_id) must have seq 0 and first_unacked 0"
        return None
    if len(r.client_id) > MAX_CLIENT_ID_CHARS:
        return f"client_id must be 1..{MAX_CLIENT_ID_CHARS} characters"
    err = _check_int("seq", r.seq, 1)
    if err is None:
        err = _check_int("first_unacked", r.first_unacked, 0, r.seq)
    return err


# -- encoding ------------------------------------------------------------------------
# A request is [client_id, seq, first_unacked, [tag, *fields]], and once a leader stamped
# it [client_id, seq, first_unacked, [tag, *fields], principal]; a fence is [lock, token]
# or nil. Tags are part of the log format: never renumber them, only append.

_NOOP, _PUT, _DELETE, _OPEN, _CLOSE, _EXPIRE, _ACQUIRE, _RELEASE, _CANCEL, _OPEN_ACQUIRE = range(10)
_AUTH_ADD, _AUTH_REMOVE = 10, 11
# A put on a lease: a tag of its own, so a plain put keeps its old encoding.
_PUT_LEASE = 12
_TXN = 13
# Acquires with a lock-delay: tags of their own, so those without keep their encoding.
_ACQUIRE_DELAY, _OPEN_ACQUIRE_DELAY, _END_LOCK_DELAY = 14, 15, 16
_ACQUIRE_SHARED = 17
_CAMPAIGN = 18
_SCHEMA_SET, _SCHEMA_DELETE = 19, 20
# msgpack's one-byte headers of a 4- and a 5-element array.
_FIXARRAY_4, _STAMPED_HEAD = 0x94, b"\x95"


def _fence_out(f: Fence | None) -> list[object] | None:
    return None if f is None else [f.lock, f.token]


def _cmd_out(c: Command) -> list[object]:
    if isinstance(c, Put):
        if c.lease:
            return [_PUT_LEASE, c.key, c.value, c.if_revision, _fence_out(c.fence), c.lease]
        return [_PUT, c.key, c.value, c.if_revision, _fence_out(c.fence)]
    if isinstance(c, Delete):
        return [_DELETE, c.key, c.if_revision, _fence_out(c.fence)]
    if isinstance(c, OpenSession):
        return [_OPEN, c.ttl_ms]
    if isinstance(c, CloseSession):
        return [_CLOSE, c.session_id]
    if isinstance(c, ExpireSession):
        return [_EXPIRE, c.session_id]
    if isinstance(c, Acquire):
        if c.lock_delay_ms:
            return [_ACQUIRE_DELAY, c.name, c.session_id, c.wait, c.lock_delay_ms]
        return [_ACQUIRE, c.name, c.session_id, c.wait]
    if isinstance(c, EndLockDelay):
        return [_END_LOCK_DELAY, c.name]
    if isinstance(c, SchemaSet):
        return [_SCHEMA_SET, c.prefix, c.schema]
    if isinstance(c, SchemaDelete):
        return [_SCHEMA_DELETE, c.prefix]
    if isinstance(c, Campaign):
        return [_CAMPAIGN, c.name, c.session_id, c.value, c.wait]
    if isinstance(c, AcquireShared):
        return [_ACQUIRE_SHARED, c.name, c.session_id, c.mode, c.limit, c.wait]
    if isinstance(c, Release):
        return [_RELEASE, c.name, c.session_id, c.token]
    if isinstance(c, Cancel):
        return [_CANCEL, c.name, c.session_id]
    if isinstance(c, OpenAndAcquire):
        if c.lock_delay_ms:
            return [_OPEN_ACQUIRE_DELAY, c.name, c.ttl_ms, c.wait, c.lock_delay_ms]
        return [_OPEN_ACQUIRE, c.name, c.ttl_ms, c.wait]
    if isinstance(c, AuthAdd):
        return [_AUTH_ADD, c.name, c.public_key, list(c.read), list(c.write), list(c.lock), c.admin]
    if isinstance(c, AuthRemove):
        return [_AUTH_REMOVE, c.name]
    if isinstance(c, Txn):
        return [_TXN, [[k, r] for k, r in c.compare], [_cmd_out(op) for op in c.success],
                [_cmd_out(op) for op in c.failure], _fence_out(c.fence)]
    return [_NOOP]


def encode_request(r: Request) -> bytes:
    fields = [r.client_id, r.seq, r.first_unacked, _cmd_out(r.cmd)]
    if r.principal:
        fields.append(r.principal)
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


def stamp(raw: bytes, principal: str) -> bytes:
    """``raw`` (an unstamped encoded request, as a client sends it) with ``principal``
    appended: ``encode_request`` of the same request with that principal, without
    encoding the command (up to 1 MiB) again. On every write's path: 0.25 us for a small
    put (re-encoding would cost more, and building it with a join twice as much)."""
    if not raw or raw[0] != _FIXARRAY_4 or not principal:
        raise ValueError("stamp needs an unstamped encoded request and a principal")
    return _STAMPED_HEAD + raw[1:] + _encoded(principal)


@functools.lru_cache(maxsize=1024)
def _encoded(principal: str) -> bytes:
    out: bytes = msgpack.packb(principal, use_bin_type=True)
    return out


def _int(v: object) -> int:
    if not _is_int(v):
        raise ProtocolError(f"expected int, got {type(v).__name__}")
    return v


def _opt_int(v: object) -> int | None:
    return None if v is None else _int(v)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ProtocolError(f"expected str, got {type(v).__name__}")
    return v


def _bytes(v: object) -> bytes:
    if not isinstance(v, bytes):
        raise ProtocolError(f"expected bytes, got {type(v).__name__}")
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"expected bool, got {type(v).__name__}")
    return v


def _strs(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > MAX_RIGHT_PREFIXES:
        raise ProtocolError(f"expected a list of at most {MAX_RIGHT_PREFIXES} strings")
    return tuple(_str(x) for x in v)


def _fence_in(v: object) -> Fence | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise ProtocolError("fence must be [lock, token] or nil")
    return Fence(_str(v[0]), _int(v[1]))


# tag -> (arity including the tag, builder from the field list)
_DECODERS: dict[int, tuple[int, Callable[[list[object]], Command]]] = {
    _NOOP: (1, lambda f: Noop()),
    _PUT: (5, lambda f: Put(_str(f[1]), _bytes(f[2]), _opt_int(f[3]), _fence_in(f[4]))),
    _PUT_LEASE: (6, lambda f: Put(_str(f[1]), _bytes(f[2]), _opt_int(f[3]), _fence_in(f[4]),
                                  _int(f[5]))),
    _DELETE: (4, lambda f: Delete(_str(f[1]), _opt_int(f[2]), _fence_in(f[3]))),
    _OPEN: (2, lambda f: OpenSession(_int(f[1]))),
    _CLOSE: (2, lambda f: CloseSession(_int(f[1]))),
    _EXPIRE: (2, lambda f: ExpireSession(_int(f[1]))),
    _ACQUIRE: (4, lambda f: Acquire(_str(f[1]), _int(f[2]), _bool(f[3]))),
    _RELEASE: (4, lambda f: Release(_str(f[1]), _int(f[2]), _int(f[3]))),
    _CANCEL: (3, lambda f: Cancel(_str(f[1]), _int(f[2]))),
    _OPEN_ACQUIRE: (4, lambda f: OpenAndAcquire(_str(f[1]), _int(f[2]), _bool(f[3]))),
    _AUTH_ADD: (7, lambda f: AuthAdd(_str(f[1]), _str(f[2]), _strs(f[3]), _strs(f[4]), _strs(f[5]),
                                     _bool(f[6]))),
    _AUTH_REMOVE: (2, lambda f: AuthRemove(_str(f[1]))),
    _ACQUIRE_DELAY: (5, lambda f: Acquire(_str(f[1]), _int(f[2]), _bool(f[3]), _int(f[4]))),
    _OPEN_ACQUIRE_DELAY: (5, lambda f: OpenAndAcquire(_str(f[1]), _int(f[2]), _bool(f[3]), _int(f[4]))),
    _END_LOCK_DELAY: (2, lambda f: EndLockDelay(_str(f[1]))),
    _SCHEMA_SET: (3, lambda f: SchemaSet(_str(f[1]), _bytes(f[2]))),
    _SCHEMA_DELETE: (2, lambda f: SchemaDelete(_str(f[1]))),
    _CAMPAIGN: (5, lambda f: Campaign(_str(f[1]), _int(f[2]), _bytes(f[3]), _bool(f[4]))),
    _ACQUIRE_SHARED: (6, lambda f: AcquireShared(_str(f[1]), _int(f[2]), _str(f[3]), _int(f[4]),
                                                 _bool(f[5]))),
    _TXN: (5, lambda f: Txn(_compares(f[1]), _txn_ops(f[2]), _txn_ops(f[3]), _fence_in(f[4]))),
}


def _compares(v: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(v, list) or len(v) > MAX_TXN_OPS:
        raise ProtocolError(f"compare must be a list of at most {MAX_TXN_OPS} [key, revision]")
    out = []
    for c in v:
        if not isinstance(c, list) or len(c) != 2:
            raise ProtocolError("a compare is [key, revision]")
        out.append((_str(c[0]), _int(c[1])))
    return tuple(out)


def _txn_ops(v: object) -> tuple[Put | Delete, ...]:
    if not isinstance(v, list) or len(v) > MAX_TXN_OPS:
        raise ProtocolError(f"a branch must be a list of at most {MAX_TXN_OPS} ops")
    out: list[Put | Delete] = []
    for c in v:
        if not isinstance(c, list) or not c or c[0] not in (_PUT, _PUT_LEASE, _DELETE):
            raise ProtocolError("a transaction's op is a put or a delete")
        arity, build = _DECODERS[c[0]]
        if len(c) != arity:
            raise ProtocolError(f"command tag {c[0]} takes {arity - 1} fields, got {len(c) - 1}")
        op = build(c)
        assert isinstance(op, (Put, Delete))
        out.append(op)
    return tuple(out)


def decode_request(b: bytes) -> Request:
    """Inverse of ``encode_request``; raises ``ProtocolError`` and nothing else."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected bytes, got {type(b).__name__}")
    try:
        raw = msgpack.unpackb(b, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises a zoo of types (ValueError, UnicodeDecodeError, ...)
        raise ProtocolError(f"undecodable request: {e}") from e
    if not isinstance(raw, list) or len(raw) not in (4, 5):
        raise ProtocolError("request must be [client_id, seq, first_unacked, command(, principal)]")
    c = raw[3]
    if not isinstance(c, list) or not c or not _is_int(c[0]):
        raise ProtocolError("command must be [tag, *fields]")
    spec = _DECODERS.get(c[0])
    if spec is None:
        raise ProtocolError(f"unknown command tag {c[0]}")
    arity, build = spec
    if len(c) != arity:
        raise ProtocolError(f"command tag {c[0]} takes {arity - 1} fields, got {len(c) - 1}")
    cmd: Command = build(c)
    principal = ""
    if len(raw) == 5:
        principal = _str(raw[4])
        if not principal:
            raise ProtocolError("a stamped request names its principal")
    return Request(_str(raw[0]), _int(raw[1]), _int(raw[2]), cmd, principal)
