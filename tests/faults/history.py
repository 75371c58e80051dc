"""The history of one fault-injection run: what each client asked for and what it was told.

A client calls `invoke` just before it sends a request and `ok` / `fail` / `unknown` once it
knows the outcome (the outcomes are explained in ``coordsvc.sim.history``, where ``Op`` lives
because the simulator records the same histories). An operation still pending when `ops()`
is called is reported as ``unknown``: the run ended before the client learned its fate,
which is exactly the unknown case.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from coordsvc.sim.history import STATUSES, Op, Summary, summarize

__all__ = ["Op", "History", "Summary", "summarize", "STATUSES"]


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
