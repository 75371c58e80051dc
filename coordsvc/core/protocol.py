"""The client <-> node request protocol (bodies travel as wire.CLIENT_REQUEST / CLIENT_REPLY).

Every request is a msgpack map with ``"id"`` (int, chosen by the client to match the
reply; the node echoes it) and ``"op"``. Every reply is a map with ``"id"``, ``"ok"``
(bool) and either the op's fields or ``"error"`` (one of ``ERRORS``) plus ``"message"``.

Ops (fields of the request -> fields of a successful reply):

``write``      req: bytes (commands.encode_request) -> result: Result.to_wire()
               Leader only. Applied exactly once per (client_id, seq), across retries.
``keepalive``  session_id: int -> known: bool. Leader only; not replicated (the leader
               forwards renewals to followers on its heartbeats).
``get``        key: str, stale: bool -> kv: [key, value, revision, create_revision, version] | nil,
               revision: int.  Linearizable unless stale (then any node answers).
``list``       prefix: str, stale: bool -> kvs: [kv, ...] sorted by key, revision: int
``history``    key: str -> events: [[type, key, value, revision], ...], revision: int
``watch``      prefix: str or prefixes: [str, ...] (non-empty wins), after: int, wait_ms: int,
               limit: int -> events: [...], revision: int.  Events under the prefix (or any
               of the prefixes: one poll serves all of a client's watches), in revision order.
               Any node; parks up to wait_ms until an event with revision > after exists.
               error "compacted" (+ "oldest": int) when ``after`` is older than the window.
``lock_wait``  name: str, session_id: int, wait_ms: int -> state: "held"|"waiting"|"none",
               token: int (0 unless held). Leader only; parks up to wait_ms while "waiting".
``locks``      -> locks: [[name, holder_session, token, granted_index, [waiter, ...],
               holder_ttl_left_ms | nil], ...].  Linearizable.
``status``     -> status: the node's entry of `coordctl status --json` plus extras.
               Answered locally by any node, even without a quorum.
"""
from __future__ import annotations

OPS = ("write", "keepalive", "get", "list", "history", "watch", "lock_wait", "locks", "status")

# Errors a node may answer with. "not_leader" carries "leader" (node id or nil) and
# "leader_address" (endpoint or nil). "unavailable" means the outcome is unknown and the
# same request may be retried. "busy" means a bounded queue is full: retry later.
ERRORS = ("not_leader", "unavailable", "bad_request", "compacted", "busy")

MAX_WAIT_MS = 30_000
MAX_WATCH_BATCH = 1_000
MAX_WATCH_PREFIXES = 1_000
