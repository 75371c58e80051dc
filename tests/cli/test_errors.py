"""coordctl maps every error to its exit code by the exception's type (CONTRACT §3)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from coordctl.main import exit_code_for
from coordctl.output import EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE

import coordsvc
from coordsvc.clusterfile import ClusterFileError


@pytest.mark.parametrize("exc, code", [
    (coordsvc.CompareFailed("no", 3), EXIT_REFUSED),
    (coordsvc.LockTimeout("held"), EXIT_REFUSED),
    (coordsvc.FenceRejected("stale"), EXIT_REFUSED),
    (coordsvc.Compacted("gone", 7), EXIT_REFUSED),
    (coordsvc.InvalidRequest("bad key"), EXIT_USAGE),
    (coordsvc.Unavailable("no quorum"), EXIT_UNAVAILABLE),
    (coordsvc.CoordError("closed"), EXIT_REFUSED),
    (ClusterFileError("no cluster given"), EXIT_USAGE),
    (TimeoutError("slow"), EXIT_UNAVAILABLE),
])
def test_each_client_error_exits_with_the_code_of_its_type(exc: BaseException, code: int) -> None:
    got, message, _ = exit_code_for(exc)
    assert got == code and str(exc) in message


def test_a_subclass_exits_as_its_base_with_the_base_hint() -> None:
    class NoQuorumHere(coordsvc.Unavailable):
        pass

    class PermissionLike(coordsvc.CoordError):
        pass
    code, message, hint = exit_code_for(NoQuorumHere("n2 is down"))
    assert code == EXIT_UNAVAILABLE and message.startswith("cluster unavailable, outcome unknown")
    assert hint is not None and "coordctl status" in hint
    assert exit_code_for(PermissionLike("denied"))[0] == EXIT_REFUSED


def test_compacted_names_the_oldest_revision_in_its_hint() -> None:
    _, _, hint = exit_code_for(coordsvc.Compacted("gone", 42))
    assert hint is not None and "oldest revision still kept is 42" in hint


def test_loading_the_cli_does_not_load_the_client() -> None:
    # Offline commands (cluster init, serve) start without the client package.
    out = subprocess.run([sys.executable, "-c",
                          "import sys, coordctl.main; print('coordsvc.client' in sys.modules)"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
