"""Quotas, like etcd's: past ``max_keys`` or ``max_db_bytes`` puts that add data are refused.

``cluster.toml`` ``[limits]`` sets them (defaults: 1,000,000 keys, 2 GiB). While a quota
is exceeded the node raises an *alarm* (``alarms`` in its status, and in the cluster
object of ``coordctl status``), and:

- a ``put`` of a key that does not exist yet is refused past ``max_keys``;
- every ``put`` is refused past ``max_db_bytes`` (an overwrite adds history and log too);
- gets, lists, deletes, lock acquisition and release, and session expiry keep working --
  they are how an operator gets back under the quota.

Where the check runs, and why replicas cannot diverge: the *leader* refuses a put before
proposing it, in the write handler; a refused put never enters the log, so no replica
ever applies a decision that depended on something local. The inputs are the applied
machine's key count (replicated state) and this node's database size (node-local, read
by the runtime between loop turns and handed in with ``Service.observe_db_bytes``).
``Machine.apply`` never looks at a quota: doing so would make the outcome of a logged
command depend on a node's disk, and two replicas could apply one put differently.

What that costs: the check is against the *applied* state, so puts already in flight
when the quota is reached still land -- the overshoot is at most the leader's in-flight
window (``max_inflight_bytes``, 64 MiB, and ``max_pending_commands``), as with etcd's
backend quota, which is also checked before proposing. A retried put whose first attempt
was applied gets its cached result, never a refusal.

Clearing: ``max_keys`` clears as soon as deletes bring the count under it. The database
size is the file's pages in use: deleted values leave it once a snapshot has truncated
the log and the values have left the event window and histories -- as with etcd, freeing
space takes compaction, not just a delete.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# The machine for annotations only: clusterfile (and so every coordctl command) imports
# this module, and the machine is most of the core.
if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["DEFAULT_MAX_DB_BYTES", "DEFAULT_MAX_KEYS", "Quotas"]

DEFAULT_MAX_DB_BYTES = 2 * 1024 * 1024 * 1024
DEFAULT_MAX_KEYS = 1_000_000


@dataclass(frozen=True, slots=True)
class Quotas:
    max_db_bytes: int = DEFAULT_MAX_DB_BYTES
    max_keys: int = DEFAULT_MAX_KEYS

    def __post_init__(self) -> None:
        for name in ("max_db_bytes", "max_keys"):
            v = getattr(self, name)
            if type(v) is not int or not 0 < v <= 2**62:
                raise ValueError(f"[limits] {name} must be an integer in [1, 2**62], got {v!r}")

    def alarms(self, m: Machine, db_bytes: int) -> tuple[str, ...]:
        """The quotas exceeded now, by name."""
        out = []
        if m.key_count >= self.max_keys:
            out.append("max_keys")
        if db_bytes >= self.max_db_bytes:
            out.append("max_db_bytes")
        return tuple(out)

    def refuse_put(self, m: Machine, key: str, db_bytes: int) -> str | None:
        """Why a put of ``key`` must be refused now (one line naming the quota), or None."""
        if db_bytes >= self.max_db_bytes:
            return (f"quota max_db_bytes exceeded: the database holds {db_bytes} bytes, the quota "
                    f"is {self.max_db_bytes}; delete keys (the space is freed at the next snapshot)")
        if m.key_count >= self.max_keys and m.get(key) is None:
            return (f"quota max_keys exceeded: {m.key_count} keys, the quota is {self.max_keys}; "
                    "delete keys or overwrite existing ones")
        return None
