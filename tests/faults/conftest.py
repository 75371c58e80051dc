"""Fixtures of the fault suite: exclusive use of the nft table, and the ``--long`` switch."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .nemesis import delete_stale_table, ensure_nft, exclusive_fault_lock


def pytest_addoption(parser: pytest.Parser) -> None:
    # Only seen when pytest is pointed at tests/faults (a sub-directory's conftest is not
    # loaded before the command line is parsed); FAULTS_DURATION works from anywhere.
    parser.addoption("--long", action="store_true", default=False,
                     help="run the long fault-injection runs (duration: $FAULTS_DURATION or 600s)")


def long_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--long", default=False)) or bool(os.environ.get("FAULTS_DURATION"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_enabled(config):
        return
    skip = pytest.mark.skip(reason="long fault run: use `make faults DURATION=600`, --long or "
                                   "FAULTS_DURATION=<seconds>")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fault_host() -> Iterator[None]:
    """Exclusive use of the fault table for the session; nft installed; no stale rules.

    Partitions are a required part of the suite: if nftables cannot be installed or used,
    this fails (loudly), it does not skip. The table is deleted at session start (an
    interrupted run may have left one), after every run (the runner's ``finally``) and at
    session end.
    """
    with exclusive_fault_lock():
        ensure_nft()
        delete_stale_table()
        try:
            yield
        finally:
            delete_stale_table()
