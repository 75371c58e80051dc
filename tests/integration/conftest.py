from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path)
    c.start()
    try:
        c.wait_up()     # every node, not just a quorum: tests reach any node's ports
        yield c
    finally:
        c.close()
