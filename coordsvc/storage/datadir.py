"""A node's data directory: identity, schema, and the refusals that protect promises.

A data directory holds ``node.db`` (SQLite, WAL) recording which cluster and node it
belongs to next to the acceptor state. An acceptor that forgot its promises could
vote twice and let two values be chosen, so nothing here ever recreates state
silently: a missing, empty, corrupt or foreign directory is a ``DataDirError`` whose
message is one line saying why, fit for the node's stderr.
"""
from __future__ import annotations

import datetime
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils


__all__ = ["DataDirError", "INCARNATION", "Identity", "JOINING", "NODE_DB", "REMOVED",
           "SCHEMA_VERSION", "init_data_dir"]

NODE_DB = "node.db"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 5_000


class DataDirError(Exception):
    """The data directory cannot be used; the message is one line saying why."""


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_id: str
    node_id: str


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"value"}, strict=True)
    # Single-row tables (id = 0): the acceptor's scalars and the latest snapshot.
    db.table("acceptor").create(
        {"id": int, "promised_round": int, "promised_node": str, "high_water_round": int,
         "commit_index": int},
        pk="id",
        not_null={"promised_round", "promised_node", "high_water_round", "commit_index"},
        strict=True,
    )
    db.table("snapshot").create(
        {"id": int, "idx": int, "data": bytes}, pk="id", not_null={"idx", "data"}, strict=True
    )
    db.table("log").create(
        {"slot": int, "ballot_round": int, "ballot_node": str, "value": bytes},
        pk="slot",
        not_null={"ballot_round", "ballot_node", "value"},
        strict=True,
    )
    db.table("acceptor").insert(
        {"id": 0, "promised_round": 0, "promised_node": "", "high_water_round": 0,
         "commit_index": 0}
    )
    db.table("snapshot").insert({"id": 0, "idx": 0, "data": b""})


def _membership_v2(db: sqlite_utils.Database) -> None:
    # config(index + 1) beside the snapshot (NULL: none recorded yet -- the node starts
    # from cluster.toml's members and records them at its first start). Which member
    # this node is and whether it was removed live in meta (INCARNATION, REMOVED).
    db.execute("ALTER TABLE snapshot ADD COLUMN config BLOB")


def _snapshot_files_v3(db: sqlite_utils.Database) -> None:
    # A snapshot may live in a file of snapshots/ (storage/snapfiles.py): its name, size,
    # header length and sha256; NULL file: the snapshot is the data blob, as before.
    for column, kind in (("file", "TEXT"), ("file_size", "INTEGER"), ("file_head", "INTEGER"),
                         ("file_sha256", "BLOB")):
        db.execute(f"ALTER TABLE snapshot ADD COLUMN {column} {kind}")


# MIGRATIONS[v] takes a database at schema v-1 to schema v. Append, never edit.
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _create_v1,
    2: _membership_v2,
    3: _snapshot_files_v3,
}


def _set_version(db: sqlite_utils.Database, version: int) -> None:
    db.table("meta").upsert({"key": "schema_version", "value": str(version)}, pk="key")


def migrate(conn: sqlite3.Connection, current: int) -> None:
    """Bring a database at schema ``current`` up to ``SCHEMA_VERSION``, one txn per step."""
    import sqlite_utils  # only schema work needs it; a starting node should not pay for it
    db = sqlite_utils.Database(conn, execute_plugins=False)
    for version in range(current + 1, SCHEMA_VERSION + 1):
        with db.atomic():
            MIGRATIONS[version](db)
            _set_version(db, version)


def connect(db_path: Path, *, create: bool = False) -> sqlite3.Connection:
    """Open ``db_path`` in autocommit mode (we issue BEGIN/COMMIT), WAL, synchronous=FULL.

    Unless ``create``, the file must already exist: SQLite would otherwise make an
    empty one, which is exactly the silent fresh start we refuse.
    """
    mode = "rwc" if create else "rw"
    uri = f"file:{urllib.parse.quote(str(db_path.absolute()))}?mode={mode}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        (journal,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(journal).lower() != "wal":
            raise DataDirError(f"database {db_path} refused WAL mode (journal_mode={journal})")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def read_meta(conn: sqlite3.Connection, db_path: Path) -> tuple[Identity, int]:
    """Identity and schema version recorded in ``meta``; DataDirError if absent."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:
        raise DataDirError(
            f"database {db_path} is corrupt: it has no coordsvc meta table "
            "(truncated, or not created by `coordctl node init`)"
        )
    meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    missing = sorted({"cluster_id", "node_id", "schema_version"} - meta.keys())
    if missing:
        raise DataDirError(f"database {db_path} is corrupt: meta lacks {', '.join(missing)}")
    try:
        version = int(meta["schema_version"])
    except ValueError:
        raise DataDirError(
            f"database {db_path} is corrupt: schema_version {meta['schema_version']!r}"
        ) from None
    return Identity(meta["cluster_id"], meta["node_id"]), version


def check_identity(found: Identity, want: Identity, where: Path) -> None:
    if found != want:
        raise DataDirError(
            f"data directory {where} belongs to node {found.node_id} of cluster "
            f"{found.cluster_id}, not {want.node_id} of cluster {want.cluster_id}"
        )


_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_header(db_path: Path) -> None:
    """Refuse a file that is not an SQLite database before SQLite may write to it.

    SQLite treats a zero-length file as a new, empty database and would write a
    header into it; a refused data directory must be left exactly as found.
    """
    try:
        with db_path.open("rb") as f:
            head = f.read(100)
    except OSError as e:
        raise DataDirError(f"database {db_path} is unreadable: {e.strerror}") from e
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        what = "empty (0 bytes)" if not head else "not an SQLite database (bad header)"
        raise DataDirError(f"database {db_path} is corrupt: the file is {what}")


def corrupt(db_path: Path, err: BaseException) -> DataDirError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return DataDirError(f"database {db_path} is corrupt or unreadable: {reason}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


REBUILDING = "rebuilding_since"
# meta keys of membership: which member this node is (absent: a bootstrap member,
# incarnation 0; JOINING: added at runtime, not yet known) and why it was removed.
INCARNATION = "incarnation"
JOINING = "joining"
REMOVED = "removed"


def init_data_dir(path: Path, cluster_id: str, node_id: str, rebuilding: bool = False,
                  joining: bool = False) -> None:
    """Create ``path`` with a fresh ``node.db`` for (cluster_id, node_id).

    ``rebuilding`` marks a replacement for a node whose disk was lost: it will learn
    the log without voting until it is safe to vote again (see ``Replica``).
    ``joining`` marks a node added to a running cluster (``member add``): it knows no
    configuration and learns everything, its membership included, from the leader.

    Idempotent for the same identity; ``DataDirError`` if ``path`` already holds a
    node.db of another identity or one that cannot be read. The database is built
    under a temporary name and renamed into place, so a crash mid-init leaves either
    no node.db or a complete one, never a half-made acceptor.
    """
    if not cluster_id or not node_id:
        raise ValueError("cluster_id and node_id must be non-empty")
    want = Identity(cluster_id, node_id)
    path.mkdir(parents=True, exist_ok=True)
    db_path = path / NODE_DB
    if db_path.exists():
        check_header(db_path)
        try:
            conn = connect(db_path)
            try:
                found, _ = read_meta(conn, db_path)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise corrupt(db_path, e) from e
        check_identity(found, want, path)
        return

    tmp = path / (NODE_DB + ".init")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        stale.unlink(missing_ok=True)
    conn = connect(tmp, create=True)
    try:
        migrate(conn, 0)
        import sqlite_utils
        db = sqlite_utils.Database(conn, execute_plugins=False)
        with db.atomic():
            created_at = datetime.datetime.now(datetime.UTC).isoformat()
            db.table("meta").upsert_all(
                [{"key": "cluster_id", "value": cluster_id},
                 {"key": "node_id", "value": node_id},
                 {"key": "created_at", "value": created_at}]
                + ([{"key": REBUILDING, "value": created_at}] if rebuilding else [])
                + ([{"key": INCARNATION, "value": JOINING}] if joining else []),
                pk="key",
            )
    finally:
        conn.close()  # the last connection checkpoints the WAL into the file and removes it
    if Path(f"{tmp}-wal").exists():
        raise DataDirError(f"could not checkpoint {tmp} while initialising {path}")
    _fsync_path(tmp)
    os.replace(tmp, db_path)
    _fsync_path(path)
