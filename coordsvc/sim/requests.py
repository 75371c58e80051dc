"""The simulated clients' one view of the client protocol: requests built, replies read.

Everything the simulator knows about the request and reply maps of
``coordsvc.core.protocol`` is in this module, so that switching to typed protocol records
touches nothing else. Readers return plain values and raise ``BadReply`` when a reply does
not have the documented shape: the checker reports that as a protocol violation.
"""
from __future__ import annotations

from typing import Any

from ..core.commands import Command, Request, encode_request
from ..core.machine import Result
from ..core.types import ProtocolError
from .checks import LockRow, WatchEvent

__all__ = [
    "BadReply", "LockRow", "WatchEvent", "error_of", "get", "keepalive", "known", "kv_of",
    "leader_address", "lock_state", "lock_wait", "locks", "locks_of", "revision_of", "watch",
    "watch_events", "write", "write_result",
]

Payload = dict[str, Any]


class BadReply(Exception):
    """A reply that breaks the documented protocol (the node misbehaved)."""


# -- requests (the transport adds "id") ----------------------------------------------------

def write(client_id: str, seq: int, first_unacked: int, cmd: Command) -> Payload:
    # Encoded once: every retry of this payload carries the same bytes.
    return {"op": "write", "req": encode_request(Request(client_id, seq, first_unacked, cmd))}


def keepalive(session_id: int) -> Payload:
    return {"op": "keepalive", "session_id": session_id}


def get(key: str) -> Payload:
    return {"op": "get", "key": key, "stale": False}


def locks() -> Payload:
    return {"op": "locks"}


def lock_wait(name: str, session_id: int, wait_ms: int) -> Payload:
    return {"op": "lock_wait", "name": name, "session_id": session_id, "wait_ms": wait_ms}


def watch(prefixes: list[str], after: int, wait_ms: int, limit: int) -> Payload:
    return {"op": "watch", "prefixes": prefixes, "after": after, "wait_ms": wait_ms,
            "limit": limit}


# -- replies -------------------------------------------------------------------------------

def error_of(reply: Payload) -> str | None:
    """None for a successful reply, else its error code."""
    if reply.get("ok") is True:
        return None
    err = reply.get("error")
    if not isinstance(err, str):
        raise BadReply(f"failed reply without an error code: {reply!r:.200}")
    return err


def leader_address(reply: Payload) -> str | None:
    addr = reply.get("leader_address")
    return addr if isinstance(addr, str) and addr else None


def write_result(reply: Payload) -> Result:
    try:
        return Result.from_wire(reply.get("result"))
    except ProtocolError as e:
        raise BadReply(str(e)) from None


def _int(reply: Payload, field: str) -> int:
    v = reply.get(field)
    if type(v) is not int:
        raise BadReply(f"{field} must be an int: {reply!r:.200}")
    return v


def revision_of(reply: Payload) -> int:
    return _int(reply, "revision")


def kv_of(reply: Payload) -> tuple[bytes | None, int]:
    """A get's (value, mod revision); (None, 0) when the key does not exist."""
    kv = reply.get("kv")
    if kv is None:
        return None, 0
    if not (isinstance(kv, list) and len(kv) == 5 and isinstance(kv[1], bytes)
            and type(kv[2]) is int):
        raise BadReply(f"malformed kv {kv!r:.200}")
    return kv[1], kv[2]


def watch_events(reply: Payload) -> list[WatchEvent]:
    raw = reply.get("events")
    if not isinstance(raw, list):
        raise BadReply(f"events must be a list: {reply!r:.200}")
    out = []
    for e in raw:
        if not (isinstance(e, list) and len(e) == 4 and e[0] in ("put", "delete")
                and isinstance(e[1], str) and isinstance(e[2], bytes) and type(e[3]) is int):
            raise BadReply(f"malformed event {e!r:.200}")
        out.append(WatchEvent(e[3], e[1], e[0], e[2]))  # revision, key, type, value
    return out


def lock_state(reply: Payload) -> tuple[str, int]:
    state = reply.get("state")
    if state not in ("held", "waiting", "none"):
        raise BadReply(f"lock_wait state {state!r}")
    return state, _int(reply, "token")


def known(reply: Payload) -> bool:
    k = reply.get("known")
    if not isinstance(k, bool):
        raise BadReply(f"keepalive reply without known: {reply!r:.200}")
    return k


def locks_of(reply: Payload) -> list[LockRow]:
    raw = reply.get("locks")
    if not isinstance(raw, list):
        raise BadReply(f"locks must be a list: {reply!r:.200}")
    out = []
    for r in raw:
        if not (isinstance(r, list) and len(r) >= 5 and isinstance(r[0], str)
                and type(r[1]) is int and type(r[2]) is int and isinstance(r[4], list)):
            raise BadReply(f"malformed lock row {r!r:.200}")
        out.append(LockRow(r[0], r[1], r[2], tuple(int(w) for w in r[4])))
    return out
