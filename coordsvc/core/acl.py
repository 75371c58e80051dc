"""Rights: what each principal may do, and the pure checks every node runs.

A client principal holds prefix lists and a flag (CONTRACT §7):

- ``read``: ``get``, ``list``, ``history`` and ``watch`` of keys under the prefix;
- ``write``: ``put`` and ``delete`` of keys under the prefix -- and read them;
  (any write or lock right may open a lease, a session, for ephemeral keys or locks);
- ``lock``: lock names under the prefix (locks today; lease-locks, elections, semaphores
  and rwlocks name theirs the same way), and nothing else;
- ``admin``: everything, including the identity table and other principals' sessions.

Members (``node:<id>``) may call ``status`` only; ``status`` and ``revision`` need no
right beyond a key the cluster knows. A principal the cluster does not know (removed,
with a connection still open) may do nothing at all.

Where each check runs:

- the leader (and, for reads and watches, whichever node answers) refuses a request
  outside the caller's rights before it does anything (:func:`request_refusal`);
- ``Machine.apply`` checks every replicated command again against the principal the
  leader stamped into it (:func:`command_refusal`), so a right removed while a write was
  in flight is honoured at the same log position on every replica;
- the transport's ZAP handler admits only keys of known principals, and to the PUB
  socket (where every value flows) only members and admins (:func:`may_subscribe`).

Everything here is a function of its arguments: the same rights give the same answer
on every node, and tests call it directly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .commands import (
    ELECTION_PREFIX,
    SCHEMA_PREFIX,
    Acquire,
    AcquireShared,
    AuthAdd,
    AuthRemove,
    Campaign,
    Cancel,
    CloseSession,
    Command,
    Delete,
    EndLockDelay,
    ExpireSession,
    Noop,
    OpenAndAcquire,
    OpenSession,
    Put,
    Release,
    SchemaDelete,
    SchemaSet,
    Txn,
)
from .protocol import (
    AuthListRequest,
    ClientRequest,
    GetRequest,
    HistoryRequest,
    KeepaliveRequest,
    ListRequest,
    LocksRequest,
    LockWaitRequest,
    MemberChangeRequest,
    MembersRequest,
    RevisionRequest,
    SnapshotChunkRequest,
    SnapshotSaveRequest,
    StatusRequest,
    WatchRequest,
    WriteRequest,
)

__all__ = ["ADMIN_RIGHTS", "MEMBER_RIGHTS", "Caller", "Rights", "command_refusal", "may_subscribe",
           "request_refusal"]


@dataclass(frozen=True, slots=True)
class Rights:
    """One principal's rights. Prefixes are plain string prefixes ("" is every key)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()
    admin: bool = False
    member: bool = False      # a cluster member's key: status only

    @property
    def readable(self) -> tuple[str, ...]:
        """Every prefix this principal may read under (``--write`` implies read)."""
        return self.read + self.write

    def may_read(self, key: str) -> bool:
        if key.startswith(ELECTION_PREFIX):   # an election's record: its lock right reads it
            return self.may_lock(key)
        if key.startswith(SCHEMA_PREFIX):     # a prefix's schema: whoever may read under it
            key = key[len(SCHEMA_PREFIX):]
        return self.admin or key.startswith(self.read) or key.startswith(self.write)

    def may_write(self, key: str) -> bool:
        return self.admin or key.startswith(self.write)

    def may_lock(self, name: str) -> bool:
        """Lock ``name`` -- or, for ``ELECTION_PREFIX + name``, stand for election ``name``."""
        if name.startswith(ELECTION_PREFIX):
            name = name[len(ELECTION_PREFIX):]
        return self.admin or name.startswith(self.lock)

    def reads_all_under(self, prefix: str) -> bool:
        """Every key starting with ``prefix`` is readable: answers need no filtering."""
        if prefix.startswith(ELECTION_PREFIX):
            return self.may_lock(prefix)
        if prefix.startswith(SCHEMA_PREFIX):
            prefix = prefix[len(SCHEMA_PREFIX):]
        return self.admin or prefix.startswith(self.read) or prefix.startswith(self.write)

    def reads_some_under(self, prefix: str) -> bool:
        """Some key starting with ``prefix`` could be readable (a readable prefix lies
        inside it, or it lies inside a readable prefix)."""
        return self.reads_all_under(prefix) or any(p.startswith(prefix) for p in self.readable)

    def describe(self) -> str:
        if self.admin:
            return "admin"
        if self.member:
            return "member (status only)"
        parts = [f"{kind} {', '.join(repr(p) for p in ps)}"
                 for kind, ps in (("read", self.read), ("write", self.write), ("lock", self.lock))
                 if ps]
        return "; ".join(parts) or "no rights (status only)"


ADMIN_RIGHTS = Rights(admin=True)
MEMBER_RIGHTS = Rights(member=True)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, and what they may do: handed to every op handler."""

    principal: str
    rights: Rights


def may_subscribe(rights: Rights | None) -> bool:
    """The PUB socket carries every value written: members and admins only."""
    return rights is not None and (rights.admin or rights.member)


# -- replicated commands: the leader before proposing, the machine when applying ------------

def _key_right(cmd: Put | Delete, r: Rights) -> str | None:
    if r.may_write(cmd.key):
        return None
    return f"no right to write {cmd.key!r}"


def _schema_right(cmd: SchemaSet | SchemaDelete, r: Rights) -> str | None:
    # Only who may write every key under the prefix may constrain them.
    return None if r.may_write(cmd.prefix) else f"no right to write everything under {cmd.prefix!r}"


def _txn_right(cmd: Txn, r: Rights) -> str | None:
    # Every key it may touch, in either branch, and every key it compares (a compare
    # reveals a key's revision, so it needs the right to read it).
    for key, _ in cmd.compare:
        if not r.may_read(key):
            return f"no right to read {key!r} (compared)"
    for op in cmd.success + cmd.failure:
        if not r.may_write(op.key):
            return f"no right to write {op.key!r}"
    return None


def _lock_right(cmd: Acquire | OpenAndAcquire | Release | Cancel | AcquireShared | Campaign,
                r: Rights) -> str | None:
    if r.may_lock(cmd.name):
        return None
    return f"no right to lock {cmd.name!r}"


def _session_right(cmd: OpenSession | CloseSession, r: Rights) -> str | None:
    # Sessions hold locks, and as leases they hold ephemeral keys: any lock or write right
    # opens one. Whose session it is, the machine checks (ownership), and what a lease
    # holds is checked key by key and lock by lock like any other write.
    return None if r.lock or r.write else "no lock or write right, so no sessions or leases"


def _admin_only(cmd: Command, r: Rights) -> str | None:
    return None if r.admin else "only an admin may do this"


def _any_write(cmd: Noop, r: Rights) -> str | None:
    return None if r.write or r.lock else "no right to write anything"


_COMMAND_CHECKS: dict[type, Callable[[Any, Rights], str | None]] = {
    Put: _key_right, Delete: _key_right, Txn: _txn_right,
    SchemaSet: _schema_right, SchemaDelete: _schema_right,
    Acquire: _lock_right, OpenAndAcquire: _lock_right, AcquireShared: _lock_right,
    Campaign: _lock_right, Release: _lock_right, Cancel: _lock_right,
    OpenSession: _session_right, CloseSession: _session_right,
    AuthAdd: _admin_only, AuthRemove: _admin_only, ExpireSession: _admin_only,
    EndLockDelay: _admin_only,
    Noop: _any_write,
}


def command_refusal(rights: Rights | None, cmd: Command) -> str | None:
    """Why a principal with ``rights`` may not run ``cmd`` (None: it may). Ownership of
    sessions and client ids is the machine's to check; this is rights only."""
    if rights is None:
        return "this key is no longer known to the cluster"
    if rights.admin:
        return None
    if rights.member:
        return "a member's key may only ask for status"
    check = _COMMAND_CHECKS.get(type(cmd))
    return "unknown command" if check is None else check(cmd, rights)


# -- client requests: whichever node the request reaches, before it does anything ----------

def _read_key(req: GetRequest | HistoryRequest, r: Rights) -> str | None:
    return None if r.may_read(req.key) else f"no right to read {req.key!r}"


def _read_prefix(req: ListRequest, r: Rights) -> str | None:
    if r.reads_some_under(req.prefix):
        return None
    return f"no right to read anything under {req.prefix!r}"


def _watch(req: WatchRequest, r: Rights) -> str | None:
    for prefix in req.prefixes or (req.prefix,):
        if not r.reads_some_under(prefix):
            return f"no right to read anything under {prefix!r}"
    return None


def _write(req: WriteRequest, r: Rights) -> str | None:
    return command_refusal(r, req.request.cmd)


def _lock_wait(req: LockWaitRequest, r: Rights) -> str | None:
    return None if r.may_lock(req.name) else f"no right to lock {req.name!r}"


def _any_lock(req: LocksRequest, r: Rights) -> str | None:
    return None if r.lock else "no lock right"


def _any_session(req: KeepaliveRequest, r: Rights) -> str | None:
    return None if r.lock or r.write else "no lock or write right, so no sessions or leases"


def _anyone(req: object, r: Rights) -> str | None:
    return None


def _clients(req: object, r: Rights) -> str | None:
    return None   # members were refused before the table is consulted


_REQUEST_CHECKS: dict[type, Callable[[Any, Rights], str | None]] = {
    WriteRequest: _write, KeepaliveRequest: _any_session, GetRequest: _read_key,
    ListRequest: _read_prefix, HistoryRequest: _read_key, WatchRequest: _watch,
    LockWaitRequest: _lock_wait, LocksRequest: _any_lock, StatusRequest: _anyone,
    RevisionRequest: _clients, AuthListRequest: _admin_only,
    # A backup is every value and every principal: the whole state, so admin only.
    SnapshotSaveRequest: _admin_only, SnapshotChunkRequest: _admin_only,
    # The member list is what status shows (addresses, public keys); changing it is admin's.
    MembersRequest: _anyone, MemberChangeRequest: _admin_only,
}


def request_refusal(rights: Rights | None, req: ClientRequest) -> str | None:
    """Why a principal with ``rights`` may not send ``req`` (None: it may). An admin costs
    one attribute read."""
    if rights is not None and rights.admin:
        return None
    if rights is None:
        return "this key is no longer known to the cluster"
    if rights.member and type(req) is not StatusRequest:
        return "a member's key may only ask for status"
    return _REQUEST_CHECKS[type(req)](req, rights)
