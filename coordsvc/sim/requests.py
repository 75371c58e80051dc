"""The simulated clients' one view of the client protocol: requests built, replies read.

Requests are the records of ``coordsvc.core.protocol``, sent as their ``to_wire()`` maps;
replies are read back with the records' ``from_wire()``, exactly as ``coordsvc.Client``
does. This is the only module of the simulator that builds or reads a map. Readers
return plain values or records and raise ``BadReply`` when a reply does not fit its
record: the checker reports that as a protocol violation.

Maps cross the simulated network as msgpack bytes (``pack``/``unpack``, the options of
``coordsvc.wire``'s client frames), so a node decodes what a real client would send --
plain strings where a record wrote an enum -- and a client what a node would answer.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]  # as in the core

from ..core.commands import Command, Request
from ..core.protocol import (
    ErrorReply,
    GetReply,
    GetRequest,
    KeepaliveReply,
    KeepaliveRequest,
    LocksReply,
    LocksRequest,
    LockState,
    LockWaitReply,
    LockWaitRequest,
    Result,
    SchemaError,
    WatchReply,
    WatchRequest,
    WriteReply,
    WriteRequest,
)
from .checks import LockRow, WatchEvent

__all__ = [
    "BadReply", "LockRow", "Payload", "WatchEvent", "error_of", "get", "get_revision",
    "keepalive", "known", "kv_of", "lock_state", "lock_wait", "locks", "locks_of", "pack",
    "unpack", "watch", "watch_events", "write", "write_result",
]

Payload = dict[str, Any]
_R = TypeVar("_R", covariant=True)


class BadReply(Exception):
    """A reply that breaks the documented protocol (the node misbehaved)."""


class _Decodes(Protocol[_R]):
    def from_wire(self, m: Mapping[str, Any], /) -> _R: ...


def _decode(record: _Decodes[_R], reply: Payload) -> _R:
    try:
        return record.from_wire(reply)
    except SchemaError as e:
        raise BadReply(f"{e}: {reply!r:.200}") from None


# -- the wire -------------------------------------------------------------------------------

def pack(payload: Payload) -> bytes:
    out: bytes = msgpack.packb(payload, use_bin_type=True)
    return out


def unpack(body: bytes) -> Payload:
    m = msgpack.unpackb(body, raw=False, strict_map_key=True)
    if type(m) is not dict:
        raise BadReply(f"not a map: {m!r:.200}")
    return m


# -- requests (the transport adds "id") ----------------------------------------------------

def write(client_id: str, seq: int, first_unacked: int, cmd: Command) -> Payload:
    # Encoded once: every retry of this payload carries the same bytes.
    return WriteRequest.of(Request(client_id, seq, first_unacked, cmd)).to_wire()


def keepalive(session_id: int) -> Payload:
    return KeepaliveRequest(session_id).to_wire()


def get(key: str) -> Payload:
    return GetRequest(key).to_wire()


def locks() -> Payload:
    return LocksRequest().to_wire()


def lock_wait(name: str, session_id: int, wait_ms: int) -> Payload:
    return LockWaitRequest(name, session_id, wait_ms).to_wire()


def watch(prefixes: list[str], after: int, wait_ms: int, limit: int) -> Payload:
    return WatchRequest(after, prefixes=tuple(prefixes), wait_ms=wait_ms, limit=limit).to_wire()


# -- replies -------------------------------------------------------------------------------

def error_of(reply: Payload) -> ErrorReply | None:
    """None for a successful reply, else the refusal it carries."""
    if reply.get("ok") is True:
        return None
    return _decode(ErrorReply, reply)


def write_result(reply: Payload) -> Result:
    return _decode(WriteReply, reply).result


def kv_of(reply: Payload) -> tuple[bytes | None, int]:
    """A get's (value, mod revision); (None, 0) when the key does not exist."""
    kv = _decode(GetReply, reply).kv
    return (None, 0) if kv is None else (kv.value, kv.revision)


def get_revision(reply: Payload) -> int:
    """The node's revision a get was answered at."""
    return _decode(GetReply, reply).revision


def watch_events(reply: Payload) -> tuple[list[WatchEvent], int]:
    """A watch answer's events, in the order sent, and the node's revision."""
    w = _decode(WatchReply, reply)
    return [WatchEvent(e.revision, e.key, e.type.value, e.value) for e in w.events], w.revision


def lock_state(reply: Payload) -> tuple[LockState, int]:
    r = _decode(LockWaitReply, reply)
    return r.state, r.token


def known(reply: Payload) -> bool:
    return _decode(KeepaliveReply, reply).known


def locks_of(reply: Payload) -> list[LockRow]:
    return [LockRow(r.name, r.holder_session, r.token, r.waiters)
            for r in _decode(LocksReply, reply).locks]
