"""``GET /metrics``: the node's numbers in Prometheus text format (prometheus-client).

Built at scrape time from the loop's latest :class:`~.observe.Published` picture, never from
live state; a scrape costs the loop nothing. Every name is listed in ``METRICS`` (the
Grafana dashboard's test checks its expressions against it).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .observe import HistogramValue, Published, Shared, readiness

__all__ = ["METRICS", "QUOTAS", "registry", "render"]

P = "coordsvc_"
ROLES = ("leader", "follower", "candidate")
# CONTRACT §6 quotas; ``coordsvc_quota_alarm`` has one series per quota, 1 while alarmed.
QUOTAS = ("max_db_bytes", "max_keys")

# Gauges read from the node's own status map: (metric, status field, help).
_STATUS_GAUGES = (
    ("commit_index", "commit_index", "Highest log slot known chosen and stored here."),
    ("applied_index", "applied_index", "Highest log slot applied to the state machine."),
    ("snapshot_index", "snapshot_index", "Log slot of the latest snapshot (the log is compacted below it)."),
    ("revision", "revision", "Config revision of this replica's state."),
    ("sessions", "sessions", "Open client sessions."),
    ("locks_held", "locks_held", "Locks currently held."),
    ("keys", "keys", "Config keys stored."),
    ("db_bytes", "db_bytes", "Size of node.db and its WAL on disk, bytes."),
    ("pending_writes", "pending_writes", "Client writes waiting to be chosen on this node."),
    ("parked_watches", "parked_watches", "Watch long-polls parked on this node."),
    ("uptime_seconds", "uptime_s", "Seconds since the node started."),
)
# Counters: (metric without _total, where, key, help); where is "status" or "counters".
_COUNTERS = (
    ("leader_changes", "counters", "leader_changes", "Times this node saw a new leader (itself included)."),
    ("elections", "counters", "elections", "Campaigns (phase 1) this node started."),
    ("step_downs", "counters", "step_downs", "Times this node stopped leading."),
    ("proposals", "counters", "proposals", "Log entries this node proposed as leader."),
    ("proposed_commands", "counters", "proposed_commands", "Client commands in those entries."),
    ("accepted_entries", "counters", "accepted_entries", "Log entries this node's acceptor stored."),
    ("applied_commands", "counters", "applied_commands", "Commands applied to the state machine."),
    ("snapshots", "counters", "snapshots", "Snapshots this node took."),
    ("slow_fsyncs", "counters", "slow_fsyncs", "Synchronous saves slower than the slow-fsync threshold."),
    ("bad_frames", "status", "bad_frames", "Frames or requests that failed to decode (dropped)."),
    ("bad_requests", "counters", "bad_requests", "Client requests that did not fit the schema."),
    ("dropped_sends", "counters", "dropped_sends", "Messages dropped because a peer or client queue was full."),
    ("oversize_sends", "counters", "oversize_sends", "Messages dropped because they did not fit in a frame."),
    ("rejected_keys", "counters", "rejected_keys", "CURVE handshakes refused: unknown client or peer key."),
    ("rejected_peer_messages", "status", "rejected_peer", "Peer messages not sent over their member's own connection."),
    ("rejected_replies", "status", "rejected_replies", "Catch-up replies from a peer that was not asked."),
    ("peer_handshake_failures", "counters", "peer_handshake_failures", "Failed CURVE handshakes to members."),
    ("internal_errors", "status", "internal_errors", "Requests whose handler raised (answered 'internal')."),
    ("untracked_requests", "counters", "untracked_requests", "Requests not timed (too many outstanding)."),
    ("loop_turns", "counters", "loop_turns", "Turns of the node's poll loop."),
)
_COUNTER_GAUGES = (
    ("pending_commands", "Commands queued at the leader, not yet in an Accept."),
    ("inflight_slots", "Log slots the leader has proposed and not yet seen chosen."),
    ("lock_waiters", "Sessions queued for a lock."),
)

METRICS: frozenset[str] = frozenset(
    [P + n for n, _, _ in _STATUS_GAUGES] + [P + n + "_total" for n, *_ in _COUNTERS]
    + [P + n for n, _ in _COUNTER_GAUGES]
    + [P + n for n in ("info", "role", "is_leader", "ballot_round", "known_commit_index",
                       "apply_lag_entries", "leader_contact_age_seconds", "voting", "members",
                       "ready", "quota_alarm", "publish_age_seconds")]
    + [P + n + s for n in ("fsync_seconds", "batch_commands", "request_seconds")
       for s in ("_bucket", "_count", "_sum")])


def _int(v: Any) -> int:
    return v if type(v) is int else 0


def _histogram(name: str, doc: str, h: HistogramValue, labels: dict[str, str] | None = None,
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    fam = family or HistogramMetricFamily(P + name, doc, labels=list(labels or {}))
    cumulative, buckets = 0, []
    for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    fam.add_metric(list((labels or {}).values()), buckets, h.total)
    return fam


class _Collector(Collector):
    def __init__(self, shared: Shared, clock: Any) -> None:
        self.shared = shared
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        p: Published | None = self.shared.latest
        if p is None:
            return
        st, c = p.status, p.counters
        info = InfoMetricFamily("coordsvc", "The node, its cluster and security mode.")
        info.add_metric([], {"node": p.node, "cluster": str(st.get("cluster_name") or ""),
                             "security": str(st.get("security") or "")})
        yield info
        role = GaugeMetricFamily(P + "role", "1 for the node's current role.", labels=["role"])
        for r in ROLES:
            role.add_metric([r], 1.0 if st.get("role") == r else 0.0)
        yield role
        yield GaugeMetricFamily(P + "is_leader", "1 while this node leads.",
                                value=1.0 if st.get("role") == "leader" else 0.0)
        ballot = st.get("ballot") or [0, ""]
        yield GaugeMetricFamily(P + "ballot_round", "Round of the highest ballot this node promised or follows.",
                                value=float(_int(ballot[0])))
        for name, key, doc in _STATUS_GAUGES:
            v = st.get(key)
            yield GaugeMetricFamily(P + name, doc, value=float(v) if isinstance(v, (int, float)) else 0.0)
        yield GaugeMetricFamily(P + "known_commit_index", "Highest commit index any member told us.",
                                value=float(p.known_commit))
        yield GaugeMetricFamily(P + "apply_lag_entries", "known_commit_index minus applied_index.",
                                value=float(max(0, p.known_commit - _int(st.get("applied_index")))))
        contact = st.get("last_leader_contact_ms")
        yield GaugeMetricFamily(P + "leader_contact_age_seconds",
                                "Seconds since this node last heard its leader (0 while leading; -1: never).",
                                value=-1.0 if contact is None else contact / 1000)
        yield GaugeMetricFamily(P + "voting", "1 if this node votes (0 while a replacement rebuilds).",
                                value=1.0 if st.get("voting", True) else 0.0)
        yield GaugeMetricFamily(P + "members", "Members in this node's configuration.", value=float(len(p.members)))
        now = self.clock()
        ready, _ = readiness(p, now)
        yield GaugeMetricFamily(P + "ready", "1 when /readyz answers 200.", value=1.0 if ready else 0.0)
        yield GaugeMetricFamily(P + "publish_age_seconds",
                                "Age of the loop's latest published state (a stuck loop grows it).",
                                value=max(0.0, now - p.at_mono))
        alarmed = {a for a in _alarm_names(st)}
        quota = GaugeMetricFamily(P + "quota_alarm", "1 while a quota alarm is raised.", labels=["quota"])
        for q in sorted(set(QUOTAS) | alarmed):
            quota.add_metric([q], 1.0 if q in alarmed else 0.0)
        yield quota
        for name, where, key, doc in _COUNTERS:
            src = st if where == "status" else c
            yield CounterMetricFamily(P + name, doc, value=float(_int(src.get(key))))
        for name, doc in _COUNTER_GAUGES:
            yield GaugeMetricFamily(P + name, doc, value=float(_int(c.get(name))))
        yield _histogram("fsync_seconds", "Duration of synchronous saves (SQLite commit with fsync).", p.fsync)
        yield _histogram("batch_commands", "Client commands per log entry this node proposed.", p.batch)
        fam = HistogramMetricFamily(P + "request_seconds",
                                    "Client request latency by op, arrival to reply (watch and "
                                    "lock_wait are long polls).", labels=["op"])
        for op, h in sorted(p.requests.items()):
            _histogram("request_seconds", "", h, {"op": op}, fam)
        yield fam


def _alarm_names(st: dict[str, Any]) -> list[str]:
    raw = st.get("alarms")
    if not isinstance(raw, list):
        return []
    return [a if isinstance(a, str) else str(a.get("quota")) for a in raw
            if isinstance(a, str) or (isinstance(a, dict) and isinstance(a.get("quota"), str))]


def registry(shared: Shared, clock: Any) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(shared, clock))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
