"""``coordctl member``: list, add, remove members and move leadership (CONTRACT section 8).

The log decides who is a member: these commands ask the leader for one change at a time
and return once it is chosen. ``member add`` also records the new node in the cluster file
when ``--cluster`` names a local one (with a new key pair in a secure cluster, its secret
half in the new node's data directory), so that ``coordctl node init`` and ``serve`` can
start it there.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from .options import DEFAULT_TIMEOUT_S, ClusterOpt, EndpointsOpt, JsonOpt, KeyOpt, TimeoutOpt, connect
from .output import EXIT_REFUSED, EXIT_USAGE, console, emit_json, fail

if TYPE_CHECKING:
    from coordsvc.core.protocol import MemberRow

app = typer.Typer(name="member", help="List, add and remove members; move leadership.",
                  no_args_is_help=True)

_TCP = re.compile(r"^tcp://([^:/]+):(\d+)$")
_HTTP = re.compile(r"^http://([^:/]+):(\d+)$")


def member_json(r: MemberRow) -> dict[str, Any]:
    out: dict[str, Any] = {"id": r.id, "address": r.address, "voting": r.voting,
                           "incarnation": r.incarnation, "publish": r.publish,
                           "http": r.http or None,
                           "public_key": r.public_key or None, "live": r.live}
    if not r.voting:
        out["progress"] = r.progress          # the commit index the learner reported
    return out


@app.command("list")
def list_(
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Members of the chosen configuration: voters, and learners with their progress.

    Removed members are not listed. Example: coordctl member list --json
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        view = c.membership()
    rows, st_leader = view.members, view.leader
    leader_commit = next((r.progress for r in rows if r.id == st_leader), -1)
    if json:
        emit_json({"members": [member_json(r) for r in rows], "leader": st_leader,
                   "change_in_flight": view.change_in_flight})
        return
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for col in ("id", "address", "role", "incarnation", "progress"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        role = ("leader" if r.id == st_leader else "voter") if r.voting else "learner"
        prog = "" if r.voting else ("not heard yet" if r.progress < 0
                                    else f"{r.progress} of {leader_commit}")
        table.add_row(r.id, r.address, role, str(r.incarnation), prog)
    console.print(table)


@app.command("add")
def add(
    node: Annotated[str, typer.Argument(help="the new member's id")],
    address: Annotated[str, typer.Option("--address", help="its ROUTER endpoint, tcp://HOST:PORT")],
    publish: Annotated[Optional[str], typer.Option(
        "--publish", help="its PUB endpoint (default: the address's port + 100)")] = None,
    http: Annotated[Optional[str], typer.Option(
        "--http", help="its HTTP address, http://HOST:PORT (default: the address's port + 200)")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="its data directory (default: ID beside the cluster file)")] = None,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Add node ID as a non-voting learner; returns once that is chosen.

    With --cluster FILE the node is also added to FILE. Then prepare and start it:
    `coordctl node init --cluster FILE --node ID` and `coordctl serve --cluster FILE
    --node ID`. It copies the state and starts voting by itself once caught up.

    Example: coordctl member add n4 --address tcp://127.0.0.1:7104 --cluster .coord/cluster.toml
    """
    m = _TCP.match(address)
    if m is None:
        fail(f"--address must be tcp://HOST:PORT, got {address!r}", None, EXIT_USAGE)
    if publish is None:
        publish = f"tcp://{m.group(1)}:{int(m.group(2)) + 100}"
    if http is None:
        http = f"http://{m.group(1)}:{int(m.group(2)) + 200}"
    elif not _HTTP.match(http):
        fail(f"--http must be http://HOST:PORT, got {http!r}", None, EXIT_USAGE)
    public_key = ""
    local = Path(cluster) if cluster is not None and Path(cluster).is_file() else None
    if local is not None:
        public_key = _record_in_file(local, node, address, publish, http, data_dir)
    with connect(cluster, endpoints, timeout, key_file) as c:
        row = c.member_add(node, address, publish=publish, http=http, public_key=public_key)
    if json:
        emit_json(member_json(row))
        return
    print(f"{node} added as a learner (incarnation {row.incarnation})")
    if local is not None:
        print(f"next: coordctl node init --cluster {local} --node {node}")
        print(f"      coordctl serve --cluster {local} --node {node}")


def _record_in_file(path: Path, node: str, address: str, publish: str, http: str,
                    data_dir: Path | None) -> str:
    """Add the node to the cluster file (a new key pair in a secure cluster: the secret in
    its data directory, the public key in the file and admin.key); its public key."""
    from coordsvc import clusterfile, keys
    from coordsvc.storage.datadir import NODE_DB

    from .cluster_cmd import refresh_admin_key
    c = clusterfile.load(path)
    existing = c.node(node) if node in c.ids else None
    if existing is not None and existing.address != address:
        fail(f"{node} is already in {path} at {existing.address}", None, EXIT_REFUSED)
    d = existing.data_dir if existing is not None else (
        data_dir if data_dir is not None else path.parent / node)
    if existing is not None and (d / NODE_DB).exists():
        fail(f"{node}'s data directory {d} still holds an acceptor's state; a node added "
             "again starts from a new one (move it aside first)", None, EXIT_REFUSED)
    public: str | None = None
    if c.secure:
        key_file = d / keys.NODE_KEY_FILE
        if existing is not None and existing.added and key_file.exists():
            public = existing.public_key          # a retry: the same new node
        else:
            pair = keys.KeyPair.generate()
            keys.write_node_key(key_file, node, pair)
            public = pair.public
    if existing is None:
        c = clusterfile.add_node(c, clusterfile.NodeSpec(node, address, publish, d, public,
                                                         http=http, added=True))
    else:                                        # removed before, added again: replaced
        c = clusterfile.mark_added(c, node, public)
    refresh_admin_key(c)
    return public or ""


@app.command("remove")
def remove(
    node: Annotated[str, typer.Argument(help="the member to remove")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Remove member ID (the leader hands leadership over first); returns once chosen.

    Refused (exit 1, with the reason) while another change is in flight, or when the
    voters left would not include a live quorum. The removed node stops by itself.

    Example: coordctl member remove n2
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        c.member_remove(node)
    if json:
        emit_json({"removed": node})
    else:
        print(f"{node} removed")


@app.command("transfer-leader")
def transfer_leader(
    node: Annotated[str, typer.Argument(help="the voter that should lead")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Move leadership to voter ID once it holds the leader's last slot; returns once it leads.

    Example: coordctl member transfer-leader n3
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        c.transfer_leader(node)
    if json:
        emit_json({"leader": node})
    else:
        print(f"{node} leads")
