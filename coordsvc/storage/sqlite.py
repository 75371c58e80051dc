"""The durable Store: one SQLite file per node, WAL, ``synchronous=FULL``.

``save`` is one ``BEGIN IMMEDIATE ... COMMIT``; with WAL and synchronous=FULL the
COMMIT returns only after the WAL is fsynced, so a returned save survives SIGKILL
and power loss, and a save interrupted at any instant leaves none of itself.
Semantics are exactly ``MemoryStore``'s (the hypothesis test holds them together).

A save that fails part-way is rolled back and the store refuses every later save:
after a failed fsync the kernel may have dropped the dirty pages, so a "successful"
retry could acknowledge state that is not on disk (the PostgreSQL fsync lesson).
The node must stop and restart from what ``open`` finds.

``open`` checks the whole database before the node may serve: SQLite's integrity check,
every field of the acceptor row (types, and rounds/slots within ``[0, 2**62]``), every
log row (its ballot, and its value decodes), the snapshot (it restores into a state
machine), and a real write (a read-only file fails here, not at the first save). Any
failure is a ``DataDirError`` with a one-line reason.
"""
from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

import msgpack  # type: ignore[import-untyped]

from ..core.machine import Machine
from ..core.membership import Membership, decode_membership, encode_membership
from ..core.types import (
    MAX_NODE_ID_CHARS,
    MAX_ROUND,
    MAX_SLOT,
    Ballot,
    Durable,
    LogEntry,
    Persist,
    ProtocolError,
    SafetyViolation,
    Snapshot,
    UsageError,
    Value,
)
from .datadir import (
    INCARNATION,
    JOINING,
    NODE_DB,
    REBUILDING,
    REMOVED,
    SCHEMA_VERSION,
    DataDirError,
    Identity,
    check_header,
    check_identity,
    connect,
    corrupt,
    init_data_dir,
    migrate,
    read_meta,
)
from .snapfiles import SNAPSHOT_DIR, SnapshotDir, SnapshotFile, SnapshotFileError

__all__ = ["DataDirError", "SqliteStore", "init_data_dir"]

LOCK_FILE = "node.lock"
SAVE_SAMPLES = 1024

_UPSERT_ENTRY = (
    "INSERT INTO log (slot, ballot_round, ballot_node, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (slot) DO UPDATE SET ballot_round = excluded.ballot_round, "
    "ballot_node = excluded.ballot_node, value = excluded.value"
)
# NULL parameters mean "unchanged", mirroring Persist's None fields.
_UPDATE_SCALARS = (
    "UPDATE acceptor SET promised_round = COALESCE(?, promised_round), "
    "promised_node = COALESCE(?, promised_node), "
    "high_water_round = COALESCE(?, high_water_round), "
    "commit_index = COALESCE(?, commit_index) WHERE id = 0"
)


def _encode(value: Value) -> bytes:
    if not isinstance(value, tuple) or not all(isinstance(b, bytes) for b in value):
        raise UsageError(f"a log value must be a tuple of bytes, got {value!r:.80}")
    packed: bytes = msgpack.packb(list(value), use_bin_type=True)
    return packed


def _decode(blob: bytes, slot: int, db_path: Path) -> Value:
    try:
        items = msgpack.unpackb(blob, raw=False)
    except Exception as e:
        raise DataDirError(f"database {db_path} is corrupt: log slot {slot}: {e}") from e
    if not isinstance(items, list) or not all(isinstance(b, bytes) for b in items):
        raise DataDirError(f"database {db_path} is corrupt: log slot {slot} is not a batch")
    return tuple(items)


def _int_in(v: object, low: int, high: int, what: str, db_path: Path) -> int:
    if type(v) is not int or not low <= v <= high:
        raise DataDirError(f"database {db_path} is corrupt: {what} is {v!r:.40} "
                           f"(want an integer in [{low}, {high}])")
    return v


def _ballot(rnd: object, node: object, what: str, db_path: Path) -> Ballot:
    r = _int_in(rnd, 0, MAX_ROUND, f"{what} round", db_path)
    if type(node) is not str or len(node) > MAX_NODE_ID_CHARS or (r > 0 and not node):
        raise DataDirError(f"database {db_path} is corrupt: {what} node is {node!r:.40}")
    return Ballot(r, node)


def _config(blob: object, db_path: Path) -> Membership | None:
    if blob is None:
        return None
    if type(blob) is not bytes:
        raise DataDirError(f"database {db_path} is corrupt: the snapshot's configuration is "
                           "not a blob")
    try:
        return decode_membership(blob)
    except ProtocolError as e:
        raise DataDirError(f"database {db_path} is corrupt: the snapshot's configuration "
                           f"does not decode ({e})") from None


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _incarnation(conn: sqlite3.Connection, db_path: Path) -> int | None:
    v = _meta(conn, INCARNATION)
    if v is None:
        return 0
    if v == JOINING:
        return None
    if not v.isdigit() or int(v) > MAX_SLOT:
        raise DataDirError(f"database {db_path} is corrupt: incarnation {v!r:.40}")
    return int(v)


def _check_contents(conn: sqlite3.Connection, db_path: Path) -> SnapshotFile | None:
    """Read every row the node will use and refuse the database if one is unusable; the
    snapshot file the row names (checked whole), or None if the snapshot is inline."""
    row = conn.execute("SELECT promised_round, promised_node, high_water_round, commit_index "
                       "FROM acceptor WHERE id = 0").fetchone()
    snap = conn.execute("SELECT idx, data, config FROM snapshot WHERE id = 0").fetchone()
    if row is None or snap is None:
        raise DataDirError(f"database {db_path} is corrupt: acceptor state rows missing")
    _config(snap[2], db_path)
    stored = _snapshot_file(conn, db_path)
    _incarnation(conn, db_path)
    _ballot(row[0], row[1], "the promised ballot", db_path)
    _int_in(row[2], 0, MAX_ROUND, "the ballot high-water round", db_path)
    _int_in(row[3], 0, MAX_SLOT, "the commit index", db_path)
    index = _int_in(snap[0], 0, MAX_SLOT, "the snapshot index", db_path)
    if type(snap[1]) is not bytes or ((index == 0 or stored is not None) and snap[1]):
        raise DataDirError(f"database {db_path} is corrupt: the snapshot row holds no snapshot")
    if index > 0 and stored is None:
        try:
            Machine.restore(snap[1])
        except ProtocolError as e:
            raise DataDirError(f"database {db_path} is corrupt: the snapshot at index {index} "
                               f"does not decode ({' '.join(str(e).split())[:120]})") from None
    for slot, rnd, node, blob in conn.execute(
            "SELECT slot, ballot_round, ballot_node, value FROM log ORDER BY slot"):
        _int_in(slot, 1, MAX_SLOT, "a log slot", db_path)
        if slot <= index:
            continue      # covered by the snapshot, not yet trimmed: never used again
        _ballot(rnd, node, f"log slot {slot}'s ballot", db_path)
        if type(blob) is not bytes:
            raise DataDirError(f"database {db_path} is corrupt: log slot {slot} is not a batch")
        _decode(blob, slot, db_path)
    return stored


def _snapshot_file(conn: sqlite3.Connection, db_path: Path) -> SnapshotFile | None:
    """The snapshot file the row names, checked whole; None if the snapshot is inline."""
    name, size, head, sha = conn.execute(
        "SELECT file, file_size, file_head, file_sha256 FROM snapshot WHERE id = 0").fetchone()
    if name is None:
        return None
    if type(name) is not str or type(sha) is not bytes:
        raise DataDirError(f"database {db_path} is corrupt: the snapshot file row is malformed")
    try:
        return SnapshotDir(db_path.parent / SNAPSHOT_DIR).open(
            name, _int_in(size, 0, MAX_SLOT, "the snapshot file size", db_path),
            _int_in(head, 0, MAX_SLOT, "the snapshot header size", db_path), sha)
    except SnapshotFileError as e:
        raise DataDirError(f"database {db_path} is corrupt: {e}") from None


def _check_writable(conn: sqlite3.Connection, db_path: Path) -> None:
    """A real write: a read-only file must be refused now, not at the first save."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if "locked" in str(e):
            raise
        raise DataDirError(f"database {db_path} is not writable: {e}") from None


def _lock_dir(path: Path) -> int:
    """Hold an exclusive flock on ``path/node.lock`` so two nodes never share an acceptor.

    A separate file, not node.db: closing any descriptor of the database would drop
    SQLite's own POSIX locks. The kernel releases the flock when the process dies.
    """
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataDirError(f"cannot create lock file {lock_path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirError(
            f"data directory {path} is in use by another process (pid {holder}); "
            "two processes must never act as the same acceptor"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


CHECKPOINT_EVERY_SAVES = 500
# Log rows a snapshot covers are deleted this much per loop turn (``maintain``).
TRIM_BYTES = 4 << 20
TRIM_ROWS = 4096
# A deferred commit index (see ``save``) is written by ``maintain`` once it is this old.
COMMIT_FLUSH_S = 0.1


class SqliteStore:
    """Store port on SQLite. Build with ``SqliteStore.open``; one per data directory."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int,
                 stored: SnapshotFile | None) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd: int | None = lock_fd
        self.path = path
        self.db_path = path / NODE_DB
        self._failed: str | None = None
        self._save_s: deque[float] = deque(maxlen=SAVE_SAMPLES)
        # Told the duration of every synchronous save (the runtime's fsync histogram).
        self.on_sync: Callable[[float], None] | None = None
        self._saves_since_checkpoint = 0
        self._pending_commit: int | None = None
        self._pending_since = 0.0
        conn.execute("PRAGMA wal_autocheckpoint=0")   # see maintain()
        row = conn.execute("SELECT idx FROM snapshot WHERE id = 0").fetchone()
        if row is None or conn.execute("SELECT 1 FROM acceptor WHERE id = 0").fetchone() is None:
            raise DataDirError(f"database {self.db_path} is corrupt: acceptor state rows missing")
        # The snapshot index decides which entries a save keeps; cached so the hot
        # path need not read it, and updated only once a COMMIT has succeeded.
        self._snapshot_index: int = int(row[0])
        self._trimmed_through = 0      # log rows at or below it are deleted (see maintain)
        self.files = SnapshotDir(path / SNAPSHOT_DIR)
        # The snapshot file the durable row names (``open`` checked it whole, once).
        self._stored = stored
        self.files.remove_partials()
        self.files.prune(self.keep())      # a file written or fetched before a crash

    @classmethod
    def open(cls, path: Path, cluster_id: str, node_id: str) -> SqliteStore:
        """Open the data directory of (cluster_id, node_id), or raise ``DataDirError``."""
        db_path = path / NODE_DB
        if not path.is_dir():
            raise DataDirError(
                f"data directory {path} does not exist: this node has no promises to honour; "
                "prepare it with `coordctl node init`, or if its disk was lost re-add it with "
                "`coordctl node replace` (see README)"
            )
        if not db_path.is_file():
            what = "is empty" if not any(path.iterdir()) else f"has no {NODE_DB}"
            raise DataDirError(
                f"data directory {path} {what}: this node has lost its promises and must not "
                "vote again; re-add it with `coordctl node replace` (see README) rather than "
                "restarting it blank"
            )
        check_header(db_path)
        lock_fd = _lock_dir(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(db_path)
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                raise DataDirError(
                    f"database {db_path} is corrupt: integrity_check: {'; '.join(rows[:3])}"
                )
            found, version = read_meta(conn, db_path)
            check_identity(found, Identity(cluster_id, node_id), path)
            if version > SCHEMA_VERSION:
                raise DataDirError(
                    f"database {db_path} has schema version {version}, newer than this "
                    f"coordsvc understands ({SCHEMA_VERSION}); upgrade coordsvc"
                )
            if version < SCHEMA_VERSION:
                migrate(conn, version)
            removed = _meta(conn, REMOVED)
            if removed is not None:
                raise DataDirError(
                    f"node {node_id} was removed from the cluster and will not start again "
                    f"({removed}); to bring it back, `coordctl member add` it and give it a "
                    "new data directory")
            stored = _check_contents(conn, db_path)
            _check_writable(conn, db_path)
            return cls(conn, path, lock_fd, stored)
        except BaseException as e:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise DataDirError(f"database {db_path} is locked by another process") from e
            if isinstance(e, sqlite3.DatabaseError):
                raise corrupt(db_path, e) from e
            raise

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UsageError(f"store {self.db_path} is closed")
        return self._conn

    def load(self) -> Durable:
        self._flush_commit()
        conn = self._live()
        scalars = conn.execute(
            "SELECT promised_round, promised_node, high_water_round, commit_index "
            "FROM acceptor WHERE id = 0"
        ).fetchone()
        snap = conn.execute("SELECT idx, data, config FROM snapshot WHERE id = 0").fetchone()
        if scalars is None or snap is None:
            raise DataDirError(f"database {self.db_path} is corrupt: acceptor state rows missing")
        entries = tuple(
            LogEntry(slot, _ballot(rnd, node, f"log slot {slot}'s ballot", self.db_path),
                  _decode(blob, slot, self.db_path))
            for slot, rnd, node, blob in conn.execute(
                "SELECT slot, ballot_round, ballot_node, value FROM log WHERE slot > ? "
                "ORDER BY slot", (snap[0],)
            )
        )
        return Durable(
            promised=_ballot(scalars[0], scalars[1], "the promised ballot", self.db_path),
            high_water_round=scalars[2],
            entries=entries,
            commit_index=scalars[3],
            snapshot=Snapshot(snap[0], snap[1] if self._stored is None else self._stored,
                              _config(snap[2], self.db_path)),
            rebuilding=conn.execute("SELECT 1 FROM meta WHERE key = ?",
                                    (REBUILDING,)).fetchone() is not None,
            incarnation=_incarnation(conn, self.db_path),
            removed=_meta(conn, REMOVED) or "",
        )

    def save(self, p: Persist) -> None:
        """Make ``p`` durable before returning -- all of it but the commit index.

        The commit index is a hint: losing it in a crash is harmless (the leader tells it
        again, and a snapshot's index is a floor), so it costs the write path nothing. It
        is written with the next promise or high-water mark, by ``maintain`` once it is
        ``COMMIT_FLUSH_S`` old, or by ``close``/``load``. An entry save then touches the
        log's pages only, not the acceptor row as well (~20 us less per fsync here).
        """
        self._check_usable()
        pending = self._pending_commit
        if p.commit_index is not None:
            pending = max(p.commit_index, pending or 0)
        if (p.entries or p.promised is not None or p.snapshot is not None
                or p.high_water_round is not None or p.rebuilt or p.incarnation is not None
                or p.removed is not None):
            # The index goes along only when the acceptor row is written anyway.
            scalars = p.promised is not None or p.high_water_round is not None
            self._commit(p, pending if scalars else None, sync=True)   # may raise: then
            if scalars:                                               # nothing is noted
                pending = None
        if pending is not None and self._pending_commit is None:
            self._pending_since = time.monotonic()
        self._pending_commit = pending

    def _flush_commit(self) -> None:
        if self._pending_commit is not None:
            self._check_usable()
            # Nothing waits on this one: NORMAL lets the next synchronous commit fsync it.
            self._commit(Persist(), self._pending_commit, sync=False)
            self._pending_commit = None

    def _check_usable(self) -> None:
        self._live()
        if self._failed is not None:
            raise SafetyViolation(
                f"store {self.db_path} refused a save: an earlier save failed ({self._failed}); "
                "restart the node"
            )

    def _commit(self, p: Persist, commit_index: int | None, sync: bool) -> None:
        """One transaction: ``p`` (its commit_index ignored) and ``commit_index``."""
        conn = self._live()
        started = time.perf_counter()
        snapshot_index = p.snapshot.index if p.snapshot is not None else self._snapshot_index
        if p.high_water_round is not None and not 0 <= p.high_water_round <= MAX_ROUND:
            raise UsageError(f"high-water round {p.high_water_round} outside [0, 2**62]")
        # Encode before BEGIN: a malformed value is a UsageError that touches nothing.
        rows = [
            (e.slot, e.ballot.round, e.ballot.node, _encode(e.value))
            for e in p.entries
            if e.slot > snapshot_index
        ]
        promised = p.promised
        config = (None if p.snapshot is None or p.snapshot.config is None
                  else encode_membership(p.snapshot.config))
        stored = self._stored
        if p.snapshot is not None:
            data = p.snapshot.data
            if not isinstance(data, (bytes, SnapshotFile)) or (
                    isinstance(data, SnapshotFile) and data.path.parent != self.files.path):
                raise UsageError(f"a snapshot to save must be bytes or a file of "
                                 f"{self.files.path}, got {data!r:.80}")
            stored = data if isinstance(data, SnapshotFile) else None
        try:
            if not sync:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            if p.snapshot is not None:
                f = stored
                conn.execute(
                    "UPDATE snapshot SET idx = ?, data = ?, config = ?, file = ?, file_size = ?, "
                    "file_head = ?, file_sha256 = ? WHERE id = 0",
                    (p.snapshot.index, b"" if f is not None else p.snapshot.data, config,
                     None if f is None else f.name, None if f is None else f.size,
                     None if f is None else f.head, None if f is None else f.checksum),
                )
                if p.snapshot.index < self._snapshot_index:
                    # Never done by a replica; the rows the old snapshot covered (not yet
                    # trimmed) must not come back above the new one.
                    conn.execute("DELETE FROM log WHERE slot <= ?", (self._snapshot_index,))
            if rows:
                conn.executemany(_UPSERT_ENTRY, rows)
            if promised is not None or p.high_water_round is not None or commit_index is not None:
                conn.execute(
                    _UPDATE_SCALARS,
                    (
                        None if promised is None else promised.round,
                        None if promised is None else promised.node,
                        p.high_water_round,
                        commit_index,
                    ),
                )
            if p.rebuilt:
                conn.execute("DELETE FROM meta WHERE key = ?", (REBUILDING,))
            if p.incarnation is not None:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (INCARNATION, str(p.incarnation)))
            if p.removed is not None:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (REMOVED, p.removed))
            conn.execute("COMMIT")
        except BaseException as e:
            self._failed = f"{type(e).__name__}: {e}"
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting
            raise
        finally:
            if not sync:
                conn.execute("PRAGMA synchronous=FULL")
        self._snapshot_index = snapshot_index
        self._stored = stored
        self._saves_since_checkpoint += 1
        if sync:
            took_s = time.perf_counter() - started
            self._save_s.append(took_s)
            if self.on_sync is not None:
                self.on_sync(took_s)

    def save_p99_ms(self) -> float:
        """99th percentile (nearest rank) of the last 1024 save durations, 0.0 if none."""
        if not self._save_s:
            return 0.0
        ordered = sorted(self._save_s)
        return ordered[math.ceil(0.99 * len(ordered)) - 1] * 1000.0

    def keep(self, *more: SnapshotFile) -> list[str]:
        """The snapshot files to keep: the one the durable row names and ``more``."""
        return [f.name for f in (self._stored, *more) if f is not None]

    def prune(self, in_use: Iterable[object]) -> list[str]:
        """Delete every snapshot file neither durable nor ``in_use``; the names deleted."""
        return self.files.prune(self.keep(*(f for f in in_use if isinstance(f, SnapshotFile))))

    def _stored_bytes(self) -> int:
        return 0 if self._stored is None else self._stored.size

    def db_bytes(self) -> int:
        total = self._stored_bytes()
        for f in (self.db_path, Path(f"{self.db_path}-wal")):
            try:
                total += f.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def db_bytes_in_use(self) -> int:
        """The database's pages in use, as this connection sees it (WAL content included,
        free pages excluded): what the ``max_db_bytes`` quota measures. Unlike the file
        size it shrinks once a snapshot has truncated the log."""
        conn = self._live()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size) + self._stored_bytes()

    def maintain(self) -> None:
        """Fold the WAL back into the database when it has grown; call between batches.

        SQLite's automatic checkpoint runs inside whichever commit crosses the threshold
        and made that write's latency ~8 ms at p99; the node loop calls this after it has
        answered, so no reply waits for it. PASSIVE never blocks on readers. A deferred
        commit index older than ``COMMIT_FLUSH_S`` is written here too.
        """
        if (self._pending_commit is not None
                and time.monotonic() - self._pending_since >= COMMIT_FLUSH_S):
            self._flush_commit()
        if self._trimmed_through < self._snapshot_index:
            self._trim_some()
        if self._saves_since_checkpoint >= CHECKPOINT_EVERY_SAVES:
            self._saves_since_checkpoint = 0
            self._live().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _trim_some(self) -> None:
        """Delete up to ``TRIM_BYTES`` of log rows the snapshot covers.

        A snapshot's save only moves the snapshot row: deleting the log below it in the
        same transaction made that save take seconds for a large log (every overflow page
        of every row is visited), a stall long enough to depose a leader. The rows below
        the snapshot are ignored by ``load`` and by the check at open, and deleted here a
        few megabytes per loop turn, after the replies went out. Losing a trim in a crash
        loses nothing (it is done again), so it does not wait for an fsync.
        """
        conn = self._live()
        rows = conn.execute("SELECT slot, length(value) FROM log WHERE slot <= ? ORDER BY slot "
                            "LIMIT ?", (self._snapshot_index, TRIM_ROWS)).fetchall()
        if not rows:
            self._trimmed_through = self._snapshot_index
            return
        used, cut = 0, rows[0][0]
        for slot, n in rows:
            if used and used + n > TRIM_BYTES:
                break
            used, cut = used + n, slot
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM log WHERE slot <= ?", (cut,))
            conn.execute("COMMIT")
        except BaseException as e:
            self._failed = f"{type(e).__name__}: {e}"
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("PRAGMA synchronous=FULL")
        self._saves_since_checkpoint += 1

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the directory. Idempotent."""
        if self._conn is not None:
            if self._failed is None:
                try:
                    self._flush_commit()
                except sqlite3.Error:
                    pass  # only a hint is lost; the store was usable until now
            conn, self._conn = self._conn, None
            conn.close()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
