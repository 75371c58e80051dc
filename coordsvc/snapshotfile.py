"""Backup files: ``coordctl snapshot save|restore|info`` (CONTRACT §9).

Layout (format version 1; integers big-endian)::

    offset      size  field
    0           8     magic b"COORDSNP"
    8           2     format version (1)
    10          4     M, the length of the meta map (1 .. 65536)
    14          M     meta: a msgpack map -- index, revision, keys, created_ms,
                      snapshot_index, snapshot_bytes, entries, body_bytes (ints >= 0),
                      cluster, cluster_id, node, coordsvc (str, optional)
    14+M        32    checksum: sha256 of bytes [0, 14+M) followed by the body
    46+M        B     body (B = body_bytes): the leader's latest compaction snapshot
                      (snapshot_bytes, a ``Machine.snapshot()``) then one record per log
                      slot after it (``core.export``), through ``index``

The header (magic .. checksum) says what the file holds before a byte of the body is
read; the checksum covers the header fields too, so a flipped bit anywhere is caught.
``created_ms`` is the saving client's wall clock (the nodes keep no wall time).

Nothing read from a file is trusted before it is checked: the preamble's magic, version
and meta length are checked first, then the checksum over the whole file, then every
meta field (types, ranges, ``body_bytes`` against the file's size), then, while the
state is rebuilt, every record length (``core.export.BodyDecoder``) -- and the rebuilt
state must end at the header's index with its revision and number of keys. Each
failure is a :class:`SnapshotFileError` whose message is one line.

Writing is streamed: :class:`Writer` writes the header with a zero checksum into a
temporary file beside the target, appends the body as it arrives while hashing it,
writes the checksum in place, fsyncs, reads the whole file back through
:func:`verify`, and only then renames it over the target.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs published

from .core.export import BodyDecoder, apply_value
from .core.machine import Machine
from .core.types import MAX_SLOT, ProtocolError

__all__ = ["FORMAT_VERSION", "MAGIC", "Header", "Inspection", "SnapshotFileError", "Writer",
           "inspect", "load", "verify"]

MAGIC = b"COORDSNP"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct(">8sHI")    # magic, version, meta length
CHECKSUM_BYTES = 32
MAX_META_BYTES = 64 * 1024
READ_BYTES = 1024 * 1024
_INT_FIELDS = ("index", "revision", "keys", "created_ms", "snapshot_index", "snapshot_bytes",
               "entries", "body_bytes")
_STR_FIELDS = ("cluster", "cluster_id", "node", "coordsvc")
_MAX_INT = 2**63 - 1


class SnapshotFileError(Exception):
    """The file is not a usable backup; the message is one line saying why."""


@dataclass(frozen=True, slots=True)
class Header:
    """What a backup file says about itself (``meta``), and where its parts lie."""

    version: int
    index: int              # the log index the state is consistent at
    revision: int
    keys: int
    created_ms: int         # the saving client's wall clock, ms since the epoch
    snapshot_index: int
    snapshot_bytes: int
    entries: int
    body_bytes: int
    meta_bytes: int
    checksum: bytes
    cluster: str | None = None
    cluster_id: str | None = None
    node: str | None = None
    coordsvc: str | None = None

    @property
    def body_offset(self) -> int:
        return _PREAMBLE.size + self.meta_bytes + CHECKSUM_BYTES

    @property
    def file_bytes(self) -> int:
        return self.body_offset + self.body_bytes

    @property
    def created(self) -> str:
        """ISO 8601 UTC; "?" for a time no calendar holds (the field is only a count)."""
        try:
            t = datetime.datetime.fromtimestamp(self.created_ms / 1000, datetime.UTC)
        except (ValueError, OverflowError, OSError):
            return "?"
        return t.isoformat(timespec="seconds").replace("+00:00", "Z")

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.version, "index": self.index, "revision": self.revision,
                "keys": self.keys, "created": self.created, "created_ms": self.created_ms,
                "snapshot_index": self.snapshot_index, "snapshot_bytes": self.snapshot_bytes,
                "entries": self.entries, "body_bytes": self.body_bytes,
                "size": self.file_bytes, "sha256": self.checksum.hex(),
                "cluster": self.cluster, "cluster_id": self.cluster_id, "node": self.node,
                "coordsvc": self.coordsvc}


def encode_meta(fields: dict[str, int | str | None]) -> bytes:
    meta = {k: v for k, v in fields.items() if v is not None}
    out: bytes = msgpack.packb(meta, use_bin_type=True)
    return out


def _preamble(meta: bytes) -> bytes:
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(meta)) + meta


# -- reading ---------------------------------------------------------------------------------

def _where(path: Path) -> str:
    return str(path)


def _read_exactly(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    return data if isinstance(data, bytes) else b""


def _parse_header(path: Path, f: BinaryIO, size: int) -> tuple[Header, bytes]:
    """The header and the bytes the checksum starts with; the meta is decoded but the
    checksum is not checked yet (``verify`` does)."""
    pre = _read_exactly(f, _PREAMBLE.size)
    if len(pre) < _PREAMBLE.size or not pre.startswith(MAGIC):
        if len(pre) < len(MAGIC) and MAGIC.startswith(pre):
            raise SnapshotFileError(f"{path} is truncated: {size} bytes, not even a header")
        raise SnapshotFileError(f"{path} is not a coordsvc snapshot (bad magic)")
    _, version, meta_len = _PREAMBLE.unpack(pre)
    if version != FORMAT_VERSION:
        raise SnapshotFileError(f"{path} has snapshot format version {version}; this coordsvc "
                                f"reads version {FORMAT_VERSION}")
    if not 0 < meta_len <= MAX_META_BYTES:
        raise SnapshotFileError(f"{path} is damaged: its header claims {meta_len} bytes of "
                                f"metadata (1..{MAX_META_BYTES})")
    if size < _PREAMBLE.size + meta_len + CHECKSUM_BYTES:
        raise SnapshotFileError(f"{path} is truncated: {size} bytes end inside its header")
    meta_raw = _read_exactly(f, meta_len)
    checksum = _read_exactly(f, CHECKSUM_BYTES)
    if len(meta_raw) != meta_len or len(checksum) != CHECKSUM_BYTES:
        raise SnapshotFileError(f"{path} is truncated: it ends inside its header")
    try:
        meta = msgpack.unpackb(meta_raw, raw=False, strict_map_key=True, max_bin_len=0,
                               max_array_len=0, max_map_len=64, max_str_len=4096)
    except Exception:   # msgpack raises a zoo of types: every one is damage here
        meta = None
    h = _header(path, meta, version, meta_len, checksum)
    return h, pre + meta_raw


def _header(path: Path, meta: object, version: int, meta_len: int, checksum: bytes) -> Header:
    if not isinstance(meta, dict):
        raise SnapshotFileError(f"{path} is damaged: its metadata does not decode")
    ints: dict[str, int] = {}
    for name in _INT_FIELDS:
        v = meta.get(name)
        if type(v) is not int or not 0 <= v <= _MAX_INT:
            raise SnapshotFileError(f"{path} is damaged: metadata field {name!r} is "
                                    f"{'missing' if v is None else 'not a count'}")
        ints[name] = v
    strs: dict[str, str | None] = {}
    for name in _STR_FIELDS:
        v = meta.get(name)
        if v is not None and type(v) is not str:
            raise SnapshotFileError(f"{path} is damaged: metadata field {name!r} is not text")
        strs[name] = v
    if not (ints["snapshot_index"] <= ints["index"] <= MAX_SLOT
            and ints["entries"] == ints["index"] - ints["snapshot_index"]
            and ints["snapshot_bytes"] <= ints["body_bytes"]):
        raise SnapshotFileError(f"{path} is damaged: its metadata does not add up "
                                f"(index {ints['index']}, snapshot at {ints['snapshot_index']}, "
                                f"{ints['entries']} entries)")
    return Header(version, ints["index"], ints["revision"], ints["keys"], ints["created_ms"],
                  ints["snapshot_index"], ints["snapshot_bytes"], ints["entries"],
                  ints["body_bytes"], meta_len, checksum, strs["cluster"], strs["cluster_id"],
                  strs["node"], strs["coordsvc"])


def _open(path: Path) -> tuple[BinaryIO, int]:
    try:
        f = open(path, "rb")   # closed by the callers
    except FileNotFoundError:
        raise SnapshotFileError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise SnapshotFileError(f"{path} is a directory, not a snapshot file") from None
    except OSError as e:
        raise SnapshotFileError(f"{path} cannot be read: {e.strerror}") from None
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        f.close()
        raise SnapshotFileError(f"{path} cannot be read: {e.strerror}") from None
    return f, size


def _blocks(path: Path, f: BinaryIO, n: int) -> Iterator[bytes]:
    """``n`` bytes of ``f`` in blocks; SnapshotFileError if the file ends first."""
    left = n
    while left > 0:
        try:
            b = f.read(min(READ_BYTES, left))
        except OSError as e:
            raise SnapshotFileError(f"{path} cannot be read: {e.strerror}") from None
        if not b:
            raise SnapshotFileError(f"{path} is truncated: it ends {left} bytes early")
        left -= len(b)
        yield b


class _Hashed:
    """Blocks as a stream for ``Machine.restore_from``, each hashed as it is read."""

    def __init__(self, blocks: Iterator[bytes], sha: Any) -> None:
        self._blocks, self._sha, self._buf = blocks, sha, b""

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            b = next(self._blocks, None)
            if b is None:
                break
            self._sha.update(b)
            self._buf += b
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _check_size(path: Path, h: Header, size: int) -> None:
    if size < h.file_bytes:
        raise SnapshotFileError(f"{path} is truncated: {size} bytes of the {h.file_bytes} its "
                                "header announces")
    if size > h.file_bytes:
        raise SnapshotFileError(f"{path} is damaged: {size - h.file_bytes} bytes follow the "
                                "end its header announces")


def _check_sum(path: Path, h: Header, digest: bytes) -> None:
    if digest != h.checksum:
        raise SnapshotFileError(f"{path} is damaged: checksum mismatch (sha256 of the file is "
                                f"{digest.hex()[:16]}..., its header says {h.checksum.hex()[:16]}...)")


def verify(path: Path) -> Header:
    """The header of a complete, undamaged backup file, or ``SnapshotFileError``.

    Reads the whole file once (in 1 MiB blocks)."""
    f, size = _open(path)
    with f:
        h, head = _parse_header(path, f, size)
        _check_size(path, h, size)
        sha = hashlib.sha256(head)
        for b in _blocks(path, f, h.body_bytes):
            sha.update(b)
        _check_sum(path, h, sha.digest())
    return h


@dataclass(frozen=True, slots=True)
class Inspection:
    """What ``snapshot info`` shows: the header if it could be read, and what is wrong."""

    size: int
    header: Header | None
    problem: str | None     # None: the file verified
    readable: bool = True   # False: missing, a directory, no permission (not damage)


def inspect(path: Path) -> Inspection:
    """Like ``verify``, but a damaged file still shows the header fields it has."""
    try:
        f, size = _open(path)
    except SnapshotFileError as e:
        return Inspection(0, None, str(e), readable=False)
    with f:
        try:
            header, _ = _parse_header(path, f, size)
        except SnapshotFileError as e:
            return Inspection(size, None, str(e))
    try:
        return Inspection(size, verify(path), None)
    except SnapshotFileError as e:
        return Inspection(size, header, str(e))


def load(path: Path) -> tuple[Header, Machine]:
    """The state a backup holds, rebuilt and checked against its header.

    The file is verified first (a full pass), then read again to rebuild: the snapshot is
    restored and every record replayed onto it (``core.export``); the second pass is
    hashed too, and the state is returned only if that pass matched the checksum as well
    (the file did not change in between) and the state ends at the header's index with
    its revision and number of keys.
    """
    verify(path)
    f, size = _open(path)
    with f:
        h, head = _parse_header(path, f, size)
        _check_size(path, h, size)
        sha = hashlib.sha256(head)
        try:
            m = Machine.restore_from(_Hashed(_blocks(path, f, h.snapshot_bytes), sha))
        except ProtocolError as e:
            raise SnapshotFileError(f"{path} is damaged: its state does not decode "
                                    f"({' '.join(str(e).split())[:120]})") from None
        decoder = BodyDecoder(h.snapshot_index + 1, h.entries)
        try:
            for b in _blocks(path, f, h.body_bytes - h.snapshot_bytes):
                sha.update(b)
                for slot, value in decoder.feed(b):
                    apply_value(m, slot, value)
            decoder.finish()
        except ProtocolError as e:
            raise SnapshotFileError(f"{path} is damaged: {' '.join(str(e).split())[:160]}") from None
        _check_sum(path, h, sha.digest())
    if (m.revision, m.key_count) != (h.revision, h.keys):
        raise SnapshotFileError(
            f"{path} is inconsistent: its state rebuilds to revision {m.revision} with "
            f"{m.key_count} keys, its header says revision {h.revision} with {h.keys} keys")
    return h, m


# -- writing ---------------------------------------------------------------------------------

class Writer:
    """Streams one backup into ``path``: a temporary file beside it, renamed into place
    only once complete and verified. Use as a context manager: leaving it without
    :meth:`commit` (an error, Ctrl-C) removes the temporary file."""

    def __init__(self, path: Path, meta: dict[str, int | str | None]) -> None:
        self.path = path
        self.body_bytes = int(meta["body_bytes"] or 0)
        self._meta = encode_meta(meta)
        if len(self._meta) > MAX_META_BYTES:
            raise SnapshotFileError(f"snapshot metadata of {len(self._meta)} bytes is too large")
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        self._f: BinaryIO | None = open(self.tmp, "xb")   # closed in commit/abort
        head = _preamble(self._meta)
        self._sha = hashlib.sha256(head)
        self._body_sha = hashlib.sha256()
        self.written = 0
        self._f.write(head + bytes(CHECKSUM_BYTES))

    def write(self, data: bytes) -> None:
        if self._f is None:
            raise SnapshotFileError("snapshot writer is closed")
        if self.written + len(data) > self.body_bytes:
            raise SnapshotFileError(f"the leader sent more than the {self.body_bytes} bytes it "
                                    "announced")
        self._f.write(data)
        self._sha.update(data)
        self._body_sha.update(data)
        self.written += len(data)

    def commit(self, body_sha256: bytes) -> Header:
        """Finish: ``body_sha256`` is the leader's hash of what it served; it must equal
        ours. Writes the checksum, fsyncs, verifies the file from disk, renames it."""
        f = self._f
        if f is None:
            raise SnapshotFileError("snapshot writer is closed")
        if self.written != self.body_bytes:
            raise SnapshotFileError(f"the save ended after {self.written} of "
                                    f"{self.body_bytes} bytes")
        if self._body_sha.digest() != body_sha256:
            raise SnapshotFileError("what arrived differs from what the leader sent "
                                    "(sha256 mismatch); nothing was written")
        checksum = self._sha.digest()
        f.seek(_PREAMBLE.size + len(self._meta))
        f.write(checksum)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None
        h = verify(self.tmp)
        if h.checksum != checksum:   # pragma: no cover - verify() compares the same bytes
            raise SnapshotFileError(f"{self.tmp} changed while it was written")
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return h

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._f is not None or self.tmp.exists():
            self.abort()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
