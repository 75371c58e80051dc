"""`coordctl snapshot save|restore|info`: backups, and new clusters made from them."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from coordsvc.clusterfile import Cluster

from .cluster_cmd import BasePortOpt, BindHostOpt, InsecureOpt, SamePortsOpt, init_cluster
from .options import DEFAULT_TIMEOUT_S, ClusterOpt, EndpointsOpt, JsonOpt, KeyOpt, TimeoutOpt, connect
from .output import EXIT_REFUSED, console, emit_json, fail, human_bytes

if TYPE_CHECKING:
    from coordsvc.core.machine import Machine
    from coordsvc.snapshotfile import Header

# coordsvc.snapshotfile is imported inside the commands that read backups: it brings in the
# whole replicated machine, a third of every other coordctl command's start-up otherwise.

__all__ = ["app"]

app = typer.Typer(
    name="snapshot",
    help="Back up the cluster's state to a file, inspect a backup, or restore it as a new cluster.",
    epilog="Example: coordctl snapshot save backup.snap && coordctl snapshot info backup.snap && "
           "coordctl snapshot restore backup.snap --nodes 3 --dir /srv/coord-restored",
    no_args_is_help=True,
)

FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="The backup file.")]


def _summary(h: Header) -> str:
    return (f"revision {h.revision}, index {h.index}, {h.keys} keys, "
            f"{human_bytes(h.file_bytes)}, sha256 {h.checksum.hex()[:16]}")


@app.command("save")
def save(
    file: FileArg,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Write a consistent point-in-time copy of the cluster's state to FILE.

    Keys with their history, sessions, locks with their fencing counters and the
    exactly-once records, as the leader had them at one linearizable point. The leader
    streams the state in 1 MiB chunks; FILE is written beside its final name as they
    arrive, checksummed, read back and verified, and only then renamed into place (an
    existing FILE is replaced only by a complete one).

    Example: coordctl snapshot save /backups/coord-$(date +%F).snap
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        h = c.snapshot_save(file)
    if json:
        emit_json({"file": str(file), **h.to_json()})
    else:
        print(f"saved {file}: {_summary(h)}")


@app.command("info")
def info(file: FileArg, json: JsonOpt = False) -> None:
    """Show what a backup holds (revision, keys, index, created, size) and check it whole.

    Exit 1, with one line on stderr saying why, when the file is damaged or truncated
    (the fields its header still shows are then unverified).

    Example: coordctl snapshot info /backups/coord.snap --json
    """
    from coordsvc import snapshotfile
    got = snapshotfile.inspect(file)
    h = got.header
    if json:
        out: dict[str, Any] = {"file": str(file), "checksum": "ok" if got.problem is None else "bad",
                               "problem": got.problem, "verified": got.problem is None}
        if h is not None:
            out.update({**h.to_json(), "size": got.size, "expected_size": h.file_bytes})
        else:
            out["size"] = got.size
        emit_json(out)
    else:
        rows: list[tuple[str, str]] = [("file", str(file))]
        if got.problem is None:
            rows.append(("checksum", f"ok (sha256 {h.checksum.hex()})" if h else "ok"))
        else:
            rows.append(("checksum", "BAD: the fields below are unverified" if h else "BAD"))
        if h is not None:
            rows += [
                ("format", f"coordsvc snapshot v{h.version}"),
                ("revision", str(h.revision)),
                ("keys", str(h.keys)),
                ("index", f"{h.index} (snapshot at {h.snapshot_index} + {h.entries} log entries)"),
                ("created", h.created),
                ("size", f"{human_bytes(got.size)} ({got.size} bytes"
                         + ("" if got.size == h.file_bytes else f"; the header says {h.file_bytes}")
                         + ")"),
                ("source", ", ".join(x for x in (
                    h.cluster and f"cluster {h.cluster}", h.cluster_id and f"id {h.cluster_id}",
                    h.node and f"served by {h.node}", h.coordsvc and f"coordsvc {h.coordsvc}")
                    if x) or "-"),
            ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            console.print(f"{k:<{width}}  {v}", markup=False, highlight=False)
    if got.problem is not None:
        fail(got.problem, "a damaged backup cannot be restored; use another copy"
             if got.readable else None)


@app.command("restore")
def restore(
    file: FileArg,
    nodes: Annotated[int, typer.Option("--nodes", metavar="N", help="Number of nodes (n1..nN).")],
    directory: Annotated[Path, typer.Option(
        "--dir", metavar="DIR", help="Where the new cluster goes; must not exist, or be empty.")],
    host: Annotated[Optional[list[str]], typer.Option(
        "--host", help="Address the nodes listen on, as for `cluster init`; repeat it to give "
                       "node i the i-th host. Default 127.0.0.1.")] = None,
    base_port: BasePortOpt = 7100,
    insecure: InsecureOpt = False,
    bind_host: BindHostOpt = None,
    same_ports: SamePortsOpt = False,
    json: JsonOpt = False,
) -> None:
    """Create a NEW cluster in DIR whose state is exactly the backup in FILE.

    The file is verified whole and its state rebuilt and checked against its header
    before anything is written. Then, as `cluster init` does, DIR gets a new cluster id,
    new keys (admin.key; or none with --insecure) and every node's data directory -- each
    holding the backup's state as its snapshot at the backup's log index: keys with
    history, sessions, locks and fencing counters. Revisions and fencing tokens continue
    from the backup's (a restored lock whose holder is gone is released after its ttl;
    the next grant gets a larger token). The cluster is built beside DIR and renamed into
    place, so a refused or failed restore leaves no DIR behind.

    Only the state is in a backup: cluster.toml's [tuning] and [limits] start at their
    defaults, like a new cluster's -- copy those tables from the old cluster file before
    the first start if it had them (a state past the default max_keys would otherwise
    start in alarm, refusing new keys).

    Start it with `coordctl cluster up --dir DIR`, or one `coordctl serve --cluster
    DIR/cluster.toml --node nX` per node.

    Example: coordctl snapshot restore /backups/coord.snap --nodes 3 --dir /srv/coord2
    """
    from coordsvc import snapshotfile
    try:
        header, machine = snapshotfile.load(file)
    except snapshotfile.SnapshotFileError as e:
        fail(str(e), "a damaged backup cannot be restored; use another copy"
             if file.is_file() else None)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        fail(f"{directory} already exists and is not an empty directory",
             "restore creates a new cluster: pick a new --dir", EXIT_REFUSED)
    parent = directory.absolute().parent
    created = _missing_ancestors(parent)
    staging = parent / f".{directory.name}.restoring-{secrets.token_hex(4)}"
    done = False
    try:
        parent.mkdir(parents=True, exist_ok=True)
        c = init_cluster(staging, nodes, host or "127.0.0.1", base_port, force=False,
                         insecure=insecure, bind_host=bind_host, same_ports=same_ports)
        _write_state(c, header.index, machine)
        del machine
        if directory.exists():
            directory.rmdir()      # empty (checked above): the rename replaces it
        os.rename(staging, directory)
        done = True
    finally:
        if not done:
            shutil.rmtree(staging, ignore_errors=True)
            for d in created:
                try:
                    d.rmdir()
                except OSError:
                    break
    path = directory / c.path.name if c.path is not None else directory
    if json:
        emit_json({"cluster_file": str(path), "cluster_id": c.id, "security": c.security,
                   "nodes": [{"id": n.id, "address": n.address,
                              "data_dir": str(directory / n.data_dir.name)} for n in c.nodes],
                   "snapshot": {"file": str(file), **header.to_json()}})
    else:
        print(path)
        print(f"restored {file} ({_summary(header)}, saved {header.created}) into a new "
              f"cluster {c.id} of {len(c.nodes)} nodes")
        print(f"start it: coordctl cluster up --dir {directory}   (or on each host: coordctl "
              f"serve --cluster {path} --node nX)")


def _missing_ancestors(d: Path) -> list[Path]:
    """The directories ``mkdir(parents=True)`` would create for ``d``, deepest first."""
    out: list[Path] = []
    while not d.exists():
        out.append(d)
        d = d.parent
    return out


def _write_state(c: Cluster, index: int, machine: Machine) -> None:
    """Each node's acceptor starts from the restored state: its snapshot at ``index`` (a
    file beside its database, written a piece at a time), everything through it chosen."""
    from coordsvc.core.types import Persist, Snapshot
    from coordsvc.storage.sqlite import SqliteStore

    for n in c.nodes:
        store = SqliteStore.open(n.data_dir, c.id, n.id)
        try:
            stored = store.files.write(index, machine, None)
            store.save(Persist(snapshot=Snapshot(index, stored), commit_index=index))
        finally:
            store.close()
