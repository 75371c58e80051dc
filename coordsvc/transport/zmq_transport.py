"""ZeroMQ sockets of one node: a ROUTER for requests and peer traffic, a PUB for
heartbeats and watch events, one DEALER per peer, one SUB on every peer's PUB.

The PUB is an XPUB, which also reports subscriptions: while nobody subscribes to
event topics, changes are not encoded or sent at all.

Everything is non-blocking: a send that would block (peer down, queue full) drops
the message — Paxos retransmits what matters — and a frame that fails to decode is
counted and dropped. Nothing a peer or client sends can stop the node.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from .. import wire
from ..clusterfile import Cluster
from ..core.messages import Heartbeat, Message, Outbound
from ..core.protocol import Change
from ..core.types import UsageError

log = logging.getLogger("coordsvc.transport")
HEARTBEAT_TOPIC = b"\x01hb"
EVENT_TOPIC_PREFIX = b"k"
PEER_HWM = 10_000
CLIENT_HWM = 50_000
MAX_ROUTER_FRAMES = 4
# ZeroMQ drops a connection that sends a larger message; frames above the wire cap but
# below this still reach the decoder, which counts (and may answer) them.
MAX_ROUTER_MESSAGE_BYTES = 2 * wire.MAX_FRAME_BYTES
_LOOPBACK_SOURCE = re.compile(r"^127\.\d+\.\d+\.\d+$")


class TransportError(Exception):
    """The node cannot bind its sockets (e.g. the port is taken)."""


@dataclass(slots=True)
class Counters:
    bad_frames: int = 0
    dropped_sends: int = 0
    oversize_sends: int = 0     # a message that failed to encode within the frame cap
    peer_in: int = 0
    client_in: int = 0


def _with_source(own_host: str, endpoint: str) -> str:
    # Connect *from* our own loopback address, so per-node firewall rules can tell
    # nodes apart (see FAULTS.md): tcp://SRC:0;DST:PORT.
    if _LOOPBACK_SOURCE.match(own_host) and own_host != "127.0.0.1":
        return endpoint.replace("tcp://", f"tcp://{own_host}:0;", 1)
    return endpoint


# Plain ints: pyzmq's flag enums cost microseconds per operation on the hot path.
_NB = int(zmq.NOBLOCK)
_NB_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)  # type: ignore[operator]


def _recv_all(sock: zmq.Socket[bytes]) -> list[bytes] | None:
    """The next multipart message, or None if (against EVENTS' word) there is none."""
    try:
        frames = [sock.recv(_NB)]
        while sock.getsockopt(_RCVMORE):
            frames.append(sock.recv(_NB))
    except zmq.Again:
        return None
    return frames


class Transport:
    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.id = node_id
        me = cluster.node(node_id)
        self.ctx = zmq.Context()
        self.counters = Counters()
        self.router = self._socket(zmq.ROUTER, sndhwm=CLIENT_HWM, rcvhwm=CLIENT_HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_ROUTER_MESSAGE_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable reply -> error, not silence
        self.pub = self._socket(zmq.XPUB, sndhwm=CLIENT_HWM)
        self.pub.setsockopt(zmq.MAXMSGSIZE, 1024)   # subscription frames are topics
        # Topics some subscriber holds (XPUB reports a topic's first subscribe and last
        # unsubscribe); only the event topics matter here.
        self.event_topics: set[bytes] = set()
        try:
            self.router.bind(me.address)
            self.pub.bind(me.publish)
        except zmq.ZMQError as e:
            self.close()
            raise TransportError(f"cannot listen on {me.address} / {me.publish}: {e.strerror}") from None
        self.sub = self._socket(zmq.SUB, rcvhwm=PEER_HWM)
        self.sub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES + 64)
        self.sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        self.dealers: dict[str, zmq.Socket[bytes]] = {}
        for peer in cluster.nodes:
            if peer.id == node_id:
                continue
            d = self._socket(zmq.DEALER, sndhwm=PEER_HWM)
            d.setsockopt(zmq.IMMEDIATE, 1)   # never queue for a peer that is not connected
            d.setsockopt(zmq.IDENTITY, f"peer:{node_id}".encode())
            d.connect(_with_source(me.host, peer.address))
            self.sub.connect(_with_source(me.host, peer.publish))
            self.dealers[peer.id] = d
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.pub, zmq.POLLIN)
        self._readable: set[zmq.Socket[bytes]] = set()
        self.local: list[Message] = []

    def _socket(self, kind: int, sndhwm: int | None = None, rcvhwm: int | None = None) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        if sndhwm is not None:
            s.setsockopt(zmq.SNDHWM, sndhwm)
        if rcvhwm is not None:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        return s

    # ------------------------------------------------------------------ receive

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for input; True if some socket has a message."""
        if self.local:
            timeout_ms = 0
        self._readable = {sock for sock, _ in self.poller.poll(timeout_ms)}
        return bool(self._readable)

    def receive(self, budget: int = 2000) -> Iterator[tuple[str, Any, Any]]:
        """Yield ('peer', msg, None) and ('client', request, route) without blocking."""
        local, self.local = self.local, []
        for msg in local:
            yield "peer", msg, None
        # Only sockets the last poll found readable, each drained while EVENTS says a
        # message is queued: cheaper than letting recv raise zmq.Again every turn.
        ready, self._readable = self._readable, set()
        if self.pub in ready:
            self._read_subscriptions()
        router, sub, n = self.router, self.sub, 0
        while n < budget and router in ready and _readable(router):
            frames = _recv_all(router)
            if frames is None:
                break
            n += 1
            if len(frames) != 2:
                self.counters.bad_frames += 1
                continue
            try:
                tag, body = wire.decode(frames[1])
            except wire.WireError:
                self.counters.bad_frames += 1
                if len(frames[1]) > wire.MAX_FRAME_BYTES:
                    self._refuse_oversize(frames[0], frames[1])
                continue
            if tag == wire.CLIENT_REQUEST:
                self.counters.client_in += 1
                yield "client", body, frames[0]
            elif isinstance(body, dict):
                self.counters.bad_frames += 1
            else:
                self.counters.peer_in += 1
                yield "peer", body, None
        while n < budget and sub in ready and _readable(sub):
            frames = _recv_all(sub)
            if frames is None:
                break
            n += 1
            try:
                msg = wire.decode_peer(frames[-1])
            except wire.WireError:
                self.counters.bad_frames += 1
                continue
            self.counters.peer_in += 1
            yield "peer", msg, None

    def _read_subscriptions(self) -> None:
        while _readable(self.pub):
            frames = _recv_all(self.pub)
            if frames is None:
                break
            frame = frames[0]
            topic = frame[1:]
            if len(frames) != 1 or not frame or frame[0] not in (0, 1):
                self.counters.bad_frames += 1
            elif not topic or topic.startswith(EVENT_TOPIC_PREFIX):
                # b"" subscribes to everything, events included.
                if frame[0] == 1:
                    self.event_topics.add(topic)
                else:
                    self.event_topics.discard(topic)

    # ------------------------------------------------------------------ send

    def send(self, messages: list[Outbound]) -> None:
        # A broadcast is one message object for every member: encode it once. One PUB
        # frame reaches every follower, so each heartbeat is also published once.
        encoded: dict[int, bytes] = {}
        for o in messages:
            if o.dst == self.id:
                self.local.append(o.msg)
                continue
            heartbeat = isinstance(o.msg, Heartbeat)
            frame = encoded.get(id(o.msg))
            if frame is None:
                try:
                    frame = encoded[id(o.msg)] = wire.encode_peer(o.msg)
                except UsageError as e:
                    # Impossible by construction (senders pack by bytes); should it happen,
                    # losing one message is survivable, and stopping the node is not needed.
                    self._oversize(f"dropped {type(o.msg).__name__} to {o.dst}: {e}")
                    continue
            elif heartbeat:
                continue      # already published
            if heartbeat:
                self._nb(self.pub, HEARTBEAT_TOPIC, frame)
                continue
            d = self.dealers.get(o.dst)
            if d is not None:
                self._nb(d, None, frame)

    def reply(self, route: Any, payload: dict[str, Any]) -> None:
        try:
            body = wire.encode_client(wire.CLIENT_REPLY, payload)
        except UsageError as e:
            self._oversize(f"dropped a reply to request {payload.get('id')!r}: {e}")
            body = wire.encode_client(wire.CLIENT_REPLY, {
                "id": payload.get("id") if type(payload.get("id")) is int else None,
                "ok": False, "error": "internal",
                "message": "the reply did not fit in one frame and was dropped"})
        self._nb(self.router, route, body)

    def _refuse_oversize(self, route: bytes, body: bytes) -> None:
        """A request above the frame cap (but within MAX_ROUTER_MESSAGE_BYTES, which ZeroMQ
        enforces by dropping the connection) is answered, not left to time out."""
        is_request, rid = wire.oversize_request_id(body)
        if is_request:
            self.reply(route, {"id": rid, "ok": False, "error": "bad_request",
                               "message": f"request of {len(body)} bytes exceeds the "
                                          f"{wire.MAX_FRAME_BYTES}-byte frame cap"})

    def _oversize(self, what: str) -> None:
        self.counters.oversize_sends += 1
        log.error("%s (oversize sends so far: %d)", what, self.counters.oversize_sends)

    def publish(self, events: list[Change]) -> None:
        if not self.event_topics:
            return
        for e in events:
            body = wire.encode_client(wire.EVENT, e.to_map())
            self._nb(self.pub, EVENT_TOPIC_PREFIX + e.key.encode(), body)

    def _nb(self, sock: zmq.Socket[bytes], head: bytes | None, body: bytes) -> None:
        """Send ``[head, body]`` (or just ``body``) without blocking; count a drop."""
        try:
            if head is not None:
                sock.send(head, _NB_MORE)
            sock.send(body, _NB)
        except zmq.ZMQError:   # zmq.Again (queue full) included
            self.counters.dropped_sends += 1

    def close(self) -> None:
        self.ctx.destroy(linger=0)
