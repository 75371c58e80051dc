"""The history of one fault-injection run: what each client asked for and what it was told.

A client calls `invoke` just before it sends a request and `ok` / `fail` / `unknown` once it
knows the outcome. The three outcomes are what a checker needs to reason soundly:

- ``ok``      the operation took effect exactly once, somewhere between invoke and complete;
- ``fail``    it definitely did not take effect (CompareFailed, FenceRejected, ...);
- ``unknown`` timeout, Unavailable, connection lost: it may have taken effect at any time
              after invoke -- including long after the client gave up -- or never.

An operation still pending when `ops()` is called is reported as ``unknown``: the run ended
before the client learned its fate, which is exactly the unknown case.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["Op", "History", "Summary", "summarize", "STATUSES"]

STATUSES = ("ok", "fail", "unknown")


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation. Times are `time.monotonic_ns()` readings from one process."""

    process: int
    kind: str
    key: str
    input: object
    output: object
    invoke_ns: int
    complete_ns: int | None
    status: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status != "unknown":
            if self.complete_ns is None:
                raise ValueError(f"a {self.status!r} op needs complete_ns")
            if self.complete_ns < self.invoke_ns:
                raise ValueError(f"op completes ({self.complete_ns}) before it is invoked "
                                 f"({self.invoke_ns})")


@dataclass(frozen=True, slots=True)
class Summary:
    ok: int
    fail: int
    unknown: int

    @property
    def total(self) -> int:
        return self.ok + self.fail + self.unknown

    def __str__(self) -> str:
        return f"{self.total} ops: {self.ok} ok, {self.fail} fail, {self.unknown} unknown"


def summarize(ops: list[Op]) -> Summary:
    counts = {s: 0 for s in STATUSES}
    for op in ops:
        counts[op.status] += 1
    return Summary(counts["ok"], counts["fail"], counts["unknown"])


@dataclass(slots=True)
class _Pending:
    process: int
    kind: str
    key: str
    input: object
    invoke_ns: int


class History:
    """Thread-safe recorder. Handles are opaque ints; completing one twice is a usage error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        # Completed ops keep their invoke order: the slot is reserved at invoke time.
        self._slots: list[Op | None] = []

    def invoke(self, process: int, kind: str, key: str, input: object = None) -> int:
        with self._lock:
            handle = len(self._slots)
            self._slots.append(None)
            # Read the clock under the lock so invoke order and invoke_ns agree.
            self._pending[handle] = _Pending(process, kind, key, input, time.monotonic_ns())
            return handle

    def ok(self, handle: int, output: object = None) -> None:
        self._complete(handle, "ok", output)

    def fail(self, handle: int, output: object = None) -> None:
        self._complete(handle, "fail", output)

    def unknown(self, handle: int) -> None:
        self._complete(handle, "unknown", None)

    def _complete(self, handle: int, status: str, output: object) -> None:
        with self._lock:
            p = self._pending.pop(handle, None)
            if p is None:
                raise ValueError(f"handle {handle} is not pending (never invoked or already "
                                 "completed)")
            done = None if status == "unknown" else time.monotonic_ns()
            self._slots[handle] = Op(p.process, p.kind, p.key, p.input, output, p.invoke_ns,
                                     done, status)

    def ops(self) -> list[Op]:
        """Every invoked op in invoke order; still-pending ones are reported as unknown."""
        with self._lock:
            out: list[Op] = []
            for handle, op in enumerate(self._slots):
                if op is None:
                    p = self._pending[handle]
                    op = Op(p.process, p.kind, p.key, p.input, None, p.invoke_ns, None,
                            "unknown")
                out.append(op)
            return out

    def summary(self) -> Summary:
        return summarize(self.ops())
