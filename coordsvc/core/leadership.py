"""Who campaigns, and when: leadership as a strategy the replica is built with.

Paxos is safe whoever campaigns; *when* a node campaigns is a separate choice, made once
at construction (``Replica(..., leadership=...)``) instead of a flag tested throughout
the replica:

- :class:`Functional` (the default, the seed's "functional" Paxos): the leader sends
  heartbeats; a follower that hears none for a randomized election timeout campaigns;
  a leader that hears no quorum for an election timeout steps down. With ``prevote``
  (the default) a follower whose timer runs out first asks the voters whether they would
  promise a higher ballot (``PreVote``) and raises its ballot only with a majority of
  yes: a voter says yes only if it too has not heard a leader within the election
  timeout and the asker's commit index is not behind its own. A node returning from a
  partition therefore finds the others following a healthy leader and leaves it alone.
- :class:`External`: an outside failure detector decides (``leader_is``, ``suspect``);
  the replica keeps no election timer. Heartbeats are sent only when a read needs a
  confirmation round. A candidate the detector chose keeps campaigning until it leads
  or the detector changes its mind: when a Nack shows its ballot was beaten it prepares
  again with a higher one (one live Nack with the third node down is never a quorum
  of Nacks, so waiting for one would wait forever).

Both strategies drive the replica through the same few steps (``_start_phase1``,
``_resend_prepares``, ``_start_prevote``); the replica's phase 1, phase 2, catch-up
and membership code never asks which strategy it runs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .types import NodeId, UsageError

if TYPE_CHECKING:
    from .replica import Replica

__all__ = ["External", "Functional", "Leadership"]


class Leadership:
    """The interface: what the replica asks its leadership strategy."""

    name = "abstract"
    #: the leader sends a heartbeat every ``heartbeat_ms`` (else only for reads)
    heartbeats = True
    #: a leader that hears no quorum for an election timeout steps down
    checks_quorum = True

    def tick(self, r: Replica, now_ms: int) -> None:
        """Timer duties of a follower or candidate (the leader's are the replica's own)."""
        raise NotImplementedError

    def next_timer_ms(self, r: Replica) -> int:
        """When a follower or candidate next needs a tick."""
        raise NotImplementedError

    def leader_is(self, r: Replica, node: NodeId) -> None:
        raise UsageError(f"{self.name} leadership takes no failure-detector input")

    def suspect(self, r: Replica, node: NodeId) -> None:
        raise UsageError(f"{self.name} leadership takes no failure-detector input")


class Functional(Leadership):
    """Heartbeats and randomized election timeouts, with pre-vote unless ``prevote=False``."""

    name = "functional"

    def __init__(self, prevote: bool = True) -> None:
        self.prevote = prevote

    def tick(self, r: Replica, now_ms: int) -> None:
        if r.rebuilding and r.is_follower():
            r._campaign_when_caught_up(now_ms)
        elif now_ms >= r.election_deadline:
            if self.prevote and r.is_follower():
                r._start_prevote()
            else:
                r._start_phase1()
        elif r.is_candidate() and now_ms - r.catchup_sent_ms > 4 * r.cfg.heartbeat_ms:
            r._resend_prepares()

    def next_timer_ms(self, r: Replica) -> int:
        due = r.election_deadline
        if r.is_candidate() or r.known_commit > r.commit_index:
            due = min(due, r.catchup_sent_ms + 4 * r.cfg.heartbeat_ms + 1)
        if r.rebuilding and r.is_follower():
            due = min(due, r._rebuild_timer_ms())
        return due


class External(Leadership):
    """An outside failure detector names the leader; no election timer, no pre-vote."""

    name = "external"
    heartbeats = False
    checks_quorum = False

    def tick(self, r: Replica, now_ms: int) -> None:
        if r.is_candidate() and now_ms - r.catchup_sent_ms > 4 * r.cfg.heartbeat_ms:
            self._campaign_on(r)

    def next_timer_ms(self, r: Replica) -> int:
        hb = r.cfg.heartbeat_ms
        due = r.now_ms + 10 * hb      # nothing to time: poll now and then
        if r.is_candidate() or r.known_commit > r.commit_index:
            due = min(due, r.catchup_sent_ms + 4 * hb + 1)
        return due

    def leader_is(self, r: Replica, node: NodeId) -> None:
        """The detector says ``node`` should lead."""
        if node == r.id:
            if r.is_follower():
                r._start_phase1()
            elif r.is_candidate():
                self._campaign_on(r)
        else:
            r._defer_to(node, f"external detector chose {node}")

    def suspect(self, r: Replica, node: NodeId) -> None:
        """The detector believes ``node`` dead."""
        if node == r.leader and r.is_follower():
            r.leader = None

    @staticmethod
    def _campaign_on(r: Replica) -> None:
        # A beaten ballot is never prepared again: the detector chose us, so raise it.
        if r.ballot_beaten() and not r.catchup_for_phase1:
            r._start_phase1()
        else:
            r._resend_prepares()
