"""Known-bad nodes, to prove the whole-node simulation catches what it claims to.

Each mutation is a subclass of the production ``Service`` (or of ``Machine``, planted in
one) that breaks one rule; production code has no hooks for them. A test asserts that
each one is caught within the CI seeds, and by which check.

- ``grant_to_closed_session`` (Machine): closing or expiring a session leaves it in the
  wait queues, and a release hands the lock to it anyway. The lock then belongs to a
  session nobody can close or expire.
- ``skip_watch_event`` (Service): a watch answer that carries several events loses one.
- ``reply_before_save`` (Service): group commit off by one -- each Ready is saved at the
  next ``step``, after its messages and client replies have left.

- ``skip_adopt`` (Replica, in a whole node): a new leader ignores the values reported in
  promises. ``cluster.py``'s other replica mutations (a forgotten promise, a wiped node
  that votes) need its constant stream of competing proposals to show within a few
  dozen seeds; whole nodes with clients that back off catch them too rarely to assert.

``ObservedService`` is what the simulator runs for a correct node: ``Service`` itself,
plus one observation before each Ready is applied (the per-slot oracle checks every slot
a node applies against what was chosen). It changes nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.machine import NO_SESSION, OK, Compacted, Grant, Machine, Result
from ..core.replica import Ready, Replica
from ..core.service import Service, _Parked, event_wire
from ..core.types import Persist

__all__ = ["MUTATIONS", "ObservedService"]


class ObservedService(Service):
    observe: Callable[[str, Ready], None] | None = None

    def _apply(self, ready: Ready) -> None:
        if self.observe is not None:
            self.observe(self.id, ready)
        super()._apply(ready)


class _GrantsToClosedSessions(Machine):
    def _close(self, index: int, sid: int) -> Result:
        s = self._sessions.pop(sid, None)
        if s is None:
            return Result(NO_SESSION, self.revision, {"message": f"no session {sid}"})
        # Known-bad: the session keeps its places in the wait queues.
        for name in sorted(s.held):
            self._hand_over(index, name)
        return Result(OK, self.revision, {})

    def _hand_over(self, index: int, name: str) -> None:
        lk = self._locks[name]
        if lk.holder in self._sessions:
            self._sessions[lk.holder].held.discard(name)
        if lk.waiters and lk.waiters[0] not in self._sessions:
            # Known-bad: granted to a session that no longer exists.
            lk.holder, lk.token, lk.granted_index = lk.waiters.popleft(), self.next_token, index
            self.next_token += 1
            self.grants.append(Grant(name, lk.holder, lk.token))
            return
        super()._hand_over(index, name)


class _Swapped(ObservedService):
    """Runs ``machine_class`` wherever the Service makes or restores a ``Machine``, and
    ``replica_class`` for the Replica it builds."""

    machine_class: type[Machine] = Machine
    replica_class: type[Replica] = Replica

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "machine" and type(value) is Machine:
            value.__class__ = self.machine_class
        elif name == "replica" and type(value) is Replica:
            value.__class__ = self.replica_class
        super().__setattr__(name, value)


class GrantToClosedSession(_Swapped):
    machine_class = _GrantsToClosedSessions


class SkipWatchEvent(ObservedService):
    def _try_watch(self, p: _Parked) -> bool:
        try:
            evs = self.machine.events_since(p.prefixes or p.key, p.after, p.limit)
        except Compacted:
            return super()._try_watch(p)
        if len(evs) < 2:
            return super()._try_watch(p)
        # Known-bad: the second event of the batch is lost on its way into the answer.
        del evs[1]
        self._ok(p.route, p.rid, events=[event_wire(e) for e in evs],
                 revision=self.machine.revision)
        return True


class ReplyBeforeSave(ObservedService):
    _unsaved: list[Persist]

    def step(self, save: Callable[[Persist], None], send: Callable[[list[Any]], None]) -> None:
        # Known-bad: what the previous step made durable-to-be is saved only now, after
        # its messages went out and its clients were answered.
        for p in getattr(self, "_unsaved", []):
            save(p)
        self._unsaved = []
        while self.replica.has_ready():
            ready = self.replica.ready()
            send(ready.messages)
            self._apply(ready)
            self._unsaved.append(ready.persist)
            self.replica.advance()
        self._after_step()


class SkipAdoptReplica(Replica):
    def _become_leader(self) -> None:
        # Known-bad: forget what the promises reported (every slot becomes a no-op).
        self.promises = {k: type(p)(p.src, p.ballot, p.from_slot, (), p.commit_index,
                                    p.snapshot_index) for k, p in self.promises.items()}
        super()._become_leader()


class SkipAdopt(_Swapped):
    replica_class = SkipAdoptReplica


MUTATIONS: dict[str, type[ObservedService]] = {
    "grant_to_closed_session": GrantToClosedSession,
    "skip_watch_event": SkipWatchEvent,
    "reply_before_save": ReplyBeforeSave,
    "skip_adopt": SkipAdopt,
}
