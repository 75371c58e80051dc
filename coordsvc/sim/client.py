"""A simulated ``coordsvc.Client``: the same retries, redirects, sessions and keepalives.

Each client runs cooperative tasks, plain generators that yield what they wait for:
``Sleep(ms)`` or ``Ask(node, payload, timeout_ms)`` (resumed with the reply map, or None
when the attempt timed out). A lock's keepalive is a task of its own beside the one that
holds the lock, as the real client runs a thread per lock.

What the real client does, this one does, with the constants of ``coordsvc/client``
(the simulator may not import it, so they are repeated here and named alike):

- every attempt carries a fresh ``id`` and a late reply to an earlier attempt is dropped;
- a write is encoded once with its (client id, seq, first_unacked) and retried with the
  same bytes; ``first_unacked`` is the lowest seq still in flight;
- ``not_leader`` with an address is a redirect; a timeout, ``not_leader`` without one and
  every second ``unavailable`` in a row rotate to the next node, after a 10-50 ms backoff;
  ``busy`` backs off and retries the same node;
- a lock is ``OpenAndAcquire`` (a session per lock), then ``lock_wait`` long-polls; a
  keepalive goes out every ttl/3, and the lock's ``valid_until`` is the send time of the
  last keepalive that succeeded plus the ttl; the lock counts as lost a margin before
  that; giving up is ``Cancel`` then ``CloseSession``, releasing is ``CloseSession``.

Unlike the real client, a call may retry forever (``timeout_ms=None``): after healing,
every request must eventually be answered, and that is what the simulation checks.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..core.commands import Cancel, CloseSession, Command, OpenAndAcquire
from ..core.protocol import ErrorCode, ErrorReply, LockState, Result, ResultCode
from . import requests
from .requests import BadReply, Payload
from .world import World

__all__ = ["Ask", "ClientEnv", "Co", "SimClient", "SimLock", "Sleep"]

# client/_client.py
ATTEMPT_MS = 1_000
BACKOFF_MS = (10, 50)
UNAVAILABLE_BEFORE_ROTATE = 2
# client/_lock.py
LOCK_WAIT_MAX_MS = 5_000
LOST_MARGIN_FRACTION = 0.2
LOST_MARGIN_MIN_MS = 500


@dataclass(frozen=True, slots=True)
class Sleep:
    ms: int


@dataclass(frozen=True, slots=True)
class Ask:
    node: str
    payload: Payload
    timeout_ms: int


Effect = Sleep | Ask
T = TypeVar("T")
Co = Generator[Effect, Any, T]


class ClientEnv(Protocol):
    """What a client needs from the simulation around it."""

    world: World
    endpoints: list[str]   # node ids, in the order the client tries them

    def transmit(self, client: SimClient, node: str, payload: Payload) -> None:
        """Send a request from ``client`` over the simulated network."""

    def node_at(self, address: str) -> str | None: ...

    def protocol_violation(self, what: str) -> None: ...


@dataclass(slots=True)
class _Task:
    gen: Co[None]
    name: str
    waiting: int = 0      # the token of what it waits for; 0 when running or done
    done: bool = False


@dataclass(slots=True)
class SimLock:
    """A lock as the client sees it; ``valid_until`` and the margin as in client/_lock.py."""

    name: str
    session_id: int
    ttl_ms: int
    valid_until: int
    token: int = 0
    granted_at: int | None = None
    released: bool = False
    lost: bool = False
    released_at: int | None = None
    mode: str = ""        # the side of a read/write lock: "read" or "write"
    margin_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self.margin_ms = max(int(LOST_MARGIN_FRACTION * self.ttl_ms), LOST_MARGIN_MIN_MS)

    @property
    def lost_at(self) -> int:
        """The client counts the lock as lost from then on (client/_lock.py)."""
        return self.valid_until - self.margin_ms

    def belief(self, now: int) -> tuple[int, int] | None:
        """When the client believed it held the lock: from the grant's arrival until its
        release began or ``lost_at`` passed (``now`` if neither yet); None if never."""
        if self.granted_at is None:
            return None
        end = self.released_at if self.released_at is not None else now
        return self.granted_at, min(end, self.lost_at)


class SimClient:
    def __init__(self, env: ClientEnv, name: str, process: int, rng: random.Random) -> None:
        self.env = env
        self.world = env.world
        self.name = name            # the client id of its writes
        self.process = process      # its number in the history
        self.rng = rng
        self.seq = 0
        self.inflight: set[int] = set()
        self.leader: str | None = None
        self.rr = 0
        self.tasks: list[_Task] = []
        self._token = 0
        self._asks: dict[int, _Task] = {}
        self.values = 0       # puts made: each value is unique in the run
        # Every Result a write of ours was answered with: (seq, result).
        self.answers: list[tuple[int, Result]] = []
        self.locks: list[SimLock] = []   # every lock cycle it began, for the checker
        self.sems: list[SimLock] = []    # every semaphore cycle it began
        self.rws: list[SimLock] = []     # every read/write lock cycle it began
        self.doing = "starting"            # what its main task is at (for failure reports)

    # -- tasks -------------------------------------------------------------------------

    def spawn(self, gen: Co[None], name: str) -> _Task:
        task = _Task(gen, name)
        self.tasks.append(task)
        self._resume(task, None)
        return task

    def _resume(self, task: _Task, value: Any) -> None:
        try:
            effect = task.gen.send(value)
        except StopIteration:
            task.done = True
            task.waiting = 0
            return
        self._token += 1
        token = task.waiting = self._token
        w = self.world
        if isinstance(effect, Sleep):
            w.at(w.now + max(0, effect.ms), self._wake, (task, token, None))
            return
        self._asks[token] = task
        self.env.transmit(self, effect.node, {**effect.payload, "id": token})
        w.at(w.now + effect.timeout_ms, self._wake, (task, token, None))

    def _wake(self, data: tuple[_Task, int, Any]) -> None:
        task, token, value = data
        if task.waiting != token:
            return  # answered already, or a timer of an attempt that was answered
        self._asks.pop(token, None)
        task.waiting = 0
        self._resume(task, value)

    def on_reply(self, reply: Payload) -> None:
        """A reply reached us; one for an attempt we gave up on is dropped."""
        rid = reply.get("id")
        if type(rid) is int and rid in self._asks:
            self._wake((self._asks[rid], rid, reply))

    # -- requests, as client/_client.py::_call ------------------------------------------

    def call(self, payload: Payload, *, leader: bool, timeout_ms: int | None = None,
             long_poll_ms: int = 0, pin: list[str | None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> Co[Payload | None]:
        """Send until a node answers; the successful reply, an error reply the caller must
        handle (``compacted``), or None when ``timeout_ms`` ran out (outcome unknown)."""
        w = self.world
        deadline = None if timeout_ms is None else w.now + timeout_ms
        ep = self._start(pin)
        redirects = unavailable = 0
        while True:
            if cancelled is not None and cancelled():
                return None
            attempt_ms = ATTEMPT_MS + long_poll_ms
            if deadline is not None:
                if w.now >= deadline:
                    return None
                attempt_ms = min(attempt_ms, deadline - w.now)
            reply: Payload | None = yield Ask(ep, payload, attempt_ms)
            if reply is None:  # timed out: dead, slow or cut off
                ep = self._rotate(ep, pin)
                yield from self._backoff(deadline)
                continue
            try:
                refusal = requests.error_of(reply)
            except BadReply as e:
                self.env.protocol_violation(f"{self.name}: {payload['op']} from {ep}: {e}")
                refusal = ErrorReply(ErrorCode.UNAVAILABLE, str(e))   # then carry on as if so
            if refusal is None:
                if leader:
                    self.leader = ep
                if pin is not None:
                    pin[0] = ep
                return reply
            err = refusal.error
            if err == ErrorCode.NOT_LEADER:
                if self.leader == ep:
                    self.leader = None
                addr = refusal.leader_address
                to = None if addr is None else self.env.node_at(addr)
                if to is not None and to != ep and redirects < len(self.env.endpoints):
                    redirects += 1
                    ep = to
                    continue
                redirects = 0
                ep = self._rotate(ep, pin)
                yield from self._backoff(deadline)
            elif err in (ErrorCode.UNAVAILABLE, ErrorCode.BUSY):
                unavailable += 1
                if err == ErrorCode.UNAVAILABLE and unavailable >= UNAVAILABLE_BEFORE_ROTATE:
                    unavailable = 0
                    ep = self._rotate(ep, pin)
                yield from self._backoff(deadline)
            elif err == ErrorCode.COMPACTED:
                return reply
            else:
                self.env.protocol_violation(f"{self.name}: {payload['op']} from {ep} failed "
                                            f"with {err}: {refusal.message}")
                return None

    def _start(self, pin: list[str | None] | None) -> str:
        if pin is not None and pin[0] is not None:
            return pin[0]
        if self.leader is not None:
            return self.leader
        return self.env.endpoints[self.rr % len(self.env.endpoints)]

    def _rotate(self, failed: str, pin: list[str | None] | None) -> str:
        if self.leader == failed:
            self.leader = None
        nodes = self.env.endpoints
        self.rr = (nodes.index(failed) + 1) % len(nodes)
        nxt = nodes[self.rr]
        if pin is not None:
            pin[0] = nxt
        return nxt

    def _backoff(self, deadline: int | None) -> Co[None]:
        pause = self.rng.randint(*BACKOFF_MS)
        if deadline is not None:
            pause = min(pause, max(0, deadline - self.world.now))
        yield Sleep(pause)

    def write(self, cmd: Command, timeout_ms: int | None) -> Co[tuple[int, Result | None]]:
        """Replicate ``cmd`` exactly once: its seq and Result, or None if it gave up."""
        self.seq += 1
        seq = self.seq
        self.inflight.add(seq)
        payload = requests.write(self.name, seq, min(self.inflight), cmd)
        try:
            reply = yield from self.call(payload, leader=True, timeout_ms=timeout_ms)
        finally:
            self.inflight.discard(seq)
        if reply is None:
            return seq, None
        try:
            result = requests.write_result(reply)
        except BadReply as e:
            self.env.protocol_violation(f"{self.name}: write seq {seq}: {e}")
            return seq, None
        self.answers.append((seq, result))
        return seq, result

    # -- locks, as client/_lock.py --------------------------------------------------------

    def keepalive(self, lk: SimLock) -> Co[None]:
        """Keep ``lk``'s session alive until it is released or lost (its own task)."""
        w = self.world
        period = lk.ttl_ms // 3
        next_send = lk.valid_until - lk.ttl_ms + period
        while True:
            if w.now >= lk.lost_at:
                lk.lost = True
                return
            if lk.released:
                return
            yield Sleep(max(0, min(next_send, lk.lost_at) - w.now))
            if lk.released:
                return
            if w.now >= lk.lost_at:
                continue
            sent = w.now
            reply = yield from self.call(requests.keepalive(lk.session_id), leader=True,
                                         timeout_ms=lk.lost_at - sent,
                                         cancelled=lambda: lk.released)
            if lk.released:
                return
            if reply is None:
                next_send = w.now
                continue
            try:
                known = requests.known(reply)
            except BadReply as e:
                self.env.protocol_violation(f"{self.name}: keepalive: {e}")
                known = False
            if not known:
                lk.lost = True
                return
            lk.valid_until = max(lk.valid_until, sent + lk.ttl_ms)
            next_send = sent + period

    def take_grant(self, lk: SimLock, token: int) -> bool:
        if lk.lost:
            return False
        lk.token, lk.granted_at = token, self.world.now
        return True

    def open_and_acquire(self, name: str, ttl_ms: int, timeout_ms: int | None,
                         lock_delay_ms: int = 0) -> Co[tuple[SimLock | None, Result | None]]:
        """The first write of a lock cycle: the lock (granted or queued) and the Result."""
        start = self.world.now
        _, res = yield from self.write(OpenAndAcquire(name, ttl_ms, True, lock_delay_ms),
                                       timeout_ms)
        if res is None or res.code not in (ResultCode.OK, ResultCode.QUEUED):
            return None, res
        sid = res.data.get("session_id")
        if type(sid) is not int:
            self.env.protocol_violation(f"{self.name}: OpenAndAcquire without a session: {res}")
            return None, res
        # The session's clock started no earlier than the first send: hence ``start``.
        lk = SimLock(name, sid, ttl_ms, valid_until=start + ttl_ms)
        self.locks.append(lk)
        self.spawn(self.keepalive(lk), f"keepalive {sid}")
        if res.code == ResultCode.OK:
            token = res.data.get("token")
            if type(token) is not int or token < 1:
                self.env.protocol_violation(f"{self.name}: grant without a token: {res}")
            else:
                self.take_grant(lk, token)
        return lk, res

    def wait_for_grant(self, lk: SimLock, deadline: int,
                       timeout_ms: int | None) -> Co[str]:
        """Long-poll until granted: "held", or why not ("lost", "timeout", "unavailable")."""
        w = self.world
        while True:
            if lk.lost:
                return "lost"
            wait_ms = min(LOCK_WAIT_MAX_MS, deadline - w.now)
            if wait_ms <= 0:
                return "timeout"
            reply = yield from self.call(
                requests.lock_wait(lk.name, lk.session_id, wait_ms), leader=True,
                timeout_ms=None if timeout_ms is None else wait_ms + timeout_ms,
                long_poll_ms=wait_ms)
            if reply is None:
                return "unavailable"
            try:
                state, token = requests.lock_state(reply)
            except BadReply as e:
                self.env.protocol_violation(f"{self.name}: lock_wait: {e}")
                return "unavailable"
            if state is LockState.HELD:
                return "held" if self.take_grant(lk, token) else "lost"
            if state is LockState.NONE:
                return "lost"

    def finish(self, lk: SimLock) -> None:
        """Stop believing in ``lk`` and stop its keepalives (release and abandon begin so)."""
        if not lk.released:
            lk.released, lk.released_at = True, self.world.now

    def close_session(self, lk: SimLock, timeout_ms: int | None) -> Co[Result | None]:
        self.finish(lk)
        _, res = yield from self.write(CloseSession(lk.session_id), timeout_ms)
        return res

    def cancel(self, lk: SimLock, timeout_ms: int | None) -> Co[Result | None]:
        _, res = yield from self.write(Cancel(lk.name, lk.session_id), timeout_ms)
        return res
