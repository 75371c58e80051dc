"""Client recipes (CONTRACT §10) against real clusters, under leader kills."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from coordsvc import Client, Event

from .harness import LocalCluster


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    cluster.leader()
    c = cluster.client(timeout=10.0)
    yield c
    c.close()


# A process that registers on a lease, says so, and then is SIGKILLed: its keepalives stop.
REGISTRANT = textwrap.dedent("""
    import sys, time
    from coordsvc import Client
    c = Client(sys.argv[1].split(","), timeout=10.0, key=sys.argv[3])
    ls = c.lease(ttl=float(sys.argv[2]))
    c.put("svc/web/n1", "10.0.0.5:80", lease=ls)
    c.put("svc/web/n2", "10.0.0.6:80", lease=ls)
    lk = c.acquire("svc-lock", lease=ls, timeout=10)
    print(ls.id, lk.token, flush=True)
    time.sleep(600)
""")


def test_a_dead_owners_ephemeral_keys_are_deleted_across_a_leader_kill_and_watchers_see_it(
        cluster: LocalCluster, client: Client) -> None:
    ttl = 2.0
    start = client.put("svc/marker", "m")
    w = client.watch("svc/", start_revision=start)
    p = subprocess.Popen([sys.executable, "-c", REGISTRANT, ",".join(cluster.endpoints), str(ttl),
                          str(cluster.key)], stdout=subprocess.PIPE, text=True)
    try:
        lease_id, token = (int(x) for x in p.stdout.readline().split())  # type: ignore[union-attr]
        assert client.get("svc/web/n1") is not None
        p.kill()
        p.wait()
        cluster.kill(cluster.leader())
        # The new leader restarts the lease's clock at its takeover, then expires it.
        seen: list[Event] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(e.type == "delete" for e in seen) < 2:
            ev = w.next(timeout=1.0)
            if ev is not None:
                seen.append(ev)
        w.close()
        assert [(e.type, e.key) for e in seen] == [
            ("put", "svc/marker"), ("put", "svc/web/n1"), ("put", "svc/web/n2"),
            ("delete", "svc/web/n1"), ("delete", "svc/web/n2")], seen
        assert client.get("svc/web/n1") is None and client.get("svc/web/n2") is None
        assert client.get("svc/marker") is not None
        # The lock on the lease went with it: the next acquire gets a larger token.
        lk = client.acquire("svc-lock", ttl=5.0, timeout=10)
        assert lk.token > token
        lk.release()
        assert lease_id not in {i.holder_session for i in client.locks()}
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]


def test_a_kept_lease_survives_a_leader_kill_and_revoke_deletes_its_keys(
        cluster: LocalCluster, client: Client) -> None:
    lost: list[object] = []
    ls = client.lease(ttl=3.0, on_lost=lost.append)
    client.put("reg/a", "1", lease=ls)
    lk = client.acquire("reg-lock", lease=ls, timeout=0)
    cluster.kill(cluster.leader())
    time.sleep(3.0 + 2.0)     # longer than the ttl plus an election: a dropped lease would show
    e = client.get("reg/a")
    assert e is not None and e.value == b"1" and not lost and ls.alive and lk.held
    ls.revoke()
    assert client.get("reg/a") is None and lk.released
    assert "reg-lock" not in {i.name for i in client.locks()}
