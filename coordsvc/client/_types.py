"""The values the client hands back: small frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import CoordError

__all__ = ["Entry", "Event", "entry_from_wire", "events_from_wire"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A config key's current value and the revision that last changed it."""

    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change of a key: ``type`` is ``"put"`` or ``"delete"`` (then ``value`` is empty)."""

    type: str
    key: str
    value: bytes
    revision: int


def entry_from_wire(kv: object) -> Entry:
    """``[key, value, revision, create_revision, version]`` -> Entry."""
    if (isinstance(kv, list) and len(kv) >= 3 and isinstance(kv[0], str)
            and isinstance(kv[1], bytes) and type(kv[2]) is int):
        return Entry(kv[0], kv[1], kv[2])
    raise CoordError("malformed reply: kv")


def events_from_wire(raw: object) -> list[Event]:
    """``[[type, key, value, revision], ...]`` -> events."""
    if not isinstance(raw, list):
        raise CoordError("malformed reply: events")
    out = []
    for e in raw:
        if not (isinstance(e, list) and len(e) == 4 and e[0] in ("put", "delete")
                and isinstance(e[1], str) and isinstance(e[2], bytes) and type(e[3]) is int):
            raise CoordError("malformed reply: event")
        out.append(Event(e[0], e[1], e[2], e[3]))
    return out
