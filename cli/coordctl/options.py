"""Options shared by every client-side command, and how a command gets its Client.

Discovery follows CONTRACT §2 through ``clusterfile.find``: --cluster, --endpoints,
$COORD_CLUSTER, $COORD_ENDPOINTS, ./.coord/cluster.toml. The key follows CONTRACT §7:
--key, $COORD_KEY, admin.key beside the cluster file discovery found. The client
package is imported when a command connects, so that offline commands (cluster init,
node init, serve) start without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from coordsvc import clusterfile

if TYPE_CHECKING:
    from coordsvc import Client

__all__ = ["ClusterOpt", "EndpointsOpt", "JsonOpt", "KeyOpt", "Target", "TimeoutOpt", "connect"]

_CLIENT_PANEL = "Cluster connection"

ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", metavar="PATH", rich_help_panel=_CLIENT_PANEL,
    help="Cluster file (default: $COORD_CLUSTER, then ./.coord/cluster.toml).")]
EndpointsOpt = Annotated[Optional[str], typer.Option(
    "--endpoints", metavar="tcp://H:P,...", rich_help_panel=_CLIENT_PANEL,
    help="Comma-separated node endpoints, instead of a cluster file ($COORD_ENDPOINTS).")]
KeyOpt = Annotated[Optional[str], typer.Option(
    "--key", metavar="FILE", rich_help_panel=_CLIENT_PANEL,
    help="Client key file (default: $COORD_KEY, then admin.key beside the cluster file).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", metavar="S", min=0.1, rich_help_panel=_CLIENT_PANEL,
    help="Seconds to wait for the cluster before giving up (exit 3).")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Machine-readable JSON on stdout.")]

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where the cluster is, as resolved from the options and environment."""

    endpoints: tuple[str, ...]
    cluster: clusterfile.Cluster | None

    @classmethod
    def resolve(cls, cluster: str | None, endpoints: str | None) -> Target:
        found = clusterfile.find(cluster, endpoints)
        if isinstance(found, clusterfile.Cluster):
            return cls(tuple(found.endpoints), found)
        return cls(tuple(found), None)


def connect(cluster: str | None, endpoints: str | None, timeout: float,
            key: str | None = None) -> Client:
    """A Client for the cluster the options (or the environment) point at, with the key
    ``--key`` names (else $COORD_KEY, else admin.key beside the cluster file)."""
    from coordsvc.client import Client

    target = Target.resolve(cluster, endpoints)
    # A Cluster (not just its endpoints) lets status name unreachable nodes.
    return Client(target.cluster if target.cluster is not None else list(target.endpoints),
                  timeout=timeout, key=key)
