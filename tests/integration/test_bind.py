"""Nodes that listen on one address and advertise another (containers, Kubernetes pods)."""
from __future__ import annotations

from pathlib import Path

from coordsvc import Client

from .harness import LocalCluster


def _listening() -> set[tuple[str, int]]:
    """(IPv4 address, port) of every TCP socket in LISTEN state on this machine."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":
            continue
        addr, port = fields[1].split(":")
        ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
        out.add((ip, int(port, 16)))
    return out


def test_nodes_listen_on_their_bind_address_and_are_reached_at_the_one_they_advertise(
        tmp_path: Path) -> None:
    # Advertised by name (as a pod advertises its stable DNS name), bound by address.
    c = LocalCluster(tmp_path, host="localhost", bind_host="127.0.0.1")
    c.start()
    try:
        leader = c.leader()
        listening = _listening()
        for n in c.cluster.nodes:
            assert n.address.startswith("tcp://localhost:") and n.listen.startswith("tcp://127.0.0.1:")
            for endpoint in (n.listen, n.publish_listen):
                assert ("127.0.0.1", int(endpoint.rsplit(":", 1)[1])) in listening
        follower = next(n for n in c.cluster.nodes if n.id != leader)
        # A client that knows one follower only follows the redirect to the advertised name.
        with Client([follower.address], timeout=10.0, key=c.key) as cl:
            rev = cl.put("k", "v")
            assert cl.get("k") is not None
            assert cl.leader == c.cluster.node(leader).address and rev == 1
        with c.client() as cl:
            st = cl.status()
        assert st["cluster"]["leader"] == leader and st["cluster"]["quorum"]
        assert {n["address"] for n in st["nodes"]} == {n.address for n in c.cluster.nodes}
    finally:
        c.close()
