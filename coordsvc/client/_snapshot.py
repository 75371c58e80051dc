"""``Client.snapshot_save``: stream a backup from the leader into a file.

The leader pins the state at a linearizable point (``snapshot_save``) and serves it in
chunks (``snapshot_chunk``) from that one node; each chunk goes straight to the file
(``snapshotfile.Writer``), so the client holds one chunk (1 MiB) at a time whatever the
size of the state. If the node loses the save (it restarted, or we were away longer than
it keeps an idle save), the save starts over from a new point, a few times at most.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from coordsvc import __version__, snapshotfile
from coordsvc.core.protocol import (
    SnapshotChunkReply,
    SnapshotChunkRequest,
    SnapshotSaveReply,
    SnapshotSaveRequest,
)

from ._transport import Pin
from .errors import CoordError, SnapshotGone

if TYPE_CHECKING:
    from coordsvc.clusterfile import Cluster

    from ._client import Client

__all__ = ["ATTEMPTS", "open_writer", "save", "write_chunk"]

ATTEMPTS = 3


def save(client: Client, path: Path) -> snapshotfile.Header:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _save_once(client, path)
        except SnapshotGone:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")   # pragma: no cover


def _save_once(client: Client, path: Path) -> snapshotfile.Header:
    pin = Pin()
    begin = client._call(SnapshotSaveRequest(), SnapshotSaveReply.from_wire, leader=True, pin=pin)
    with open_writer(path, begin, client._cluster) as writer:
        offset = 0
        while True:
            chunk = client._call(SnapshotChunkRequest(begin.export_id, offset),
                                 SnapshotChunkReply.from_wire, leader=False, pin=pin)
            offset, header = write_chunk(writer, offset, chunk)
            if header is not None:
                return header


def open_writer(path: Path, begin: SnapshotSaveReply, cluster: Cluster | None) -> snapshotfile.Writer:
    """The file's writer, its header from the leader's answer to ``snapshot_save``."""
    meta: dict[str, int | str | None] = {
        "index": begin.index, "revision": begin.revision, "keys": begin.keys,
        "created_ms": time.time_ns() // 1_000_000, "snapshot_index": begin.snapshot_index,
        "snapshot_bytes": begin.snapshot_bytes, "entries": begin.entries,
        "body_bytes": begin.body_bytes, "node": begin.node, "coordsvc": __version__,
        "cluster": None if cluster is None else cluster.name,
        "cluster_id": None if cluster is None else cluster.id,
    }
    try:
        return snapshotfile.Writer(path, meta)
    except OSError as e:
        raise CoordError(f"cannot write beside {path}: {e.strerror or e}") from None


def write_chunk(writer: snapshotfile.Writer, offset: int, chunk: SnapshotChunkReply
                ) -> tuple[int, snapshotfile.Header | None]:
    """Append ``chunk`` (asked at ``offset``): the next offset, and the committed file's
    header once the chunk was the last."""
    if chunk.offset != offset or (not chunk.data and not chunk.done):
        raise CoordError(f"malformed reply to snapshot_chunk: offset {chunk.offset} "
                         f"({len(chunk.data)} bytes) where {offset} was asked")
    try:
        writer.write(chunk.data)
    except snapshotfile.SnapshotFileError as e:
        raise CoordError(str(e)) from None
    offset += len(chunk.data)
    if not chunk.done:
        return offset, None
    try:
        return offset, writer.commit(chunk.sha256)
    except snapshotfile.SnapshotFileError as e:
        raise CoordError(str(e)) from None
