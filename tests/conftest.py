from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", type=int, default=None, help="replay one simulation seed")
    parser.addoption("--seeds", type=int, default=None,
                     help="number of simulation seeds to run (default: each simulation's own)")
    parser.addoption("--first-seed", type=int, default=0, help="first simulation seed")
