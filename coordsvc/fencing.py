"""Guard your own data with a lock's fencing token.

A lock holder can be paused (GC, SIGSTOP, a slow disk) past its ttl while the next
holder proceeds; when it wakes up, its writes are stale. Tokens increase strictly with
every grant, so the resource itself can refuse a writer whose token is lower than the
highest it has seen. coordsvc's own keys do this with ``c.put(key, value, fence=lk)``;
these helpers do it for a SQLite database and for a file.

SQLite -- the check, the token bump and your writes commit in one IMMEDIATE transaction::

    with c.lock("reports") as lk, fenced_write(conn, "reports", lk.token) as tx:
        tx.execute("INSERT INTO report(day, total) VALUES (?, ?)", (day, total))

A file -- the highest token lives in ``PATH.fence``; the data is replaced atomically::

    with c.lock("export") as lk:
        fenced_file_write("/srv/export.json", payload, lk.token)

Both raise ``FenceRejected`` (and write nothing) when ``token`` is lower than one
already seen for that resource; an equal token is the same holder writing again.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .client.errors import FenceRejected

__all__ = ["FENCE_TABLE", "fenced_file_write", "fenced_write", "read_file_fence"]

FENCE_TABLE = "coord_fence"
# Fixed width, rewritten in place at offset 0: a one-sector write, so a crash leaves
# either the old or the new token, and the file (our flock target) is never replaced.
_TOKEN_WIDTH = 20


def _check_token(token: int) -> int:
    if type(token) is not int or token < 1:
        raise ValueError(f"token must be an int >= 1, got {token!r}")
    return token


@contextmanager
def fenced_write(conn: sqlite3.Connection, resource: str, token: int) -> Iterator[sqlite3.Connection]:
    """Open an IMMEDIATE transaction on ``conn`` that commits only if ``token`` is not
    older than the newest one stored for ``resource``; yields ``conn`` for your writes.

    The transaction commits when the block ends and rolls back if it raises. ``conn``
    must not already be in a transaction.
    """
    _check_token(token)
    if conn.in_transaction:
        raise ValueError("fenced_write needs a connection with no open transaction")
    conn.execute("BEGIN IMMEDIATE")  # takes the write lock now: check and write are atomic
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {FENCE_TABLE}"
                     "(resource TEXT PRIMARY KEY, token INTEGER NOT NULL)")
        row = conn.execute(f"SELECT token FROM {FENCE_TABLE} WHERE resource = ?",
                           (resource,)).fetchone()
        if row is not None and token < row[0]:
            raise FenceRejected(f"{resource!r}: token {token} is older than {row[0]}")
        conn.execute(f"INSERT INTO {FENCE_TABLE}(resource, token) VALUES (?, ?) "
                     "ON CONFLICT(resource) DO UPDATE SET token = excluded.token",
                     (resource, token))
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def read_file_fence(path: str | os.PathLike[str]) -> int:
    """The highest token recorded for ``path`` (0 if none)."""
    try:
        with open(os.fspath(path) + ".fence", "rb") as f:
            return _parse_token(f.read(), os.fspath(path))
    except FileNotFoundError:
        return 0


def _parse_token(raw: bytes, path: str) -> int:
    text = raw.strip()
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"{path}.fence is corrupt: {raw[:40]!r}")
    return int(text)


def fenced_file_write(path: str | os.PathLike[str], data: bytes, token: int) -> None:
    """Replace ``path``'s content with ``data`` unless a higher token has written it.

    Writers are serialized by ``flock`` on ``path + ".fence"``, which also stores the
    highest token seen. The fence is raised first, then the data is written to a temporary
    file, fsynced and renamed over ``path``: a crash leaves the old or the new content.
    """
    _check_token(token)
    target = os.fspath(path)
    fd = os.open(target + ".fence", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        stored = _parse_token(os.pread(fd, 64, 0), target)
        if token < stored:
            raise FenceRejected(f"{target}: token {token} is older than {stored}")
        if token > stored:
            os.pwrite(fd, str(token).rjust(_TOKEN_WIDTH).encode() + b"\n", 0)
            os.fsync(fd)
        _atomic_replace(target, data)
    finally:
        os.close(fd)  # also drops the flock


def _atomic_replace(target: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    tmp_fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".tmp",
                                   dir=directory)
    try:
        with os.fdopen(tmp_fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
