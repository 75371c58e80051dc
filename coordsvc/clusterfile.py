"""The cluster file (``cluster.toml``): who the members are and where they live.

```toml
[cluster]
name = "coordsvc"
id = "5f0c..."                     # random at init; every data dir records it

[security]                         # absent in files from before keys: insecure
mode = "curve"                     # or "insecure" (`cluster init --insecure`): plain TCP
admin_public_key = "..."           # Z85; the bootstrap client key DIR/admin.key, principal "admin"

[[nodes]]
id = "n1"
address = "tcp://127.0.0.1:7101"   # ROUTER: peer traffic and client requests
publish = "tcp://127.0.0.1:7201"   # PUB: heartbeats and watch events
http = "http://127.0.0.1:7301"     # /metrics, /healthz, /readyz, dashboard (absent: no HTTP)
http_bind = "0.0.0.0:7301"         # optional: where to listen; default 127.0.0.1:<http port>
bind = "tcp://0.0.0.0:7101"        # optional: where the ROUTER listens; default: address
publish_bind = "tcp://0.0.0.0:7201"  # optional: where the PUB listens; default: publish
data_dir = "n1"                    # relative to the cluster file's directory
public_key = "..."                 # Z85; the secret half is in <data_dir>/node.key (0600)

[tuning]                           # optional: any field of coordsvc.core.types.Config
snapshot_every = 10000

[limits]                           # optional quotas (coordsvc.core.quotas), these defaults:
max_db_bytes = 2147483648          # past it, every put is refused (QuotaExceeded)
max_keys = 1000000                 # past it, puts of new keys are refused
```

The file holds public keys only; ``write_keys`` puts the secret halves where they belong.

``address``, ``publish`` and ``http`` are what a node *advertises*: peers and clients
connect there, redirects name them. A node listens there too, unless ``bind``,
``publish_bind`` or ``http_bind`` say otherwise -- a container binds ``0.0.0.0`` (or its
pod IP) but advertises a stable DNS name (``cluster init --bind-host 0.0.0.0``).
"""
from __future__ import annotations

import os
import re
import tomllib
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomli_w

from . import keys
from .core.quotas import Quotas
from .core.types import Config
from .runtime.launch import free_base_port as free_base_port  # re-exported: the port layout
from .runtime.launch import node_ports as node_ports  # write_new assigns, and its finder

DEFAULT_DIR = Path(".coord")
FILE_NAME = "cluster.toml"
CURVE = "curve"
INSECURE = "insecure"
_ENDPOINT = re.compile(r"^tcp://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


class ClusterFileError(Exception):
    """The cluster file is missing, malformed, or would be overwritten."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    id: str
    address: str
    publish: str
    data_dir: Path
    public_key: str | None = None   # CURVE, Z85; None in an insecure cluster
    http: str | None = None         # advertised URL of the node's HTTP endpoints
    http_bind: str | None = None    # HOST:PORT to listen on (None: loopback, http's port)
    bind: str | None = None         # tcp://HOST:PORT the ROUTER listens on (None: address)
    publish_bind: str | None = None  # tcp://HOST:PORT the PUB listens on (None: publish)
    # Added to a running cluster (`coordctl member add`): not a bootstrap member; its data
    # directory starts knowing no configuration and learns its membership from the leader.
    added: bool = False

    @property
    def listen(self) -> str:
        """Where this node's ROUTER binds."""
        return self.bind or self.address

    @property
    def publish_listen(self) -> str:
        """Where this node's PUB binds."""
        return self.publish_bind or self.publish

    @property
    def key_file(self) -> Path:
        return self.data_dir / keys.NODE_KEY_FILE

    @property
    def host(self) -> str:
        m = _ENDPOINT.match(self.address)
        return m.group(1) if m else "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    id: str
    nodes: tuple[NodeSpec, ...]
    path: Path | None = None
    config: Config = field(default_factory=Config)
    security: str = INSECURE
    admin_public_key: str | None = None
    limits: Quotas = field(default_factory=Quotas)

    @property
    def secure(self) -> bool:
        return self.security == CURVE

    @property
    def admin_key_file(self) -> Path | None:
        """Where ``cluster init`` put the bootstrap admin key: beside the cluster file."""
        return None if self.path is None else self.path.parent / keys.ADMIN_KEY_FILE

    def server_keys(self) -> dict[str, str]:
        """Address -> public key of every node (empty in an insecure cluster)."""
        return {n.address: n.public_key for n in self.nodes if n.public_key is not None}

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise ClusterFileError(
            f"node {node_id!r} is not in {self.path}; members are {', '.join(self.ids)}")

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    @property
    def endpoints(self) -> list[str]:
        return [n.address for n in self.nodes]


def check_endpoint(ep: str) -> str:
    m = _ENDPOINT.match(ep)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ClusterFileError(f"bad endpoint {ep!r}: expected tcp://HOST:PORT")
    return ep


def check_http(url: str) -> str:
    """``url`` if it is ``http://HOST:PORT``, else ClusterFileError."""
    try:
        if not url.startswith("http://"):
            raise ClusterFileError(url)
        check_endpoint("tcp://" + url.removeprefix("http://"))
    except ClusterFileError:
        raise ClusterFileError(f"bad http address {url!r}: expected http://HOST:PORT") from None
    return url


def check_bind(hostport: str) -> str:
    """``hostport`` if it is ``HOST:PORT`` (an HTTP listen address), else ClusterFileError."""
    try:
        check_endpoint("tcp://" + hostport)
    except ClusterFileError:
        raise ClusterFileError(f"bad http bind address {hostport!r}: expected HOST:PORT") from None
    return hostport


def load(path: Path) -> Cluster:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterFileError(f"cluster file {path} not found (create one with `coordctl cluster init`)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ClusterFileError(f"cluster file {path} is unreadable: {e}") from None
    try:
        c = raw["cluster"]
        name, cid = str(c["name"]), str(c["id"])
        security, admin = _security(path, raw.get("security"))
        nodes = []
        for n in raw["nodes"]:
            d = Path(str(n["data_dir"]))
            public = n.get("public_key")
            if security == CURVE or public is not None:
                public = _public(path, public, f"public_key of node {n['id']}")
            http, bind = n.get("http"), n.get("http_bind")
            listen, publish_listen = n.get("bind"), n.get("publish_bind")
            nodes.append(NodeSpec(str(n["id"]), check_endpoint(str(n["address"])),
                                  check_endpoint(str(n["publish"])),
                                  d if d.is_absolute() else path.parent / d,
                                  public if security == CURVE else None,
                                  None if http is None else check_http(str(http)),
                                  None if bind is None else check_bind(str(bind)),
                                  None if listen is None else check_endpoint(str(listen)),
                                  None if publish_listen is None else check_endpoint(str(publish_listen)),
                                  n.get("added") is True))
    except (KeyError, TypeError, AttributeError) as e:
        raise ClusterFileError(f"cluster file {path} is malformed: missing or bad {e}") from None
    ids = [n.id for n in nodes]
    if not nodes or len(set(ids)) != len(ids):
        raise ClusterFileError(f"cluster file {path} must list nodes with distinct ids")
    publics = [n.public_key for n in nodes if n.public_key] + ([admin] if admin else [])
    if len(set(publics)) != len(publics):
        raise ClusterFileError(f"cluster file {path}: every node and the admin need their own key")
    _check_ports(path, nodes)
    return Cluster(name, cid, tuple(nodes), path, _tuning(path, raw.get("tuning", {})),
                   security, admin, _limits(path, raw.get("limits", {})))


_WILDCARDS = frozenset({"0.0.0.0", "[::]", "*"})


def _host_port(endpoint: str) -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT``, ``http://HOST:PORT`` or ``HOST:PORT`` (checked)."""
    m = _ENDPOINT.match("tcp://" + endpoint.split("://", 1)[-1])
    assert m is not None, endpoint      # every caller passes a checked endpoint
    return m.group(1), int(m.group(2))


def _check_ports(path: Path, nodes: list[NodeSpec]) -> None:
    """No two endpoints may be one socket: every advertised ``address``, ``publish`` and
    ``http`` differs from every other node's and its own, and a node's three listening
    sockets (``bind``, ``publish_bind``, HTTP) do not share a port on one address. Both
    layouts of ``write_new`` pass (ports base+i, +100+i, +200+i; or, with --same-ports,
    base+1, +101, +201 on a host per node); a hand-edited file that reuses a port is
    refused here, in one line, instead of failing to bind later on one node."""
    seen: dict[tuple[str, int], str] = {}
    for n in nodes:
        for what, ep in (("address", n.address), ("publish", n.publish), ("http", n.http)):
            if ep is None:
                continue
            hp = _host_port(ep)
            if hp in seen:
                raise ClusterFileError(f"cluster file {path}: {n.id}'s {what} {ep} is also "
                                       f"{seen[hp]}: every endpoint needs its own host:port")
            seen[hp] = f"{n.id}'s {what}"
        http_port = None if n.http is None else _host_port(n.http)[1]
        listening = [("bind", n.listen), ("publish_bind", n.publish_listen)]
        if n.http_bind is not None:
            listening.append(("http_bind", n.http_bind))
        elif http_port is not None:
            listening.append(("http_bind", f"127.0.0.1:{http_port}"))
        socks = [(what, *_host_port(ep)) for what, ep in listening]
        for i, (what, host, port) in enumerate(socks):
            for other, ohost, oport in socks[:i]:
                if port == oport and (host == ohost or host in _WILDCARDS or ohost in _WILDCARDS):
                    raise ClusterFileError(f"cluster file {path}: {n.id} would listen on port "
                                           f"{port} twice ({other} and {what})")


def _public(path: Path, value: object, what: str) -> str:
    try:
        return keys.check_public(value, what)
    except keys.KeyFileError as e:
        raise ClusterFileError(f"cluster file {path}: {e}") from None


def _security(path: Path, raw: object) -> tuple[str, str | None]:
    """(mode, admin public key) from the [security] table; no table: a file from before
    keys existed, which is an insecure cluster (status and the node's log say so)."""
    if raw is None:
        return INSECURE, None
    if not isinstance(raw, dict) or raw.get("mode") not in (CURVE, INSECURE):
        raise ClusterFileError(f"cluster file {path}: [security] mode must be "
                               f"{CURVE!r} or {INSECURE!r}")
    if raw["mode"] == INSECURE:
        return INSECURE, None
    return CURVE, _public(path, raw.get("admin_public_key"), "[security] admin_public_key")


def _limits(path: Path, raw: object) -> Quotas:
    known = {f.name for f in fields(Quotas)}
    if not isinstance(raw, dict) or not set(raw) <= known:
        raise ClusterFileError(f"cluster file {path}: [limits] takes {', '.join(sorted(known))}")
    try:
        return Quotas(**raw)
    except ValueError as e:
        raise ClusterFileError(f"cluster file {path}: {e}") from None


def _tuning(path: Path, raw: object) -> Config:
    known = {f.name for f in fields(Config)}
    if not isinstance(raw, dict) or not set(raw) <= known or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw.values()):
        raise ClusterFileError(
            f"cluster file {path}: [tuning] takes positive integers for {', '.join(sorted(known))}")
    try:
        return Config(**raw)
    except ValueError as e:   # e.g. a byte budget above the protocol's limit
        raise ClusterFileError(f"cluster file {path}: [tuning]: {e}") from None


def write_new(directory: Path, nodes: int, host: str | list[str] = "127.0.0.1", base_port: int = 7100,
              force: bool = False, name: str = "coordsvc",
              tuning: dict[str, int] | None = None, distinct_hosts: bool = False,
              cluster_keys: keys.ClusterKeys | None = None, bind_host: str | None = None,
              same_ports: bool = False) -> Cluster:
    """Write DIR/cluster.toml for nodes n1..nN. Node i listens on base+i, publishes on
    base+100+i and serves HTTP (metrics, health, dashboard) on base+200+i.

    ``bind_host`` (e.g. ``0.0.0.0``): every node listens on that host at its ports
    (``bind``, ``publish_bind``, ``http_bind``) while advertising its ``host``.
    ``same_ports``: every node gets node 1's ports (base+1, base+101, base+201), which
    needs a distinct host per node (a pod template or container image gives every node
    the same ports and probes).

    ``distinct_hosts`` puts node i on 127.0.0.(i+1) (loopback needs no set-up), so that
    firewall rules can cut links between individual nodes (see FAULTS.md). ``host`` may list
    one host per node (nodes on separate machines), or one for all.

    With ``cluster_keys`` the cluster is secure (CURVE) and the file records their public
    halves; ``write_keys`` then writes the secret ones. Without, it is insecure.
    """
    if not 1 <= nodes <= 15:
        raise ClusterFileError(f"--nodes must be between 1 and 15, got {nodes}")
    if not 1 <= base_port <= 65535 - 200 - nodes:
        raise ClusterFileError(f"--base-port {base_port} leaves no room for {nodes} nodes")
    path = directory / FILE_NAME
    if path.exists() and not force:
        raise ClusterFileError(f"{path} already exists (use --force to overwrite)")
    hosts = [host] * nodes if isinstance(host, str) else list(host)
    if len(hosts) == 1:
        hosts *= nodes
    if len(hosts) != nodes:
        raise ClusterFileError(f"give one --host for all nodes or one per node ({nodes}), "
                               f"not {len(hosts)}")
    if same_ports and len(set(hosts)) != nodes:
        raise ClusterFileError("--same-ports needs a distinct --host for every node")
    for h in hosts + ([bind_host] if bind_host is not None else []):
        check_endpoint(f"tcp://{h}:{base_port + 1}")
    def port(i: int) -> int:
        return base_port + (1 if same_ports else i)

    node_docs: list[dict[str, str]] = [
        {"id": f"n{i}", "address": f"tcp://{_host(h, i, distinct_hosts)}:{port(i)}",
         "publish": f"tcp://{_host(h, i, distinct_hosts)}:{port(i) + 100}",
         "http": f"http://{_host(h, i, distinct_hosts)}:{port(i) + 200}",
         "data_dir": f"n{i}"}
        for i, h in enumerate(hosts, start=1)
    ]
    if bind_host is not None:
        for i, n in enumerate(node_docs, start=1):
            n["bind"] = f"tcp://{bind_host}:{port(i)}"
            n["publish_bind"] = f"tcp://{bind_host}:{port(i) + 100}"
            n["http_bind"] = f"{bind_host}:{port(i) + 200}"
    security: dict[str, str] = {"mode": INSECURE}
    if cluster_keys is not None:
        security = {"mode": CURVE, "admin_public_key": cluster_keys.admin.public}
        for n in node_docs:
            n["public_key"] = cluster_keys.nodes[n["id"]].public
    doc: dict[str, object] = {
        "cluster": {"name": name, "id": uuid.uuid4().hex},
        "security": security,
        "nodes": node_docs,
    }
    if tuning:
        doc["tuning"] = dict(tuning)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, doc)
    return load(path)


def _write_atomically(path: Path, doc: dict[str, object]) -> None:
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(doc))
    os.replace(tmp, path)


def write_keys(cluster: Cluster, cluster_keys: keys.ClusterKeys) -> None:
    """The secret halves of a new cluster's keys: ``node.key`` (0600) in every node's data
    directory and the bootstrap admin key beside the cluster file (0600)."""
    for n in cluster.nodes:
        keys.write_node_key(n.key_file, n.id, cluster_keys.nodes[n.id])
    admin = cluster.admin_key_file
    assert admin is not None, "write_keys needs a cluster loaded from a file"
    keys.write_client_key(admin, keys.ClientKey(keys.ADMIN, cluster_keys.admin,
                                                key_file_nodes(cluster)))


def key_file_nodes(cluster: Cluster) -> tuple[keys.ServerKey, ...]:
    """The ``[[nodes]]`` of a client key file for this cluster."""
    return tuple(keys.ServerKey(n.id, n.address, n.public_key) for n in cluster.nodes
                 if n.public_key is not None)


def set_node_key(cluster: Cluster, node_id: str, public_key: str) -> Cluster:
    """Record a new public key for ``node_id`` in the cluster file (a replacement node's);
    every other setting stays as it was (comments in the file are not kept)."""
    assert cluster.path is not None and cluster.secure
    raw = tomllib.loads(cluster.path.read_text())
    for n in raw["nodes"]:
        if n.get("id") == node_id:
            n["public_key"] = keys.check_public(public_key, "public key")
    _write_atomically(cluster.path, raw)
    return load(cluster.path)


def add_node(cluster: Cluster, spec: NodeSpec) -> Cluster:
    """Append a member added at runtime to the cluster file (``added = true``). The file
    is the bootstrap and a convenience for clients; the log decides who is a member."""
    assert cluster.path is not None
    if spec.id in cluster.ids:
        raise ClusterFileError(f"{spec.id} is already in {cluster.path}")
    raw = tomllib.loads(cluster.path.read_text())
    try:
        data_dir: Path | str = spec.data_dir.relative_to(cluster.path.parent)
    except ValueError:
        data_dir = spec.data_dir
    entry: dict[str, object] = {"id": spec.id, "address": spec.address,
                                "publish": spec.publish, "data_dir": str(data_dir),
                                "added": True}
    if spec.http is not None:
        entry["http"] = check_http(spec.http)
    if spec.http_bind is not None:
        entry["http_bind"] = check_bind(spec.http_bind)
    if spec.public_key is not None:
        entry["public_key"] = keys.check_public(spec.public_key, "public key")
    raw["nodes"].append(entry)
    _write_atomically(cluster.path, raw)
    return load(cluster.path)


def mark_added(cluster: Cluster, node_id: str, public_key: str | None) -> Cluster:
    """A member removed and added again under its id (the replace path): its entry says
    ``added = true`` (its new data directory joins, it is not a bootstrap member any more)
    and names its new public key in a secure cluster."""
    assert cluster.path is not None
    raw = tomllib.loads(cluster.path.read_text())
    for n in raw["nodes"]:
        if n.get("id") == node_id:
            n["added"] = True
            if public_key is not None:
                n["public_key"] = keys.check_public(public_key, "public key")
    _write_atomically(cluster.path, raw)
    return load(cluster.path)


def _host(host: str, i: int, distinct: bool) -> str:
    return f"127.0.0.{i + 1}" if distinct else host


def find(cluster: str | None = None, endpoints: str | None = None) -> Cluster | list[str]:
    """Where the cluster is, in CONTRACT order: --cluster, --endpoints, $COORD_CLUSTER,
    $COORD_ENDPOINTS, ./.coord/cluster.toml."""
    if cluster:
        return load(Path(cluster))
    if endpoints:
        return _split(endpoints)
    if os.environ.get("COORD_CLUSTER"):
        return load(Path(os.environ["COORD_CLUSTER"]))
    if os.environ.get("COORD_ENDPOINTS"):
        return _split(os.environ["COORD_ENDPOINTS"])
    default = DEFAULT_DIR / FILE_NAME
    if default.exists():
        return load(default)
    raise ClusterFileError(
        "no cluster given: pass --cluster FILE or --endpoints tcp://h:p,..., set COORD_CLUSTER "
        "or COORD_ENDPOINTS, or run where ./.coord/cluster.toml exists")


def _split(endpoints: str) -> list[str]:
    eps = [check_endpoint(e.strip()) for e in endpoints.split(",") if e.strip()]
    if not eps:
        raise ClusterFileError("--endpoints is empty")
    return eps
