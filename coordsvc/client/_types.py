"""The values the client hands back: small frozen dataclasses (CONTRACT section 4).

They are the public face of the protocol's rows (``coordsvc.core.protocol``): an
``Entry`` is a ``KeyValue`` without its bookkeeping, an ``Event`` is a ``Change`` whose
``type`` is a plain ``"put"`` or ``"delete"``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from coordsvc.core.protocol import Change, KeyValue

__all__ = ["Entry", "EntryList", "Event", "entry_of", "event_of"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A config key's current value and the revision that last changed it."""

    key: str
    value: bytes
    revision: int


class EntryList(list[Entry]):
    """What ``Client.list`` returns: a ``list`` of ``Entry`` sorted by key, read at one
    ``revision``. ``more``: keys beyond the ``limit`` asked for exist (page on with
    ``start_after=lst[-1].key``); always False without a limit."""

    revision: int
    more: bool

    def __init__(self, entries: Iterable[Entry] = (), revision: int = 0, more: bool = False) -> None:
        super().__init__(entries)
        self.revision = revision
        self.more = more


@dataclass(frozen=True, slots=True)
class Event:
    """One change of a key: ``type`` is ``"put"`` or ``"delete"`` (then ``value`` is empty)."""

    type: str
    key: str
    value: bytes
    revision: int


def entry_of(kv: KeyValue) -> Entry:
    return Entry(kv.key, kv.value, kv.revision)


def event_of(ch: Change) -> Event:
    return Event(ch.type.value, ch.key, ch.value, ch.revision)
