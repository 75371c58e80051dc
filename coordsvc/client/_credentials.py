"""Which key a client uses, and the servers' public keys it pins.

In CONTRACT §7's order: ``key=`` (the CLI's ``--key FILE``), then ``$COORD_KEY``, then
``admin.key`` beside the cluster file the client was given or found. A cluster file that
says ``insecure`` means plain TCP whatever key is around; a bare endpoint list is
secure exactly when a key is given.

Server keys come from the cluster file, else the key file's ``[[nodes]]``; nodes the
client did not know (added or re-keyed later) are learned from the cluster itself: a
``not_leader`` redirect names the leader's public key. Those answers come over a
connection whose server key was pinned, so they come from a member. A client given a
cluster file also reads the file again when a node did not answer and the file has
changed since (``FileKeys``): once every node has been replaced with a new key, no
member is left to redirect it, and the operator's file is where the new keys are.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from coordsvc import clusterfile, keys

from .errors import PermissionDenied

__all__ = ["Credentials", "FileKeys", "resolve"]

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


class FileKeys:
    """The server keys of a client's cluster file, taken again when the file changes."""

    def __init__(self, cluster: clusterfile.Cluster | None) -> None:
        self._path = cluster.path if cluster is not None and cluster.secure else None
        self._seen = _signature(self._path)
        self._mu = threading.Lock()

    def refresh(self, learn: Callable[[object, object], None]) -> None:
        """A node did not answer: if the file changed, ``learn`` each node's key in it
        (the sockets of nodes that did not answer are made afresh, with it)."""
        if self._path is None:
            return
        seen = _signature(self._path)
        with self._mu:
            if seen is None or seen == self._seen:
                return
            self._seen = seen
        try:
            cluster = clusterfile.load(self._path)
        except clusterfile.ClusterFileError:
            return          # being rewritten, or broken: the keys we have stay
        for address, public in cluster.server_keys().items():
            learn(address, public)


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


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
