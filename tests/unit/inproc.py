"""A real node inside the test process, and client transports that reach it without sockets.

``LocalNode`` is the production ``Service`` on a ``MemoryStore``, driven by a small loop on
a thread: client requests in, ``tick`` when a timer is due, ``step(save, send)``, replies
out -- the runtime's loop without ZeroMQ or SQLite. Requests and replies still pass
through ``wire`` as bytes, so what the client sends is what a node would decode.

``LocalTransport`` is a ``ClientTransport`` to such nodes by endpoint; an endpoint it does
not know never answers, like a dead node. ``Faults`` wraps it with the misbehaviour a
test scripts per (endpoint, op): dropped replies, redirects, odd answers, silence.
"""
from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coordsvc import wire
from coordsvc.client._transport import Cancelled
from coordsvc.client.errors import CoordError
from coordsvc.core.identity import INSECURE, Identities
from coordsvc.core.machine import Machine
from coordsvc.core.messages import Message, Outbound
from coordsvc.core.quotas import Quotas
from coordsvc.core.service import Service
from coordsvc.core.types import Config
from coordsvc.storage.memory import MemoryStore

Reply = dict[str, Any]
#: The one address an in-process node is reached at in the client tests (conftest.py).
A = "tcp://127.0.0.1:1"
# Fast timers: a single member elects itself within ~50 ms.
FAST = Config(heartbeat_ms=10, election_timeout_ms=50)


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class _Slot:
    """Where one request's reply lands."""

    __slots__ = ("body", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.body: bytes | None = None


class LocalNode:
    """``Service`` ``node_id`` of ``members`` (others are absent: a lone member of a bigger
    cluster never gets a quorum), run by a thread until ``stop()``."""

    def __init__(self, node_id: str = "n1", members: Sequence[str] = ("n1",),
                 config: Config = FAST, seed: int = 1, identities: Identities = INSECURE,
                 quotas: Quotas = Quotas()) -> None:
        self.id = node_id
        self.store = MemoryStore()
        self.service = Service(node_id, {m: f"tcp://127.0.0.1:{i + 1}" for i, m in enumerate(members)},
                               self.store.load(), random.Random(seed), now_ms(), config,
                               identities=identities, quotas=quotas)
        self.received: list[Reply] = []      # every request map the node decoded, in order
        self._cv = threading.Condition()
        self._inbox: list[tuple[object, bytes, str]] = []
        self._slots: dict[object, _Slot] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"local-node-{node_id}", daemon=True)
        self._thread.start()
        if len(members) == 1:
            self.wait_until(lambda s: s.serving(), 5.0)

    @property
    def machine(self) -> Machine:
        with self._cv:
            return self.service.machine

    def status(self) -> dict[str, Any]:
        with self._cv:
            return self.service.status()

    def run(self, fn: Callable[[Service], Any]) -> Any:
        """``fn(service)`` under the node's lock, between two turns of its loop."""
        with self._cv:
            return fn(self.service)

    def ops(self, op: str) -> list[Reply]:
        with self._cv:
            return [r for r in self.received if r.get("op") == op]

    def wait_until(self, cond: Callable[[Service], bool], limit_s: float) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: cond(self.service), limit_s):
                raise AssertionError(f"node {self.id}: condition not met within {limit_s} s")

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    # -- what a transport calls -----------------------------------------------------------

    def submit(self, body: bytes, principal: str = "admin") -> tuple[object, _Slot]:
        """A request from a connection authenticated as ``principal``."""
        route, slot = object(), _Slot()
        with self._cv:
            self._slots[route] = slot
            self._inbox.append((route, body, principal))
            self._cv.notify_all()
        return route, slot

    def forget(self, route: object) -> None:
        with self._cv:
            self._slots.pop(route, None)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        svc = self.service
        with self._cv:
            while not self._stopping:
                now = now_ms()
                inbox, self._inbox = self._inbox, []
                for route, body, principal in inbox:
                    req = wire.decode_client(body, wire.CLIENT_REQUEST)
                    self.received.append(req)
                    svc.on_client(route, req, now, principal)
                if now >= svc.next_timer_ms():
                    svc.tick(now)
                self._step(now)
                replies, _ = svc.take_outbox()
                for route, payload in replies:
                    slot = self._slots.pop(route, None)
                    if slot is not None:
                        slot.body = wire.encode_client(wire.CLIENT_REPLY, payload)
                        slot.done.set()
                self._cv.notify_all()   # for wait_until
                if not self._inbox:
                    self._cv.wait(max(0.0, (svc.next_timer_ms() - now_ms()) / 1000))

    def _step(self, now: int) -> None:
        """``step`` until quiet; messages to ourselves come straight back (others are lost)."""
        local: list[Message] = []

        def send(messages: list[Outbound]) -> None:
            local.extend(o.msg for o in messages if o.dst == self.id)

        while True:
            self.service.step(self.store.save, send)
            if not local:
                return
            for msg in local:
                self.service.on_peer(msg, now, f"node:{self.id}")
            local.clear()


def _wait(done: threading.Event, deadline: float, cancel: threading.Event | None) -> bool:
    """Wait for ``done`` until ``deadline``; raise ``Cancelled`` once ``cancel`` is set."""
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        left = deadline - time.monotonic()
        if left <= 0:
            return done.is_set()
        if done.wait(left if cancel is None else min(left, 0.02)):
            return True


class LocalTransport:
    """A ``ClientTransport`` to ``LocalNode``s by endpoint (several endpoints may reach one
    node). Like the ZeroMQ one, it adds a fresh id per attempt and keeps only its reply.
    Its requests arrive as ``principal``'s (what a key would authenticate as)."""

    def __init__(self, nodes: Mapping[str, LocalNode], principal: str = "admin") -> None:
        self.nodes = dict(nodes)
        self.principal = principal
        self._ids = itertools.count(1)
        self._closed = False

    def request(self, endpoint: str, payload: dict[str, Any], deadline: float,
                connect_deadline: float, cancel: threading.Event | None = None) -> Reply | None:
        if self._closed:
            raise CoordError("client is closed")
        node = self.nodes.get(endpoint)
        if node is None:   # nobody there: the send never completes
            _wait(threading.Event(), min(deadline, connect_deadline), cancel)
            return None
        rid = next(self._ids)
        route, slot = node.submit(wire.encode_client(wire.CLIENT_REQUEST, {**payload, "id": rid}),
                                  self.principal)
        try:
            if not _wait(slot.done, deadline, cancel):
                return None
        finally:
            node.forget(route)
        assert slot.body is not None
        reply = wire.decode_client(slot.body, wire.CLIENT_REPLY)
        return reply if reply.get("id") == rid else None

    def request_all(self, endpoints: Sequence[str], payload: dict[str, Any],
                    timeout_s: float) -> list[Reply | None]:
        deadline = time.monotonic() + timeout_s
        pending = []
        for ep in endpoints:
            node = self.nodes.get(ep)
            rid = next(self._ids)
            sent = None if node is None else node.submit(
                wire.encode_client(wire.CLIENT_REQUEST, {**payload, "id": rid}), self.principal)
            pending.append((node, rid, sent))
        out: list[Reply | None] = []
        for node, rid, sent in pending:
            if node is None or sent is None or not _wait(sent[1].done, deadline, None):
                out.append(None)
                if node is not None and sent is not None:
                    node.forget(sent[0])
                continue
            assert sent[1].body is not None
            reply = wire.decode_client(sent[1].body, wire.CLIENT_REPLY)
            out.append(reply if reply.get("id") == rid else None)
        return out

    def learn_key(self, address: object, public: object) -> None:
        pass     # in-process nodes need no keys

    def release_thread(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True


# A script gets the request (without id) and ``forward()``, which hands it to the node and
# returns the node's reply (None if none came). It returns the reply the client gets, or
# None for silence: the client then hears nothing until its deadline.
Forward = Callable[[], Reply | None]
Script = Callable[[Reply, Forward], Reply | None]


class Faults:
    """Scripted misbehaviour in front of a ``LocalTransport``, per (endpoint, op), and a log
    of every attempt the client made. Not a server: every answer it does not script comes
    from the node."""

    def __init__(self, inner: LocalTransport) -> None:
        self.inner = inner
        self.scripts: dict[tuple[str, str], Script] = {}
        self._log: list[tuple[str, Reply]] = []
        self._mu = threading.Lock()

    def on(self, endpoint: str, op: str, script: Script) -> None:
        self.scripts[(endpoint, op)] = script

    def sent(self, endpoint: str | None = None, op: str | None = None) -> list[Reply]:
        """Requests the client sent (to ``endpoint``, of ``op``), in order, without ids."""
        with self._mu:
            return [p for ep, p in self._log
                    if (endpoint is None or ep == endpoint) and (op is None or p["op"] == op)]

    def request(self, endpoint: str, payload: dict[str, Any], deadline: float,
                connect_deadline: float, cancel: threading.Event | None = None) -> Reply | None:
        with self._mu:
            self._log.append((endpoint, payload))
        script = self.scripts.get((endpoint, payload["op"]))
        if script is None:
            return self.inner.request(endpoint, payload, deadline, connect_deadline, cancel)
        reply = script(payload, lambda: self.inner.request(
            endpoint, payload, deadline, connect_deadline, cancel))
        if reply is None:
            _wait(threading.Event(), deadline, cancel)
        return reply

    def request_all(self, endpoints: Sequence[str], payload: dict[str, Any],
                    timeout_s: float) -> list[Reply | None]:
        deadline = time.monotonic() + timeout_s
        with self._mu:
            self._log.extend((ep, payload) for ep in endpoints)
        plain = [ep for ep in endpoints if (ep, payload["op"]) not in self.scripts]
        answers = dict(zip(plain, self.inner.request_all(plain, payload, timeout_s), strict=True))
        for ep in endpoints:
            script = self.scripts.get((ep, payload["op"]))
            if script is not None:
                answers[ep] = script(payload, lambda ep=ep: self.inner.request(
                    ep, payload, deadline, deadline))
        return [answers[ep] for ep in endpoints]

    def learn_key(self, address: object, public: object) -> None:
        self.inner.learn_key(address, public)

    def release_thread(self) -> None:
        self.inner.release_thread()

    def close(self) -> None:
        self.inner.close()


# -- scripts ----------------------------------------------------------------------------------

def silent() -> Script:
    """A paused node: the request is never delivered, nothing comes back."""
    return lambda req, forward: None


def answer(reply: Reply) -> Script:
    """Answer ``reply`` without asking the node."""
    return lambda req, forward: reply


def drop_replies(n: int) -> Script:
    """Deliver the request, but lose the node's reply the first ``n`` times."""
    left = [n]

    def script(req: Reply, forward: Forward) -> Reply | None:
        reply = forward()
        if left[0] > 0:
            left[0] -= 1
            return None
        return reply
    return script


def first(*replies: Reply) -> Script:
    """Answer ``replies`` in turn without asking the node, then pass requests through."""
    queue = list(replies)
    return lambda req, forward: queue.pop(0) if queue else forward()
