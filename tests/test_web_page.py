"""The status page in a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.browser import browser
from tests.haproxy_proc import Backend
from tests.process import exporter
from tests.servers import unused_port

# A progress badge's text each time the page renders that row (rows are rebuilt on render).
RECORD_PROGRESS = """(id) => {
  window.seen = [];
  const record = () => {
    const badge = document.querySelector(`tr[data-id="${CSS.escape(id)}"] .progress`);
    const text = badge ? badge.textContent : null;
    if (text !== null && window.seen[window.seen.length - 1] !== text) window.seen.push(text);
  };
  record();
  new MutationObserver(record).observe(document.getElementById("apps"),
    {childList: true, subtree: true});
  window.notReloaded = true;
}"""


@contextlib.asynccontextmanager
async def running(backend: Backend) -> AsyncIterator[Backend]:
    await backend.start()
    try:
        yield backend
    finally:
        await backend.kill()


async def wait_until(page: Any, expression: str, arg: object = None) -> None:
    await page.wait_for_function(expression, arg=arg, timeout=20_000)


async def test_status_page_follows_a_killed_backend_down_and_back_without_reloading(
    tmp_path: Path,
):
    web_backend, other = Backend("web"), Backend("evil")
    port = web_backend.port
    entries = [
        {"id": "web-1", "app": "web", "ip": "127.0.0.1", "port": port},
        {"id": "web-2", "app": "web", "ip": "127.0.0.1", "port": port, "path": "/"},
        {"id": "xss", "app": "evil", "ip": "127.0.0.1", "port": other.port,
         "path": "/health?<script>document.title='pwned'</script>"},
    ]  # fmt: skip
    env = {
        "HEALTHCHECK_INTERVAL": "600ms",  # well over the page's 200 ms between polls
        "HEALTHCHECK_TIMEOUT": "1s",
        "HEALTHCHECK_FALL": "3",
        "HEALTHCHECK_RISE": "2",
        "HEALTHCHECK_PANIC_THRESHOLD": "50%",  # with both web targets down, web is in panic
        "HEALTHCHECK_TARGETS": json.dumps(entries),
    }
    async with (
        running(web_backend) as srv,
        running(other),
        exporter(env) as proc,
        browser() as chromium,
    ):
        page = await chromium.new_page()  # type: ignore[attr-defined]
        problems: list[str] = []
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        response = await page.goto(proc.base_url + "/")
        assert response.headers["content-security-policy"] == "default-src 'self'"
        await wait_until(page, "() => document.querySelectorAll('tr[data-id]').length === 3")
        await page.evaluate(RECORD_PROGRESS, "web-1")
        await wait_until(page, "() => window.seen.includes('UP')")

        # Escaped: the path is text in the address cell, no script ran, no element was made.
        address = await page.text_content('tr[data-id="xss"] td.addr')
        assert "<script>document.title='pwned'</script>" in address
        assert await page.title() == "healthcheck-exporter"
        assert await page.locator("main script").count() == 0
        summary = await page.text_content('section[data-app="web"] h2')
        assert "2/2 up" in summary
        assert (await page.text_content("main section h2")).startswith("evil")  # by name

        await srv.kill()  # connection refused from now on: UP -> UP 1/3 -> UP 2/3 -> DOWN
        await wait_until(page, "() => window.seen.includes('DOWN')")
        await page.screenshot(path=str(tmp_path / "status-down.png"), full_page=True)
        await wait_until(
            page,
            """() => document.querySelector('section[data-app="web"] h2')
                .textContent.includes('0/2 up')""",
        )
        await wait_until(
            page, """() => document.querySelector('section[data-app="web"] h2 .panic')"""
        )
        first = await page.text_content("main section h2")  # apps in trouble come first
        assert first.startswith("web"), first
        error = await page.text_content('tr[data-id="web-1"] td.error')
        assert "refused" in error.lower()

        await srv.start()  # back: DOWN -> DOWN 1/2 -> UP
        await wait_until(page, "() => window.seen.lastIndexOf('UP') > window.seen.indexOf('DOWN')")
        await page.screenshot(path=str(tmp_path / "status-up.png"), full_page=True)
        seen = await page.evaluate("window.seen")
        assert await page.evaluate("window.notReloaded") is True
        await filter_box_keeps_only_matches(page)

    assert seen[0] == "UP"
    down = seen.index("DOWN")
    assert seen[1:down] == ["UP 1/3", "UP 2/3"], seen
    assert seen[down:] == ["DOWN", "DOWN 1/2", "UP"], seen
    assert (tmp_path / "status-down.png").stat().st_size > 1000
    assert not problems, problems  # e.g. a CSP violation would show here


async def filter_box_keeps_only_matches(page: Any) -> None:
    await page.fill("#filter", "web-2")
    await wait_until(page, "() => document.querySelectorAll('tr[data-id]').length === 1")
    assert await page.text_content("tr[data-id] td.id") == "web-2"
    await page.fill("#filter", "")
    await wait_until(page, "() => document.querySelectorAll('tr[data-id]').length === 3")


async def test_status_page_stops_polling_while_hidden():
    port = unused_port()
    env = {
        "HEALTHCHECK_INTERVAL": "200ms",
        "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{port}",
    }
    async with exporter(env) as proc, browser() as chromium:
        page = await chromium.new_page()  # type: ignore[attr-defined]
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        await page.goto(proc.base_url + "/")
        await wait_until(page, "() => window.statusPage.renders > 0")
        # Hide the tab the way a browser does when the user switches away.
        await page.evaluate(
            """() => {
              Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
              document.dispatchEvent(new Event('visibilitychange'));
            }"""
        )
        await asyncio.sleep(0.2)
        seen = len(requests)
        await asyncio.sleep(1.5)
        assert len(requests) == seen, requests[seen:]
        assert "paused" in await page.text_content("#connection")
        await page.evaluate(
            """() => {
              Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
              document.dispatchEvent(new Event('visibilitychange'));
            }"""
        )
        await wait_until(
            page, "() => document.querySelector('#connection').textContent.startsWith('live')"
        )
        assert len(requests) > seen


async def test_demo_status_page_shows_the_haproxy_writer_and_its_banner_points_at_it():
    async with exporter({"HEALTHCHECK_INTERVAL": "200ms"}, "demo") as proc, browser() as chromium:
        banner = "\n".join(proc.log)
        assert f"status page:   {proc.base_url}/" in banner
        page = await chromium.new_page()  # type: ignore[attr-defined]
        await page.goto(proc.base_url + "/")
        await wait_until(page, "() => document.querySelectorAll('#integrations tr').length > 0")
        integrations = await page.text_content("#integrations")
        assert "HAProxy file" in integrations and "backends.cfg" in integrations
        assert "writes" in integrations and "ok" in integrations
        assert "source demo3 targets, 0 failures" in integrations  # a row: name, then value
        await wait_until(
            page,
            """() => document.querySelector('tr[data-id="api-dead"] .progress')
                ?.textContent === 'DOWN'""",
        )
