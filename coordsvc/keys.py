"""CURVE key files: the one place that creates, writes, reads and checks them.

A secure cluster has three kinds of key material, all Z85 text as ``zmq.curve_keypair()``
makes it (40 characters for 32 bytes):

- each node's key pair, in ``<data_dir>/node.key`` (mode 0600), its public half also in
  ``cluster.toml``::

      [node]
      id = "n1"
      public = "..."
      secret = "..."

- client key files (``DIR/admin.key``, later ``auth add --out``), mode 0600, enough to
  reach the cluster with nothing else::

      [client]
      name = "admin"              # the principal the cluster knows this key as
      public = "..."
      secret = "..."

      [[nodes]]                   # the servers' public keys, by address
      id = "n1"
      address = "tcp://127.0.0.1:7101"
      public = "..."

- ``cluster.toml``: public keys only (see ``clusterfile``).

A secret key is never printed, logged or written anywhere but a 0600 file. Reading is
strict: a missing, unreadable, too open (group/other bits), oversized or malformed file
is a ``KeyFileError`` whose message is one line naming the file and what to do.
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tomli_w
import zmq

__all__ = [
    "ADMIN", "ADMIN_KEY_FILE", "NODE_KEY_FILE", "ClientKey", "ClusterKeys", "KeyFileError", "KeyPair",
    "ServerKey", "check_name", "check_public", "read_client_key", "read_node_key",
    "write_client_key", "write_node_key",
]

ADMIN = "admin"                 # the principal of the bootstrap client key
ADMIN_KEY_FILE = "admin.key"    # beside cluster.toml
NODE_KEY_FILE = "node.key"      # inside each node's data directory
KEY_FILE_MODE = 0o600
# A key file is a few hundred bytes per node; anything this large is not one.
MAX_KEY_FILE_BYTES = 64 * 1024
_Z85_KEY_CHARS = 40
_Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          ".-:+=^!/*?&<>()[]{}@%$#")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open or malformed (one line saying which)."""


def check_public(value: object, what: str) -> str:
    """``value`` if it is a Z85-encoded 32-byte CURVE key, else KeyFileError naming ``what``."""
    if not (isinstance(value, str) and len(value) == _Z85_KEY_CHARS
            and set(value) <= _Z85_ALPHABET):
        raise KeyFileError(f"{what} is not a CURVE key (40 Z85 characters)")
    return value


def check_name(value: object, what: str) -> str:
    """A client or node name: 1..64 of letters, digits, '_', '.', '-' (not starting with one
    of the last three). Principals of members are ``node:<id>``, so no name has a colon."""
    if not (isinstance(value, str) and _NAME.match(value)):
        raise KeyFileError(f"{what} must be 1..64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: str
    secret: str

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode("ascii"), secret.decode("ascii"))

    def __repr__(self) -> str:  # never show the secret, not even in a traceback
        return f"KeyPair(public={self.public!r}, secret=...)"


def _public_of(secret: str) -> str:
    return zmq.curve_public(secret.encode("ascii")).decode("ascii")


def _pair(raw: object, where: str) -> KeyPair:
    if not isinstance(raw, dict):
        raise KeyFileError(f"{where} is malformed: missing its key table")
    public = check_public(raw.get("public"), f"{where}: public")
    secret = check_public(raw.get("secret"), f"{where}: secret")
    if _public_of(secret) != public:
        raise KeyFileError(f"{where} is damaged: its public key does not belong to its secret key")
    return KeyPair(public, secret)


@dataclass(frozen=True, slots=True)
class ServerKey:
    """A node's public key and the address it is used for."""

    id: str
    address: str
    public: str


@dataclass(frozen=True, slots=True)
class ClientKey:
    """A client's identity: its name (principal), key pair and the servers' public keys."""

    name: str
    pair: KeyPair
    nodes: tuple[ServerKey, ...]
    path: Path | None = None

    def server_keys(self) -> dict[str, str]:
        """Address -> public key of every node the file names."""
        return {n.address: n.public for n in self.nodes}


# -- files --------------------------------------------------------------------------------

def _read_private(path: Path, what: str) -> dict[str, object]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} not found") from None
    except OSError as e:
        raise KeyFileError(f"{what} {path} is unreadable: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(f"{what} {path} is readable by others (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{what} {path} is too large to be a key file "
                               f"({st.st_size} bytes)")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"{what} {path} is unreadable: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise KeyFileError(f"{what} {path} is not valid TOML: {e}") from None


def _write_private(path: Path, doc: dict[str, object]) -> None:
    """Write ``doc`` to ``path`` with mode 0600 from the first byte, atomically."""
    text = tomli_w.dumps(doc).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)   # whatever the umask said
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_node_key(path: Path, node_id: str, pair: KeyPair) -> None:
    _write_private(path, {"node": {"id": node_id, "public": pair.public, "secret": pair.secret}})


def read_node_key(path: Path, node_id: str, expect_public: str | None = None) -> KeyPair:
    """Node ``node_id``'s key pair from ``path``; if ``expect_public`` (from cluster.toml) is
    given, the file's public key must be it."""
    if not path.exists() and not path.is_symlink():
        raise KeyFileError(f"node {node_id} has no key file {path} (`coordctl cluster init` "
                           "creates it; a replaced node gets one from `coordctl node replace`)")
    raw = _read_private(path, f"key file of node {node_id}")
    node = raw.get("node")
    if not isinstance(node, dict) or not isinstance(node.get("id"), str):
        raise KeyFileError(f"key file {path} has no [node] table with an id")
    if node["id"] != node_id:
        raise KeyFileError(f"key file {path} is the key of node {node['id']}, not {node_id}")
    pair = _pair(node, f"key file {path}")
    if expect_public is not None and pair.public != expect_public:
        raise KeyFileError(f"key file {path} does not match the public key of {node_id} in the "
                           "cluster file (a key from another cluster, or an old cluster file?)")
    return pair


def write_client_key(path: Path, key: ClientKey) -> None:
    _write_private(path, {
        "client": {"name": key.name, "public": key.pair.public, "secret": key.pair.secret},
        "nodes": [{"id": n.id, "address": n.address, "public": n.public} for n in key.nodes],
    })


def read_client_key(path: Path) -> ClientKey:
    raw = _read_private(path, "client key file")
    client = raw.get("client")
    if not isinstance(client, dict):
        raise KeyFileError(f"client key file {path} has no [client] table")
    name = check_name(client.get("name"), f"client key file {path}: name")
    pair = _pair(client, f"client key file {path}")
    nodes = raw.get("nodes", [])
    if not isinstance(nodes, list):
        raise KeyFileError(f"client key file {path}: [[nodes]] must be a list of tables")
    servers = []
    for i, n in enumerate(nodes):
        where = f"client key file {path}: nodes[{i}]"
        if not isinstance(n, dict):
            raise KeyFileError(f"{where} is not a table")
        address = n.get("address")
        if not isinstance(address, str) or not address.startswith("tcp://"):
            raise KeyFileError(f"{where}: address must be tcp://HOST:PORT")
        servers.append(ServerKey(check_name(n.get("id"), f"{where}: id"), address,
                                 check_public(n.get("public"), f"{where}: public")))
    return ClientKey(name, pair, tuple(servers), path)


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """The key pairs ``cluster init`` creates: one per node and the bootstrap admin's."""

    nodes: dict[str, KeyPair]
    admin: KeyPair

    @classmethod
    def generate(cls, node_ids: Iterable[str]) -> ClusterKeys:
        return cls({i: KeyPair.generate() for i in node_ids}, KeyPair.generate())

    def __repr__(self) -> str:
        return f"ClusterKeys(nodes={sorted(self.nodes)}, admin=...)"
