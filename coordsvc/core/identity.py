"""Who is talking: principals, and the pure rules that tie them to keys and messages.

A *principal* is a string: ``"node:<id>"`` for a member (proven by that member's CURVE
key), a client's name (``"admin"``, later ``"alice"``) for a client key. The transport
authenticates keys (CURVE + ZAP) and hands every received message to the core together
with the principal of the connection it came on; the decisions are made here, without
I/O, so that tests and the simulator exercise exactly what a node runs.

In an insecure cluster there are no keys: peer messages arrive with principal ``None``
(``src`` is trusted, as before keys existed) and every client request as ``"admin"``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .types import NodeId

__all__ = ["ADMIN", "INSECURE", "NODE_PREFIX", "Identities", "node_principal"]

ADMIN = "admin"
NODE_PREFIX = "node:"


def node_principal(node_id: NodeId) -> str:
    return NODE_PREFIX + node_id


@dataclass(frozen=True, slots=True)
class Identities:
    """The keys a secure cluster knows: each member's and the bootstrap admin's.

    ``members`` maps node id to public key, ``admin_key`` is the public key of principal
    ``"admin"``; keys are Z85 text. The replicated ACL table (issue 12b) adds client keys.
    """

    secure: bool
    members: Mapping[NodeId, str] = field(default_factory=dict)
    admin_key: str | None = None
    _principals: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key = {key: node_principal(nid) for nid, key in sorted(self.members.items())}
        if self.admin_key is not None:
            by_key.setdefault(self.admin_key, ADMIN)
        if self.secure and len(by_key) != len(self.members) + (self.admin_key is not None):
            raise ValueError("every member and the admin need a key of their own")
        object.__setattr__(self, "_principals", by_key)

    def principal_for_key(self, public_z85: str) -> str | None:
        """The principal a CURVE public key authenticates as, or None for a stranger."""
        if not self.secure:
            return None
        return self._principals.get(public_z85)

    def public_key(self, node_id: NodeId | None) -> str | None:
        return None if node_id is None else self.members.get(node_id)

    def peer_may_send(self, principal: str | None, src: NodeId) -> bool:
        """A peer message claiming ``src`` is accepted only over ``src``'s own connection.

        Secure: the connection's principal must be exactly ``node:<src>`` (another
        member's key, a client's key, or no key at all are refused). Insecure: ``src``
        is trusted, as there is nothing to check it against.
        """
        if not self.secure:
            return True
        return principal == NODE_PREFIX + src

    @staticmethod
    def is_member(principal: str | None) -> bool:
        return principal is not None and principal.startswith(NODE_PREFIX)


INSECURE = Identities(secure=False)
