"""Result codes of replicated writes -> exceptions."""
from __future__ import annotations

from coordsvc.core.protocol import Result, ResultCode

from .errors import CompareFailed, CoordError, FenceRejected, InvalidRequest, Unavailable

__all__ = ["expect", "raise_for"]


def raise_for(res: Result) -> None:
    """Raise the exception for a non-ok Result of a key write; return on ok."""
    if res.code == ResultCode.OK:
        return
    message = str(res.data.get("message", res.code))
    if res.code == ResultCode.COMPARE_FAILED:
        cur = res.data.get("current_revision")
        raise CompareFailed(message, cur if type(cur) is int else None)
    if res.code == ResultCode.FENCE_REJECTED:
        raise FenceRejected(message)
    if res.code in (ResultCode.INVALID, ResultCode.LIMIT):
        raise InvalidRequest(message)
    if res.code == ResultCode.STALE_REQUEST:
        # The node dropped this seq's cached reply: whether it was applied is unknown.
        raise Unavailable(f"the outcome of this request is unknown: {message}")
    raise CoordError(f"unexpected result {res.code}: {message}")


def expect(res: Result, *codes: ResultCode) -> None:
    """Return if ``res.code`` is one of ``codes``, else raise its exception."""
    if res.code in codes:
        return
    raise_for(res)
    raise CoordError(f"unexpected result {res.code}")
