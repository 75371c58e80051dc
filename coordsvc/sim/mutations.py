"""Known-bad nodes, to prove the whole-node simulation catches what it claims to.

Each mutation is a subclass of the production ``Service`` (or of one of its parts --
``Machine``, ``Parking``, ``Replica`` -- planted in one) that breaks one rule; production
code has no hooks for them. A test asserts that
each one is caught within the CI seeds, and by which check.

- ``grant_to_closed_session`` (Machine): closing or expiring a session leaves it in the
  wait queues, and a release hands the lock to it anyway. The lock then belongs to a
  session nobody can close or expire.
- ``skip_watch_event`` (the Service's ``Parking``): a watch answer that carries several
  events loses one.
- ``keep_ephemeral_keys`` (Machine): a lease's expiry forgets its ephemeral keys instead
  of deleting them, so they outlive their owner.
- ``over_admit`` (Machine): a semaphore admits one holder more than its limit.
- ``writer_joins_readers`` (Machine): a read/write lock lets a writer in while readers
  hold it (it waits only for another writer).
- ``reader_overtakes_writer`` (Machine): a reader that fits beside the readers holding a
  read/write lock is let in at once, past a writer waiting before it (writers starve).
  Nobody holds with a writer, so only the FIFO check (``checks.check_fifo``) can tell.
- ``ignore_lock_delay`` (Machine): a session's expiry passes its locks on at once, as a
  close does, though their holder asked for a lock-delay.
- ``reply_before_save`` (Service): group commit off by one -- each Ready is saved at the
  next ``step``, after its messages and client replies have left.
- ``txn_first_write_only`` (Machine): a transaction applies the first write of its branch
  and drops the rest, yet answers as if all were done.
- ``txn_split_revisions`` (Machine): each write of a transaction gets a revision of its
  own. Every key still ends as the transaction said, and watchers see what the log holds,
  so only the one-revision check (``checks.check_txns``) can tell.

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
from dataclasses import replace
from typing import Any, ClassVar

from ..core.acl import Rights
from ..core.commands import AcquireShared, Command, ExpireSession, Txn
from ..core.machine import RW_ALL, Grant, Machine, RevisionCompacted
from ..core.protocol import Result, ResultCode, WatchReply
from ..core.replica import Ready, Replica
from ..core.service import Service
from ..core.service_parking import ParkedWatch, Parking
from ..core.types import Ballot, Persist, Slot, Value

__all__ = ["MUTATIONS", "ObservedService"]


class ObservedService(Service):
    observe: Callable[[str, Ready], None] | None = None
    # Production part -> the known-bad subclass a mutation runs instead (none here).
    swaps: ClassVar[dict[type, type]] = {}

    def _apply(self, ready: Ready) -> None:
        if self.observe is not None:
            self.observe(self.id, ready)
        super()._apply(ready)


class _GrantsToClosedSessions(Machine):
    def _close(self, index: int, sid: int, expired: bool = False) -> Result:
        s = self._sessions.get(sid)
        if s is not None and (s.keys or any(n in self._shared for n in s.waiting | s.held)):
            # Leases and semaphore slots close correctly: the planted bug is in plain locks.
            return super()._close(index, sid, expired)
        s = self._sessions.pop(sid, None)
        if s is None:
            return Result(ResultCode.NO_SESSION, self.revision, {"message": f"no session {sid}"})
        # Known-bad: the session keeps its places in the wait queues.
        for name in sorted(s.held):
            self._hand_over(index, name)
        return Result(ResultCode.OK, self.revision, {})

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
    """Runs a known-bad subclass wherever the Service makes one of its parts: each value
    of exactly a class in ``swaps`` assigned to an attribute (``machine`` when it is made
    or restored, ``replica``, ``parking``) becomes an instance of its known-bad class."""

    def __setattr__(self, name: str, value: Any) -> None:
        bad = self.swaps.get(type(value))
        if bad is not None:
            value.__class__ = bad
        super().__setattr__(name, value)


class GrantToClosedSession(_Swapped):
    swaps = {Machine: _GrantsToClosedSessions}


class _KeepsEphemeralKeys(Machine):
    def _run(self, index: int, cmd: Command, who: str, client_id: str) -> Result:
        if isinstance(cmd, ExpireSession) and not who:
            s = self._sessions.get(cmd.session_id)
            if s is not None:
                # Known-bad: the expiring lease lets go of its keys instead of deleting them.
                for key in sorted(s.keys):
                    del self._leased[key]
                s.keys.clear()
        return super()._run(index, cmd, who, client_id)


class _OverAdmits(Machine):
    @staticmethod
    def _fits(sh: Any, weight: int) -> bool:
        # Known-bad: off by one.
        return bool(sh.used + weight <= sh.limit + 1)


class OverAdmit(_Swapped):
    swaps = {Machine: _OverAdmits}


class _LetsWritersJoinReaders(Machine):
    @staticmethod
    def _fits(sh: Any, weight: int) -> bool:
        if sh.kind == "rwlock" and weight == RW_ALL:
            # Known-bad: a writer waits for another writer only, not for readers.
            return bool(sh.used < RW_ALL)
        return Machine._fits(sh, weight)


class WriterJoinsReaders(_Swapped):
    swaps = {Machine: _LetsWritersJoinReaders}


class _LetsReadersOvertake(Machine):
    def _acquire_shared(self, index: int, cmd: AcquireShared) -> Result:
        sh, s = self._shared.get(cmd.name), self._sessions.get(cmd.session_id)
        if (cmd.mode == "read" and sh is not None and sh.kind == "rwlock" and s is not None
                and sh.waiters and cmd.session_id not in sh.holders
                and cmd.name not in s.waiting and self._fits(sh, 1)):
            # Known-bad: in beside the readers, past whoever waits (a writer, for one).
            return Result(ResultCode.OK, self.revision, {
                "token": self._grant_shared(index, cmd.name, sh, cmd.session_id, 1)})
        return super()._acquire_shared(index, cmd)


class ReaderOvertakesWriter(_Swapped):
    swaps = {Machine: _LetsReadersOvertake}


class _IgnoresLockDelay(Machine):
    def _close(self, index: int, sid: int, expired: bool = False) -> Result:
        # Known-bad: an expiry lets go of the session's locks as a close does.
        return super()._close(index, sid)


class IgnoreLockDelay(_Swapped):
    swaps = {Machine: _IgnoresLockDelay}


class KeepEphemeralKeys(_Swapped):
    swaps = {Machine: _KeepsEphemeralKeys}


class _AppliesFirstTxnWrite(Machine):
    def _txn(self, cmd: Txn, who: str, rights: Rights) -> Result:
        # Known-bad: only the first write of the applied branch takes effect.
        return super()._txn(replace(cmd, success=cmd.success[:1], failure=cmd.failure[:1]),
                            who, rights)


class TxnFirstWriteOnly(_Swapped):
    swaps = {Machine: _AppliesFirstTxnWrite}


class _SplitsTxnRevisions(Machine):
    def _txn(self, cmd: Txn, who: str, rights: Rights) -> Result:
        first = super()._txn(replace(cmd, success=cmd.success[:1], failure=cmd.failure[:1]),
                             who, rights)
        succeeded = first.data.get("succeeded")
        if first.code != ResultCode.OK or type(succeeded) is not bool:
            return first
        # Known-bad: every further write of the branch at a revision of its own.
        last = first
        for op in (cmd.success if succeeded else cmd.failure)[1:]:
            last = super()._txn(Txn(success=(op,)), who, rights)
        return Result(ResultCode.OK, last.revision, {"succeeded": succeeded,
                                                     "revision": last.revision})


class TxnSplitRevisions(_Swapped):
    swaps = {Machine: _SplitsTxnRevisions}


class _SkippingParking(Parking):
    __slots__ = ()

    def _try_watch(self, m: Machine, w: ParkedWatch) -> bool:
        req = w.request
        try:
            evs = m.events_since(req.selector, req.after, req.limit, hide_records=True)
        except RevisionCompacted:
            return super()._try_watch(m, w)
        if len(evs) < 2:
            return super()._try_watch(m, w)
        # Known-bad: the second event of the batch is lost on its way into the answer.
        del evs[1]
        self._out.reply(w.route, w.rid, WatchReply(tuple(evs), m.revision))
        return True


class SkipWatchEvent(_Swapped):
    swaps = {Parking: _SkippingParking}


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
    def _recovered(self) -> dict[Slot, tuple[Ballot, Value]]:
        # Known-bad: forget what the promises reported (every slot becomes a no-op).
        return {}


class SkipAdopt(_Swapped):
    swaps = {Replica: SkipAdoptReplica}


MUTATIONS: dict[str, type[ObservedService]] = {
    "grant_to_closed_session": GrantToClosedSession,
    "skip_watch_event": SkipWatchEvent,
    "keep_ephemeral_keys": KeepEphemeralKeys,
    "over_admit": OverAdmit,
    "writer_joins_readers": WriterJoinsReaders,
    "reader_overtakes_writer": ReaderOvertakesWriter,
    "ignore_lock_delay": IgnoreLockDelay,
    "reply_before_save": ReplyBeforeSave,
    "skip_adopt": SkipAdopt,
    "txn_first_write_only": TxnFirstWriteOnly,
    "txn_split_revisions": TxnSplitRevisions,
}
