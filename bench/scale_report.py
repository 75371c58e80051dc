"""The outputs of ``bench.scale``: a markdown summary and one PNG per sweep.

Every section and every plot says how its figures were taken — quick or full sweep, when,
at which commit, and how much CPU other processes used meanwhile — so a figure from a busy
machine is never mistaken for a clean measurement. Targets are printed beside the
measured figures and drawn as dashed lines; nothing is asserted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# (what, the size it applies at, the limit); figures from scale.json's points
TARGET_KEYS = 1_000_000
TARGET_RSS_MB = 600.0
TARGET_RESTART_S = 10.0
TARGET_LOCKS = 10_000
TARGET_LEADER_CPU_PCT = 20.0
BUSY_PCT = 10.0   # other processes above this (% of a core): the figures are indicative only

TITLES = {
    "clients": "Throughput and latency against concurrent clients (64 B puts)",
    "values": "Throughput and latency against value size (4 threads, one client)",
    "keys": "Stored keys: memory, snapshot stall, restart",
    "watchers": "Watchers of one prefix (one writer at a fixed rate)",
    "locks": "Held locks kept alive (ttl 10 s): CPU at idle",
    "nodes": "3 vs 5 nodes (issue-7 workload)",
}
ORDER = ("clients", "values", "keys", "watchers", "locks", "nodes")


def label(meta: dict[str, Any]) -> str:
    """One line: how and when a sweep was measured, and whether the machine was busy."""
    f = meta.get("foreign_cpu_pct")
    busy = (f"other processes used {f:.0f} % of a core — a BUSY machine, figures indicative only"
            if isinstance(f, (int, float)) and f > BUSY_PCT
            else f"other processes used {f if f is not None else '?'} % of a core")
    m = meta.get("machine", {})
    head = (meta.get("code", {}).get("head") or "?")[:10]
    return (f"{meta.get('mode', '?')} sweep, {meta.get('timestamp', '?')}, commit {head}, "
            f"{m.get('cpus', '?')} CPUs; {busy}")


def _f(v: Any, digits: int = 0) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{v:,.{digits}f}"


def _max(d: Any) -> float | None:
    vals = [v for v in (d or {}).values() if isinstance(v, (int, float))]
    return max(vals) if vals else None


def targets(sweeps: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, what was measured) for issue 17's three targets."""
    out = []
    keys = sweeps.get("keys", {}).get("points", [])
    at = next((p for p in keys if p["keys"] >= TARGET_KEYS), None)
    big = max(keys, key=lambda p: p["keys"]) if keys else None
    if at is not None:
        out.append((f"1M keys of 64 B: RSS per node < {TARGET_RSS_MB:.0f} MB",
                    f"{_f(_max(at['rss_mb']))} MiB (largest node) at {at['keys']:,} keys"))
        out.append((f"restart of a node with 1M keys < {TARGET_RESTART_S:.0f} s",
                    f"{_f(at.get('restart_caught_up_s'), 1)} s to caught up "
                    f"({_f(at.get('restart_serving_s'), 1)} s to serving)"))
    else:
        where = (f"largest point {big['keys']:,} keys: RSS {_f(_max(big['rss_mb']))} MiB, restart "
                 f"{_f(big.get('restart_caught_up_s'), 1)} s" if big else "keys sweep not run")
        out.append((f"1M keys of 64 B: RSS per node < {TARGET_RSS_MB:.0f} MB",
                    f"not measured at 1M keys ({where})"))
        out.append((f"restart of a node with 1M keys < {TARGET_RESTART_S:.0f} s",
                    "not measured at 1M keys"))
    locks = sweeps.get("locks", {}).get("points", [])
    at = next((p for p in locks if p["held_locks"] >= TARGET_LOCKS), None)
    big = max(locks, key=lambda p: p["held_locks"]) if locks else None
    if at is not None:
        out.append((f"10,000 held locks: leader < {TARGET_LEADER_CPU_PCT:.0f} % of a core at idle",
                    f"{_f(at['leader_cpu_pct'], 1)} % at {at['held_locks']:,} locks"))
    else:
        where = (f"largest point {big['held_locks']:,} locks: leader {_f(big['leader_cpu_pct'], 1)} %"
                 if big else "locks sweep not run")
        out.append((f"10,000 held locks: leader < {TARGET_LEADER_CPU_PCT:.0f} % of a core at idle",
                    f"not measured at 10,000 locks ({where})"))
    return out


def _table(sweep: str, points: list[dict[str, Any]]) -> list[str]:
    def srv(p: dict[str, Any]) -> str:
        return _f(p.get("server_cpu_us_per_op"))

    def cli(p: dict[str, Any]) -> str:
        return _f((p.get("cpu_us_per_op") or {}).get("client"))

    if sweep == "clients":
        rows = ["| clients | ops/s | p50 ms | p99 ms | server CPU µs/op | client CPU µs/op |",
                "|---|---|---|---|---|---|"]
        rows += [f"| {p['clients']} | {_f(p['ops_per_s'])} | {_f(p['p50_ms'], 2)} | "
                 f"{_f(p['p99_ms'], 2)} | {srv(p)} | {cli(p)} |" for p in points]
    elif sweep == "values":
        rows = ["| value bytes | ops/s | MiB/s | p50 ms | p99 ms | server CPU µs/op | largest node RSS MiB |",
                "|---|---|---|---|---|---|---|"]
        rows += [f"| {p['value_bytes']:,} | {_f(p['ops_per_s'])} | {_f(p['mib_per_s'], 1)} | "
                 f"{_f(p['p50_ms'], 2)} | {_f(p['p99_ms'], 2)} | {srv(p)} | "
                 f"{_f(_max(p.get('rss_mb')))} |" for p in points]
    elif sweep == "keys":
        rows = ["| keys | RSS MiB per node | DB MiB (largest) | load puts/s | snapshot stall ms | "
                "restart: serving s | restart: caught up s |", "|---|---|---|---|---|---|---|"]
        rows += [f"| {p['keys']:,} | {' / '.join(_f(v) for v in p['rss_mb'].values())} | "
                 f"{_f(_max(p.get('db_mb')), 1)} | {_f(p.get('load_puts_per_s'))} | "
                 f"{_f(p.get('snapshot_stall_ms'), 1)} | {_f(p.get('restart_serving_s'), 2)} | "
                 f"{_f(p.get('restart_caught_up_s'), 2)} |" for p in points]
    elif sweep == "watchers":
        rows = ["| watchers (clients) | writes/s | events/s | delivery p50 ms | p99 ms | lost | "
                "server CPU µs/event |", "|---|---|---|---|---|---|---|"]
        rows += [f"| {p['watchers']} ({p['watch_conns']}) | {_f(p['write_rate'])} | "
                 f"{_f(p['events_per_s'])} | {_f(p['delivery_p50_ms'], 2)} | "
                 f"{_f(p['delivery_p99_ms'], 2)} | {p['lost']} | {srv(p)} |" for p in points]
    elif sweep == "locks":
        rows = ["| held locks | leader CPU % of a core | busiest follower % | holders % | "
                "leader RSS MiB | locks lost |", "|---|---|---|---|---|---|"]
        rows += [f"| {p['held_locks']:,} | {_f(p['leader_cpu_pct'], 1)} | "
                 f"{_f(p['follower_cpu_pct'], 1)} | {_f(p['holders_cpu_pct'], 1)} | "
                 f"{_f(p.get('leader_rss_mb'))} | {_f(p.get('lost_locks'))} |" for p in points]
    else:   # nodes
        rows = ["| nodes | seq_put ops/s [p50 ms] | put_tp ops/s [p99 ms] | get_tp ops/s [p99 ms] | "
                "put_tp server CPU µs/op |", "|---|---|---|---|---|"]
        for p in points:
            t = p["tests"]
            sp, pt, gt = (t.get(k, {}) for k in ("seq_put", "put_tp", "get_tp"))
            rows.append(f"| {p['nodes']} | {_f(sp.get('ops_per_s'))} [{_f(sp.get('p50_ms'), 2)}] | "
                        f"{_f(pt.get('ops_per_s'))} [{_f(pt.get('p99_ms'), 1)}] | "
                        f"{_f(gt.get('ops_per_s'))} [{_f(gt.get('p99_ms'), 1)}] | "
                        f"{_f(pt.get('server_cpu_us_per_op'))} |")
    return rows


def _note(name: str, plan: dict[str, Any]) -> str:
    """How the sweep's less obvious figures are taken."""
    if name == "keys":
        every = plan.get("snapshot_every")
        return ("RSS: VmRSS of each node once all have applied the load. Snapshot stall: a "
                "sequential writer's slowest put in the batch of 25 during which the leader took "
                "a snapshot, less its median put"
                + (f" (snapshots every {every:,} entries in this sweep; the default is 10,000)"
                   if every else " (snapshots every 10,000 entries, the default)")
                + ". Restart: a follower stopped with SIGTERM and started again; serving = it "
                "answers `status`, caught up = it has applied the commit index from before "
                "the stop.")
    if name == "locks":
        return (f"CPU over {plan.get('idle_s', 0):.1f} s with no client traffic but the "
                "keepalives (ttl 10 s: one per lock every 3.3 s), starting "
                f"{plan.get('warmup_s', 0):.1f} s after the last grant. Locks lost: holders' "
                "keepalives that failed (a lost lock is no longer kept alive, so its cost is "
                "missing from the figure).")
    if name == "watchers":
        return ("Watchers spread over at most 100 clients (one watch long-poll per client); "
                "delivery latency is from the writer's send to the watcher's receipt, in one process.")
    return ""


def markdown(doc: dict[str, Any], plots: bool) -> str:
    sweeps = doc.get("sweeps", {})
    lines = ["# How coordsvc's cost grows (`make bench-scale`)", "",
             "Written by `python -m bench.scale` (see its docstring for how each sweep measures). "
             "Benchmarks are not tests: nothing here is asserted. Each section says whether it "
             "comes from the quick sweep (seconds per point, for checking the harness) or the "
             "full one, and how busy the machine was.", "",
             "| target (issue 17) | measured |", "|---|---|"]
    lines += [f"| {t} | {m} |" for t, m in targets(sweeps)]
    for name in ORDER:
        if name not in sweeps:
            continue
        s = sweeps[name]
        lines += ["", f"## {name}: {TITLES[name]}", "", f"_{label(s['meta'])}._", ""]
        note = _note(name, s["meta"].get("plan", {}))
        if note:
            lines += [note, ""]
        if plots:
            lines += [f"![{name}](scale-{name}.png)", ""]
        lines += _table(name, s["points"])
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in ORDER:
        s = doc.get("sweeps", {}).get(name)
        if not s or not s["points"]:
            continue
        pts = s["points"]
        fig, axes = plt.subplots(1, 3 if name == "keys" else 2, figsize=(13 if name == "keys" else 10, 4))
        fig.suptitle(f"{TITLES[name]}\n{label(s['meta'])}", fontsize=9)
        _draw(name, pts, axes, plt)
        for ax in axes:
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / f"scale-{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _draw(name: str, pts: list[dict[str, Any]], axes: Any, plt: Any) -> None:
    a, b = axes[0], axes[1]
    if name in ("clients", "values"):
        xk = "clients" if name == "clients" else "value_bytes"
        xs = [p[xk] for p in pts]
        if name == "clients":
            a.plot(xs, [p["ops_per_s"] for p in pts], "o-", label="puts/s")
            a.set_ylabel("puts/s")
        else:
            a.plot(xs, [p["mib_per_s"] for p in pts], "o-", label="MiB/s")
            a.set_ylabel("MiB/s (ops/s on the labels)")
            for p in pts:
                a.annotate(f"{p['ops_per_s']:.0f}/s", (p[xk], p["mib_per_s"]), fontsize=7)
        b.plot(xs, [p["p99_ms"] for p in pts], "o-", label="p99")
        b.plot(xs, [p["p50_ms"] for p in pts], "s--", label="p50")
        b.set_ylabel("put latency, ms")
        b.legend()
        for ax in (a, b):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients" if name == "clients" else "value size, bytes")
    elif name == "keys":
        c = axes[2]
        xs = [p["keys"] for p in pts]
        for node in pts[0]["rss_mb"]:
            a.plot(xs, [p["rss_mb"].get(node) for p in pts], "o-", label=node)
        a.axhline(TARGET_RSS_MB, ls="--", color="red", label=f"target at 1M keys ({TARGET_RSS_MB:.0f} MB)")
        a.set_ylabel("RSS per node, MiB")
        a.legend(fontsize=7)
        b.plot(xs, [p.get("restart_caught_up_s") for p in pts], "o-", label="caught up")
        b.plot(xs, [p.get("restart_serving_s") for p in pts], "s--", label="serving")
        b.axhline(TARGET_RESTART_S, ls="--", color="red", label=f"target at 1M keys ({TARGET_RESTART_S:.0f} s)")
        b.set_ylabel("follower restart, s")
        b.legend(fontsize=7)
        c.plot(xs, [p.get("snapshot_stall_ms") for p in pts], "o-")
        c.set_ylabel("write stall during a snapshot, ms")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("stored keys (64 B values)")
    elif name == "watchers":
        xs = [p["watchers"] for p in pts]
        a.plot(xs, [p["events_per_s"] for p in pts], "o-")
        a.set_ylabel("events delivered/s")
        b.plot(xs, [p["delivery_p99_ms"] for p in pts], "o-", label="p99")
        b.plot(xs, [p["delivery_p50_ms"] for p in pts], "s--", label="p50")
        b.set_ylabel("delivery latency, ms")
        b.legend()
        for ax in (a, b):
            ax.set_xscale("log")
            ax.set_xlabel("watchers")
    elif name == "locks":
        xs = [max(p["held_locks"], 0) for p in pts]
        a.plot(xs, [p["leader_cpu_pct"] for p in pts], "o-", label="leader")
        a.plot(xs, [p["follower_cpu_pct"] for p in pts], "s--", label="busiest follower")
        a.axhline(TARGET_LEADER_CPU_PCT, ls="--", color="red",
                  label=f"target at 10,000 locks ({TARGET_LEADER_CPU_PCT:.0f} %)")
        a.set_ylabel("CPU at idle, % of one core")
        a.legend(fontsize=7)
        b.plot(xs, [p["holders_cpu_pct"] for p in pts], "o-")
        b.set_ylabel("holder processes' CPU, % of one core")
        for ax in (a, b):
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0)
            ax.set_xlabel("held locks")
    else:   # nodes
        ns = [str(p["nodes"]) for p in pts]
        for i, (t, key) in enumerate((("put_tp", "ops_per_s"), ("get_tp", "ops_per_s"))):
            a.bar([x + i * 0.4 for x in range(len(ns))],
                  [p["tests"].get(t, {}).get(key) or 0 for p in pts], width=0.4, label=t)
        a.set_xticks([x + 0.2 for x in range(len(ns))], [f"{n} nodes" for n in ns])
        a.set_ylabel("ops/s")
        a.legend()
        for i, t in enumerate(("seq_put", "put_tp")):
            b.bar([x + i * 0.4 for x in range(len(ns))],
                  [p["tests"].get(t, {}).get("p50_ms") or 0 for p in pts], width=0.4, label=f"{t} p50")
        b.set_xticks([x + 0.2 for x in range(len(ns))], [f"{n} nodes" for n in ns])
        b.set_ylabel("ms")
        b.legend()


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    """scale.md and the PNGs (when matplotlib is installed) under ``out``."""
    try:
        written = plot(doc, out)
        plots = True
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        written, plots = [], False
    md = out / "scale.md"
    md.write_text(markdown(doc, plots))
    return [md, *written]
