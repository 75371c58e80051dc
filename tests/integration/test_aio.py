"""``coordsvc.aio.AsyncClient`` against a real cluster: the same API on the event loop."""
from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from coordsvc import FenceRejected, InvalidRequest, LockTimeout, PermissionDenied, keys, snapshotfile
from coordsvc.aio import AsyncClient

from .harness import LocalCluster


def test_the_contract_snippet_and_every_recipe_run_on_the_event_loop(cluster: LocalCluster) -> None:
    cluster.leader()
    threads_before = threading.active_count()

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as ac:
            rev = await ac.put("k", "v")
            e = await ac.get("k")
            assert e is not None and e.value == b"v" and e.revision == rev
            seen = []
            async for ev in ac.watch("k", start_revision=rev):
                seen.append(ev)
                if len(seen) == 2:
                    break
                await ac.put("k", "w")
            assert [(ev.value, ev.revision) for ev in seen] == [(b"v", rev), (b"w", rev + 1)]
            ok, trev = await ac.txn(compare=[("k", rev + 1), ("j", 0)],
                                    success=[("put", "k", "x"), ("put", "j", "y")])
            assert ok and (await ac.get("j")).revision == trev  # type: ignore[union-attr]
            # many coroutines share the client's sockets at once
            revs = await asyncio.gather(*(ac.put(f"many/{i}", str(i)) for i in range(20)))
            assert len(set(revs)) == 20 and len(await ac.list("many/")) == 20
            async with ac.lock("deploy", ttl=5.0, timeout=5.0) as lk:
                assert lk.token > 0
                with pytest.raises(LockTimeout):
                    await ac.acquire("deploy", ttl=5.0, timeout=0)
            async with ac.lease(ttl=5.0) as ls:
                await ac.put("svc/n1", "addr", lease=ls)
                async with ac.lock("on-lease", lease=ls, timeout=1.0) as lk2:
                    assert lk2.token > lk.token
            assert await ac.get("svc/n1") is None
            el = ac.election("sched")
            async with el.campaign("host-a", ttl=5.0) as term:
                ld = await el.leader()
                assert ld is not None and (ld.value, ld.token) == (b"host-a", term.token)
            assert await el.leader() is None
        assert threading.active_count() == threads_before   # no thread per call, nor any other

    asyncio.run(main())


def test_an_async_waiter_gets_the_lock_after_a_leader_kill(cluster: LocalCluster) -> None:
    cluster.leader()

    async def main() -> None:
        async with AsyncClient(cluster.endpoints, timeout=10.0, key=cluster.key) as a, \
                AsyncClient(cluster.endpoints, timeout=10.0, key=cluster.key) as b:
            first = await a.acquire("job", ttl=3.0, timeout=0)
            waiter = asyncio.create_task(b.acquire("job", ttl=3.0, timeout=30.0))
            await asyncio.sleep(0)    # let it send; queued before or after the kill, it must get the lock
            cluster.kill(cluster.leader())
            await first.release()
            second = await waiter
            assert second.token > first.token
            await second.release()

    asyncio.run(main())


def test_list_history_and_a_snapshot_put_together_answers_of_several_pages(
        cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.leader()
    big = [bytes([65 + i]) * (1_000_000 + i) for i in range(6)]   # ~6 MiB: several pages

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as ac:
            for i, v in enumerate(big):
                await ac.put(f"big/{i}", v)
            await ac.put("other", "x")
            lst = await ac.list("big/")
            assert [e.key for e in lst] == [f"big/{i}" for i in range(6)]
            assert [e.value for e in lst] == big and not lst.more
            assert lst.revision == await ac.revision()
            one = await ac.list("big/", limit=2, start_after="big/1")
            assert [e.key for e in one] == ["big/2", "big/3"] and one.more
            for v in big:
                await ac.put("hist", v)
            hist = await ac.history("hist")
            assert [ev.value for ev in hist] == big
            assert [ev.revision for ev in hist] == sorted(ev.revision for ev in hist)
            h = await ac.snapshot_save(tmp_path / "state.snap")
            assert h.revision == await ac.revision() and h.keys == 8
            _, state = snapshotfile.load(tmp_path / "state.snap")
            assert [state.get(f"big/{i}").value for i in range(6)] == big  # type: ignore[union-attr]

    asyncio.run(main())


def test_a_semaphore_admits_at_most_its_limit_and_an_rwlock_one_writer_or_many_readers(
        cluster: LocalCluster) -> None:
    cluster.leader()

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as a, \
                AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as b:
            inside, peak, tokens = 0, 0, []

            async def slot(ac: AsyncClient) -> None:
                nonlocal inside, peak
                async with ac.semaphore("pool", limit=2, ttl=5.0, timeout=30.0) as s:
                    inside += 1
                    peak = max(peak, inside)
                    tokens.append(s.token)
                    await asyncio.sleep(0.2)
                    inside -= 1

            await asyncio.gather(*(slot(a if i % 2 else b) for i in range(6)))
            assert peak == 2 and len(set(tokens)) == 6
            with pytest.raises(InvalidRequest):
                a.semaphore("pool", limit=0)
            async with a.semaphore("pool", limit=1, ttl=5.0, timeout=0):
                with pytest.raises(LockTimeout):
                    async with b.semaphore("pool", limit=1, ttl=5.0, timeout=0):
                        pass

            readers = writers = 0
            log: list[tuple[int, int]] = []

            async def hold(ac: AsyncClient, mode: str) -> None:
                nonlocal readers, writers
                rw = ac.rwlock("cfg")
                async with (rw.read(ttl=5.0) if mode == "r" else rw.write(ttl=5.0)):
                    if mode == "r":
                        readers += 1
                    else:
                        writers += 1
                    log.append((readers, writers))
                    await asyncio.sleep(0.2)
                    log.append((readers, writers))
                    if mode == "r":
                        readers -= 1
                    else:
                        writers -= 1

            await asyncio.gather(hold(a, "r"), hold(b, "r"), hold(a, "w"), hold(b, "r"), hold(b, "w"))
            assert all(w == 0 or (w == 1 and r == 0) for r, w in log)
            assert max(r for r, _ in log) >= 2 and max(w for _, w in log) == 1
            async with a.rwlock("cfg").write(ttl=5.0, timeout=0):
                with pytest.raises(LockTimeout):
                    async with b.rwlock("cfg").read(ttl=5.0, timeout=0.5):
                        pass
            async with a.rwlock("cfg").read(ttl=5.0, timeout=0), \
                    b.rwlock("cfg").read(ttl=5.0, timeout=0):
                with pytest.raises(LockTimeout):
                    async with b.rwlock("cfg").write(ttl=5.0, timeout=0):
                        pass
            assert not [lk for lk in await a.locks() if lk.name in ("pool", "cfg")]

    asyncio.run(main())


def test_schemas_locks_status_members_and_auth_through_the_async_client(
        cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.leader()

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as ac:
            await ac.schema_set("svc/", {"type": "object", "required": ["port"]})
            assert json.loads(await ac.schema_get("svc/") or b"") == {
                "type": "object", "required": ["port"]}
            with pytest.raises(InvalidRequest):
                await ac.put("svc/a", '{"host": "x"}')
            await ac.put("svc/a", '{"port": 80}')
            assert await ac.schema_delete("svc/") and not await ac.schema_delete("svc/")
            assert await ac.schema_get("svc/") is None
            await ac.put("svc/b", "not json")

            async with ac.lock("held", ttl=5.0):
                assert [lk.name for lk in await ac.locks() if lk.name == "held"] == ["held"]

            st = await ac.status()
            with cluster.client() as c:
                expected = c.status()
            assert st["cluster"]["leader"] == expected["cluster"]["leader"] is not None
            assert st["cluster"]["members"] == 3 and st["cluster"]["quorum"] is True
            assert sorted(m.id for m in await ac.members()) == sorted(cluster.ids)
            target = next(i for i in cluster.ids if i != st["cluster"]["leader"])
            await ac.transfer_leader(target)
            assert (await ac.membership()).leader == target
            row = await ac.member_add("n9", "tcp://127.0.0.1:1",
                                      public_key=keys.KeyPair.generate().public)
            assert row.id == "n9" and not row.voting       # a learner, never started
            await ac.member_remove("n9")
            assert "n9" not in [m.id for m in await ac.members()]

            pair = keys.KeyPair.generate()
            await ac.auth_add("reader", pair.public, read=["svc/"])
            assert any(p.name == "reader" and p.read == ("svc/",) for p in await ac.auth_list())
            key_file = tmp_path / "reader.key"
            keys.write_client_key(key_file, keys.ClientKey("reader", pair, ()))
            async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0, key=key_file) as rd:
                assert (await rd.get("svc/a")) is not None
                with pytest.raises(PermissionDenied):
                    await rd.put("svc/a", '{"port": 81}')
                with pytest.raises(PermissionDenied):
                    async for _ in rd.watch("other/"):
                        pass
                await ac.auth_remove("reader")
                assert not any(p.name == "reader" for p in await ac.auth_list())
                with pytest.raises(PermissionDenied):
                    await rd.get("svc/a")

    asyncio.run(main())


def test_a_key_the_cluster_rejects_raises_permission_denied_at_once(
        cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.leader()
    stranger = tmp_path / "stranger.key"
    keys.write_client_key(stranger, keys.ClientKey("admin", keys.KeyPair.generate(), ()))

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=30.0, key=stranger) as ac:
            start = time.monotonic()
            with pytest.raises(PermissionDenied):
                await ac.put("k", "v")
            with pytest.raises(PermissionDenied):
                await ac.list("")
            assert time.monotonic() - start < 10.0    # far from the 30 s timeout

    asyncio.run(main())


def test_fenced_writes_and_transactions_with_lease_ops(cluster: LocalCluster) -> None:
    cluster.leader()

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as ac:
            async with ac.lock("leader-lock", ttl=5.0, lock_delay=0.5) as old:
                await ac.put("guarded", "1", fence=old)
            async with ac.lock("leader-lock", ttl=5.0) as new:
                assert new.token > old.token
                with pytest.raises(FenceRejected):
                    await ac.put("guarded", "stale", fence=old)
                with pytest.raises(FenceRejected):
                    await ac.delete("guarded", fence=old)
                ok, _ = await ac.txn(success=[("put", "guarded", "2")], fence=new)
                assert ok and (await ac.get("guarded")).value == b"2"  # type: ignore[union-attr]
            async with ac.lease(ttl=5.0) as ls:
                ok, _ = await ac.txn(compare=[("eph", 0)], success=[("put", "eph", "x", ls)])
                assert ok and await ac.get("eph") is not None
            assert await ac.get("eph") is None

    asyncio.run(main())


def test_on_lost_runs_on_the_loop_when_the_cluster_is_away_past_the_ttl(cluster: LocalCluster) -> None:
    cluster.leader()

    async def main() -> None:
        async with AsyncClient.from_cluster_file(cluster.file, timeout=10.0) as ac:
            lost: list[str] = []
            lease_lost = asyncio.Event()

            async def on_lease_lost(ls: object) -> None:     # a coroutine: run as a task
                lost.append("lease")
                lease_lost.set()

            lk = await ac.acquire("guard", ttl=1.5, timeout=0, on_lost=lambda lk: lost.append(lk.name))
            ls = await ac.lease(ttl=1.5, on_lost=on_lease_lost).open()
            for n in cluster.ids:
                cluster.signal(n, signal.SIGSTOP)
            try:
                await asyncio.wait_for(lease_lost.wait(), 10.0)
                await asyncio.sleep(0.1)
            finally:
                for n in cluster.ids:
                    cluster.signal(n, signal.SIGCONT)
            assert sorted(lost) == ["guard", "lease"] and lk.lost and ls.lost

    asyncio.run(main())
