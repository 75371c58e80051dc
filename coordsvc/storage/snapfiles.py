"""Snapshot files: a node's compacted state, kept beside ``node.db`` in ``snapshots/``.

A snapshot of a large state does not belong in one SQLite blob (SQLite caps a blob below
1 GiB, and the node would hold the whole of it in memory to write or serve it). Each
snapshot is instead one file holding its *payload* (``core.transfer``: the configuration
header, then the state machine's bytes), written once and never changed:

- ``snap-<index>-<tag>.part`` while it is written; fsynced, renamed to ``.bin`` and the
  directory fsynced before anything refers to it -- by the node's own process, which
  refers to it at once (a ``.bin`` nothing refers to is garbage to ``prune``). ``node.db``'s snapshot row names the
  file with its size and sha256 (``SqliteStore``), so a row never points at a file that
  is not complete and durable.
- Written by a forked child (``ForkedSnapshots``): the child has a copy-on-write image of
  the parent's state machine at the index asked for, serializes it a piece at a time and
  exits; the node's loop goes on serving and learns the result from a pipe. This is
  Redis's BGSAVE: compaction costs the loop a fork, not the seconds it takes to write
  a state of a gigabyte.
- Assembled from a peer's chunks through a ``FileSink`` (the core checks the sha256).
- Reclaimed by ``SnapshotDir.prune``: every ``.bin`` the caller does not name is deleted
  (the store adds the one its row names); ``.part`` files left by a crash go at open.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack  # type: ignore[import-untyped]

from ..core.machine import Machine
from ..core.membership import Membership
from ..core.messages import SnapshotInfo
from ..core.transfer import head_for
from ..core.types import Slot

SNAPSHOT_DIR = "snapshots"
_PART, _DONE = ".part", ".bin"
_READ_BYTES = 1 << 20
_SYNC_EVERY_BYTES = 16 << 20
# A forked writer still writing after this long is stopped (``ForkedSnapshots``): a 1 GiB
# state is written in about a minute here, so only a stuck disk gets there.
WRITER_TIMEOUT_S = 1800.0


class SnapshotFileError(Exception):
    """A snapshot file is missing, short or damaged (the reason, in one line)."""


@dataclass(frozen=True, eq=False, slots=True)
class SnapshotFile:
    """One complete snapshot file: a ``core.types.StoredPayload``."""

    path: Path
    size: int
    head: int
    checksum: bytes

    @property
    def name(self) -> str:
        return self.path.name

    def read(self, offset: int, n: int) -> bytes:
        with open(self.path, "rb", buffering=0) as f:
            return os.pread(f.fileno(), n, offset)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotDir:
    """The ``snapshots/`` directory of one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _new(self, index: Slot) -> tuple[Path, Path]:
        stem = f"snap-{index:020d}-{secrets.token_hex(4)}"
        return self.path / (stem + _PART), self.path / (stem + _DONE)

    def _publish(self, part: Path, done: Path) -> None:
        os.rename(part, done)
        _fsync_dir(self.path)

    def write(self, index: Slot, machine: Machine, config: Membership | None,
              publish: bool = True, names: tuple[Path, Path] | None = None) -> SnapshotFile:
        """Write ``machine``'s state (through ``index``) with ``config``'s header, durably.
        Unless ``publish``, the file is left as its ``.part`` for the caller to publish
        (a forked writer leaves it to its parent: see ``ForkedSnapshots``). ``names``: the
        part and final paths, if the caller chose them (``_new``)."""
        self.path.mkdir(exist_ok=True)
        part, done = names or self._new(index)
        head = head_for(config)
        sha = hashlib.sha256(head)
        size = len(head)
        try:
            with open(part, "wb") as f:
                f.write(head)
                flushed = 0
                for piece in machine.snapshot_pieces():
                    f.write(piece)
                    sha.update(piece)
                    size += len(piece)
                    if size - flushed >= _SYNC_EVERY_BYTES:
                        # A little at a time: a gigabyte of dirty pages flushed at the end
                        # would stall the node's own fsyncs behind it for seconds.
                        f.flush()
                        os.fdatasync(f.fileno())
                        flushed = size
                f.flush()
                os.fsync(f.fileno())
            if publish:
                self._publish(part, done)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return SnapshotFile(done if publish else part, size, len(head), sha.digest())

    def publish(self, part: SnapshotFile) -> SnapshotFile:
        """Rename a complete ``.part`` into place (durably); the published file."""
        if part.path.parent != self.path or part.path.suffix != _PART:
            raise SnapshotFileError(f"{part.path} is not a part file of {self.path}")
        done = part.path.with_suffix(_DONE)
        self._publish(part.path, done)
        return SnapshotFile(done, part.size, part.head, part.checksum)

    def sink(self, info: SnapshotInfo) -> FileSink:
        self.path.mkdir(exist_ok=True)
        return FileSink(self, info)

    def open(self, name: str, size: int, head: int, checksum: bytes) -> SnapshotFile:
        """The file a durable row names, checked whole (size and sha256), or
        ``SnapshotFileError``."""
        path = self.path / name
        if "/" in name or not name.endswith(_DONE):
            raise SnapshotFileError(f"snapshot file name {name!r:.80} is not one of ours")
        try:
            with open(path, "rb", buffering=0) as f:
                sha, got = hashlib.sha256(), 0
                while piece := f.read(_READ_BYTES):
                    sha.update(piece)
                    got += len(piece)
        except OSError as e:
            raise SnapshotFileError(f"snapshot file {path} cannot be read: {e.strerror}") from None
        if got != size or sha.digest() != checksum:
            raise SnapshotFileError(f"snapshot file {path} is damaged: {got} bytes, want {size}, "
                                    "or its sha256 differs from the one recorded")
        if not 0 <= head <= size:
            raise SnapshotFileError(f"snapshot file {path}: header of {head} bytes past its end")
        return SnapshotFile(path, size, head, checksum)

    def remove_partials(self) -> None:
        """Files a crash left half-written (never referred to by anything)."""
        if self.path.is_dir():
            for p in self.path.glob("*" + _PART):
                p.unlink(missing_ok=True)

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Delete every complete snapshot file not named in ``keep``; the names deleted."""
        if not self.path.is_dir():
            return []
        wanted = set(keep)
        gone = []
        for p in sorted(self.path.glob("*" + _DONE)):
            if p.name not in wanted:
                p.unlink(missing_ok=True)
                gone.append(p.name)
        return gone


class FileSink:
    """A snapshot fetched from a peer, written to a ``.part`` file as its chunks arrive
    (``core.types.PayloadSink``); published as a ``SnapshotFile`` once complete."""

    def __init__(self, d: SnapshotDir, info: SnapshotInfo) -> None:
        self._dir, self._info = d, info
        self._part, self._done = d._new(info.index)
        self._f = open(self._part, "wb")

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def finish(self, head: int) -> SnapshotFile:
        f = self._f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._dir._publish(self._part, self._done)
        return SnapshotFile(self._done, self._info.size, head, self._info.checksum)

    def discard(self) -> None:
        self._f.close()
        self._part.unlink(missing_ok=True)


# -- writing off the loop ---------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """The child must not outlive a node that was killed (it would hold nothing useful,
    and a test or operator stops nodes by PID)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


@dataclass(slots=True)
class _Child:
    pid: int
    pipe: int
    index: Slot
    part: Path
    started: float       # time.monotonic() at the fork


class ForkedSnapshots:
    """``core.service.Snapshotter`` for a node: the state is written by a forked child.

    ``start`` forks and returns None; the loop calls ``poll`` every turn, which reports
    ``(index, SnapshotFile)`` or ``(index, reason)`` once the child has exited. One child
    at a time (the service asks for the next snapshot only after the last one ended), so a
    child that hangs (a stuck disk) would stop compaction for good while the log grows: one
    still writing after ``timeout_s`` is killed and reported as a failure (the service
    tries again later), its ``.part`` file removed.
    """

    def __init__(self, d: SnapshotDir, timeout_s: float = WRITER_TIMEOUT_S) -> None:
        self.dir = d
        self.timeout_s = timeout_s
        self.child: _Child | None = None
        self._failed: tuple[Slot, str] | None = None   # a fork that did not happen

    @property
    def busy(self) -> bool:
        """A snapshot was started and its outcome not yet taken by ``poll``."""
        return self.child is not None or self._failed is not None

    def start(self, index: Slot, machine: Machine, config: Membership | None) -> None:
        if self.busy:
            raise RuntimeError("a snapshot is already being written")
        parent = os.getpid()
        names = self.dir._new(index)
        try:
            self.dir.path.mkdir(exist_ok=True)
            r, w = os.pipe()
        except OSError as e:
            self._failed = (index, f"{type(e).__name__}: {e}")
            return
        try:
            pid = os.fork()
        except OSError as e:      # out of memory or processes: the log is simply kept
            os.close(r)
            os.close(w)
            self._failed = (index, f"cannot fork: {e}")
            return
        if pid == 0:                                        # the child
            try:
                gc.disable()      # collecting would touch (and copy) every page
                _die_with_parent(parent)
                os.nice(10)       # the node's loop, not its snapshot, gets the cores first
                os.close(r)
                os.closerange(3, w)                          # the node's sockets, its
                os.closerange(w + 1, os.sysconf("SC_OPEN_MAX"))   # database, its lock
                # Left as .part: only the parent publishes, once it has the file in hand,
                # so that its pruning never sees a complete file nothing refers to yet.
                f = self.dir.write(index, machine, config, publish=False, names=names)
                os.write(w, msgpack.packb([f.name, f.size, f.head, f.checksum]))
                os._exit(0)
            except BaseException as e:
                try:
                    os.write(w, msgpack.packb(f"{type(e).__name__}: {e}"[:500]))
                finally:
                    os._exit(1)
        os.close(w)
        self.child = _Child(pid, r, index, names[0], time.monotonic())

    def poll(self) -> tuple[Slot, SnapshotFile | str] | None:
        """The outcome of the child's snapshot, once it has exited; None until then."""
        c = self.child
        if c is None:
            failed, self._failed = self._failed, None
            return failed
        try:
            pid, status = os.waitpid(c.pid, os.WNOHANG)
        except ChildProcessError:     # reaped elsewhere: its outcome is unknown
            pid, status = c.pid, 1 << 8
        if pid == 0:
            if time.monotonic() - c.started <= self.timeout_s:
                return None
            self.close()
            c.part.unlink(missing_ok=True)
            return c.index, (f"the writer was still writing after {self.timeout_s:g} s and was "
                             "stopped (a stuck disk?); the log is kept until a snapshot succeeds")
        self.child = None
        with os.fdopen(c.pipe, "rb") as f:
            said = f.read(4096)
        try:
            told = msgpack.unpackb(said, raw=False)
        except Exception:
            told = None
        code = os.waitstatus_to_exitcode(status)
        if code == 0 and isinstance(told, list) and len(told) == 4:
            name, size, head, checksum = told
            part = SnapshotFile(self.dir.path / str(name), size, head, checksum)
            try:
                return c.index, self.dir.publish(part)
            except (OSError, SnapshotFileError) as e:
                return c.index, f"publishing {part.path} failed: {e}"
        why = told if isinstance(told, str) else f"the writer exited with code {code}"
        return c.index, why

    def close(self) -> None:
        """Stop a child still writing (its ``.part`` file goes at the next open)."""
        c, self.child = self.child, None
        if c is not None:
            try:
                os.kill(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(c.pid, 0)
            os.close(c.pipe)
