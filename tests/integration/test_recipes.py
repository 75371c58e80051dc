"""Client recipes (CONTRACT §10) against real clusters, under leader kills."""
from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from coordsvc import Client, Event, Leader, Lock, Unavailable
from coordsvc.client import LockInfo

from .harness import LocalCluster


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    cluster.leader()
    c = cluster.client(timeout=10.0)
    yield c
    c.close()


# A process that registers on a lease, says so, and then is SIGKILLed: its keepalives stop.
REGISTRANT = textwrap.dedent("""
    import sys, time
    from coordsvc import Client
    c = Client(sys.argv[1].split(","), timeout=10.0, key=sys.argv[3])
    ls = c.lease(ttl=float(sys.argv[2]))
    c.put("svc/web/n1", "10.0.0.5:80", lease=ls)
    c.put("svc/web/n2", "10.0.0.6:80", lease=ls)
    lk = c.acquire("svc-lock", lease=ls, timeout=10)
    print(ls.id, lk.token, flush=True)
    time.sleep(600)
""")


def test_a_dead_owners_ephemeral_keys_are_deleted_across_a_leader_kill_and_watchers_see_it(
        cluster: LocalCluster, client: Client) -> None:
    ttl = 2.0
    start = client.put("svc/marker", "m")
    w = client.watch("svc/", start_revision=start)
    p = subprocess.Popen([sys.executable, "-c", REGISTRANT, ",".join(cluster.endpoints), str(ttl),
                          str(cluster.key)], stdout=subprocess.PIPE, text=True)
    try:
        lease_id, token = (int(x) for x in p.stdout.readline().split())  # type: ignore[union-attr]
        assert client.get("svc/web/n1") is not None
        p.kill()
        p.wait()
        cluster.kill(cluster.leader())
        # The new leader restarts the lease's clock at its takeover, then expires it.
        seen: list[Event] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(e.type == "delete" for e in seen) < 2:
            ev = w.next(timeout=1.0)
            if ev is not None:
                seen.append(ev)
        w.close()
        assert [(e.type, e.key) for e in seen] == [
            ("put", "svc/marker"), ("put", "svc/web/n1"), ("put", "svc/web/n2"),
            ("delete", "svc/web/n1"), ("delete", "svc/web/n2")], seen
        assert client.get("svc/web/n1") is None and client.get("svc/web/n2") is None
        assert client.get("svc/marker") is not None
        # The lock on the lease went with it: the next acquire gets a larger token.
        lk = client.acquire("svc-lock", ttl=5.0, timeout=10)
        assert lk.token > token
        lk.release()
        assert lease_id not in {i.holder_session for i in client.locks()}
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]


def test_a_kept_lease_survives_a_leader_kill_and_revoke_deletes_its_keys(
        cluster: LocalCluster, client: Client) -> None:
    lost: list[object] = []
    ls = client.lease(ttl=3.0, on_lost=lost.append)
    client.put("reg/a", "1", lease=ls)
    lk = client.acquire("reg-lock", lease=ls, timeout=0)
    cluster.kill(cluster.leader())
    time.sleep(3.0 + 2.0)     # longer than the ttl plus an election: a dropped lease would show
    e = client.get("reg/a")
    assert e is not None and e.value == b"1" and not lost and ls.alive and lk.held
    ls.revoke()
    assert client.get("reg/a") is None and lk.released
    assert "reg-lock" not in {i.name for i in client.locks()}


def test_concurrent_txns_move_value_atomically_across_a_leader_kill(cluster: LocalCluster,
                                                                     client: Client) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    total = 100
    ok, first = client.txn(compare=[("acct/a", 0), ("acct/b", 0)],
                           success=[("put", "acct/a", "50"), ("put", "acct/b", "50")])
    assert ok
    stop = threading.Event()
    committed: list[int] = []
    problems: list[str] = []

    def mover(i: int) -> None:
        rng = random.Random(seed + i)
        with cluster.client(timeout=10.0) as c:
            while not stop.is_set():
                try:
                    lst = {e.key: e for e in c.list("acct/")}
                    a, b = lst["acct/a"], lst["acct/b"]
                    amount = rng.randint(-10, 10)
                    done, rev = c.txn(
                        compare=[("acct/a", a.revision), ("acct/b", b.revision)],
                        success=[("put", "acct/a", str(int(a.value) - amount)),
                                 ("put", "acct/b", str(int(b.value) + amount))])
                except Unavailable:
                    continue    # the outcome is unknown; the compares keep it atomic either way
                if done:
                    committed.append(rev)

    def auditor() -> None:
        with cluster.client(timeout=10.0) as c:
            while not stop.is_set():
                try:
                    lst = {e.key: e for e in c.list("acct/")}
                except Unavailable:
                    continue
                a, b = lst["acct/a"], lst["acct/b"]
                if int(a.value) + int(b.value) != total or a.revision != b.revision:
                    problems.append(f"torn read: {a} {b}")

    threads = [threading.Thread(target=mover, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=auditor))
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(committed) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.kill(cluster.leader())
        target = len(committed) + 30
        while len(committed) < target and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems[:3]
    assert len(committed) >= 60, f"only {len(committed)} transactions committed"
    ha = {e.revision: e for e in client.history("acct/a")}
    hb = {e.revision: e for e in client.history("acct/b")}
    assert set(ha) == set(hb), "a transaction wrote one key without the other"
    # The history keeps the newest 64 versions of a key: every commit since its start is in it.
    assert {r for r in committed if r >= min(ha)} <= set(ha)
    assert len(set(committed)) == len(committed)
    assert all(int(ha[r].value) + int(hb[r].value) == total for r in ha)
    assert min(ha) >= first


def test_a_semaphore_and_an_rwlock_stay_exclusive_and_fifo_across_a_leader_kill(
        cluster: LocalCluster, client: Client) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    mu = threading.Lock()
    inside = {"slots": 0, "readers": 0, "writers": 0}
    worst = {"slots": 0, "mixed": 0}
    tokens: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        try:
            with cluster.client(timeout=10.0) as c:
                rw = c.rwlock("schema")
                while not stop.is_set():
                    try:
                        if rng.random() < 0.5:
                            with c.semaphore("batch", limit=2, ttl=5.0, timeout=20.0) as slot:
                                with mu:
                                    inside["slots"] += 1
                                    worst["slots"] = max(worst["slots"], inside["slots"])
                                    tokens.append(slot.token)
                                time.sleep(rng.uniform(0, 0.05))
                                with mu:
                                    inside["slots"] -= 1
                        else:
                            mode = "writers" if rng.random() < 0.3 else "readers"
                            hold = rw.write(ttl=5.0, timeout=20.0) if mode == "writers" else \
                                rw.read(ttl=5.0, timeout=20.0)
                            with hold:
                                with mu:
                                    inside[mode] += 1
                                    if inside["writers"] and (inside["writers"] > 1 or inside["readers"]):
                                        worst["mixed"] += 1
                                time.sleep(rng.uniform(0, 0.05))
                                with mu:
                                    inside[mode] -= 1
                    except Unavailable:
                        continue
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(tokens) < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.kill(cluster.leader())
        target = len(tokens) + 15
        while len(tokens) < target and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert worst["slots"] <= 2 and worst["mixed"] == 0
    assert len(tokens) >= 30 and len(set(tokens)) == len(tokens)
    assert [i for i in client.locks() if i.name in ("batch", "schema")] == []


def test_contract_section_10_snippet_runs_as_written(cluster: LocalCluster) -> None:
    cluster.leader()
    c = cluster.client(timeout=10.0)
    path = cluster.file
    # -- CONTRACT §10, verbatim but for `...` bodies and the endless observe loop --------
    with c.lease(ttl=10.0) as ls:                     # kept alive in the background; ls.id
        c.put("svc/web/n1", "10.0.0.5:80", lease=ls)   # ephemeral: deleted when the lease ends
        assert ls.valid_until > time.monotonic()       # monotonic time the lease is surely alive until
        with c.lock("deploy", lease=ls, timeout=30.0):
            assert c.get("svc/web/n1") is not None
    ls.revoke()                                        # (leaving the block revokes) deletes its keys,
    assert c.get("svc/web/n1") is None
    el = c.election("scheduler")
    with el.campaign("host-a", ttl=10.0, timeout=None) as term:   # blocks until leader
        assert term.token > 0                          # fencing token, like a lock's
        ld = el.leader()                               # -> Leader(value, token) | None
        assert ld is not None and ld.token == term.token and ld.value == b"host-a"
    for ld in el.observe():
        assert ld is None                              # nobody leads now
        break
    with c.semaphore("batch", limit=4, ttl=10.0, timeout=30.0) as slot:
        assert slot.token > term.token
    rw = c.rwlock("schema")
    with rw.read(ttl=10.0):                            # many readers, or
        pass
    with rw.write(ttl=10.0):                           # one writer; FIFO between them
        pass
    c.put("app/a", "0")
    c.put("app/b", "0")
    a = c.get("app/a")
    assert a is not None
    ok, rev = c.txn(compare=[("app/a", a.revision), ("app/b", 0)],   # key, if_revision
                    success=[("put", "app/a", "x"), ("delete", "app/b")],
                    failure=[])                                     # atomic, all or nothing
    assert not ok                                      # app/b exists: compare failed
    ok, rev = c.txn(compare=[("app/a", a.revision)], success=[("put", "app/a", "x"), ("delete", "app/b")])
    assert ok and c.get("app/a").revision == rev and c.get("app/b") is None  # type: ignore[union-attr]
    from coordsvc.aio import AsyncClient  # the same API with async/await:

    async def main() -> None:
        async with AsyncClient.from_cluster_file(path) as ac:
            await ac.put("k", "v")
            async for ev in ac.watch("k", start_revision=1):
                assert ev.value == b"v"
                break
    asyncio.run(main())
    c.close()


# A candidate that wins, says so, and is then SIGKILLed: its term ends with its lease.
CANDIDATE = textwrap.dedent("""
    import sys, time
    from coordsvc import Client
    c = Client(sys.argv[1].split(","), timeout=10.0, key=sys.argv[2])
    term = c.election("sched").campaign("host-a", ttl=2.0, timeout=30)
    print(term.token, flush=True)
    time.sleep(600)
""")


def test_an_election_fails_over_in_order_across_a_leader_kill(cluster: LocalCluster,
                                                              client: Client) -> None:
    el = client.election("sched")
    seen: list[Leader | None] = []
    done, watching = threading.Event(), threading.Event()

    def follow() -> None:
        with cluster.client(timeout=10.0) as oc:
            for ld in oc.election("sched").observe():
                seen.append(ld)
                watching.set()
                if ld is not None and ld.value == b"host-b":
                    done.set()
                    return
    watcher = threading.Thread(target=follow)
    watcher.start()
    assert watching.wait(30.0)            # it saw nobody leading: every change is ahead
    p = subprocess.Popen([sys.executable, "-c", CANDIDATE, ",".join(cluster.endpoints),
                          str(cluster.key)], stdout=subprocess.PIPE, text=True)
    try:
        first = int(p.stdout.readline())  # type: ignore[union-attr]
        p.kill()                          # the leader dies; its lease expires
        p.wait()
        cluster.kill(cluster.leader())    # and so does the cluster's leader
        with el.campaign("host-b", ttl=5.0, timeout=30.0) as term:
            assert term.token > first
            ld = el.leader()
            assert ld is not None and (ld.value, ld.token) == (b"host-b", term.token)
            assert done.wait(30.0), seen
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        watcher.join(30.0)
    # A's lease may expire before B queues (then nobody leads for a while) or after.
    assert seen in ([None, Leader(b"host-a", first), Leader(b"host-b", term.token)],
                    [None, Leader(b"host-a", first), None, Leader(b"host-b", term.token)]), seen


# A holder that takes "deploy" with a lock-delay, says so, and is then SIGKILLed: its
# keepalives stop, so its session expires -- an involuntary release.
DELAYED_HOLDER = textwrap.dedent("""
    import sys, time
    from coordsvc import Client
    c = Client(sys.argv[1].split(","), timeout=10.0, key=sys.argv[2])
    lk = c.acquire("deploy", ttl=1.0, lock_delay=float(sys.argv[3]), timeout=10)
    print(lk.session_id, lk.token, flush=True)
    time.sleep(600)
""")
LOCK_DELAY_S = 1.5
# How much sooner than expiry + delay a grant may seem to come: the latency of the one
# listing that bounds the grant's time (the leader's age of it is exact).
GRANT_MARGIN_S = 0.3


def _lock_row(c: Client, name: str) -> LockInfo | None:
    return next((i for i in c.locks() if i.name == name), None)


def _queue_waiter(waiter: Client, name: str, lister: Client) -> tuple[
        threading.Thread, list[Lock], threading.Event]:
    """A thread acquiring ``name`` with ``waiter``: it puts the lock in the list and sets
    the event. Returns once ``lister``'s listing shows it queued."""
    got: list[Lock] = []
    granted = threading.Event()

    def wait() -> None:
        got.append(waiter.acquire(name, ttl=5.0, timeout=20.0))
        granted.set()
    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 10.0
    while not ((row := _lock_row(lister, name)) is not None and row.waiters):
        assert time.monotonic() < deadline and t.is_alive(), f"the waiter never queued: {row}"
        granted.wait(0.02)
    return t, got, granted


def _expire_during_delay(cluster: LocalCluster, client: Client, kill_leader: bool) -> None:
    """A holder with a lock-delay dies; its session expires; a queued waiter gets the lock
    only after the delay. With ``kill_leader`` the cluster's leader is SIGKILLed during the
    delay: the new leader restarts it at its takeover, never shortening it."""
    p = subprocess.Popen([sys.executable, "-c", DELAYED_HOLDER, ",".join(cluster.endpoints),
                          str(cluster.key), str(LOCK_DELAY_S)], stdout=subprocess.PIPE, text=True)
    waiter = cluster.client(timeout=10.0)
    t: threading.Thread | None = None
    killed_at: float | None = None
    try:
        holder, first = (int(x) for x in p.stdout.readline().split())  # type: ignore[union-attr]
        t, got, granted = _queue_waiter(waiter, "deploy", client)
        p.kill()
        p.wait()
        # The listing shows the dead holder, then nobody (its session expired: the delay),
        # then the waiter.
        seen: list[tuple[float, float, int]] = []      # (asked, answered, holder session)
        deadline = time.monotonic() + 20.0
        while not granted.wait(0.02):
            asked = time.monotonic()
            row = _lock_row(client, "deploy")
            assert row is not None and asked < deadline, seen[-5:]
            seen.append((asked, time.monotonic(), row.holder_session))
            if kill_leader and killed_at is None and row.holder_session == 0:
                cluster.kill(cluster.leader())
                killed_at = time.monotonic()
        got_at = time.monotonic()
        t.join()
        (lk,) = got
        # The leader says how long ago it granted: the grant came no sooner than this.
        asked = time.monotonic()
        row = _lock_row(client, "deploy")
        assert row is not None and row.age_s is not None
        assert (row.holder_session, row.token) == (lk.session_id, lk.token) and lk.token > first
        granted_from = asked - row.age_s
        order = list(dict.fromkeys(h for _, _, h in seen))
        assert order in ([holder, 0], [holder, 0, lk.session_id]), order
        alive = [a for a, _, h in seen if h == holder]
        delayed = [done for _, done, h in seen if h == 0]
        timing = (f"lock-delay {LOCK_DELAY_S} s: granted no sooner than "
                  f"{granted_from - alive[-1]:.3f} s after the last listing of the dead "
                  f"holder, by {got_at - delayed[0]:.3f} s after the first listing of the delay")
        if killed_at is not None:
            timing += f", {granted_from - killed_at:.3f} s after the leader was killed"
        print(timing)
        # The session expired after the last listing that still showed it: not granted
        # before that plus the delay ...
        assert granted_from - alive[-1] >= LOCK_DELAY_S - GRANT_MARGIN_S, timing
        if killed_at is None:
            # ... and granted soon after the delay, which began before its first listing.
            assert got_at - delayed[0] < LOCK_DELAY_S + 2.0, timing
        else:
            # ... nor before the new leader (elected after the kill) waited the whole
            # delay again; and soon after that (an election takes at most a few seconds).
            assert granted_from - killed_at >= LOCK_DELAY_S - GRANT_MARGIN_S, timing
            assert got_at - killed_at < LOCK_DELAY_S + 6.0, timing
        lk.release()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        waiter.close()
        if t is not None:
            t.join(30.0)


def test_an_expired_holders_lock_stays_unavailable_for_its_lock_delay_then_goes_to_the_waiter(
        cluster: LocalCluster, client: Client) -> None:
    _expire_during_delay(cluster, client, kill_leader=False)


def test_a_lock_delay_is_never_shortened_by_a_leader_kill(cluster: LocalCluster,
                                                          client: Client) -> None:
    _expire_during_delay(cluster, client, kill_leader=True)


def test_a_voluntary_release_frees_the_lock_at_once_despite_its_lock_delay(
        cluster: LocalCluster, client: Client) -> None:
    delay_s = 5.0
    waiter = cluster.client(timeout=10.0)
    t: threading.Thread | None = None
    try:
        mine = client.acquire("migrate", ttl=5.0, lock_delay=delay_s, timeout=0)
        t, got, granted = _queue_waiter(waiter, "migrate", client)
        released_at = time.monotonic()
        mine.release()
        assert granted.wait(delay_s / 2), "the waiter waited as if the session had expired"
        assert time.monotonic() - released_at < 1.0
        t.join()
        assert got[0].token > mine.token
        got[0].release()
    finally:
        waiter.close()
        if t is not None:
            t.join(30.0)
