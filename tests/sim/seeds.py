"""Which seeds a simulation test runs: ``--seed N`` replays one; ``--seeds N`` (``make sim
SEEDS=N``) runs N from ``--first-seed``; without either, each simulation's CI default."""
from __future__ import annotations

import pytest


def seeds(config: pytest.Config, default: int) -> list[int]:
    one = config.getoption("--seed")
    if one is not None:
        return [one]
    first = config.getoption("--first-seed")
    count = config.getoption("--seeds")
    return list(range(first, first + (default if count is None else count)))
