"""``Client.status()``: ask every member at once, build CONTRACT section 5's dict."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import zmq

from coordsvc import wire

from ._credentials import Credentials
from ._transport import Conn, Socket, frames_to_reply, handshake_error, new_dealer

__all__ = ["NODE_FIELDS", "collect", "summarize"]

# CONTRACT section 5 fields, then the extras nodes report; all null when unreachable.
NODE_FIELDS = ("id", "address", "reachable", "role", "leader", "ballot", "commit_index",
               "applied_index", "lag", "db_bytes", "uptime_s", "sessions", "locks_held", "keys",
               "revision", "bad_frames", "fsync_p99_ms", "last_leader_contact_ms", "security",
               "rejected_peer", "rejected_keys")


def collect(ctx: zmq.Context[Socket], members: Sequence[tuple[str | None, str]],
            cluster_name: str | None, timeout_s: float,
            credentials: Credentials | None = None) -> dict[str, Any]:
    """Query ``members`` ((id or None, address)) in parallel, one poller, no threads.

    A node that refuses the client's key raises PermissionDenied at once: status needs
    a key the cluster knows, like every other call."""
    deadline = time.monotonic() + timeout_s
    conns: list[Conn] = []
    replies: list[dict[str, Any] | None] = [None] * len(members)
    try:
        for _, address in members:
            conns.append(new_dealer(ctx, address, credentials))
        socks = [c.sock for c in conns]
        ids = list(range(1, len(members) + 1))
        unsent = set(range(len(members)))
        waiting: set[int] = set()
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLOUT)
        monitors = {c.monitor: c for c in conns if c.monitor is not None}
        for m in monitors:
            poller.register(m, zmq.POLLIN)
        index = {s: i for i, s in enumerate(socks)}
        while unsent or waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for s, ev in poller.poll(max(1, int(left * 1000))):
                if s in monitors:
                    conn = monitors[s]
                    err = handshake_error(s.recv_multipart(zmq.NOBLOCK), conn.endpoint,
                                          credentials)
                    if err is not None:
                        raise err
                    continue
                i = index[s]
                if ev & zmq.POLLIN and i in waiting:
                    reply = frames_to_reply(socks[i].recv_multipart(zmq.NOBLOCK))
                    if reply is not None and reply.get("id") == ids[i]:
                        waiting.discard(i)
                        poller.unregister(s)
                        if reply.get("ok") is True and isinstance(reply.get("status"), dict):
                            replies[i] = reply["status"]
                elif ev & zmq.POLLOUT and i in unsent:
                    s.send(wire.encode_client(wire.CLIENT_REQUEST, {"id": ids[i], "op": "status"}),
                           zmq.NOBLOCK)
                    unsent.discard(i)
                    waiting.add(i)
                    poller.modify(s, zmq.POLLIN)
    finally:
        for c in conns:
            c.close()
    return summarize(members, replies, cluster_name)


def summarize(members: Sequence[tuple[str | None, str]],
              replies: Sequence[dict[str, Any] | None],
              cluster_name: str | None) -> dict[str, Any]:
    """The status dict from each member's own status map (None: unreachable)."""
    nodes: list[dict[str, Any]] = []
    for (member_id, address), st in zip(members, replies, strict=True):
        if st is None:
            node = dict.fromkeys(NODE_FIELDS)
            node.update(id=member_id, address=address, reachable=False)
        else:
            node = {f: st.get(f) for f in NODE_FIELDS}
            node.update({k: v for k, v in st.items() if k not in node})
            node.update(id=member_id if member_id is not None else st.get("id"),
                        address=address, reachable=True)
        nodes.append(node)
    up = [n for n in nodes if n["reachable"]]
    leaders = [n for n in up if n["role"] == "leader"]
    leader = max(leaders, key=lambda n: _ballot_key(n["ballot"]), default=None)
    for n in up:
        if leader is None:
            n["lag"] = None
        elif n is leader:
            n["lag"] = 0
        else:
            n["lag"] = _lag(leader.get("commit_index"), n.get("applied_index"))
    quorum_size = len(members) // 2 + 1
    healthy = len(up)
    if cluster_name is None:
        names = [n.get("cluster_name") for n in up if isinstance(n.get("cluster_name"), str)]
        cluster_name = names[0] if names else None
    source = [leader] if leader is not None else up
    return {
        "cluster": {
            "name": cluster_name,
            "leader": None if leader is None else leader["id"],
            "quorum": leader is not None and healthy >= quorum_size,
            "members": len(members),
            "healthy": healthy,
            "commit_index": _max_int(n.get("commit_index") for n in source),
            "revision": _max_int(n.get("revision") for n in source),
            "can_lose": max(0, healthy - quorum_size),
            # What the nodes say ("curve" or "insecure"); None when none answered.
            "security": next((n["security"] for n in up if isinstance(n.get("security"), str)),
                             None),
        },
        "nodes": nodes,
    }


def _ballot_key(b: object) -> tuple[int, str]:
    if isinstance(b, (list, tuple)) and len(b) == 2 and type(b[0]) is int:
        return (b[0], str(b[1]))
    return (-1, "")


def _lag(commit: object, applied: object) -> int | None:
    if type(commit) is int and type(applied) is int:
        return max(0, commit - applied)
    return None


def _max_int(values: Any) -> int | None:
    ints = [v for v in values if type(v) is int]
    return max(ints) if ints else None
