"""Each node's HTTP endpoints on a real cluster: /metrics, /healthz, /readyz, the JSON the
dashboard reads, refusal of anything but a plain GET, and the node's log lines."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordsvc.runtime.metrics import METRICS

from .harness import LocalCluster


@pytest.fixture
def json_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-node cluster whose nodes log JSON lines."""
    c = LocalCluster(tmp_path)
    c.start(None, "--log-format", "json")
    try:
        yield c
    finally:
        c.close()


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET",
          timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body, headers = fetch(url + "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_until(what: str, check: Any, limit_s: float = 10.0) -> Any:
    """Poll ``check()`` until it returns something truthy (each poll is an HTTP round trip)."""
    deadline = time.monotonic() + limit_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what}")
        time.sleep(0.05)


def ready(c: LocalCluster, nid: str) -> tuple[int, dict[str, Any]]:
    code, body, _ = fetch(c.http(nid) + "/readyz")
    return code, json.loads(body)


def test_metrics_count_what_the_cluster_did(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    with cluster.client() as c:
        for i in range(20):
            c.put(f"m/{i}", b"v")
        c.get("m/1")
        lk = c.acquire("deploy", ttl=10.0, timeout=0)
        try:
            url = cluster.http(leader)
            m = wait_until("the leader publishes 20 keys and a lock",
                           lambda: (x := metrics(url)).get(("coordsvc_keys", ())) == 20
                           and x.get(("coordsvc_locks_held", ())) == 1 and x)
        finally:
            lk.release()
    names = {name for name, _ in m}
    assert names == METRICS, (sorted(names - METRICS), sorted(METRICS - names))  # Grafana's list
    assert m[("coordsvc_role", (("role", "leader"),))] == 1
    assert m[("coordsvc_is_leader", ())] == 1
    assert m[("coordsvc_commit_index", ())] >= 21
    assert m[("coordsvc_proposals_total", ())] >= 1
    assert m[("coordsvc_proposed_commands_total", ())] >= 21
    assert m[("coordsvc_batch_commands_count", ())] == m[("coordsvc_proposals_total", ())]
    assert m[("coordsvc_fsync_seconds_count", ())] >= 1
    assert m[("coordsvc_request_seconds_count", (("op", "write"),))] >= 21
    assert m[("coordsvc_request_seconds_count", (("op", "get"),))] >= 1
    assert m[("coordsvc_leader_changes_total", ())] >= 1
    assert m[("coordsvc_db_bytes", ())] > 0
    assert m[("coordsvc_ready", ())] == 1
    assert m[("coordsvc_quota_alarm", (("quota", "max_keys"),))] == 0
    follower = next(n for n in cluster.ids if n != leader)
    fm = wait_until("a follower applies the 20 keys",
                    lambda: (x := metrics(cluster.http(follower))).get(("coordsvc_keys", ())) == 20 and x)
    assert fm[("coordsvc_role", (("role", "follower"),))] == 1
    assert fm[("coordsvc_accepted_entries_total", ())] >= 1


def test_healthz_and_readyz_on_a_healthy_cluster(cluster: LocalCluster) -> None:
    cluster.leader()
    for nid in cluster.ids:
        code, body, headers = fetch(cluster.http(nid) + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, doc = wait_until(f"{nid} ready", lambda nid=nid: (r := ready(cluster, nid))[0] == 200 and r)
        assert doc["ready"] is True and doc["node"] == nid and doc["lag"] == 0


def test_readyz_is_503_with_a_reason_once_the_majority_is_gone(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    followers = [n for n in cluster.ids if n != leader]
    wait_until("every node ready", lambda: all(ready(cluster, n)[0] == 200 for n in cluster.ids))
    cluster.kill(followers[0])
    cluster.kill(leader)
    survivor = followers[1]
    code, doc = wait_until("the survivor not ready",
                           lambda: (r := ready(cluster, survivor))[0] == 503 and r)
    assert doc["ready"] is False and doc["node"] == survivor
    assert "leader" in doc["reason"]
    # the process still serves
    assert fetch(cluster.http(survivor) + "/healthz")[0] == 200
    m = metrics(cluster.http(survivor))
    assert m[("coordsvc_ready", ())] == 0


def test_the_dashboard_api_sees_the_whole_cluster_from_any_node(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    with cluster.client() as c:
        rev = c.put("app/secret", "hunter2")
    url = cluster.http(follower)
    st = json.loads(fetch(url + "/api/cluster")[1])
    assert st["cluster"]["leader"] == leader and st["cluster"]["quorum"] is True
    assert [n["id"] for n in st["nodes"]] == cluster.ids
    assert all(n["reachable"] for n in st["nodes"])
    assert {n["http"] for n in st["nodes"]} == {cluster.http(n) for n in cluster.ids}
    state = wait_until("the follower lists the key",
                       lambda: (s := json.loads(fetch(url + "/api/state")[1]))["keys"] and s)
    row = next(k for k in state["keys"] if k["key"] == "app/secret")
    assert row["revision"] == rev and "value_b64" not in row and state["admin"] is False
    events = json.loads(fetch(url + "/api/events?after=0")[1])
    assert [e["key"] for e in events["events"]] == ["app/secret"]
    assert "value_b64" not in events["events"][0]
    assert b"hunter2" not in fetch(url + "/api/state")[1]


def test_values_are_shown_only_to_the_admin_key(cluster: LocalCluster) -> None:
    from coordsvc import keys
    cluster.leader()
    with cluster.client() as c:
        c.put("app/secret", "hunter2")
    assert cluster.key is not None
    admin = keys.read_client_key(cluster.key)
    url = cluster.http(cluster.ids[0])
    wait_until("the key is listed", lambda: json.loads(fetch(url + "/api/state")[1])["keys"])
    code, body, _ = fetch(url + "/api/state", {"X-Coord-Admin-Key": admin.pair.secret})
    state = json.loads(body)
    assert code == 200 and state["admin"] is True
    row = next(k for k in state["keys"] if k["key"] == "app/secret")
    import base64
    assert base64.b64decode(row["value_b64"]) == b"hunter2"
    # a node's key, a random key and junk are not the admin key
    node_secret = keys.read_node_key(cluster.cluster.node("n1").key_file, "n1", None).secret
    for wrong in (node_secret, keys.KeyPair.generate().secret, "x" * 40, "junk"):
        code, body, _ = fetch(url + "/api/state", {"X-Coord-Admin-Key": wrong})
        assert code == 200 and json.loads(body)["admin"] is False and b"hunter2" not in body
    assert json.loads(fetch(url + "/api/whoami", {"X-Coord-Admin-Key": admin.pair.secret})[1])["admin"]


def _raw(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not b:
                break
            chunks.append(b)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_junk_over_http_gets_a_4xx_and_changes_nothing(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    with cluster.client() as c:
        c.put("k", "v")
        before = c.status()["cluster"]["commit_index"]
    url = cluster.http(leader)
    host, port = url.removeprefix("http://").split(":")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        code, _, headers = fetch(url + "/metrics", method=method)
        assert code == 405 and headers["Allow"] == "GET, HEAD", method
    assert fetch(url + "/nope")[0] == 404
    assert fetch(url + "/" + "a" * 5000)[0] == 414
    assert fetch(url + "/api/events?after=-1")[0] == 400
    assert fetch(url + "/api/events?after=1&after=2")[0] == 400
    assert fetch(url + "/metrics?x=1")[0] == 400
    assert fetch(url + "/api/state?%zz")[0] == 400
    for junk in (b"GARBAGE\r\n\r\n", b"\x00\xff\x16\x03\x01\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"):
        reply = _raw(host, int(port), junk)
        status = reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/") else b""
        assert status.startswith(b"4") or reply == b"", reply[:200]
    assert fetch(url + "/healthz")[0] == 200
    with cluster.client() as c:
        st = c.status()
    assert st["cluster"]["leader"] == leader and st["cluster"]["commit_index"] == before
    assert cluster.procs[leader].poll() is None


def test_a_taken_http_port_stops_the_node_at_start_in_one_line(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    url = c.http("n1")
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        c.start("n1")
        try:
            rc = c.procs["n1"].wait(20)
        finally:
            c.close()
    assert rc == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in c.log("n1")
    assert "Traceback" not in c.log("n1")


def _events(c: LocalCluster, nid: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in c.log(nid).splitlines() if ln.startswith("{")]


def test_json_logs_carry_time_level_node_event_and_fields(json_cluster: LocalCluster) -> None:
    c = json_cluster
    leader = c.leader()
    lines = wait_until("the leader logged its election",
                       lambda: [e for e in _events(c, leader) if e["event"] == "election"])
    e = lines[0]
    assert set(e) >= {"time", "level", "node", "event", "msg", "reason", "ballot"}
    assert e["node"] == leader and e["level"] == "info" and e["time"].endswith("Z")
    assert e["ballot"][1] == leader
    assert any(x["event"] == "leader" and x["role"] == "leader" for x in _events(c, leader))
    assert any(x["event"] == "start" for x in _events(c, leader))
    assert any(x["event"] == "http" for x in _events(c, leader))
    assert all(ln.startswith("{") for ln in c.log(leader).splitlines() if ln.strip())
    # the leader's step-down is logged on the others as a new election with its reason
    assert c.stop(leader) == 0
    stop = [x for x in _events(c, leader) if x["event"] == "stop"]
    assert stop and stop[-1]["reason"] == "signal SIGTERM"
    new = c.leader(exclude={leader})
    el = wait_until("the new leader logged why it campaigned",
                    lambda: [x for x in _events(c, new) if x["event"] == "election"])
    assert leader in el[-1]["reason"] or "no leader" in el[-1]["reason"]


def test_a_refused_client_key_is_logged(cluster: LocalCluster) -> None:
    import zmq

    from coordsvc import keys
    leader = cluster.leader()
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        stranger = keys.KeyPair.generate()
        s.setsockopt(zmq.CURVE_PUBLICKEY, stranger.public.encode())
        s.setsockopt(zmq.CURVE_SECRETKEY, stranger.secret.encode())
        s.setsockopt(zmq.CURVE_SERVERKEY, cluster.cluster.node(leader).public_key.encode())  # type: ignore[union-attr]
        s.connect(cluster.cluster.node(leader).address)
        wait_until("the refusal is logged", lambda: "key_rejected" in cluster.log(leader))
        s.close()
    finally:
        ctx.destroy(linger=0)
    m = metrics(cluster.http(leader))
    assert m[("coordsvc_rejected_keys_total", ())] >= 1


def test_log_level_warning_hides_info_lines(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=1)
    c.start("n1", "--log-level", "warning")
    try:
        c.leader()
        assert fetch(c.http("n1") + "/healthz")[0] == 200
    finally:
        code = c.stop("n1")
        c.close()
        assert code == 0
    text = c.log("n1")
    assert " INFO " not in text and "election" not in text


def test_http_bind_can_be_overridden_and_an_old_cluster_file_serves_none(tmp_path: Path) -> None:
    import re
    import tomllib

    import tomli_w

    c = LocalCluster(tmp_path / "a", nodes=1)
    port = int(c.http("n1").rsplit(":", 1)[1])
    c.start("n1", "--http", f"127.0.0.2:{port}")
    try:
        code, body, _ = wait_until("HTTP on 127.0.0.2", lambda: _try(f"http://127.0.0.2:{port}/healthz"))
        assert code == 200 and json.loads(body)["node"] == "n1"
        assert _try(f"http://127.0.0.1:{port}/healthz") is None    # not on the default address
    finally:
        code = c.stop("n1")
        c.close()
        assert code == 0
    old = LocalCluster(tmp_path / "b", nodes=1)
    doc = tomllib.loads(old.file.read_text())
    for n in doc["nodes"]:
        del n["http"]
    old.file.write_text(tomli_w.dumps(doc))
    old.start("n1")
    try:
        old.leader()
        assert re.search(r"WARNING http: no HTTP: .* gives n1 no http address", old.log("n1"))
    finally:
        code = old.stop("n1")
        old.close()
        assert code == 0


def _try(url: str) -> tuple[int, bytes, dict[str, str]] | None:
    try:
        return fetch(url, timeout=1.0)
    except OSError:
        return None


def test_snapshots_are_logged_and_counted(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, snapshot_every=5)
    c.start(None, "--log-format", "json")
    try:
        leader = c.leader()
        with c.client() as cl:
            for i in range(12):
                cl.put(f"s/{i}", b"v")
        snaps = wait_until("the leader logs a snapshot",
                           lambda: [e for e in _events(c, leader) if e["event"] == "snapshot"])
        assert snaps[0]["index"] >= 5 and snaps[0]["level"] == "info"
        m = wait_until("the snapshot is counted",
                       lambda: (x := metrics(c.http(leader)))[("coordsvc_snapshots_total", ())] >= 1 and x)
        assert m[("coordsvc_snapshot_index", ())] >= 5
    finally:
        c.close()
