"""``Client.status()``: CONTRACT section 5's dict from every member's own status.

The client asks every member at once (``ClientTransport.request_all``); this module only
summarizes what came back.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["NODE_FIELDS", "summarize"]

# CONTRACT section 5 fields, then the extras nodes report; all null when unreachable.
NODE_FIELDS = ("id", "address", "reachable", "role", "leader", "ballot", "commit_index",
               "applied_index", "lag", "db_bytes", "uptime_s", "sessions", "locks_held", "keys",
               "revision", "bad_frames", "fsync_p99_ms", "last_leader_contact_ms", "security",
               "rejected_peer", "rejected_keys")


def summarize(members: Sequence[tuple[str | None, str]],
              replies: Sequence[dict[str, Any] | None],
              cluster_name: str | None,
              learners: Sequence[str] = ()) -> dict[str, Any]:
    """The status dict from each member's own status map (None: unreachable).

    ``learners`` (ids) are listed among the nodes with ``"voting": false`` but count for
    neither ``members`` nor ``healthy`` nor the quorum: those count voters only.
    """
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
    for n in nodes:
        if n["id"] in learners:
            n["voting"] = False
    up = [n for n in nodes if n["reachable"]]
    voters_up = [n for n in up if n["id"] not in learners]
    leaders = [n for n in up if n["role"] == "leader"]
    leader = max(leaders, key=lambda n: _ballot_key(n["ballot"]), default=None)
    for n in up:
        if leader is None:
            n["lag"] = None
        elif n is leader:
            n["lag"] = 0
        else:
            n["lag"] = _lag(leader.get("commit_index"), n.get("applied_index"))
    voters = len(members) - sum(1 for mid, _ in members if mid in learners)
    quorum_size = voters // 2 + 1
    healthy = len(voters_up)
    if cluster_name is None:
        names = [n.get("cluster_name") for n in up if isinstance(n.get("cluster_name"), str)]
        cluster_name = names[0] if names else None
    source = [leader] if leader is not None else up
    return {
        "cluster": {
            "name": cluster_name,
            "leader": None if leader is None else leader["id"],
            "quorum": leader is not None and healthy >= quorum_size,
            "members": voters,
            "healthy": healthy,
            "learners": len(learners),
            "commit_index": _max_int(n.get("commit_index") for n in source),
            "revision": _max_int(n.get("revision") for n in source),
            "can_lose": max(0, healthy - quorum_size),
            # What the nodes say ("curve" or "insecure"); None when none answered.
            "security": next((n["security"] for n in up if isinstance(n.get("security"), str)),
                             None),
            # Quotas exceeded on any node that answered (CONTRACT §6).
            "alarms": sorted({a for n in up for a in (n.get("alarms") or []) if type(a) is str}),
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
