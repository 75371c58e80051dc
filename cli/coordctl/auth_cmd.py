"""`coordctl auth ...`: client keys with rights, recorded in the cluster's replicated
identity table (CONTRACT §7). Every command here needs an admin key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from coordsvc import keys

from .options import (
    DEFAULT_TIMEOUT_S,
    ClusterOpt,
    EndpointsOpt,
    JsonOpt,
    KeyOpt,
    Target,
    TimeoutOpt,
    connect,
)
from .output import EXIT_REFUSED, EXIT_USAGE, console, emit_json, fail, warn

if TYPE_CHECKING:
    from coordsvc.client import Principal

app = typer.Typer(
    name="auth",
    help="Client identities: keys with read/write/lock rights (needs an admin key).",
    epilog="Example: coordctl auth add web --read app/ --write app/web/ --lock deploy --out web.key",
    no_args_is_help=True,
)

PrefixOpt = Optional[list[str]]


def _server_keys(target: Target, key_file: str | None) -> tuple[keys.ServerKey, ...]:
    """The nodes a new key file names: from the cluster file, else from the key in use."""
    if target.cluster is not None:
        if not target.cluster.secure:
            fail("this cluster is insecure: it has no keys to hand out",
                 "create it without --insecure to get identities and rights", EXIT_REFUSED)
        return tuple(keys.ServerKey(n.id, n.address, n.public_key)
                     for n in target.cluster.nodes if n.public_key is not None)
    own = key_file or os.environ.get("COORD_KEY")
    if not own:
        fail("cannot tell the nodes' public keys for the new key file",
             "give --cluster FILE, or --key FILE with a [[nodes]] table", EXIT_USAGE)
    return keys.read_client_key(Path(own)).nodes


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The identity's name (its principal).")],
    out: Annotated[str, typer.Option(
        "--out", metavar="FILE", help="Where to write the new client key file (mode 0600).")],
    read: Annotated[PrefixOpt, typer.Option(
        "--read", metavar="PREFIX", help="May read keys under PREFIX (repeatable).")] = None,
    write: Annotated[PrefixOpt, typer.Option(
        "--write", metavar="PREFIX", help="May write (and read) keys under PREFIX (repeatable).")] = None,
    lock: Annotated[PrefixOpt, typer.Option(
        "--lock", metavar="PREFIX",
        help="May take locks (leases, elections, ...) named under PREFIX (repeatable).")] = None,
    admin: Annotated[bool, typer.Option(
        "--admin", help="May do everything, including `auth`, and read the PUB stream.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Create a client key for NAME with these rights and write it to FILE.

    The key pair is generated here: only its public half is sent to the cluster (recorded
    through the log); the secret exists only in FILE, mode 0600, beside the nodes' public
    keys so that `--key FILE` (or COORD_KEY=FILE) is all a client needs. Hand FILE over
    privately. Returns once every node that answers admits the key.

    Example: coordctl auth add ci --read app/ --write app/ci/ --lock deploy --out ci.key
    """
    keys.check_name(name, "NAME")
    path = Path(out)
    if path.exists() and not force:
        fail(f"{path} exists", "pick another --out, or --force to replace it", EXIT_REFUSED)
    target = Target.resolve(cluster, endpoints)
    pair = keys.KeyPair.generate()
    # Written before the identity exists, renamed into place once it does: a secret whose
    # public key the cluster knows is never lost, and a refused one never left around.
    pending = path.with_name(f".{path.name}.pending")
    keys.write_client_key(pending, keys.ClientKey(name, pair, _server_keys(target, key_file)))
    from coordsvc.client import Unavailable
    try:
        with connect(cluster, endpoints, timeout, key_file) as c:
            c.auth_add(name, pair.public, read=read or [], write=write or [], lock=lock or [],
                       admin=admin)
    except Unavailable:
        os.replace(pending, path)
        warn(f"kept {path}: the cluster may or may not have recorded {name!r} "
             "(see `coordctl auth list`)")
        raise
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, path)
    if json:
        emit_json({"name": name, "public": pair.public, "read": read or [], "write": write or [],
                   "lock": lock or [], "admin": admin, "key_file": str(path)})
    else:
        print(f"added {name}; its key is in {path} (mode 0600): hand it over privately")


def principal_json(p: Principal) -> dict[str, Any]:
    """One identity as JSON: name, public (key), read, write, lock, admin. Never a secret."""
    return {"name": p.name, "public": p.public_key, "read": list(p.read), "write": list(p.write),
            "lock": list(p.lock), "admin": p.admin}


def _rights(p: dict[str, Any]) -> str:
    if p["admin"]:
        return "admin"
    parts = [f"{kind} {' '.join(p[kind])}" for kind in ("read", "write", "lock") if p[kind]]
    return "; ".join(parts) or "(status only)"


@app.command("list")
def list_(
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """List client identities: name, rights, public key (never a secret).

    Example: coordctl auth list --json
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        rows = [principal_json(p) for p in c.auth_list()]
    if json:
        emit_json(rows)
        return
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for col in ("name", "rights", "public key"):
        table.add_column(col, no_wrap=True)
    for p in rows:
        table.add_row(p["name"], _rights(p), p["public"] or "-")
    console.print(table)


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The identity to remove.")],
    cluster: ClusterOpt = None, endpoints: EndpointsOpt = None, key_file: KeyOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, json: JsonOpt = False,
) -> None:
    """Remove identity NAME: its key is refused from now on.

    Its open connections are refused everything, its watches and lock waits end with
    PermissionDenied, its sessions close (its locks go to the next waiters). The last
    admin cannot be removed. Returns once every node that answers has applied it.

    Example: coordctl auth remove ci
    """
    with connect(cluster, endpoints, timeout, key_file) as c:
        c.auth_remove(name)
    if json:
        emit_json({"name": name, "removed": True})
    else:
        print(f"removed {name}")
