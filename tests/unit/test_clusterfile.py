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
