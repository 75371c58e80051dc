"""The node's HTTP side: ``/metrics``, ``/healthz``, ``/readyz`` and a read-only dashboard.

It runs on its own threads (``http.server``) and reads only what the loop publishes
(:class:`~.observe.Shared`); it never calls into the core. Everything it serves is
read-only: only GET and HEAD, requests bounded in size, time and number, junk answered
with a 4xx. Nothing a viewer sends can change state or stop the node.

Cluster-wide data for the dashboard (every member's status) comes from the members
themselves over the ordinary ``status`` op, asked with this node's own key (members may
call ``status``), at most once a second whatever the number of viewers.

Values of keys are shown only to a viewer who presents the cluster's admin key: the page
sends the admin secret key in the ``X-Coord-Admin-Key`` header to this node only, and the
node checks that the public key it derives from it is the cluster's admin public key.
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zmq

from .. import keys
from ..clusterfile import Cluster
from .logs import event
from .metrics import registry, render
from .observe import STALL_HEALTHY_S, Published, Shared, readiness

__all__ = ["ADMIN_HEADER", "HttpError", "HttpServer", "parse_bind"]

log = logging.getLogger("coordsvc.http")
ADMIN_HEADER = "X-Coord-Admin-Key"
MAX_CONCURRENT = 16        # requests being answered at once
MAX_CONNECTIONS = 64       # open connections (each holds a thread while kept alive)
MAX_TARGET_CHARS = 2048
REQUEST_TIMEOUT_S = 10.0
CLUSTER_CACHE_S = 1.0
CLUSTER_TIMEOUT_S = 1.0
_PROM_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATIC = {"/": ("dashboard.html", "text/html; charset=utf-8"),
           "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8")}
_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
        "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")


class HttpError(Exception):
    """The HTTP listener cannot start (address taken, bad bind address)."""


def parse_bind(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HttpError(f"bad HTTP bind address {hostport!r}: expected HOST:PORT")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them; more are closed at once."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _static(name: str) -> bytes:
    return (resources.files("coordsvc.runtime") / name).read_bytes()


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


class ClusterStatus:
    """Every member's status, asked with this node's key, cached for a second."""

    def __init__(self, cluster: Cluster, node_id: str, pair: keys.KeyPair | None) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.pair = pair
        self._mu = threading.Lock()
        self._at = -1e9
        self._last: dict[str, Any] | None = None
        self._client: Any = None

    def _make_client(self) -> Any:
        from ..client import Client
        from ..client._credentials import Credentials
        from ..client._transport import Transport
        creds = None
        if self.cluster.secure and self.pair is not None:
            creds = Credentials(f"node:{self.node_id}", self.pair, self.cluster.server_keys(),
                                f"the key of node {self.node_id}")
        return Client(self.cluster, timeout=CLUSTER_TIMEOUT_S, transport=Transport(creds))

    def get(self) -> dict[str, Any]:
        with self._mu:
            now = time.monotonic()
            if self._last is not None and now - self._at < CLUSTER_CACHE_S:
                return self._last
            if self._client is None:
                self._client = self._make_client()
            from ..client import CoordError
            try:
                st: dict[str, Any] = self._client.status()
            except CoordError as e:
                st = {"error": str(e), "cluster": None, "nodes": []}
            self._last, self._at = st, time.monotonic()
            return st

    def close(self) -> None:
        with self._mu:
            if self._client is not None:
                self._client.close()
                self._client = None


class HttpServer:
    """The listener and its threads; ``start`` binds (or raises HttpError), ``close`` stops."""

    def __init__(self, bind: tuple[str, int], cluster: Cluster, node_id: str, shared: Shared,
                 pair: keys.KeyPair | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.bind = bind
        self.cluster = cluster
        self.node_id = node_id
        self.shared = shared
        self.clock = clock
        self.admin_public = cluster.admin_public_key if cluster.secure else None
        self.cluster_status = ClusterStatus(cluster, node_id, pair)
        self.registry = registry(shared, clock)
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self.static = {path: (_static(name), ctype) for path, (name, ctype) in _STATIC.items()}
        self._server: _Server | None = None
        self._refused_logged = 0.0
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            cls = _Server6 if ":" in self.bind[0] else _Server
            server = cls(self.bind, handler, bind_and_activate=False)
            server.server_bind()
            server.server_activate()
        except OSError as e:
            raise HttpError(f"cannot serve HTTP on {self.bind[0]}:{self.bind[1]}: "
                            f"{e.strerror or e}") from None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="coordsvc-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.cluster_status.close()

    # ------------------------------------------------------------ answers

    def is_admin(self, presented: str | None) -> bool:
        """Whether ``presented`` is the secret half of the cluster's admin key."""
        if self.admin_public is None or presented is None:
            return False
        secret = presented.strip()
        try:
            keys.check_public(secret, "admin secret")
            public = zmq.curve_public(secret.encode("ascii")).decode("ascii")
        except (keys.KeyFileError, zmq.ZMQError, ValueError, UnicodeError):
            return False
        return hmac.compare_digest(public, self.admin_public)

    def latest(self) -> Published | None:
        return self.shared.latest

    def health(self) -> tuple[int, dict[str, Any]]:
        p = self.latest()
        age = None if p is None else round(self.clock() - p.at_mono, 3)
        if age is not None and age > STALL_HEALTHY_S:
            return 503, {"status": "stalled", "node": self.node_id, "loop_age_s": age}
        return 200, {"status": "ok", "node": self.node_id, "loop_age_s": age}

    def ready(self) -> tuple[int, dict[str, Any]]:
        p = self.latest()
        ok, reason = readiness(p, self.clock())
        body: dict[str, Any] = {"ready": ok, "node": self.node_id, "reason": reason}
        if p is not None:
            st = p.status
            body.update(role=st.get("role"), leader=st.get("leader"),
                        applied_index=st.get("applied_index"), known_commit=p.known_commit,
                        lag=max(0, p.known_commit - int(st.get("applied_index") or 0)))
        return (200 if ok else 503), body

    def node(self) -> dict[str, Any]:
        p = self.latest()
        ok, reason = readiness(p, self.clock())
        return {"node": self.node_id, "ready": ok, "reason": reason,
                "status": None if p is None else p.status,
                "secure": self.cluster.secure}

    def state(self, admin: bool) -> dict[str, Any]:
        p = self.shared.want_view(fresh_s=2.0, wait_s=1.5)
        v = None if p is None else p.view
        if v is None:
            return {"node": self.node_id, "available": False, "admin": admin}
        keys_out = []
        for k in v.keys:
            row = {f: k[f] for f in ("key", "revision", "version", "create_revision", "bytes")}
            if admin:
                row["value_b64"] = _b64(k["value"])
                row["truncated"] = k["bytes"] > len(k["value"])
            keys_out.append(row)
        return {"node": self.node_id, "available": True, "admin": admin,
                "applied_index": v.applied_index, "revision": v.revision,
                "locks": list(v.locks), "lock_count": v.lock_count,
                "keys": keys_out, "key_count": v.key_count, "keys_listed": v.keys_listed}

    def events(self, after: int, admin: bool) -> dict[str, Any]:
        p = self.shared.want_view(fresh_s=1.0, wait_s=1.5)
        v = None if p is None else p.view
        out = []
        for e in (() if v is None else v.events):
            if e.revision <= after:
                continue
            row: dict[str, Any] = {"type": str(e.type), "key": e.key, "revision": e.revision,
                                   "bytes": len(e.value)}
            if admin:
                row["value_b64"] = _b64(e.value[:256])
                row["truncated"] = len(e.value) > 256
            out.append(row)
        return {"node": self.node_id, "admin": admin, "events": out,
                "revision": None if v is None else v.revision}


class _Handler(BaseHTTPRequestHandler):
    app: HttpServer
    def version_string(self) -> str:
        return "coordsvc"

    protocol_version = "HTTP/1.1"
    # Junk request lines are answered with a status line too (not HTTP/0.9's bare body).
    default_request_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines may be junk from anyone: debug level only, and never a header.
        log.debug("%s %s", self.client_address[0], format % args)

    def __getattr__(self, name: str) -> Any:
        # Every method but GET and HEAD: 405 (http.server would say 501 for unknown ones).
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(405, b'{"error": "only GET and HEAD"}\n', "application/json",
                   extra={"Allow": "GET, HEAD"})

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        app = self.app
        if not app.slots.acquire(blocking=False):
            self._json(503, {"error": "too many concurrent requests"}, head)
            return
        try:
            self._route(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("HTTP handler failed on %r", self.path[:200])
            try:
                self._json(500, {"error": "internal"}, head)
            except OSError:
                pass
        finally:
            app.slots.release()

    def _route(self, head: bool) -> None:
        app = self.app
        if len(self.path) > MAX_TARGET_CHARS or not self.path.startswith("/"):
            self._json(414 if len(self.path) > MAX_TARGET_CHARS else 400,
                       {"error": "bad request target"}, head)
            return
        parts = urlsplit(self.path)
        try:
            query = parse_qs(parts.query, strict_parsing=bool(parts.query), max_num_fields=8)
        except ValueError:
            self._json(400, {"error": "malformed query string"}, head)
            return
        path = parts.path
        if self.headers.get("Content-Length", "0") not in ("0", "") or self.headers.get("Transfer-Encoding"):
            self._json(400, {"error": "a GET has no body"}, head)
            self.close_connection = True
            return
        allowed = {"/api/events": {"after"}}.get(path, set())
        if set(query) - allowed or any(len(v) != 1 for v in query.values()):
            self._json(400, {"error": f"unknown or repeated query parameters for {path}"}, head)
            return
        if path in app.static:
            body, ctype = app.static[path]
            self._send(200, body, ctype, head, {"Content-Security-Policy": _CSP,
                                                "Cache-Control": "no-cache"})
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", head)
        elif path == "/metrics":
            self._send(200, render(app.registry), _PROM_TYPE, head)
        elif path == "/healthz":
            self._json(*app.health(), head=head)
        elif path == "/readyz":
            self._json(*app.ready(), head=head)
        elif path == "/api/node":
            self._json(200, app.node(), head)
        elif path == "/api/cluster":
            self._json(200, app.cluster_status.get(), head)
        elif path == "/api/whoami":
            self._json(200, {"admin": self._admin(), "secure": app.cluster.secure,
                             "node": app.node_id}, head)
        elif path == "/api/state":
            self._json(200, app.state(self._admin()), head)
        elif path == "/api/events":
            raw = query.get("after", ["0"])[0]
            if not raw.isdigit() or len(raw) > 19:
                self._json(400, {"error": "after must be a revision (a non-negative integer)"}, head)
                return
            self._json(200, app.events(int(raw), self._admin()), head)
        else:
            self._json(404, {"error": f"no such page: {path[:100]}"}, head)

    def _admin(self) -> bool:
        presented = self.headers.get(ADMIN_HEADER)
        if presented is None:
            return False
        ok = self.app.is_admin(presented)
        now = time.monotonic()
        if not ok and now - self.app._refused_logged >= 10.0:   # at most one line per 10 s
            self.app._refused_logged = now
            event(log, logging.WARNING, "http_admin_refused",
                  "a dashboard viewer presented a key that is not the cluster's admin key",
                  client=self.client_address[0])
        return ok

    def _json(self, code: int, body: dict[str, Any], head: bool = False) -> None:
        self._send(code, json.dumps(body, default=str).encode() + b"\n", "application/json",
                   head, {"Cache-Control": "no-store"})

    def _send(self, code: int, body: bytes, ctype: str, head: bool = False,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code, HTTPStatus(code).phrase)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)
