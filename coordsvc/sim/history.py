"""One client operation as a checker sees it: what was asked, what was told, and when.

Shared by the simulator and the real-process fault suite (``tests/faults``), whose
thread-safe recorder builds these from ``time.monotonic_ns()``; the simulator builds
them from simulated time. The three outcomes are what a checker needs to reason soundly:

- ``ok``      the operation took effect exactly once, somewhere between invoke and complete;
- ``fail``    it definitely did not take effect (CompareFailed, FenceRejected, ...);
- ``unknown`` timeout, Unavailable, connection lost: it may have taken effect at any time
              after invoke -- including long after the client gave up -- or never.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Op", "Recorder", "Summary", "summarize", "STATUSES"]

STATUSES = ("ok", "fail", "unknown")


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation. Times are nanoseconds on one clock (real or simulated)."""

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


class Recorder:
    """Builds a history from simulated milliseconds (one process, no threads)."""

    def __init__(self) -> None:
        self._slots: list[Op | None] = []
        self._pending: dict[int, tuple[int, str, str, object, int]] = {}

    def invoke(self, process: int, kind: str, key: str, input: object, now_ms: int) -> int:
        handle = len(self._slots)
        self._slots.append(None)
        self._pending[handle] = (process, kind, key, input, now_ms * 1_000_000)
        return handle

    def ok(self, handle: int, output: object, now_ms: int) -> None:
        self._complete(handle, "ok", output, now_ms)

    def fail(self, handle: int, now_ms: int) -> None:
        self._complete(handle, "fail", None, now_ms)

    def unknown(self, handle: int) -> None:
        self._complete(handle, "unknown", None, None)

    def _complete(self, handle: int, status: str, output: object, now_ms: int | None) -> None:
        process, kind, key, input, invoke_ns = self._pending.pop(handle)
        done = None if now_ms is None else now_ms * 1_000_000
        self._slots[handle] = Op(process, kind, key, input, output, invoke_ns, done, status)

    def ops(self) -> list[Op]:
        """Every op in invoke order; one still pending is unknown (the run ended first)."""
        out = []
        for handle, op in enumerate(self._slots):
            if op is None:
                process, kind, key, input, invoke_ns = self._pending[handle]
                op = Op(process, kind, key, input, None, invoke_ns, None, "unknown")
            out.append(op)
        return out
