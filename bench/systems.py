"""The adapter interface: what the workload needs from a system under test.

One ``System`` is a running cluster; ``connect()`` gives one ``Conn`` (what the workload
table calls "a client"); ``Conn.watch`` gives a ``WatchStream``. ``bench/coord.py`` adapts
coordsvc, ``bench/anchors/`` etcd and PySyncObj. Standard library only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class NotSupported(Exception):
    """The system has no such operation (the table then says n/a, with the reason)."""


class WatchStream(ABC):
    @abstractmethod
    def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next (key, value) put under the prefix, or None after ``timeout`` seconds."""

    @abstractmethod
    def close(self) -> None: ...


class Conn(ABC):
    """One client of a system."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """A linearizable read."""

    @abstractmethod
    def lock_acquire(self, name: str, timeout: float) -> Any:
        """Block until lock ``name`` is held (return a handle) or ``timeout`` passes (None).

        The lock as the system's users run it (etcd: a session lock, one lease per client)."""

    @abstractmethod
    def lock_release(self, handle: Any) -> None: ...

    def library_lock_acquire(self, name: str, timeout: float) -> Any:
        """The client library's own one-call lock, where it differs from ``lock_acquire``
        (etcd3's ``client.lock()`` opens a lease per acquire); else the same."""
        return self.lock_acquire(name, timeout)

    def library_lock_release(self, handle: Any) -> None:
        self.lock_release(handle)

    @abstractmethod
    def watch(self, prefix: str) -> WatchStream:
        """A stream of every put under ``prefix`` that happens after this call returns."""

    def list_prefix(self, prefix: str) -> tuple[int, int]:
        """Every key under ``prefix`` in one linearizable read: (keys, value bytes)."""
        raise NotSupported("no list")

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters need none
        pass


class System(ABC):
    """A running cluster of one system, and how to reach it."""

    name: str = "?"
    #: test -> why it cannot run on this system (reported as n/a)
    unsupported: dict[str, str] = {}
    #: free text for the report (version, durability, where the load runs)
    notes: str = ""

    @abstractmethod
    def connect(self) -> Conn: ...

    @abstractmethod
    def pids(self) -> dict[str, int]:
        """Every process whose CPU counts: label -> PID, the nodes and the load process
        (labelled ``measure.CLIENT``; every other label is a server process)."""

    @abstractmethod
    def close(self) -> None: ...
