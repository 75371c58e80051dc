"""The ground truth of a run: the chosen log, applied in slot order by a fresh ``Machine``.

The per-slot oracle says what was chosen; this replays it, independently of any node, so
the checker can ask what a write's answer should have been, which events the watchers
owe (a revision may carry several: a transaction's, sorted by key), who was granted
which lock with which token, and what each command did to the locks' queues and holders
(``checks.LockStep``). It runs the nodes' ``Machine``
class: a bug planted in the machine is then in the reference too, as a real one would
be, and only what clients saw can give it away.
"""
from __future__ import annotations

from ..core.commands import (
    ELECTION_PREFIX,
    Acquire,
    AcquireShared,
    Campaign,
    Cancel,
    CloseSession,
    Command,
    ExpireSession,
    OpenAndAcquire,
    Release,
    decode_request,
)
from ..core.machine import Machine
from ..core.protocol import Change, Result, ResultCode
from ..core.types import ProtocolError, Slot, Value
from .checks import LockStep

__all__ = ["Reference"]


class Reference:
    def __init__(self, machine_class: type[Machine] = Machine) -> None:
        self.machine = machine_class()
        self.applied: Slot = 0
        self._chosen: dict[Slot, Value] = {}
        # (client id, seq) -> the Result of its first application.
        self.results: dict[tuple[str, int], Result] = {}
        # revision -> its changes, in the machine's order (several for a transaction).
        self.events: dict[int, tuple[Change, ...]] = {}
        # (lock, token) -> the session it was granted to.
        self.grants: dict[tuple[str, int], int] = {}
        # slot -> the sessions (leases) its commands ended.
        self.ended: dict[Slot, list[int]] = {}
        # What each command did to the locks, in apply order (a retry answered from the
        # machine's cache did nothing).
        self.lock_steps: list[LockStep] = []
        self.delays_begun = 0      # lock-delays the machine began (for the run's stats)
        self.violations: list[str] = []

    def chosen(self, slot: Slot, value: Value) -> None:
        """``value`` was chosen for ``slot``; apply every slot now known in order."""
        self._chosen[slot] = value
        while self.applied + 1 in self._chosen:
            self.applied += 1
            self._apply(self.applied, self._chosen.pop(self.applied))

    def _apply(self, slot: Slot, value: Value) -> None:
        m = self.machine
        for raw in value:
            try:
                request = decode_request(raw)
            except ProtocolError:
                continue  # every replica skips the same bytes
            before = m.revision
            result = m.apply(slot, request)
            fresh = True
            if request.client_id:
                key = (request.client_id, request.seq)
                fresh = key not in self.results
                first = self.results.setdefault(key, result)
                # A retry is answered from the machine's cache (the very same Result) or,
                # once the client promised never to retry it, refused as stale.
                if first is not result and first != result and result.code != ResultCode.STALE_REQUEST:
                    self.violations.append(
                        f"slot {slot}: {key} applied again: first {first}, then {result}")
            if m.revision != before:
                for ev in m.events_since("", before, 1 << 30):
                    self.events[ev.revision] = self.events.get(ev.revision, ()) + (ev,)
            if isinstance(request.cmd, (CloseSession, ExpireSession)) and result.code == ResultCode.OK:
                self.ended.setdefault(slot, []).append(request.cmd.session_id)
            if fresh:
                self.lock_steps += _lock_steps(slot, request.cmd, result)
            self.delays_begun += len(m.take_delays())
            for g in m.take_grants():
                self.grants[(g.name, g.token)] = g.session_id
                self.lock_steps.append(LockStep(slot, "granted", g.name, g.session_id, g.token))

    @property
    def revision(self) -> int:
        return self.machine.revision


def _lock_steps(slot: Slot, cmd: Command, result: Result) -> list[LockStep]:
    """What ``cmd``, answered ``result``, did to the locks (its grants aside). An
    ``AuthRemove`` closes its principal's sessions too; the workload sends none, so it is
    not read off here."""
    code, data = result.code, result.data
    if isinstance(cmd, (Acquire, OpenAndAcquire, AcquireShared, Campaign)):
        if code not in (ResultCode.OK, ResultCode.QUEUED):
            return []
        sid = data.get("session_id") if isinstance(cmd, OpenAndAcquire) else cmd.session_id
        if type(sid) is not int:
            return []
        name = ELECTION_PREFIX + cmd.name if isinstance(cmd, Campaign) else cmd.name
        delay_ms = cmd.lock_delay_ms if isinstance(cmd, (Acquire, OpenAndAcquire)) else 0
        return [LockStep(slot, "asked", name, sid, delay_ms=delay_ms,
                         waits=code == ResultCode.QUEUED)]
    if code != ResultCode.OK:
        return []
    if isinstance(cmd, Release):
        return [LockStep(slot, "released", cmd.name, cmd.session_id)]
    if isinstance(cmd, Cancel):
        return [LockStep(slot, kind, cmd.name, cmd.session_id)
                for kind, happened in (("left", data.get("dequeued")), ("released", data.get("released")))
                if happened is True]
    if isinstance(cmd, (CloseSession, ExpireSession)):
        kind = "closed" if isinstance(cmd, CloseSession) else "expired"
        return [LockStep(slot, kind, "", cmd.session_id)]
    return []
