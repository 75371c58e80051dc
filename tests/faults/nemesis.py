"""The nemesis: a seeded schedule of crashes, pauses and real network partitions.

One ``random.Random(seed)`` draws the whole schedule up front -- every gap, fault, variant,
duration and node permutation -- and the schedule is printed before the run starts, so a
failing run is replayed from its seed alone. What cannot be drawn in advance is *which node
leads* when a step starts; leader-relative steps ("isolate the leader", "pause the leader")
resolve that at run time and log the node they picked, and the drawn permutation is rotated
so the leader comes first: the same seed and the same leader give the same faults.

Faults (one at a time, each healed before the next gap):

``kill``       SIGKILL a random node, the leader, a majority or every node at once (power
               loss), then restart after a short down time (WAL recovery). Only a crash of
               a majority can expose a node that acknowledges before its state is durable.
``pause``      SIGSTOP the leader or a follower for 1-10 s (1-4 s in short runs), then
               SIGCONT. A leader paused longer than the election timeout (600-1200 ms)
               wakes up believing it still leads while a successor has been elected and
               has committed writes: this is the "process paused past its lease" case.
``partition``  nftables DROP rules between node addresses (127.0.0.2, .3, ...): isolate the
               leader, a majority/minority split, a bridge (one node sees both halves, the
               halves do not see each other), and asymmetric one-way cuts (the leader cannot
               send, or cannot hear). Clients connect from 127.0.0.1 and are never cut.

Clocks. coordsvc serves linearizable reads by read-index (a heartbeat round confirms the
leader still leads before it answers) and has no leader leases, so wall-clock skew cannot
make it serve stale data; nodes time elections and sessions with ``time.monotonic``, whose
static per-process offset (``unshare --time``) changes no duration. What a lease-based
design would get wrong -- a leader paused past its lease -- is exercised by the pause nemesis
above. Session ttls are measured on the leader's monotonic clock; a client that trusts its
lock past its ttl is caught by fencing, which the lock workload checks.

Partitions follow docs/FAULTS.md: rules live only in the table ``inet coordsvc_faults``,
which is deleted atomically on heal/teardown (and at the start of a session, in case an
interrupted run left one behind). Rules also match this cluster's TCP ports, so a concurrent
run on other ports is never cut by ours.
"""
from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from coordsvc import Client
    from tests.integration.harness import LocalCluster

__all__ = [
    "KINDS", "NFT_TABLE", "Nemesis", "NetFilter", "Step", "draw_schedule", "ensure_nft",
    "delete_stale_table", "exclusive_fault_lock",
]

NFT_TABLE = "coordsvc_faults"
KINDS = ("kill", "member", "pause", "partition")
LOCK_PATH = "/run/lock/coordsvc_faults.lock"

_VARIANTS = {
    "kill": (("random", 4), ("leader", 4), ("majority", 2), ("all", 1)),
    "pause": (("leader", 6), ("follower", 4)),
    # Membership: remove a follower and add it back on a fresh disk under its id (the
    # replace path), the same for the leader (it hands over first), or move leadership.
    "member": (("replace", 3), ("replace-leader", 2), ("transfer", 2)),
    "partition": (("isolate-leader", 3), ("split", 3), ("bridge", 2),
                  ("leader-cannot-send", 1), ("leader-cannot-hear", 1)),
}


# -- nftables -------------------------------------------------------------------------------

def _nft(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", *args], input=stdin, text=True, capture_output=True,
                          check=check, timeout=30)


def ensure_nft() -> None:
    """Make ``nft`` usable, installing Debian's nftables if missing; raise if impossible."""
    if shutil.which("nft") is None:
        if os.geteuid() != 0:
            raise RuntimeError("nft is missing and we are not root: cannot install nftables "
                               "(partitions need `apt-get install nftables` and root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "nftables"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"cannot install nftables: {r.stderr.strip()[-500:]}")
        if shutil.which("nft") is None:
            raise RuntimeError("nftables installed but `nft` is not on PATH")
    probe = _nft(["list", "tables"], check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"nft does not work here (root and CAP_NET_ADMIN needed): "
                           f"{probe.stderr.strip()}")


def delete_stale_table() -> None:
    """Delete our table if it exists (a previous run was interrupted before its teardown)."""
    if shutil.which("nft") is None:
        return
    _nft(["delete", "table", "inet", NFT_TABLE], check=False)


class exclusive_fault_lock:
    """An flock serialising fault runs of concurrent pytest sessions on this machine.

    Every run uses the same table name and the same node addresses, so two at once would
    heal each other's partitions. The kernel drops the lock when its holder dies, so whoever
    holds it may delete a stale table safely.
    """

    def __init__(self, wait_s: float = 900.0) -> None:
        self.wait_s = wait_s
        self._f: IO[bytes] | None = None

    def __enter__(self) -> exclusive_fault_lock:
        os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
        f = open(LOCK_PATH, "ab")
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.close()
                    raise RuntimeError(f"another fault run held {LOCK_PATH} for "
                                       f"{self.wait_s:.0f}s") from None
                time.sleep(0.5)
        self._f = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()  # releases the flock
            self._f = None


class NetFilter:
    """Directed link cuts between node addresses, in our own nftables table.

    A cut ``a -> b`` drops every TCP packet from a's address to b's address that belongs to a
    connection on one of this cluster's ports (a's or b's listening ports), so a connection
    in either direction loses its a->b half. Loopback packets pass the input hook once.
    """

    def __init__(self, hosts: dict[str, str], ports: Iterable[int]) -> None:
        self.hosts = dict(hosts)
        self.ports = sorted(set(ports))
        self.cuts: set[tuple[str, str]] = set()
        self._ready = False

    def _setup(self) -> None:
        if not self._ready:
            _nft(["-f", "-"], stdin=(
                f"add table inet {NFT_TABLE}\n"
                f"add chain inet {NFT_TABLE} input "
                "{ type filter hook input priority -10; policy accept; }\n"))
            self._ready = True

    def apply(self, cuts: Iterable[tuple[str, str]]) -> None:
        """Replace the current cuts with ``cuts``, atomically (one nft transaction)."""
        wanted = sorted(set(cuts))
        self._setup()
        ports = ", ".join(str(p) for p in self.ports)
        lines = [f"flush chain inet {NFT_TABLE} input"]
        for a, b in wanted:
            for direction in ("dport", "sport"):
                lines.append(f"add rule inet {NFT_TABLE} input ip saddr {self.hosts[a]} "
                             f"ip daddr {self.hosts[b]} tcp {direction} {{ {ports} }} drop")
        _nft(["-f", "-"], stdin="\n".join(lines) + "\n")
        self.cuts = set(wanted)

    def heal(self) -> None:
        if self._ready:
            _nft(["flush", "chain", "inet", NFT_TABLE, "input"], check=False)
        self.cuts = set()

    def teardown(self) -> None:
        """Delete the whole table (idempotent; also removes rules we did not track)."""
        _nft(["delete", "table", "inet", NFT_TABLE], check=False)
        self._ready = False
        self.cuts = set()


def cut_between(side_a: Iterable[str], side_b: Iterable[str], both: bool = True) -> set[tuple[str, str]]:
    out = set()
    for a in side_a:
        for b in side_b:
            out.add((a, b))
            if both:
                out.add((b, a))
    return out


# -- the schedule -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Step:
    """One drawn fault: wait ``gap_s``, inject, hold ``hold_s``, heal."""

    index: int
    gap_s: float
    kind: str
    variant: str
    hold_s: float
    perm: tuple[int, ...]     # a node permutation; leader-relative steps rotate it
    split_at: int             # for splits and bridges: where the permutation is cut

    def __str__(self) -> str:
        return (f"#{self.index:02d} after {self.gap_s:4.1f}s  {self.kind:9s} "
                f"{self.variant:18s} for {self.hold_s:4.1f}s  perm={list(self.perm)} "
                f"split={self.split_at}")


def draw_schedule(rng: random.Random, kinds: Iterable[str], duration_s: float, nodes: int,
                  ) -> list[Step]:
    """Steps filling ``duration_s`` (the last one may end up to one hold early)."""
    kinds = sorted(set(kinds))
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown nemesis kind {k!r} (known: {KINDS})")
    if not kinds:
        return []
    short = duration_s < 300
    pause_max_s = 4.0 if short else 10.0
    # Fault intensity is itself random (VOPR): some runs are calm, some relentless.
    gap_max_s = rng.uniform(1.5, 4.0)
    steps: list[Step] = []
    t = 0.0
    while True:
        gap = rng.uniform(0.5, gap_max_s)
        kind = rng.choice(kinds)
        names, weights = zip(*_VARIANTS[kind], strict=True)
        variant = rng.choices(names, weights=weights)[0]
        if kind == "kill":
            hold = rng.uniform(0.3, 2.5 if short else 6.0)
        elif kind == "pause":
            hold = rng.uniform(1.0, pause_max_s)
        else:
            hold = rng.uniform(1.5, 5.0 if short else 15.0)
        perm = list(range(nodes))
        rng.shuffle(perm)
        split_at = rng.randint(1, (nodes - 1) // 2)  # size of the minority / of side A
        if t + gap + hold > duration_s - 1.0:
            break
        steps.append(Step(len(steps), round(gap, 2), kind, variant, round(hold, 2),
                          tuple(perm), split_at))
        t += gap + hold + 0.3   # heal takes a moment
    return steps


# -- running it -----------------------------------------------------------------------------

@dataclass(slots=True)
class Injected:
    step: Step
    start_s: float
    end_s: float
    targets: str


@dataclass(slots=True)
class Nemesis:
    """Runs a schedule against a LocalCluster from its own thread; ``stop()`` heals all."""

    cluster: LocalCluster
    schedule: list[Step]
    net: NetFilter | None
    leader_of: Callable[[], str | None]
    log: Callable[[str], None] = print
    paused: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)
    injected: list[Injected] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _mu: threading.RLock = field(default_factory=threading.RLock)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> None:
        if any(s.kind == "partition" for s in self.schedule) and self.net is None:
            raise RuntimeError("partition steps need a NetFilter (nftables)")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop injecting and heal everything: flush cuts, SIGCONT, restart the dead."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                self.errors.append("nemesis thread did not stop within 30s")
        self.heal_all()

    def heal_all(self) -> None:
        with self._mu:
            if self.net is not None:
                self.net.heal()
            for nid in sorted(self.paused):
                self._cont(nid)
            for nid in sorted(self.dead):
                self.cluster.start(nid)
            self.dead.clear()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _run(self) -> None:
        try:
            for step in self.schedule:
                if self._stop.wait(step.gap_s):
                    return
                start = self._now()
                with self._mu:
                    if self._stop.is_set():
                        return
                    targets = self._inject(step)
                self.log(f"[nemesis +{start:6.1f}s] {step.kind}/{step.variant}: {targets} "
                         f"for {step.hold_s:.1f}s")
                self._stop.wait(step.hold_s)
                with self._mu:
                    self.heal_all()
                self.injected.append(Injected(step, start, self._now(), targets))
        except Exception as e:  # keep the run going; the runner reports it
            self.errors.append(f"nemesis failed: {type(e).__name__}: {e}")
            self.log(f"[nemesis] ERROR {type(e).__name__}: {e}")

    def _order(self, step: Step, leader_first: bool) -> list[str]:
        ids = self.cluster.ids
        order = [ids[i] for i in step.perm]
        if leader_first:
            leader = self.leader_of()
            if leader in order:
                i = order.index(leader)
                order = order[i:] + order[:i]
        return order

    def _inject(self, step: Step) -> str:
        if step.kind == "kill":
            order = self._order(step, step.variant != "random")
            n = {"majority": len(order) // 2 + 1, "all": len(order)}.get(step.variant, 1)
            victims = order[:n]
            for nid in victims:
                self._kill(nid)
            return "killed " + ",".join(victims)
        if step.kind == "member":
            return self._member(step)
        if step.kind == "pause":
            order = self._order(step, True)
            victim = order[0] if step.variant == "leader" else order[1]
            self.cluster.signal(victim, signal.SIGSTOP)
            self.paused.add(victim)
            return f"paused {victim} (leader was {order[0]})"
        assert self.net is not None
        v = step.variant
        order = self._order(step, v != "split" or step.perm[0] % 2 == 0)
        leader, rest = order[0], order[1:]
        if v == "isolate-leader":
            cuts, what = cut_between([leader], rest), f"isolated {leader} | {','.join(rest)}"
        elif v == "split":
            minority, majority = order[:step.split_at], order[step.split_at:]
            cuts = cut_between(minority, majority)
            what = f"split {','.join(minority)} | {','.join(majority)}"
        elif v == "bridge":
            bridge = order[-1]
            side_a, side_b = order[:step.split_at], order[step.split_at:-1]
            cuts = cut_between(side_a, side_b)
            what = f"bridge {bridge} between {','.join(side_a)} | {','.join(side_b)}"
        elif v == "leader-cannot-send":
            cuts, what = cut_between([leader], rest, both=False), f"one-way {leader} -/-> {','.join(rest)}"
        else:  # leader-cannot-hear
            cuts, what = cut_between(rest, [leader], both=False), f"one-way {','.join(rest)} -/-> {leader}"
        self.net.apply(cuts)
        return what

    def _member(self, step: Step) -> str:
        from coordsvc import Client
        c = self.cluster
        order = self._order(step, True)
        leader = order[0]
        if step.variant == "transfer":
            target = order[1]
            with Client(c.cluster, timeout=15.0, key=c.key) as cl:
                cl.transfer_leader(target)
            return f"transferred leadership {leader} -> {target}"
        victim = leader if step.variant == "replace-leader" else order[1]
        with Client(c.cluster, timeout=20.0, key=c.key) as cl:
            for nid in sorted(self.paused | self.dead):      # a live quorum for the change
                if nid in self.paused:
                    self._cont(nid)
                elif nid != victim:
                    c.start(nid)
                    self.dead.discard(nid)
            _remove_when_safe(cl, victim)
            proc = c.procs.pop(victim, None)
            if proc is not None:
                try:
                    proc.wait(10)          # it stops by itself once it learns the removal
                except Exception:
                    proc.kill()
                    proc.wait()
            self.dead.discard(victim)
            c.add_back(cl, victim, c.new_machine(victim))   # a fresh disk and key
        return f"replaced {victim} (leader was {leader})"

    def _kill(self, nid: str) -> None:
        if nid not in self.cluster.procs:
            return
        self._cont(nid)   # a stopped process must see SIGCONT before it is killed
        self.cluster.kill(nid)
        self.dead.add(nid)

    def _cont(self, nid: str) -> None:
        proc = self.cluster.procs.get(nid)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self.paused.discard(nid)


def _remove_when_safe(cl: Client, victim: str, within_s: float = 15.0) -> None:
    """Remove ``victim`` as an operator would: a removal the leader refuses because the
    voters left would not be a live quorum *yet* (a node just restarted, resumed or
    reconnected has not been heard since) is asked again until it is accepted. That
    refusal is the guard working; the fault under test is the replacement itself."""
    from coordsvc import MembershipRefused
    deadline = time.monotonic() + within_s
    while True:
        try:
            cl.member_remove(victim)
            return
        except MembershipRefused as e:
            if "no quorum" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)
