"""The dashboard in a real headless browser (Debian's chromium driven by Playwright),
against a real cluster: what an operator sees, and that values stay hidden without the
admin key. Screenshots go to the test's tmp_path; their paths are printed."""
from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordsvc import Client, LockTimeout, keys

from .harness import LocalCluster

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard test needs Debian's chromium "
                    "(`apt-get install -y chromium`; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `pip install -e '.[test]'`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/api/state", timeout=5) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def _shot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_the_dashboard_shows_the_cluster_locks_keys_and_live_events(
        cluster: LocalCluster, browser: Any, tmp_path: Path) -> None:
    leader = cluster.leader()
    viewer = next(n for n in cluster.ids if n != leader)   # any node shows the whole cluster
    url = cluster.http(viewer)
    holder, waiter = cluster.client(), cluster.client()
    waiting = threading.Thread(target=lambda: _wait_for_lock(waiter), daemon=True)
    try:
        holder.put("app/db_url", "postgres://db/app")
        holder.put("app/feature", "on")
        lk = holder.acquire("deploy", ttl=30.0, timeout=0)
        waiting.start()
        page = browser.new_page(viewport={"width": 1300, "height": 950})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_selector("body[data-loaded=yes]", timeout=15_000)
        # every member, from the one node the browser talks to
        for nid in cluster.ids:
            page.wait_for_selector(f"#nodes tr[data-node={nid}]", timeout=10_000)
        assert page.inner_text("#this-node") == viewer
        assert page.inner_text("#cluster-leader") == leader
        assert "quorum yes" in page.inner_text("#quorum")
        assert "leader" in page.inner_text(f"#nodes tr[data-node={leader}]")
        # the lock with its holder and its waiter
        row = page.wait_for_selector("#locks tr[data-lock=deploy]", timeout=10_000)
        page.wait_for_function(
            "() => !document.querySelector('#locks tr[data-lock=deploy]').innerText.includes('none')",
            timeout=10_000)
        cells = row.inner_text().split("\t")
        assert cells[0] == "deploy" and int(cells[2]) == lk.token
        assert cells[3].strip() != "none"     # the waiting session
        # key names with revisions, values hidden
        key_row = page.wait_for_selector('#keys tr[data-key="app/db_url"]', timeout=10_000)
        assert key_row.inner_text().split("\t")[1] == "1" and "hidden" in key_row.inner_text()
        assert "postgres://db/app" not in page.content()
        # the event tail is live
        holder.put("app/live", "x")
        page.wait_for_function(
            "() => document.querySelector('#events').innerText.includes('app/live')", timeout=10_000)
        assert "value hidden" in page.inner_text("#events")
        _shot(page, tmp_path / "dashboard.png")

        # the admin key shows values (pasted as the whole admin.key file)
        assert cluster.key is not None
        page.fill("#admin-key", cluster.key.read_text())
        page.click("#admin-unlock")
        page.wait_for_selector("body[data-admin=yes]", timeout=10_000)
        page.wait_for_function(
            "() => document.querySelector('#keys tr[data-key=\"app/db_url\"]').innerText"
            ".includes('postgres://db/app')", timeout=10_000)
        assert page.input_value("#admin-key") == ""   # not left on the page
        _shot(page, tmp_path / "dashboard-admin.png")
        page.click("#admin-forget")
        page.wait_for_selector("body[data-admin=no]", timeout=10_000)

        # a member going down shows as unreachable
        other = next(n for n in cluster.ids if n not in (leader, viewer))
        cluster.kill(other)
        page.wait_for_selector(f"#nodes tr.down[data-node={other}]", timeout=15_000)
        assert "unreachable" in page.inner_text(f"#nodes tr[data-node={other}]")
        _shot(page, tmp_path / "dashboard-node-down.png")
        assert errors == [], errors
        page.close()
        lk.release()
    finally:
        holder.close()
        waiter.close()
        waiting.join(10)


def _wait_for_lock(c: Client) -> None:
    try:
        with c.lock("deploy", ttl=30.0, timeout=60.0):
            pass
    except (LockTimeout, Exception):   # the client closes under it at the end of the test
        pass


def test_a_key_that_is_not_the_admin_key_shows_no_values(
        cluster: LocalCluster, browser: Any, tmp_path: Path) -> None:
    cluster.leader()
    with cluster.client() as c:
        c.put("app/secret", "hunter2")
    url = cluster.http(cluster.ids[0])
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector('#keys tr[data-key="app/secret"]', timeout=15_000)
    stranger = tmp_path / "stranger.key"
    keys.write_client_key(stranger, keys.ClientKey("admin", keys.KeyPair.generate(), ()))
    page.fill("#admin-key", stranger.read_text())
    page.click("#admin-unlock")
    page.wait_for_selector("body[data-admin=refused]", timeout=10_000)
    assert "does not accept" in page.inner_text("#admin-status")
    assert "hunter2" not in page.content()
    assert _state(url)["admin"] is False
    _shot(page, tmp_path / "dashboard-refused.png")
    page.close()


def test_chromium_is_the_debian_package() -> None:
    """The browser tests use the system chromium, never a downloaded one."""
    assert shutil.which("chromium") == CHROMIUM or Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)")
