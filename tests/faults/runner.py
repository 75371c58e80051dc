"""One fault-injection run: cluster + workload + nemesis, then heal, recover, check, report.

    python -m tests.faults.runner register --nemesis kill,pause,partition --duration 60 --seed 7

Phases (TigerBeetle's VOPR / Jepsen): a *safety* phase with faults, then heal everything
(flush partitions, SIGCONT, restart the dead) and a *liveness* phase: the cluster must serve
a linearizable write and read within ``RECOVERY_S`` of the heal, and clients keep running
for a quiet moment before they stop. Then final reads and the checks. Everything started is
torn down by PID (and the nft table deleted) in ``finally``, also on KeyboardInterrupt.
"""
from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from coordsvc import CoordError

from ..integration.harness import LocalCluster, Probe
from .checks import check_no_lost_writes
from .history import History, Op, summarize
from .linearizability import check
from .nemesis import KINDS, Nemesis, NetFilter, draw_schedule, ensure_nft
from .workloads import WORKLOADS

__all__ = ["RunResult", "run", "main"]

RECOVERY_S = 5.0
QUIET_S = 2.0
REGISTER_KINDS = frozenset(("get", "put", "cas", "delete"))


@dataclass(slots=True)
class RunResult:
    workload: str
    seed: int
    nodes: int
    duration_s: float
    kinds: tuple[str, ...]
    root: Path
    problems: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    faults: int = 0
    recovery_s: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        return "\n".join([*self.report, self.verdict()])

    def verdict(self) -> str:
        verdict = "PASSED" if self.ok else f"FAILED ({len(self.problems)} problems)"
        lines = [f"== {self.workload} seed={self.seed}: {verdict}"]
        lines += [f"  !! {p}" for p in self.problems]
        if not self.ok:
            lines.append(f"  replay: FAULTS_SEED={self.seed} (or python -m tests.faults.runner "
                         f"{self.workload} --seed {self.seed} --duration {self.duration_s:g} "
                         f"--nodes {self.nodes} --nemesis {','.join(self.kinds)}); "
                         f"node logs in {self.root}")
        return "\n".join(lines)


def _leader_finder(probe: Probe, cluster: LocalCluster) -> Callable[[], str | None]:
    def leader() -> str | None:
        best: tuple[list[int], str] | None = None
        for nid in cluster.ids:
            if nid not in cluster.procs:
                continue
            st = probe.status(nid)
            if st and st.get("role") == "leader":
                cand = (list(st.get("ballot") or []), nid)
                if best is None or cand > best:
                    best = cand
        return best[1] if best else None
    return leader


def _wait_serving(cluster: LocalCluster, within_s: float, tag: str) -> float | None:
    """Seconds until a linearizable write then read succeed, or None past ``within_s``."""
    t0 = time.monotonic()
    deadline = t0 + within_s
    with cluster.client(timeout=min(1.0, within_s)) as c:
        while time.monotonic() < deadline:
            value = f"{tag}-{time.monotonic_ns()}"
            try:
                c.put(f"_liveness/{tag}", value)
                e = c.get(f"_liveness/{tag}")
                if e is not None and e.value.decode() == value:
                    return time.monotonic() - t0
            except CoordError:
                pass
            time.sleep(0.05)
    return None


def _exited_by_themselves(cluster: LocalCluster) -> list[str]:
    """Nodes that should be running (every one the nemesis healed) but exited: a crash,
    a detected safety violation, a stop it decided on, each with the end of its log."""
    out = []
    for nid, proc in sorted(cluster.procs.items()):
        if proc.poll() is not None:
            tail = "\n      ".join(cluster.log(nid).splitlines()[-12:])
            out.append(f"{nid} exited by itself (code {proc.returncode}); its log ends:\n      {tail}")
    return out


def _availability(ops: list[Op], t_start_ns: int, t_end_ns: int) -> tuple[float, float]:
    """(share of ops that were ok, share of 1-second buckets with at least one ok op)."""
    if not ops:
        return 0.0, 0.0
    ok_share = sum(op.status == "ok" for op in ops) / len(ops)
    buckets = max(1, int((t_end_ns - t_start_ns) // 1_000_000_000))
    served = {int((op.complete_ns - t_start_ns) // 1_000_000_000) for op in ops
              if op.status == "ok" and op.complete_ns is not None
              and t_start_ns <= op.complete_ns < t_end_ns}
    return ok_share, len([b for b in served if 0 <= b < buckets]) / buckets


def _acked_writes(ops: list[Op]) -> tuple[dict[str, tuple[int, object]], set[str]]:
    acked: dict[str, tuple[int, object]] = {}
    maybe_deleted: set[str] = set()
    for op in ops:
        if op.kind == "delete" and op.status != "fail":
            maybe_deleted.add(op.key)
        if op.status != "ok" or op.kind not in ("put", "cas") or type(op.output) is not int:
            continue
        value = op.input if op.kind == "put" else op.input[1]  # type: ignore[index]
        if op.key not in acked or op.output > acked[op.key][0]:
            acked[op.key] = (op.output, value)
    return acked, maybe_deleted


def run(workload: str, kinds: Iterable[str], duration_s: float, seed: int, nodes: int = 3,
        root: Path | None = None, log: Callable[[str], None] = print,
        workload_args: dict[str, object] | None = None) -> RunResult:
    """Run ``workload`` for ``duration_s`` under the nemesis ``kinds``; never raises for a
    failed check (see ``RunResult.problems``), only for a broken set-up."""
    kinds = tuple(sorted(set(kinds)))
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (known: {sorted(WORKLOADS)})")
    root = Path(tempfile.mkdtemp(prefix=f"faults-{workload}-")) if root is None else root
    res = RunResult(workload, seed, nodes, duration_s, kinds, root)
    out = res.report

    def say(line: str) -> None:
        out.append(line)
        log(line)

    rng = random.Random(seed)
    schedule = draw_schedule(random.Random(rng.getrandbits(64)), kinds, duration_s, nodes)
    workload_rng = random.Random(rng.getrandbits(64))
    say(f"== fault run: workload={workload} nemesis={','.join(kinds) or 'none'} "
        f"duration={duration_s:g}s nodes={nodes} seed={seed}")
    say(f"   schedule ({len(schedule)} steps):")
    for step in schedule:
        say(f"     {step}")

    cluster = LocalCluster(root, nodes, distinct_hosts=True)
    net: NetFilter | None = None
    probe = Probe(cluster.cluster)
    history = History()
    extra = dict(workload_args or {})
    if workload == "watch":
        extra.setdefault("duration_s", duration_s)
    wl = WORKLOADS[workload](cluster.endpoints, history, workload_rng, root, log=log,
                             key=cluster.key, cluster_file=cluster.file, **extra)
    nemesis: Nemesis | None = None
    try:
        if "partition" in kinds:
            ensure_nft()
            hosts = {n.id: n.host for n in cluster.cluster.nodes}
            ports = [int(a.rsplit(":", 1)[1]) for n in cluster.cluster.nodes
                     for a in (n.address, n.publish)]
            net = NetFilter(hosts, ports)
            net.teardown()   # a stale table from an interrupted run
        cluster.start()
        cluster.leader(timeout=20)
        nemesis = Nemesis(cluster, schedule, net, _leader_finder(probe, cluster), log=say)
        t_start = time.monotonic_ns()
        wl.start()
        nemesis.start()
        time.sleep(max(0.0, duration_s - (time.monotonic_ns() - t_start) / 1e9))
        t_faults_end = time.monotonic_ns()
        nemesis.stop()
        res.faults = len(nemesis.injected)
        res.problems += nemesis.errors
        t_heal = time.monotonic()
        res.recovery_s = _wait_serving(cluster, RECOVERY_S, "heal")
        late: float | None = None
        if res.recovery_s is None:
            res.problems.append(f"the cluster did not serve a linearizable write+read within "
                                f"{RECOVERY_S:g}s of healing")
            # Keep going: the histories may still show why, and checks are still meaningful.
            late = _wait_serving(cluster, 30.0, "late")
            say(f"   late recovery: {'none within 30s' if late is None else f'{late:.1f}s more'}")
        else:
            say(f"   healed; serving again after {res.recovery_s:.2f}s")
        res.problems += _exited_by_themselves(cluster)
        time.sleep(max(0.0, QUIET_S - (time.monotonic() - t_heal)))
        wl.stop()
        final_state: dict[str, tuple[int, str]] | None = None
        if res.recovery_s is None and late is None:
            res.problems.append("no final reads: the cluster never served again")
        else:
            with cluster.client(timeout=10.0) as final:
                wl.finish(final)
                final_state = {e.key: (e.revision, e.value.decode("utf-8", "replace"))
                               for e in final.list("") if not e.key.startswith("_liveness/")}
        t_end = time.monotonic_ns()
        ops = history.ops()
        res.ops = ops
        problems = list(wl.errors)
        problems += wl.check()
        reg = [op for op in ops if op.kind in REGISTER_KINDS]
        t0 = time.monotonic()
        lin = check(reg, timeout_s=max(60.0, duration_s / 2))
        check_s = time.monotonic() - t0
        if not lin.ok:
            problems.append(("linearizability check TIMED OUT: " if lin.timed_out
                             else "NOT LINEARIZABLE: ") + lin.explanation)
        acked, maybe_deleted = _acked_writes(reg)
        if final_state is not None:
            problems += [f"lost write: {p}" for p in
                         check_no_lost_writes(acked, final_state, maybe_deleted)]
        res.problems += problems

        summary = summarize(ops)
        by_kind: dict[str, list[Op]] = {}
        for op in ops:
            by_kind.setdefault(op.kind, []).append(op)
        ok_share, served = _availability(ops, t_start, t_faults_end)
        say(f"   faults injected: {res.faults} "
            f"({', '.join(f'{k}={sum(i.step.kind == k for i in nemesis.injected)}' for k in kinds)})")
        say(f"   ops: {summary}  (ok {summary.ok / max(1, summary.total):.1%}, fail "
            f"{summary.fail / max(1, summary.total):.1%}, unknown "
            f"{summary.unknown / max(1, summary.total):.1%})")
        for kind in sorted(by_kind):
            say(f"     {kind:8s} {summarize(by_kind[kind])}")
        say(f"   availability during faults: {ok_share:.1%} of ops ok, {served:.1%} of seconds "
            "served at least one ok op")
        if wl.stats():
            say(f"   {wl.stats()}")
        say(f"   linearizability: {lin.explanation.splitlines()[0]} ({check_s:.1f}s); "
            f"run took {(t_end - t_start) / 1e9:.1f}s")
        return res
    finally:
        try:
            if nemesis is not None:
                nemesis.stop()
        finally:
            if net is not None:
                net.teardown()
            wl.abort()
            cluster.close()     # SIGCONT + SIGKILL every node by PID
            wl.join(15.0)
            probe.close()
            wl.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # Interruptible even when started in the background (where SIGINT is inherited as
    # ignored), and SIGTERM cleans up too: both unwind through run()'s finally.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(prog="python -m tests.faults.runner")
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--nemesis", default=",".join(KINDS))
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None)
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2**32)
    kinds = [k for k in a.nemesis.split(",") if k]
    res = run(a.workload, kinds, a.duration, seed, a.nodes, a.dir)
    print(res.verdict())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
