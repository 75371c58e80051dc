"""Fixtures shared by the client tests: one in-process node (``inproc.LocalNode``) and a
scriptable network reaching it at ``inproc.A``. A module that needs more endpoints
defines its own ``net``."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from .inproc import A, Faults, LocalNode, LocalTransport


@pytest.fixture
def node() -> Iterator[LocalNode]:
    n = LocalNode()
    yield n
    n.stop()


@pytest.fixture
def net(node: LocalNode) -> Faults:
    return Faults(LocalTransport({A: node}))
