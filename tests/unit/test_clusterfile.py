"""The cluster file: the per-node HTTP address, and files from before it existed."""
from __future__ import annotations

from pathlib import Path

import pytest

from coordsvc import clusterfile
from coordsvc.clusterfile import ClusterFileError


def _write(tmp_path: Path, node_extra: str = "") -> Path:
    p = tmp_path / "cluster.toml"
    p.write_text(f"""
[cluster]
name = "old"
id = "c0ffee"

[[nodes]]
id = "n1"
address = "tcp://127.0.0.1:7101"
publish = "tcp://127.0.0.1:7201"
data_dir = "n1"
{node_extra}
""")
    return p


def test_a_cluster_file_from_before_http_still_loads_without_an_http_address(tmp_path: Path) -> None:
    c = clusterfile.load(_write(tmp_path))
    assert c.node("n1").http is None and c.node("n1").http_bind is None


def test_http_and_its_bind_address_are_read_per_node(tmp_path: Path) -> None:
    c = clusterfile.load(_write(tmp_path, 'http = "http://10.0.0.5:7301"\nhttp_bind = "0.0.0.0:7301"'))
    assert c.node("n1").http == "http://10.0.0.5:7301"
    assert c.node("n1").http_bind == "0.0.0.0:7301"


@pytest.mark.parametrize("extra", ['http = "tcp://127.0.0.1:7301"', 'http = "http://127.0.0.1"',
                                   'http_bind = "127.0.0.1"', 'http_bind = "h:99999"'])
def test_a_malformed_http_address_is_refused_in_one_line(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ClusterFileError, match="http"):
        clusterfile.load(_write(tmp_path, extra))


def test_init_gives_node_i_http_on_base_plus_200_plus_i(tmp_path: Path) -> None:
    c = clusterfile.write_new(tmp_path, 3, base_port=9000)
    assert [n.address for n in c.nodes] == [f"tcp://127.0.0.1:{9000 + i}" for i in (1, 2, 3)]
    assert [n.publish for n in c.nodes] == [f"tcp://127.0.0.1:{9100 + i}" for i in (1, 2, 3)]
    assert [n.http for n in c.nodes] == [f"http://127.0.0.1:{9200 + i}" for i in (1, 2, 3)]
    assert all(n.http_bind is None for n in c.nodes)
    assert sorted(clusterfile.node_ports(9000, 3)) == sorted(
        [9000 + off + i for off in (0, 100, 200) for i in (1, 2, 3)])


def test_init_refuses_a_base_port_without_room_for_the_http_ports(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="base-port"):
        clusterfile.write_new(tmp_path, 3, base_port=65535 - 200)


def test_a_node_listens_where_it_is_reached_unless_bind_and_publish_bind_say_otherwise(
        tmp_path: Path) -> None:
    old = clusterfile.load(_write(tmp_path)).node("n1")
    assert (old.bind, old.publish_bind) == (None, None)
    assert (old.listen, old.publish_listen) == (old.address, old.publish)
    c = clusterfile.load(_write(tmp_path, 'bind = "tcp://0.0.0.0:7101"\n'
                                          'publish_bind = "tcp://0.0.0.0:7201"'))
    n = c.node("n1")
    assert (n.address, n.listen) == ("tcp://127.0.0.1:7101", "tcp://0.0.0.0:7101")
    assert (n.publish, n.publish_listen) == ("tcp://127.0.0.1:7201", "tcp://0.0.0.0:7201")


@pytest.mark.parametrize("extra", ['bind = "0.0.0.0:7101"', 'publish_bind = "tcp://h:0x10"'])
def test_a_malformed_bind_address_is_refused_in_one_line(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ClusterFileError, match="bad endpoint"):
        clusterfile.load(_write(tmp_path, extra))


def test_init_with_a_bind_host_advertises_each_host_and_listens_on_the_bind_host(tmp_path: Path) -> None:
    hosts = [f"coord-{i}.coord.default.svc.cluster.local" for i in range(3)]
    c = clusterfile.write_new(tmp_path, 3, host=hosts, base_port=7100, bind_host="0.0.0.0")
    for i, (n, h) in enumerate(zip(c.nodes, hosts, strict=True), start=1):
        assert (n.address, n.listen) == (f"tcp://{h}:{7100 + i}", f"tcp://0.0.0.0:{7100 + i}")
        assert (n.publish, n.publish_listen) == (f"tcp://{h}:{7200 + i}", f"tcp://0.0.0.0:{7200 + i}")
        assert (n.http, n.http_bind) == (f"http://{h}:{7300 + i}", f"0.0.0.0:{7300 + i}")
    with pytest.raises(ClusterFileError):
        clusterfile.write_new(tmp_path / "x", 3, bind_host="not a host")


def test_same_ports_gives_every_node_the_ports_of_node_one_on_its_own_host(tmp_path: Path) -> None:
    hosts = ["coord1", "coord2", "coord3"]
    c = clusterfile.write_new(tmp_path, 3, host=hosts, base_port=7100, same_ports=True)
    assert [n.address for n in c.nodes] == [f"tcp://{h}:7101" for h in hosts]
    assert [n.publish for n in c.nodes] == [f"tcp://{h}:7201" for h in hosts]
    assert [n.http for n in c.nodes] == [f"http://{h}:7301" for h in hosts]
    with pytest.raises(ClusterFileError, match="distinct --host"):
        clusterfile.write_new(tmp_path / "x", 3, host="127.0.0.1", same_ports=True)


def _listening_ports(n: clusterfile.NodeSpec) -> list[int]:
    """The ports of the three sockets a node binds: ROUTER, PUB and HTTP."""
    http = n.http_bind or (n.http or "").removeprefix("http://")
    return [int(ep.rsplit(":", 1)[1]) for ep in (n.listen, n.publish_listen, http)]


@pytest.mark.parametrize("nodes", [1, 3, 15])
@pytest.mark.parametrize("bind_host", [None, "0.0.0.0"])
def test_no_two_ports_collide_in_either_layout_of_init(
        tmp_path: Path, nodes: int, bind_host: str | None) -> None:
    # One host for all: ROUTER, PUB and HTTP of every node on one machine, all distinct.
    one = clusterfile.write_new(tmp_path / "one", nodes, base_port=7100, bind_host=bind_host)
    advertised = [ep.split("://")[1] for n in one.nodes for ep in (n.address, n.publish, n.http) if ep]
    assert len(set(advertised)) == 3 * nodes
    ports = sorted(int(ep.rsplit(":", 1)[1]) for ep in advertised)
    assert ports == [7100 + off + i for off in (0, 100, 200) for i in range(1, nodes + 1)]
    # --same-ports: a host per node, each with the same three distinct ports.
    hosts = [f"coord{i}" for i in range(1, nodes + 1)]
    same = clusterfile.write_new(tmp_path / "same", nodes, host=hosts, base_port=7100,
                                 bind_host=bind_host, same_ports=True)
    for n, h in zip(same.nodes, hosts, strict=True):
        assert (n.address, n.publish, n.http) == (
            f"tcp://{h}:7101", f"tcp://{h}:7201", f"http://{h}:7301")
    for c in (one, same):
        assert c.path is not None and clusterfile.load(c.path) == c     # load checks ports too
    # On one machine every socket of every node has its own port; with --same-ports each
    # node's three differ (the nodes are on separate hosts).
    assert sorted(p for n in one.nodes for p in _listening_ports(n)) == ports
    assert all(_listening_ports(n) == [7101, 7201, 7301] for n in same.nodes)


@pytest.mark.parametrize("extra, message", [
    ('http = "http://127.0.0.1:7101"', "n1's http http://127.0.0.1:7101 is also n1's address"),
    ('http = "http://127.0.0.1:7301"\nhttp_bind = "0.0.0.0:7201"',
     "n1 would listen on port 7201 twice \\(publish_bind and http_bind\\)"),
    ('bind = "tcp://0.0.0.0:7201"', "n1 would listen on port 7201 twice \\(bind and publish_bind\\)"),
])
def test_a_file_that_gives_two_sockets_one_port_is_refused_in_one_line(
        tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ClusterFileError, match=message):
        clusterfile.load(_write(tmp_path, extra))


def test_two_nodes_advertising_one_endpoint_are_refused(tmp_path: Path) -> None:
    c = clusterfile.write_new(tmp_path, 2, base_port=7100)
    p = c.path
    assert p is not None
    p.write_text(p.read_text().replace("127.0.0.1:7302", "127.0.0.1:7301"))
    with pytest.raises(ClusterFileError, match="n2's http http://127.0.0.1:7301 is also n1's http"):
        clusterfile.load(p)
