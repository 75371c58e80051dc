"""Result codes of replicated writes -> exceptions, by one table."""
from __future__ import annotations

from collections.abc import Callable

from coordsvc.core.protocol import Result, ResultCode

from .errors import (
    CompareFailed,
    CoordError,
    FenceRejected,
    InvalidRequest,
    LeaseExpired,
    PermissionDenied,
    Unavailable,
)

__all__ = ["expect", "raise_for"]


def _compare_failed(res: Result, message: str) -> CoordError:
    cur = res.data.get("current_revision")
    return CompareFailed(message, cur if type(cur) is int else None)


def _unknown_outcome(res: Result, message: str) -> CoordError:
    # The node dropped this seq's cached reply: whether it was applied is unknown.
    return Unavailable(f"the outcome of this request is unknown: {message}")


# Codes a key write can end with, other than ok. Lock codes (lock_busy, queued, no_session,
# not_held) are expected by the lock code, which names them with ``expect``.
_ERRORS: dict[ResultCode, Callable[[Result, str], CoordError]] = {
    ResultCode.COMPARE_FAILED: _compare_failed,
    ResultCode.FENCE_REJECTED: lambda res, message: FenceRejected(message),
    ResultCode.INVALID: lambda res, message: InvalidRequest(message),
    ResultCode.LIMIT: lambda res, message: InvalidRequest(message),
    ResultCode.STALE_REQUEST: _unknown_outcome,
    ResultCode.PERMISSION_DENIED: lambda res, message: PermissionDenied(message),
    ResultCode.REFUSED: lambda res, message: CoordError(message),
    ResultCode.NO_SESSION: lambda res, message: LeaseExpired(message),   # a put on an ended lease
}


def raise_for(res: Result) -> None:
    """Raise the exception for a non-ok Result of a key write; return on ok."""
    if res.code == ResultCode.OK:
        return
    message = str(res.data.get("message", res.code))
    make = _ERRORS.get(res.code)
    if make is None:
        raise CoordError(f"unexpected result {res.code}: {message}")
    raise make(res, message)


def expect(res: Result, *codes: ResultCode) -> None:
    """Return if ``res.code`` is one of ``codes``, else raise its exception."""
    if res.code in codes:
        return
    raise_for(res)
    raise CoordError(f"unexpected result {res.code}")
