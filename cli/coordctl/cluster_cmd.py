"""Processes and the cluster file: `cluster init`, `cluster up`, `node init`, `serve`."""
from __future__ import annotations

__all__ = ["cluster_app", "init_cluster", "node_app", "serve"]

import dataclasses
import datetime
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Optional

import typer

from coordsvc import clusterfile, keys
from coordsvc.clusterfile import Cluster, NodeSpec
from coordsvc.runtime import launch
from coordsvc.storage.datadir import NODE_DB, init_data_dir

from .options import JsonOpt
from .output import EXIT_REFUSED, console, emit_json, fail, status_view, warn

cluster_app = typer.Typer(
    name="cluster",
    help="Create a cluster file, or run a whole local cluster.",
    epilog="Example: coordctl cluster init --nodes 3 --dir /srv/coord --host 10.0.0.5  "
           "(separate machines: --host 10.0.0.11 --host 10.0.0.12 --host 10.0.0.13)",
    no_args_is_help=True,
)
node_app = typer.Typer(
    name="node",
    help="Prepare one node's data directory (for nodes on separate hosts).",
    epilog="Example: coordctl node init --cluster /srv/coord/cluster.toml --node n2",
    no_args_is_help=True,
)

ClusterFileOpt = Annotated[Path, typer.Option(
    "--cluster", metavar="FILE", help="The cluster file (DIR/cluster.toml).")]
NodeOpt = Annotated[str, typer.Option("--node", metavar="ID", help="Node id, e.g. n1.")]
DirOpt = Annotated[Path, typer.Option("--dir", metavar="DIR",
                                      help="Directory for cluster.toml and the node data dirs.")]
BasePortOpt = Annotated[int, typer.Option(
    "--base-port", metavar="P", help="Node i listens on P+i, publishes on P+100+i and serves HTTP on P+200+i.")]
BindHostOpt = Annotated[Optional[str], typer.Option(
    "--bind-host", metavar="HOST",
    help="Where every node listens (e.g. 0.0.0.0 in a container), at its own ports, while "
         "peers and clients reach it at its --host (written as bind, publish_bind and "
         "http_bind in cluster.toml). Default: listen where it is reached.")]
SamePortsOpt = Annotated[bool, typer.Option(
    "--same-ports", help="Give every node the ports P+1, P+101, P+201 (nodes on separate hosts, "
                         "one --host each: containers and pods that share one template).")]
InsecureOpt = Annotated[bool, typer.Option(
    "--insecure", help="No CURVE keys: plain TCP, no encryption, no authentication. "
                       "`coordctl status` and every node's log say so.")]

_REPLACE_HINT = ("a node that lost its data must be replaced, not restarted: run "
                 "`coordctl node replace --cluster FILE --node ID`, then start it (README: "
                 "'Replacing a node'); a brand-new node is prepared with `coordctl node init`")


# --- cluster init / node init -----------------------------------------------------------

def _move_aside(d: Path, stamp: str) -> Path:
    dest = d.with_name(f"{d.name}.replaced-{stamp}")
    d.rename(dest)
    return dest


def init_cluster(directory: Path, nodes: int, host: str | list[str], base_port: int,
                 force: bool, insecure: bool = False, bind_host: str | None = None,
                 same_ports: bool = False) -> Cluster:
    """Write DIR/cluster.toml and prepare every node's data directory.

    Secure unless ``insecure``: a CURVE key pair per node (public half in cluster.toml,
    secret in DATA_DIR/node.key) and the bootstrap admin key DIR/admin.key.

    Never destroys acceptor state: without --force an existing cluster file or node
    database is a refusal; with --force the old node data dirs are renamed aside.
    """
    path = directory / clusterfile.FILE_NAME
    if path.exists() and not force:
        fail(f"{path} already exists", "use --force to replace it (old node data dirs are "
             "moved aside, not deleted), or pick another --dir", EXIT_REFUSED)
    # write_new names node i's data dir "n<i>" under DIR; check before writing anything.
    used = [directory / f"n{i}" for i in range(1, nodes + 1)]
    occupied = [d for d in used if (d / NODE_DB).exists()]
    if occupied and not force:
        fail(f"{occupied[0]} already holds a node database",
             "use --force to move the old data dirs aside, or pick another --dir", EXIT_REFUSED)
    admin_key = directory / keys.ADMIN_KEY_FILE
    if admin_key.exists() and not force:
        fail(f"{admin_key} already exists", "use --force to replace it, or pick another --dir",
             EXIT_REFUSED)
    cluster_keys = None if insecure else keys.ClusterKeys.generate(
        f"n{i}" for i in range(1, nodes + 1))
    cluster = clusterfile.write_new(directory, nodes, host=host, base_port=base_port,
                                    force=force, cluster_keys=cluster_keys, bind_host=bind_host,
                                    same_ports=same_ports)
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    if admin_key.exists():   # --force: the old cluster's key opens nothing now
        warn(f"moved the old {admin_key.name} to {_move_aside(admin_key, stamp)}")
    for n in cluster.nodes:
        if force and n.data_dir.exists() and any(n.data_dir.iterdir()):
            warn(f"moved the old data dir of {n.id} to {_move_aside(n.data_dir, stamp)}")
        init_data_dir(n.data_dir, cluster.id, n.id)
    if cluster_keys is not None:
        clusterfile.write_keys(cluster, cluster_keys)
    else:
        warn("--insecure: the cluster has no keys; anyone who can reach its ports can read "
             "and write everything")
    return cluster


def _cluster_json(c: Cluster) -> dict[str, Any]:
    return {"path": str(c.path), "name": c.name, "id": c.id, "security": c.security,
            "admin_key": str(c.admin_key_file) if c.secure else None,
            "nodes": [{"id": n.id, "address": n.address, "publish": n.publish,
                       "http": n.http, "data_dir": str(n.data_dir), "public_key": n.public_key,
                       "bind": n.listen, "publish_bind": n.publish_listen}
                      for n in c.nodes]}


@cluster_app.command("init")
def cluster_init(
    nodes: Annotated[int, typer.Option("--nodes", metavar="N", help="Number of nodes (n1..nN).")],
    directory: DirOpt,
    host: Annotated[Optional[list[str]], typer.Option(
        "--host", help="Address the nodes listen on; repeat it to give node i the i-th host "
                       "(nodes on separate machines). Default 127.0.0.1.")] = None,
    base_port: BasePortOpt = 7100,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing cluster file; old node data dirs are renamed "
                        "to <dir>.replaced-<time>, never deleted.")] = False,
    insecure: InsecureOpt = False,
    bind_host: BindHostOpt = None,
    same_ports: SamePortsOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write DIR/cluster.toml for nodes n1..nN, prepare their data dirs, print its path.

    Secure by default: every node gets a CURVE key pair (the secret in its data dir as
    node.key, mode 0600; the public key in cluster.toml) and DIR/admin.key (0600) is the
    client key of principal "admin", which clients beside the cluster file use.

    Example: coordctl cluster init --nodes 3 --dir .coord --base-port 7100
    """
    c = init_cluster(directory, nodes, host or "127.0.0.1", base_port, force, insecure, bind_host,
                     same_ports)
    if json:
        emit_json(_cluster_json(c))
    else:
        print(c.path)


@node_app.command("init")
def node_init(cluster: ClusterFileOpt, node: NodeOpt, json: JsonOpt = False) -> None:
    """Prepare node ID's data directory for the cluster in FILE and print its path.

    Safe to repeat; refuses (exit 1) a data dir that belongs to another node or cluster.

    Example: coordctl node init --cluster /srv/coord/cluster.toml --node n2
    """
    c = clusterfile.load(cluster)
    spec = c.node(node)
    # A member added at runtime (`member add`) has no history of its own yet: it starts
    # knowing no configuration and learns everything, its membership too, from the leader.
    if not (spec.data_dir / NODE_DB).exists() and not spec.added and _cluster_has_history(c, spec.id):
        fail(f"the cluster is running and has history, so node {spec.id} was a member that "
             "lost its data; a blank acceptor must not vote",
             f"use `coordctl node replace --cluster {cluster} --node {spec.id}`", EXIT_REFUSED)
    if (spec.data_dir / NODE_DB).exists():
        init_data_dir(spec.data_dir, c.id, spec.id)   # refuses another node's directory first
    if c.secure and spec.key_file.exists():
        _check_node_key(spec)
    elif c.secure:
        pair = keys.KeyPair.generate()
        keys.write_node_key(spec.key_file, spec.id, pair)
        c = _record_new_key(c, spec.id, pair.public)
        warn(f"{spec.id} had no {keys.NODE_KEY_FILE} (cluster init wrote it into "
             f"{spec.data_dir.name}/ on the machine where it ran): made a new key pair and "
             f"recorded its public key in {c.path}; copy that file to the other members")
    init_data_dir(spec.data_dir, c.id, spec.id, joining=spec.added)
    if json:
        emit_json({"node": spec.id, "cluster_id": c.id, "data_dir": str(spec.data_dir)})
    else:
        print(spec.data_dir)


def _check_node_key(spec: NodeSpec) -> keys.KeyPair:
    try:
        return keys.read_node_key(spec.key_file, spec.id, spec.public_key)
    except keys.KeyFileError as e:
        fail(str(e), f"restore {spec.id}'s own {keys.NODE_KEY_FILE}, or remove it to get a new "
             "key recorded in the cluster file", EXIT_REFUSED)


def _cluster_has_history(c: Cluster, node_id: str) -> bool:
    """True if another member answers and has committed anything. Best effort, like the
    members being down: without a client key for a secure cluster it cannot tell."""
    from coordsvc import Client, CoordError
    others = tuple(n for n in c.nodes if n.id != node_id)
    if not others:
        return False
    try:
        with Client(dataclasses.replace(c, nodes=others), timeout=2.0) as cl:
            st = cl.status()
    except CoordError:
        return False
    return any(n.get("reachable") and (n.get("commit_index") or 0) > 0 for n in st["nodes"])


@node_app.command("replace")
def node_replace(cluster: ClusterFileOpt, node: NodeOpt, force: Annotated[bool, typer.Option(
        "--force", help="move an existing, intact data directory aside first")] = False,
        json: JsonOpt = False) -> None:
    """Prepare a replacement for node ID whose disk was lost, then start it with `serve`.

    The replacement has forgotten every promise the old disk held, so it joins as a
    non-voting learner: it copies the log (or a snapshot) from the leader, then runs one
    election that the other members complete without its vote, and votes only once
    everything that election recovered is chosen. Needs the other members to be up: a
    3-node cluster cannot replace a node while another one is down.

    In a secure cluster the replacement keeps the node's key if its node.key survived
    (an intact directory moved aside with --force); otherwise the old secret key is gone
    with the disk, so the node gets a new key pair: node.key in the new data directory, the
    public key in the cluster file (and in admin.key beside it). Members re-read the
    cluster file within a second and accept the new key; members on other hosts need the
    updated file copied to them. Clients learn the new key from the cluster.

    Example: coordctl node replace --cluster /srv/coord/cluster.toml --node n2
    """
    c = clusterfile.load(cluster)
    spec = c.node(node)
    kept: keys.KeyPair | None = None
    if (spec.data_dir / NODE_DB).exists():
        if not force:
            fail(f"data directory {spec.data_dir} of node {spec.id} still holds its acceptor "
                 "state; restart the node instead of replacing it",
                 "pass --force to move the directory aside and replace it anyway", EXIT_REFUSED)
        if c.secure and spec.key_file.exists():
            kept = _check_node_key(spec)
        moved = _move_aside(spec.data_dir, datetime.datetime.now().strftime("%Y%m%dT%H%M%S"))
        warn(f"moved {spec.data_dir} to {moved}")
    elif c.secure and spec.key_file.exists():
        kept = _check_node_key(spec)
    init_data_dir(spec.data_dir, c.id, spec.id, rebuilding=True)
    new_key = c.secure and kept is None
    if c.secure:
        pair = kept if kept is not None else keys.KeyPair.generate()
        keys.write_node_key(spec.key_file, spec.id, pair)
        if new_key:
            c = _record_new_key(c, spec.id, pair.public)
    if json:
        emit_json({"node": spec.id, "cluster_id": c.id, "data_dir": str(spec.data_dir),
                   "rebuilding": True, "new_key": new_key,
                   "public_key": c.node(spec.id).public_key})
    else:
        print(spec.data_dir)
        if new_key:
            print(f"{spec.id} has a new key (the old one was lost with its disk): recorded in "
                  f"{c.path}; copy that file to members on other hosts")
        print(f"next: coordctl serve --cluster {cluster} --node {spec.id}   "
              "(it votes again once `coordctl status --json` shows \"voting\": true)")


def _record_new_key(c: Cluster, node_id: str, public: str) -> Cluster:
    """The replacement's public key into the cluster file and the admin key beside it."""
    c = clusterfile.set_node_key(c, node_id, public)
    refresh_admin_key(c)
    return c


def refresh_admin_key(c: Cluster) -> None:
    """admin.key beside the cluster file lists every node's public key (clients use it)."""
    admin = c.admin_key_file
    if admin is not None and admin.exists():
        try:
            ck = keys.read_client_key(admin)
        except keys.KeyFileError as e:
            warn(f"{admin} not updated with the nodes' keys: {e}")
        else:
            keys.write_client_key(admin, dataclasses.replace(
                ck, nodes=clusterfile.key_file_nodes(c)))


# --- serve ------------------------------------------------------------------------------

def check_data_dir(spec: NodeSpec) -> None:
    """Refuse a missing or empty data dir before the runtime opens anything."""
    if not spec.data_dir.is_dir():
        fail(f"data directory {spec.data_dir} of node {spec.id} does not exist; refusing to "
             "start with no acceptor state", _REPLACE_HINT, EXIT_REFUSED)
    if not (spec.data_dir / NODE_DB).exists():
        fail(f"data directory {spec.data_dir} of node {spec.id} has no {NODE_DB}; refusing to "
             "start with no acceptor state", _REPLACE_HINT, EXIT_REFUSED)


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def serve(
    cluster: ClusterFileOpt,
    node: NodeOpt,
    log_level: Annotated[LogLevel, typer.Option(
        "--log-level", help="Least severe lines to log (stderr).")] = LogLevel.info,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", help="text: one readable line per event; json: one object per line "
                             "(time, level, node, event, msg and the event's fields).")] = LogFormat.text,
    http: Annotated[Optional[str], typer.Option(
        "--http", metavar="HOST:PORT", help="Where to serve /metrics, /healthz, /readyz and the "
        "dashboard (default: the node's http_bind in the cluster file, else 127.0.0.1 on the "
        "port of its http address).")] = None,
    json: Annotated[bool, typer.Option(
        "--json", help="Accepted for uniformity; serve writes nothing on stdout.")] = False,
) -> None:
    """Run node ID of the cluster in FILE in the foreground until SIGTERM/SIGINT.

    Refuses (non-zero exit, one line on stderr) a missing or empty data directory, a
    data directory of another cluster or node, a taken port or a corrupt database.

    Example: coordctl serve --cluster .coord/cluster.toml --node n1 --log-format json
    """
    c = clusterfile.load(cluster)
    spec = c.node(node)
    check_data_dir(spec)
    if http is not None:
        clusterfile.check_bind(http)
    from coordsvc.runtime.node import serve as run_node  # only the node process loads it
    raise typer.Exit(run_node(c, spec.id, c.config, log_level.value, log_format.value, http))


# --- cluster up -------------------------------------------------------------------------

class _Stop(Exception):
    """Raised from the SIGINT/SIGTERM handler of `cluster up`."""


@dataclass
class _Child:
    node: str
    proc: subprocess.Popen[bytes]
    log: Path
    reported: bool = field(default=False)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _report_dead(children: list[_Child]) -> int:
    """Report children that exited on their own (once each); how many are still running."""
    alive = 0
    for ch in children:
        rc = ch.proc.poll()
        if rc is None:
            alive += 1
        elif not ch.reported:
            ch.reported = True
            why = _last_line(ch.log)
            warn(f"node {ch.node} (pid {ch.proc.pid}) exited with code {rc}"
                 + (f": {why}" if why else "") + f" (log: {ch.log})")
    return alive


def _stop_all(children: list[_Child], grace_s: float = 5.0) -> None:
    nodes = {ch.proc.pid: ch.node for ch in children}

    def killing(p: subprocess.Popen[bytes]) -> None:
        warn(f"node {nodes[p.pid]} (pid {p.pid}) did not stop in {grace_s:g} s; killing it")

    launch.stop([ch.proc for ch in children], grace_s, on_kill=killing)


def _wait_for_leader(cluster: Cluster, children: list[_Child],
                     limit_s: float) -> dict[str, Any] | None:
    from coordsvc.client import Client, CoordError

    deadline = time.monotonic() + limit_s
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if _report_dead(children) == 0:
            return last
        try:
            with Client(cluster, timeout=1.0) as c:
                last = c.status()
            if (last.get("cluster") or {}).get("leader"):
                return last
        except (CoordError, OSError):
            pass
        time.sleep(0.2)
    return last


def _examples(path: Path) -> list[str]:
    default = (clusterfile.DEFAULT_DIR / clusterfile.FILE_NAME).resolve()
    prefix = [] if path.resolve() == default else [f"export COORD_CLUSTER={path.resolve()}"]
    # Under `make run` the venv is not activated: name the binary so lines paste as-is.
    ctl = "coordctl" if shutil.which("coordctl") else _relative(Path(sys.argv[0]).resolve())
    return prefix + [
        f"{ctl} status --watch",
        f"{ctl} config set app/db_url postgres://db/app",
        f"{ctl} config get app/db_url",
        f"{ctl} config watch app/",
        f"{ctl} lock run deploy -- sh -c 'echo token $COORD_LOCK_TOKEN; sleep 5'",
        f"{_relative(Path(sys.executable))} -c "
        "'from coordsvc import Client; print(Client().get(\"app/db_url\"))'",
    ]


def _relative(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option("--nodes", metavar="N", help="Number of nodes.")] = 3,
    directory: DirOpt = clusterfile.DEFAULT_DIR,
    base_port: BasePortOpt = 7100,
    insecure: InsecureOpt = False,
    json: Annotated[bool, typer.Option(
        "--json", help="Once up, print {cluster_file, endpoints, status} on stdout.")] = False,
) -> None:
    """Run a local cluster in the foreground: init DIR if needed, start every node as a
    child process, wait for a leader, print endpoints and status. Ctrl-C stops all nodes.

    An existing DIR/cluster.toml is reused as is (--nodes and --base-port then only apply
    to a fresh DIR). Node logs go to DIR/logs/<id>.log.

    Example: coordctl cluster up --nodes 3 --dir .coord --base-port 7100
    """
    path = directory / clusterfile.FILE_NAME
    if path.exists():
        c = clusterfile.load(path)
        if len(c.nodes) != nodes:
            warn(f"using the existing {path} with {len(c.nodes)} nodes (not {nodes})")
    else:
        c = init_cluster(directory, nodes, "127.0.0.1", base_port, force=False,
                         insecure=insecure)
    log_dir = directory / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        raise _Stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[_Child] = []
    try:
        try:
            for n in c.nodes:
                log = log_dir / f"{n.id}.log"
                proc = launch.start_node(path, n.id, log,
                                         command=[sys.executable, "-m", "coordctl", "serve"])
                children.append(_Child(n.id, proc, log))
            status = _wait_for_leader(c, children, 10.0)
            alive = _report_dead(children)
            if alive == 0:
                fail("every node exited", f"see the logs in {log_dir}", EXIT_REFUSED)
            leader = (status or {}).get("cluster", {}).get("leader")
            if json:
                emit_json({"cluster_file": str(path), "endpoints": c.endpoints,
                           "status": status})
            else:
                console.print(f"[bold]coordsvc[/] cluster [bold]{c.name}[/]: "
                              f"{len(c.nodes)} nodes, file {path}, logs in {log_dir}/")
                console.print("endpoints: " + ",".join(c.endpoints))
                dashboards = [n.http + "/" for n in c.nodes if n.http]
                if dashboards:
                    console.print("dashboards and /metrics: " + "  ".join(dashboards))
                if status is not None:
                    console.print(status_view(status))
                if not leader:
                    warn("no leader after 10 s; the nodes keep running "
                         "(check `coordctl status` and the logs)")
                console.print("\ntry:")
                for ex in _examples(path):
                    console.print(f"  {ex}", markup=False)
                console.print("\nCtrl-C stops every node.")
            sys.stdout.flush()
            while _report_dead(children) > 0:
                time.sleep(0.5)
            fail("every node exited", f"see the logs in {log_dir}", EXIT_REFUSED)
        except _Stop:
            pass
        for s in previous:  # a second Ctrl-C must not interrupt the shutdown below
            signal.signal(s, signal.SIG_IGN)
        if not json:
            console.print("stopping every node...")
    finally:
        _stop_all(children)
        for s, h in previous.items():
            signal.signal(s, h)
    raise typer.Exit(0)


