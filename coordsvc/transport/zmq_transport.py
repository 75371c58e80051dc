"""ZeroMQ sockets of one node: a ROUTER for requests and peer traffic, a PUB for
heartbeats and watch events, one DEALER to each peer's ROUTER and one SUB on each
peer's PUB (one per peer, so the connection a heartbeat came on names its sender).

The PUB is an XPUB, which also reports subscriptions: while nobody subscribes to
event topics, changes are not encoded or sent at all.

Secure clusters (the default) run CurveZMQ on every socket. The ROUTER and the XPUB
are CURVE servers; the DEALERs and SUBs are CURVE clients that pin the peer's public
key, so they only ever talk to the real member. Clients are admitted by pyzmq's
``zmq.auth.Authenticator``, answered here from the node's own poll loop (no thread):
its credentials callback asks ``principal_for_key`` (the pure ``Service`` method) and
the principal becomes the connection's ZAP User-Id, which libzmq attaches to every
frame. The ROUTER and the XPUB use different ZAP domains so that the XPUB, where values
flow, admits only members and admins (``may_subscribe``, the core's rule). Each received
message is yielded with its principal; the core decides what it may do (a peer message
whose ``src`` is not the connection's member is dropped there, a client request outside
the principal's rights is refused).

ZAP runs once per connection, so a principal removed from the identity table keeps its
open connections: on the ROUTER the core refuses everything it sends from then on; the
XPUB offers no way to close one subscriber, so ``drop_subscribers`` unbinds and rebinds
it, which ends every subscription at once -- members and remaining admins reconnect by
themselves within ``RECONNECT_IVL`` and are authenticated again; the removed key is not.

Everything is non-blocking: a send that would block (peer down, queue full) drops
the message — Paxos retransmits what matters — and a frame that fails to decode is
counted and dropped. Nothing a peer or client sends can stop the node.
"""
from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from .. import wire
from ..clusterfile import Cluster, NodeSpec
from ..core.identity import ADMIN, NODE_PREFIX, node_principal
from ..core.messages import Heartbeat, Message, Outbound
from ..core.protocol import Change
from ..core.types import UsageError
from ..keys import KeyPair

log = logging.getLogger("coordsvc.transport")
HEARTBEAT_TOPIC = b"\x01hb"
EVENT_TOPIC_PREFIX = b"k"
PEER_HWM = 10_000
CLIENT_HWM = 50_000
MAX_ROUTER_FRAMES = 4
# ZeroMQ drops a connection that sends a larger message; frames above the wire cap but
# below this still reach the decoder, which counts (and may answer) them.
MAX_ROUTER_MESSAGE_BYTES = 2 * wire.MAX_FRAME_BYTES
# ZAP domains: one per listening socket, so each admits its own set of principals.
ROUTER_DOMAIN = "coordsvc"
PUB_DOMAIN = "coordsvc-pub"
# A peer connection whose CURVE handshake failed for good (libzmq does not reconnect
# after an authentication or protocol failure) is rebuilt after this pause.
PEER_RETRY_MS = 1000
MAINTAIN_EVERY_MS = 250
_HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_LOOPBACK_SOURCE = re.compile(r"^127\.\d+\.\d+\.\d+$")

log = logging.getLogger("coordsvc.transport")

Received = tuple[str, Any, Any, "str | None"]   # (kind, body, route, principal)


class TransportError(Exception):
    """The node cannot bind its sockets (e.g. the port is taken)."""


@dataclass(slots=True)
class Counters:
    bad_frames: int = 0
    dropped_sends: int = 0
    oversize_sends: int = 0     # a message that failed to encode within the frame cap
    peer_in: int = 0
    client_in: int = 0
    rejected_keys: int = 0       # CURVE handshakes refused by the ZAP handler
    peer_handshake_failures: int = 0
    subscriber_drops: int = 0    # times every PUB subscription was ended (a removed admin)


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


def _recv_routed(sock: zmq.Socket[bytes]) -> tuple[bytes, zmq.Frame | None] | None:
    """(routing id, body frame) of the next ROUTER message; body None if it is not two
    frames. The body is received without copying: the Frame carries the User-Id."""
    try:
        head = sock.recv(_NB)
        if not sock.getsockopt(_RCVMORE):
            return head, None
        body = sock.recv(_NB, copy=False)
        if body.more:
            while sock.getsockopt(_RCVMORE):
                sock.recv(_NB)
            return head, None
    except zmq.Again:
        return None
    return head, body


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        uid = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return uid if isinstance(uid, str) and uid else None


def _member_or_bootstrap_admin(principal: str) -> bool:
    return principal == ADMIN or principal.startswith(NODE_PREFIX)


class _Admit:
    """The ZAP credentials callback of one domain: known keys (PUB: members and admins)."""

    def __init__(self, zap: _Zap, pub: bool) -> None:
        self.zap = zap
        self.pub = pub

    def callback(self, domain: str, key: bytes) -> bool:
        principal = self.zap.principal_for_key(key.decode("ascii"))
        ok = principal is not None and (not self.pub or self.zap.may_subscribe(principal))
        if not ok:
            self.zap.counters.rejected_keys += 1
        return ok


class _Zap(zmq.auth.Authenticator):
    """pyzmq's ZAP handler with our key -> principal mapping as the User-Id."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]],
                 principal_for_key: Callable[[str], str | None], counters: Counters,
                 may_subscribe: Callable[[str], bool] = _member_or_bootstrap_admin) -> None:
        super().__init__(ctx, log=logging.getLogger("coordsvc.zap"))
        self.principal_for_key = principal_for_key
        self.may_subscribe = may_subscribe
        self.counters = counters
        self.configure_curve_callback(ROUTER_DOMAIN, _Admit(self, pub=False))
        self.configure_curve_callback(PUB_DOMAIN, _Admit(self, pub=True))

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Only called for a key the callback admitted a moment ago, in this same thread.
        return self.principal_for_key(z85.encode(client_public_key).decode("ascii")) or ""

    def answer(self) -> None:
        """Answer every pending ZAP request (libzmq's, over inproc) without blocking."""
        sock = self.zap_socket
        while _readable(sock):
            try:
                request = sock.recv_multipart(_NB)
            except zmq.Again:
                return
            # handle_zap_message is a coroutine only because a callback *may* be async;
            # ours is not, so it runs to completion on the first step.
            step = self.handle_zap_message(request)
            try:
                step.send(None)
            except StopIteration:
                continue
            step.close()
            raise AssertionError("the ZAP handler waited on something; it must not")


class _Peer:
    """The two connections to one peer (DEALER to its ROUTER, SUB on its PUB)."""

    __slots__ = ("dealer", "failed_ms", "logged_ms", "monitors", "spec", "sub")

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.dealer: zmq.Socket[bytes] | None = None
        self.sub: zmq.Socket[bytes] | None = None
        self.monitors: list[zmq.Socket[bytes]] = []
        self.failed_ms: int | None = None
        self.logged_ms = -10**12


class Transport:
    def __init__(self, cluster: Cluster, node_id: str, key: KeyPair | None = None,
                 principal_for_key: Callable[[str], str | None] | None = None,
                 may_subscribe: Callable[[str], bool] = _member_or_bootstrap_admin) -> None:
        self.id = node_id
        me = cluster.node(node_id)
        self.host = me.host
        self.secure = cluster.secure
        if self.secure and (key is None or principal_for_key is None):
            raise ValueError("a secure cluster needs the node's key pair and principal_for_key")
        self.key = key
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.counters = Counters()
        # Principals of what this node sends itself, and of clients when insecure.
        self.own_principal = node_principal(node_id) if self.secure else None
        self.zap: _Zap | None = None
        if self.secure:
            assert principal_for_key is not None
            # Bound before any CURVE server socket exists: libzmq skips authentication
            # altogether when no ZAP handler listens.
            self.zap = _Zap(self.ctx, principal_for_key, self.counters, may_subscribe)
            self.zap.start()
        self.router = self._socket(zmq.ROUTER, sndhwm=CLIENT_HWM, rcvhwm=CLIENT_HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_ROUTER_MESSAGE_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable reply -> error, not silence
        self.pub = self._socket(zmq.XPUB, sndhwm=CLIENT_HWM)
        self.pub.setsockopt(zmq.MAXMSGSIZE, 1024)   # subscription frames are topics
        self._serve_curve(self.router, ROUTER_DOMAIN)
        self._serve_curve(self.pub, PUB_DOMAIN)
        # Topics some subscriber holds (XPUB reports a topic's first subscribe and last
        # unsubscribe); only the event topics matter here.
        self.event_topics: set[bytes] = set()
        self.publish_address = me.publish
        try:
            self.router.bind(me.listen)     # bind/publish_bind if set, else the advertised ones
            self.pub.bind(me.publish_listen)
        except zmq.ZMQError as e:
            self.close()
            raise TransportError(f"cannot listen on {me.listen} / {me.publish_listen}: {e.strerror}") from None
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.pub, zmq.POLLIN)
        if self.zap is not None:
            self.poller.register(self.zap.zap_socket, zmq.POLLIN)
        self.peers: dict[str, _Peer] = {}
        self._sub_peer: dict[zmq.Socket[bytes], str] = {}   # SUB -> the peer it listens to
        for spec in cluster.nodes:
            if spec.id != node_id:
                self.peers[spec.id] = peer = _Peer(spec)
                self._connect(peer)
        self._readable: set[zmq.Socket[bytes]] = set()
        self._pub_unbound = False
        self._next_maintain_ms = 0
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

    def _serve_curve(self, s: zmq.Socket[bytes], domain: str) -> None:
        if self.key is None:
            return
        s.setsockopt(zmq.CURVE_SERVER, 1)
        s.setsockopt(zmq.CURVE_PUBLICKEY, self.key.public.encode("ascii"))
        s.setsockopt(zmq.CURVE_SECRETKEY, self.key.secret.encode("ascii"))
        s.setsockopt(zmq.ZAP_DOMAIN, domain.encode("ascii"))

    def _curve_client(self, s: zmq.Socket[bytes], server_public: str | None) -> None:
        if self.key is None:
            return
        assert server_public is not None, "a secure cluster file names every node's key"
        s.setsockopt(zmq.CURVE_PUBLICKEY, self.key.public.encode("ascii"))
        s.setsockopt(zmq.CURVE_SECRETKEY, self.key.secret.encode("ascii"))
        s.setsockopt(zmq.CURVE_SERVERKEY, server_public.encode("ascii"))

    # ------------------------------------------------------------------ peer connections

    def _connect(self, peer: _Peer) -> None:
        spec = peer.spec
        d = self._socket(zmq.DEALER, sndhwm=PEER_HWM)
        d.setsockopt(zmq.IMMEDIATE, 1)   # never queue for a peer that is not connected
        # No chosen routing id: a ROUTER ignores a second connection claiming an id in use,
        # so a well-known one ("peer:n1") could be squatted by any client to cut us off.
        self._curve_client(d, spec.public_key)
        sub = self._socket(zmq.SUB, rcvhwm=PEER_HWM)
        sub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES + 64)
        sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        self._curve_client(sub, spec.public_key)
        if self.secure:
            peer.monitors = [s.get_monitor_socket(_HANDSHAKE_FAILED) for s in (d, sub)]
        d.connect(_with_source(self.host, spec.address))
        sub.connect(_with_source(self.host, spec.publish))
        peer.dealer, peer.sub = d, sub
        self._sub_peer[sub] = spec.id
        self.poller.register(sub, zmq.POLLIN)

    def _disconnect(self, peer: _Peer) -> None:
        for s in (peer.dealer, peer.sub):
            if s is None:
                continue
            if peer.monitors:
                s.disable_monitor()
            if s is peer.sub:
                self.poller.unregister(s)
                self._sub_peer.pop(s, None)
            s.close(linger=0)
        for m in peer.monitors:
            m.close(linger=0)
        peer.dealer = peer.sub = None
        peer.monitors = []

    def rekey(self, spec: NodeSpec) -> bool:
        """Peer ``spec.id`` has a new public key (a replacement node): reconnect with it.
        False (and nothing done) if it is not a peer now."""
        peer = self.peers.get(spec.id)
        if peer is None:
            return False
        self._disconnect(peer)
        peer.spec = spec
        peer.failed_ms = None
        self._connect(peer)
        return True

    def set_peers(self, specs: list[NodeSpec]) -> None:
        """Follow the chosen configuration: connect to members added, drop members
        removed, reconnect to a member whose address or key changed."""
        want = {sp.id: sp for sp in specs if sp.id != self.id}
        for pid in sorted(set(self.peers) - set(want)):
            log.info("peer %s left the configuration; disconnecting", pid)
            self._disconnect(self.peers.pop(pid))
        for pid, spec in sorted(want.items()):
            peer = self.peers.get(pid)
            if peer is None:
                log.info("peer %s joined the configuration at %s; connecting", pid, spec.address)
                self.peers[pid] = peer = _Peer(spec)
                self._connect(peer)
            elif (peer.spec.address, peer.spec.publish, peer.spec.public_key) != (
                    spec.address, spec.publish, spec.public_key):
                self.rekey(spec)

    def maintain(self, now_ms: int) -> None:
        """Rebuild peer connections whose CURVE handshake failed for good (libzmq stops
        reconnecting after an authentication or protocol error): a member restarted with
        another key, or a cluster file that differs between members. Logged, rate-limited."""
        if now_ms < self._next_maintain_ms:
            return
        self._next_maintain_ms = now_ms + MAINTAIN_EVERY_MS
        if self._pub_unbound:
            try:
                self.pub.bind(self.publish_address)
                self._pub_unbound = False
                log.info("listening on %s again", self.publish_address)
            except zmq.ZMQError:
                pass
        for pid, peer in self.peers.items():
            for m in peer.monitors:
                while _readable(m):
                    try:
                        frames = m.recv_multipart(_NB)
                    except zmq.Again:
                        break
                    event, value = struct.unpack("=Hi", frames[0][:6]) if frames[0] else (0, 0)
                    if event & _HANDSHAKE_FAILED and peer.failed_ms is None:
                        self.counters.peer_handshake_failures += 1
                        peer.failed_ms = now_ms
                        if now_ms - peer.logged_ms >= 60_000:
                            peer.logged_ms = now_ms
                            why = ("refused our key" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   else f"failed the handshake (protocol error {value:#x})")
                            log.warning("peer %s %s; retrying every %d ms (is cluster.toml the "
                                        "same on every member?)", pid, why, PEER_RETRY_MS)
            if peer.failed_ms is not None and now_ms - peer.failed_ms >= PEER_RETRY_MS:
                self.rekey(peer.spec)

    # ------------------------------------------------------------------ receive

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for input; True if some socket has a message."""
        if self.local:
            timeout_ms = 0
        self._readable = {sock for sock, _ in self.poller.poll(timeout_ms)}
        return bool(self._readable)

    def receive(self, budget: int = 2000) -> Iterator[Received]:
        """Yield ('peer', msg, None, principal) and ('client', request, route, principal)
        without blocking. ``principal`` is the authenticated identity of the connection
        (secure cluster), or None for peers and "admin" for clients (insecure)."""
        local, self.local = self.local, []
        for msg in local:
            yield "peer", msg, None, self.own_principal
        # Only sockets the last poll found readable, each drained while EVENTS says a
        # message is queued: cheaper than letting recv raise zmq.Again every turn.
        ready, self._readable = self._readable, set()
        if self.zap is not None and self.zap.zap_socket in ready:
            self.zap.answer()
        if self.pub in ready:
            self._read_subscriptions()
        n = 0
        if self.router in ready:
            receive = self._receive_router_secure if self.secure else self._receive_router
            for item in receive(budget):
                n += 1
                if item is not None:
                    yield item
        for sub, pid in self._sub_peer.items():
            if sub not in ready:
                continue
            principal = node_principal(pid) if self.secure else None
            while n < budget and _readable(sub):
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
                yield "peer", msg, None, principal

    def _receive_router(self, budget: int) -> Iterator[Received | None]:
        """Insecure: no identities; clients are "admin", peers are trusted by ``src``."""
        router, n = self.router, 0
        while n < budget and _readable(router):
            frames = _recv_all(router)
            if frames is None:
                break
            n += 1
            if len(frames) != 2:
                self.counters.bad_frames += 1
                yield None
                continue
            yield self._classify(frames[0], frames[1], ADMIN, None)

    def _receive_router_secure(self, budget: int) -> Iterator[Received | None]:
        router, n = self.router, 0
        while n < budget and _readable(router):
            got = _recv_routed(router)
            if got is None:
                break
            n += 1
            route, frame = got
            principal = None if frame is None else _user_id(frame)
            if frame is None or principal is None:
                self.counters.bad_frames += 1
                yield None
                continue
            yield self._classify(route, frame.buffer, principal, principal)

    def _classify(self, route: bytes, body: bytes | memoryview, client_principal: str,
                  peer_principal: str | None) -> Received | None:
        try:
            tag, decoded = wire.decode(body)  # type: ignore[arg-type]
        except wire.WireError:
            self.counters.bad_frames += 1
            if len(body) > wire.MAX_FRAME_BYTES:
                self._refuse_oversize(route, body)
            return None
        if tag == wire.CLIENT_REQUEST:
            self.counters.client_in += 1
            return "client", decoded, route, client_principal
        if isinstance(decoded, dict):
            self.counters.bad_frames += 1
            return None
        self.counters.peer_in += 1
        return "peer", decoded, None, peer_principal

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
            peer = self.peers.get(o.dst)
            if peer is not None and peer.dealer is not None:
                self._nb(peer.dealer, None, frame)

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

    def _refuse_oversize(self, route: bytes, body: bytes | memoryview) -> None:
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

    def drop_subscribers(self) -> None:
        """End every subscription to the PUB socket (a principal that may no longer read
        the stream was removed): unbind and bind again. Subscribers reconnect by themselves
        and pass ZAP again; events published meanwhile are lost to them, as PUB/SUB may
        always lose them (clients long-poll ``watch``; heartbeats repeat)."""
        self.counters.subscriber_drops += 1
        try:
            self.pub.unbind(self.publish_address)
        except zmq.ZMQError as e:
            log.error("cannot unbind %s to drop its subscribers: %s", self.publish_address, e.strerror)
            return
        try:
            self.pub.bind(self.publish_address)
        except zmq.ZMQError as e:  # the port was taken meanwhile: retried by maintain()
            log.error("cannot bind %s again: %s; retrying", self.publish_address, e.strerror)
            self._pub_unbound = True
        # event_topics follows by itself: the XPUB reports the dropped subscribers'
        # topics as unsubscribed, and again as subscribed when they come back.

    def _nb(self, sock: zmq.Socket[bytes], head: bytes | None, body: bytes) -> None:
        """Send ``[head, body]`` (or just ``body``) without blocking; count a drop."""
        try:
            if head is not None:
                sock.send(head, _NB_MORE)
            sock.send(body, _NB)
        except zmq.ZMQError:   # zmq.Again (queue full) included
            self.counters.dropped_sends += 1

    def close(self) -> None:
        for peer in getattr(self, "peers", {}).values():
            for s in (peer.dealer, peer.sub):
                if s is not None and peer.monitors:
                    s.disable_monitor()
        if self.zap is not None:
            self.zap.stop()
        self.ctx.destroy(linger=0)
