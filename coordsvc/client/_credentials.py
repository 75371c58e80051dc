"""Which key a client uses, and the servers' public keys it pins.

In CONTRACT §7's order: ``key=`` (the CLI's ``--key FILE``), then ``$COORD_KEY``, then
``admin.key`` beside the cluster file the client was given or found. A cluster file that
says ``insecure`` means plain TCP whatever key is around; a bare endpoint list is
secure exactly when a key is given.

Server keys come from the cluster file, else the key file's ``[[nodes]]``; nodes the
client did not know (added or re-keyed later) are learned from the cluster itself: a
``not_leader`` redirect names the leader's public key. Those answers come over a
connection whose server key was pinned, so they come from a member.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from coordsvc import clusterfile, keys

from .errors import PermissionDenied

__all__ = ["Credentials", "resolve"]

KEY_ENV = "COORD_KEY"


class Credentials:
    """A client key pair and the public key of every server address it may connect to."""

    def __init__(self, name: str, pair: keys.KeyPair, server_keys: dict[str, str],
                 source: str) -> None:
        self.name = name
        self.pair = pair
        self.source = source
        self._servers = dict(server_keys)
        self._mu = threading.Lock()

    def server_key(self, address: str) -> str | None:
        return self._servers.get(address)

    def learn(self, address: object, public: object) -> None:
        """A member named ``public`` as the key of ``address``; ignored unless well formed."""
        if not isinstance(address, str) or not isinstance(public, str):
            return
        try:
            keys.check_public(public, "learned key")
        except keys.KeyFileError:
            return
        with self._mu:
            self._servers[address] = public

    def missing(self, endpoints: Iterable[str]) -> list[str]:
        return [ep for ep in endpoints if ep not in self._servers]

    def __repr__(self) -> str:
        return f"Credentials(name={self.name!r}, source={self.source!r})"


def resolve(cluster: clusterfile.Cluster | None, key: str | os.PathLike[str] | None
            ) -> Credentials | None:
    """The credentials to use, or None for plain TCP (an insecure cluster)."""
    if cluster is not None and not cluster.secure:
        return None
    explicit = key if key is not None else os.environ.get(KEY_ENV) or None
    if explicit is not None:
        path = Path(explicit)
    elif cluster is not None and cluster.admin_key_file is not None:
        path = cluster.admin_key_file
        if not path.exists():
            raise PermissionDenied(
                f"the cluster in {cluster.path} is secure and this client has no key: pass "
                f"key=FILE (coordctl --key FILE), set {KEY_ENV}, or put the admin key at {path}")
    else:
        if cluster is not None:
            raise PermissionDenied("the cluster is secure and this client has no key: pass "
                                   f"key=FILE (coordctl --key FILE) or set {KEY_ENV}")
        return None
    ck = keys.read_client_key(path)
    servers = ck.server_keys()
    if cluster is not None:
        servers.update(cluster.server_keys())
    return Credentials(ck.name, ck.pair, servers, str(path))
