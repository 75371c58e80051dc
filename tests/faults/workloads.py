"""Client workloads: threads with their own Client each, recording every op in a History.

Each workload has the same shape: ``start()`` launches its threads, ``stop()`` asks them to
finish the op in hand and joins them, ``finish(client)`` does the final reads after the
cluster has been healed, and ``check()`` returns human-readable problems (empty: passed).

Outcome mapping (history.py): an answer is ``ok``; an error that guarantees nothing was
written (CompareFailed, FenceRejected) is ``fail``; Unavailable, a timeout or anything else is
``unknown`` -- the write may apply at any later time or never.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordsvc import (
    Client,
    Compacted,
    CompareFailed,
    CoordError,
    FenceRejected,
    LockTimeout,
    clusterfile,
)
from coordsvc.fencing import fenced_write

from .checks import CriticalSection, Watcher, WatchEvent, check_fencing, check_watch
from .history import History

__all__ = ["Workload", "RegisterWorkload", "LockWorkload", "WatchWorkload", "WORKLOADS"]

CLIENT_TIMEOUT_S = 2.5
FINAL_PROCESS = 10_000   # process id of the runner's final reads


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class Workload:
    """Base: threads, a stop flag, the shared history and a per-workload RNG."""

    name = "base"

    def __init__(self, endpoints: list[str], history: History, rng: random.Random,
                 workdir: Path, log: Callable[[str], None] = print,
                 key: Path | None = None, cluster_file: Path | None = None) -> None:
        self.endpoints = endpoints
        self.key = key   # the client key file (None: an insecure cluster)
        # Clients are made from the cluster file when there is one: the membership nemesis
        # replaces nodes with new keys, which a client learns from the file it was made from.
        self.cluster_file = cluster_file
        self.history = history
        self.rng = rng
        self.workdir = workdir
        self.log = log
        self.stopping = threading.Event()
        self.aborting = threading.Event()   # a failed run: stop at once, no catching up
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self._clients: list[Client] = []
        self._mu = threading.Lock()

    def client(self, timeout_s: float = CLIENT_TIMEOUT_S,
               endpoints: list[str] | None = None) -> Client:
        eps = endpoints or self.endpoints
        target: list[str] | clusterfile.Cluster = eps
        if self.cluster_file is not None:
            whole = clusterfile.load(self.cluster_file)
            target = dataclasses.replace(whole, nodes=tuple(n for n in whole.nodes if n.address in eps))
        c = Client(target, timeout=timeout_s, key=self.key)
        with self._mu:
            self._clients.append(c)
        return c

    def spawn(self, name: str, fn: Callable[[int, random.Random], None], process: int) -> None:
        # Each thread gets its own RNG, seeded from the run's RNG in a fixed order.
        rng = random.Random(self.rng.getrandbits(64))

        def body() -> None:
            try:
                fn(process, rng)
            except Exception as e:  # a harness bug: report it, never hide it
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
                self.log(f"[{self.name}] thread {name} crashed: {type(e).__name__}: {e}")

        t = threading.Thread(target=body, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, join_s: float = 30.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + join_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            self.errors.append(f"threads still running {join_s:.0f}s after stop: {alive}")

    def abort(self) -> None:
        self.stopping.set()
        self.aborting.set()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def finish(self, client: Client) -> None:
        """Final reads after healing (the runner's fresh client)."""

    def check(self) -> list[str]:
        return []

    def stats(self) -> str:
        return ""

    def close(self) -> None:
        with self._mu:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:
                pass


# -- register ------------------------------------------------------------------------------

class RegisterWorkload(Workload):
    """get / put / cas / delete on a handful of keys from several clients.

    Values are unique ("p3-17"), so a value names the write that produced it, and a cas by
    revision (what the service offers) is a cas by value (what the model checks): it reads
    (value, revision) with ``get`` and then ``put(if_revision=revision)``, recorded as
    ``cas(expected_value, new_value)``; an absent key is expected ``None`` / ``if_revision=0``.

    Keys live for ``generation_s`` and are then replaced by fresh ones, which bounds each
    key's history -- and with it the checker's search, which unknown writes widen.
    """

    name = "register"

    def __init__(self, *args: object, clients: int = 8, keys: int = 5,
                 generation_s: float = 10.0, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.n_clients = clients
        self.n_keys = keys
        self.generation_s = generation_s
        self.keys_used: set[str] = set()
        self._t0 = 0.0

    def _key(self, rng: random.Random) -> str:
        gen = int((time.monotonic() - self._t0) / self.generation_s)
        key = f"reg/g{gen}/k{rng.randrange(self.n_keys)}"
        with self._mu:
            self.keys_used.add(key)
        return key

    def start(self) -> None:
        self._t0 = time.monotonic()
        for p in range(self.n_clients):
            self.spawn(f"register-{p}", self._loop, p)

    def _loop(self, p: int, rng: random.Random) -> None:
        # Half the clients know a single node (as a client configured with "its" node
        # would): while that node is paused or cut off they keep asking it, so if it wakes
        # up still believing it leads, they are the ones it may answer from stale state.
        # (It still redirects them to the leader it knows of.)
        bound = p % 2 == 1
        c = self.client(endpoints=[self.endpoints[(p // 2) % len(self.endpoints)]] if bound else None)
        h = self.history
        n = 0
        while not self.stopping.is_set():
            n += 1
            key = self._key(rng)
            value = f"p{p}-{n}"
            r = rng.random()
            if r < 0.40:
                self._get(c, p, key)
            elif r < 0.70:
                op = h.invoke(p, "put", key, value)
                try:
                    h.ok(op, c.put(key, value))
                except CoordError:
                    h.unknown(op)
            elif r < 0.95:
                got = self._get(c, p, key)
                if got is None:
                    continue
                expected, revision = got
                op = h.invoke(p, "cas", key, (expected, value))
                try:
                    h.ok(op, c.put(key, value, if_revision=revision))
                except CompareFailed:
                    h.fail(op)
                except CoordError:
                    h.unknown(op)
            else:
                op = h.invoke(p, "delete", key)
                try:
                    h.ok(op, c.delete(key))
                except CoordError:
                    h.unknown(op)

    def _get(self, c: Client, p: int, key: str) -> tuple[str | None, int] | None:
        op = self.history.invoke(p, "get", key)
        try:
            e = c.get(key)
        except CoordError:
            self.history.unknown(op)
            return None
        value = None if e is None else _text(e.value)
        self.history.ok(op, value)
        return value, (0 if e is None else e.revision)

    def finish(self, client: Client) -> None:
        # One linearizable read of every key, recorded: a write lost in a crash or a
        # leader change then shows up as a non-linearizable history, not just as a diff.
        for key in sorted(self.keys_used):
            self._get(client, FINAL_PROCESS, key)


# -- lock ------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Tenure:
    holder: str
    token: int
    start_ns: int
    last_accepted_invoke_ns: int | None = None
    first_accepted_revision: int | None = None
    rejected_after_zombie: int = 0
    zombie: bool = False


class LockWorkload(Workload):
    """Clients take turns on one lock and write their token into two fenced resources.

    1. the service's own key ``lock/data``, with ``put(..., fence=lk)`` -- accepted only while
       ``lk.token`` is the lock's current grant, so an accepted write proves the holder held
       the lock at some instant inside the put's interval (check_fencing's premise);
    2. a SQLite file through ``coordsvc.fencing.fenced_write``, which keeps the highest token
       seen and logs every accepted write; tokens in that log must never decrease and each
       token must belong to one holder.

    Some holders turn into zombies: they stop their keepalives (a process stalled past its
    ttl), sleep past the ttl while the lock passes on, then write again with the old token --
    both resources must refuse.
    """

    name = "lock"
    LOCK = "fault-lock"
    KEY = "lock/data"
    RESOURCE = "fault-resource"

    def __init__(self, *args: object, clients: int = 5, ttl_s: float = 2.0,
                 zombie_rate: float = 0.15, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.n_clients = clients
        self.ttl_s = ttl_s
        self.zombie_rate = zombie_rate
        self.db = self.workdir / "fenced.sqlite"
        self.tenures: list[_Tenure] = []
        self.sqlite_accepted = 0
        self.sqlite_rejected = 0
        self.acquire_timeouts = 0
        self.zombies = 0
        with sqlite3.connect(self.db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS writes(seq INTEGER PRIMARY KEY "
                         "AUTOINCREMENT, token INTEGER NOT NULL, holder TEXT NOT NULL)")
        conn.close()

    def start(self) -> None:
        for p in range(self.n_clients):
            self.spawn(f"lock-{p}", self._loop, p)

    def _sqlite_write(self, conn: sqlite3.Connection, token: int, holder: str) -> bool:
        try:
            with fenced_write(conn, self.RESOURCE, token) as tx:
                tx.execute("INSERT INTO writes(token, holder) VALUES (?, ?)", (token, holder))
        except FenceRejected:
            with self._mu:
                self.sqlite_rejected += 1
            return False
        with self._mu:
            self.sqlite_accepted += 1
        return True

    def _fenced_put(self, c: Client, p: int, lk: object, tenure: _Tenure, n: int) -> bool:
        value = f"{tenure.holder}:t{tenure.token}:{n}"
        op = self.history.invoke(p, "put", self.KEY, value)
        invoked = time.monotonic_ns()
        try:
            revision = c.put(self.KEY, value, fence=lk)  # type: ignore[arg-type]
        except FenceRejected:
            self.history.fail(op, "fence_rejected")
            return False
        except CoordError:
            self.history.unknown(op)
            return False
        self.history.ok(op, revision)
        tenure.last_accepted_invoke_ns = invoked
        if tenure.first_accepted_revision is None:
            tenure.first_accepted_revision = revision
        return True

    def _loop(self, p: int, rng: random.Random) -> None:
        c = self.client()
        conn = sqlite3.connect(self.db, timeout=30, check_same_thread=False)
        h = self.history
        round_ = 0
        try:
            while not self.stopping.is_set():
                round_ += 1
                holder = f"c{p}.{round_}"
                op = h.invoke(p, "acquire", self.LOCK, holder)
                try:
                    lk = c.acquire(self.LOCK, ttl=self.ttl_s, timeout=4.0)
                except LockTimeout:
                    h.fail(op, "timeout")
                    with self._mu:
                        self.acquire_timeouts += 1
                    continue
                except CoordError:
                    h.unknown(op)
                    continue
                h.ok(op, lk.token)
                tenure = _Tenure(holder, lk.token, time.monotonic_ns())
                with self._mu:
                    self.tenures.append(tenure)
                for n in range(rng.randint(1, 3)):
                    self._fenced_put(c, p, lk, tenure, n)
                    self._sqlite_write(conn, lk.token, holder)
                    time.sleep(rng.uniform(0.01, 0.1))
                if rng.random() < self.zombie_rate and not self.stopping.is_set():
                    # A holder stalled past its ttl: keepalives stop (as if the process
                    # froze), the lock moves on, then the holder wakes and writes again.
                    tenure.zombie = True
                    with self._mu:
                        self.zombies += 1
                    lk._stop_keepalive()
                    time.sleep(self.ttl_s + rng.uniform(1.0, 2.0))
                    self._fenced_put(c, p, lk, tenure, 99)
                    self._sqlite_write(conn, lk.token, holder + "-zombie")
                rel = h.invoke(p, "release", self.LOCK, lk.token)
                try:
                    lk.release()
                    h.ok(rel)
                except CoordError:
                    h.unknown(rel)
                time.sleep(rng.uniform(0.0, 0.05))
        finally:
            conn.close()

    def check(self) -> list[str]:
        problems: list[str] = []
        held = [t for t in self.tenures if t.last_accepted_invoke_ns is not None]
        # Grant order = the log order of each tenure's first accepted fenced put.
        held.sort(key=lambda t: t.first_accepted_revision or 0)
        sections = [CriticalSection(t.token, t.holder, t.start_ns,
                                    max(t.start_ns, t.last_accepted_invoke_ns or t.start_ns))
                    for t in held]
        problems += [f"fencing (service): {p}" for p in check_fencing(sections)]
        tokens = [t.token for t in self.tenures]
        dup = sorted({x for x in tokens if tokens.count(x) > 1})
        if dup:
            problems.append(f"lock tokens granted to more than one tenure: {dup[:10]}")
        conn = sqlite3.connect(self.db)
        try:
            rows = conn.execute("SELECT seq, token, holder FROM writes ORDER BY seq").fetchall()
        finally:
            conn.close()
        owner: dict[int, str] = {}
        for (s1, t1, h1), (s2, t2, h2) in itertools.pairwise(rows):
            if t2 < t1:
                problems.append(f"fencing (sqlite): write #{s2} by {h2} with token {t2} "
                                f"accepted after #{s1} by {h1} with token {t1}")
        for _, token, holder in rows:
            base = holder.removesuffix("-zombie")
            if owner.setdefault(token, base) != base:
                problems.append(f"fencing (sqlite): token {token} written by {owner[token]} "
                                f"and by {base}")
        return problems

    def stats(self) -> str:
        held = sum(1 for t in self.tenures if t.last_accepted_invoke_ns is not None)
        return (f"lock: {len(self.tenures)} tenures ({held} with an accepted fenced put), "
                f"{self.zombies} zombies, {self.acquire_timeouts} acquire timeouts; sqlite "
                f"fence {self.sqlite_accepted} accepted / {self.sqlite_rejected} rejected")


# -- watch -----------------------------------------------------------------------------------

class WatchWorkload(Workload):
    """Writers change keys under ``watch/`` while watchers follow the prefix.

    The run's cluster holds nothing else, so the expected events are exact: after healing,
    ``finish`` reads the final revision R linearizably and drains ``watch(prefix,
    start_revision=first)`` up to R with a fresh client. Cross-checks: those revisions are
    contiguous (every revision is under the prefix), every acknowledged put is among them with
    its value, each key's ``history`` agrees, and every event is a write some client asked
    for. Watchers sometimes drop their client and resume with a new one from
    ``last_revision + 1`` (the start_revision path).
    """

    name = "watch"
    PREFIX = "watch/"

    # The cluster keeps the last 20,000 events (machine.WINDOW_EVENTS); a run must stay well
    # inside that, or a lagging watcher -- and the final drain -- would get Compacted.
    MAX_EVENTS = 12_000

    def __init__(self, *args: object, writers: int = 3, watchers: int = 4, keys: int = 6,
                 duration_s: float = 60.0, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.min_interval_s = writers * duration_s / self.MAX_EVENTS
        self.n_writers = writers
        self.n_watchers = watchers
        self.n_keys = keys
        self.first = 0
        self.final_revision: int | None = None
        self.expected: list[WatchEvent] = []
        self.seen: list[list[WatchEvent]] = [[] for _ in range(watchers)]
        self.acked: list[tuple[int, str, str]] = []
        self.invoked_values: set[str] = set()
        self.resumes = 0
        self.finish_problems: list[str] = []
        self._target = threading.Event()

    def start(self) -> None:
        with self.client(10.0) as c:
            self.first = c.put(self.PREFIX + "start", "start")
        self.acked.append((self.first, self.PREFIX + "start", "start"))
        self.invoked_values.add("start")
        for w in range(self.n_watchers):
            self.spawn(f"watcher-{w}", self._watch_loop, 100 + w)
        for p in range(self.n_writers):
            self.spawn(f"writer-{p}", self._write_loop, p)

    def _write_loop(self, p: int, rng: random.Random) -> None:
        c = self.client()
        h = self.history
        n = 0
        while not self.stopping.is_set():
            n += 1
            started = time.monotonic()
            key = f"{self.PREFIX}k{rng.randrange(self.n_keys)}"
            if rng.random() < 0.9:
                value = f"w{p}-{n}"
                with self._mu:
                    self.invoked_values.add(value)
                op = h.invoke(p, "put", key, value)
                try:
                    rev = c.put(key, value)
                except CoordError:
                    h.unknown(op)
                    continue
                h.ok(op, rev)
                with self._mu:
                    self.acked.append((rev, key, value))
            else:
                op = h.invoke(p, "delete", key)
                try:
                    h.ok(op, c.delete(key))
                except CoordError:
                    h.unknown(op)
            time.sleep(max(rng.uniform(0.0, 0.02),
                           self.min_interval_s - (time.monotonic() - started)))

    def _watch_loop(self, process: int, rng: random.Random) -> None:
        w_index = process - 100
        seen = self.seen[w_index]
        c = self.client()
        watch = c.watch(self.PREFIX, start_revision=self.first)
        while True:
            if self._target.is_set():
                assert self.final_revision is not None
                if watch.last_revision >= self._last_expected():
                    break
            if self.aborting.is_set():
                break
            if self.stopping.is_set() and time.monotonic() > self._give_up_at:
                self.errors.append(f"watcher {w_index} stopped at revision "
                                   f"{watch.last_revision} before catching up")
                break
            try:
                ev = watch.next(timeout=0.5)
            except Compacted as e:
                self.errors.append(f"watcher {w_index}: {e}")
                break
            except CoordError:
                continue   # Unavailable: iterating again resumes without a gap
            if ev is not None:
                seen.append(WatchEvent(ev.revision, ev.key, ev.type,
                                       _text(ev.value) if ev.type == "put" else None))
            if rng.random() < 0.003 and not self.stopping.is_set():
                # Resume elsewhere: a new client, from the revision after the last one seen.
                last = watch.last_revision
                watch.close()
                c.close()
                c = self.client()
                watch = c.watch(self.PREFIX, start_revision=last + 1)
                with self._mu:
                    self.resumes += 1
        watch.close()

    _give_up_at = float("inf")

    def _last_expected(self) -> int:
        return self.expected[-1].revision if self.expected else self.first

    def stop(self, join_s: float = 30.0) -> None:
        # Writers stop now; watchers run until they caught up with finish()'s target.
        self.stopping.set()
        deadline = time.monotonic() + join_s
        for t in self.threads:
            if t.name.startswith("writer"):
                t.join(max(0.0, deadline - time.monotonic()))

    def finish(self, client: Client) -> None:
        r = client.revision()
        self.final_revision = r
        # Drain the whole keyspace, not just the prefix: then every revision first..r must
        # be there (a revision is one key change), which the prefix alone cannot show once
        # the runner's own liveness writes interleave.
        everything = self._drain(client, "", r)
        events = [e for e in everything if e.key.startswith(self.PREFIX)]
        self.expected = events
        problems = self.finish_problems
        revs = [e.revision for e in everything]
        if revs != list(range(self.first, r + 1)):
            missing = sorted(set(range(self.first, r + 1)) - set(revs))
            problems.append(f"the drained revisions {self.first}..{r} are not contiguous "
                            f"(missing {missing[:10]}, {len(revs)} events)")
        prefix_only = self._drain(client, self.PREFIX, events[-1].revision if events else 0)
        if prefix_only != events:
            problems.append(f"watch({self.PREFIX!r}) and watch('') disagree: "
                            f"{len(prefix_only)} vs {len(events)} events")
        by_rev = {e.revision: e for e in events}
        lost = []
        for rev, key, value in sorted(self.acked):
            e = by_rev.get(rev)
            if e is None or e.key != key or e.value != value or e.type != "put":
                lost.append(f"{key}={value!r} at revision {rev} (the stream has {e})")
        if lost:
            problems.append(f"{len(lost)} acknowledged puts are not in the event stream: "
                            + "; ".join(lost[:5]) + (" ..." if len(lost) > 5 else ""))
        phantom = [e for e in events if e.type == "put" and e.value not in self.invoked_values]
        if phantom:
            problems.append(f"{len(phantom)} events carry a value no client wrote: {phantom[:5]}")
        for key in sorted({e.key for e in events}):
            hist = [(ev.revision, ev.type, _text(ev.value) if ev.type == "put" else None)
                    for ev in client.history(key) if self.first <= ev.revision <= r]
            mine = [(e.revision, e.type, e.value) for e in events if e.key == key]
            if hist and mine[-len(hist):] != hist:
                problems.append(f"history({key!r}) disagrees with the watch stream: "
                                f"{hist[-3:]} vs {mine[-3:]}")
        self._give_up_at = time.monotonic() + 20.0
        self._target.set()
        for t in self.threads:
            t.join(max(0.0, self._give_up_at + 5 - time.monotonic()))

    def _drain(self, client: Client, prefix: str, upto: int) -> list[WatchEvent]:
        drain = client.watch(prefix, start_revision=self.first)
        events: list[WatchEvent] = []
        deadline = time.monotonic() + 30
        while drain.last_revision < upto and time.monotonic() < deadline:
            ev = drain.next(timeout=1.0)
            if ev is None:
                continue
            if ev.revision > upto:
                break
            events.append(WatchEvent(ev.revision, ev.key, ev.type,
                                     _text(ev.value) if ev.type == "put" else None))
        drain.close()
        return events

    def check(self) -> list[str]:
        specs = [Watcher(self.PREFIX, self.first, self.final_revision)
                 for _ in range(self.n_watchers)]
        return self.finish_problems + check_watch(self.expected, self.seen, specs)

    def stats(self) -> str:
        return (f"watch: {len(self.expected)} committed events {self.first}..{self.final_revision}, "
                f"{self.n_watchers} watchers saw {[len(s) for s in self.seen]}, "
                f"{self.resumes} resumes, {len(self.acked)} acked puts")


WORKLOADS: dict[str, type[Workload]] = {
    "register": RegisterWorkload, "lock": LockWorkload, "watch": WatchWorkload,
}
