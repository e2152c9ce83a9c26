"""The status page at fleet scale, in a real browser (Debian's chromium via Playwright).

    .venv/bin/python -m bench.statuspage [--targets 10000] [--rounds 3] [--repeat 5]

Starts the real exporter with N targets on one local aiohttp server (10 % of them answering
503, in 50 apps), forces `--rounds` rounds of checks through the admin API (so each target has a
history), then opens `/` in chromium and measures: the time from navigation to the first full
render, the time one render takes (JS + DOM + layout, the median of `--repeat`), the time a filter
keystroke takes to re-render, and the size and server time of GET /api/v1/targets. JSON to
bench/results/statuspage.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.browser import browser
from tests.process import exporter
from tests.servers import target_server

RESULTS = Path(__file__).parent / "results" / "statuspage.json"

RENDER_ONCE = """() => {
  const started = performance.now();
  render();
  void document.body.offsetHeight;  // include layout
  return performance.now() - started;
}"""

FILTER_ONCE = """(needle) => {
  const box = document.getElementById("filter");
  box.value = needle;
  const started = performance.now();
  render();
  void document.body.offsetHeight;
  return performance.now() - started;
}"""


def fleet(port: int, n: int) -> str:
    entries = [
        {
            "id": f"t{i}",
            "app": f"app{i % 50}",
            "ip": "127.0.0.1",
            "port": port,
            "path": "/status/503" if i % 10 == 0 else "/health",
        }
        for i in range(n)
    ]
    return json.dumps(entries)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    async with target_server() as srv:
        folder = tempfile.TemporaryDirectory(prefix="bench-statuspage-")
        targets_file = Path(folder.name) / "targets.json"
        targets_file.write_text(fleet(srv.port, args.targets))  # too long for one env var
        env = {
            "HEALTHCHECK_INTERVAL": "1h",
            "HEALTHCHECK_TIMEOUT": "10s",
            "HEALTHCHECK_MAX_CONCURRENT": "200",
            "HEALTHCHECK_WEB_ENABLE_ADMIN_API": "true",
            "HEALTHCHECK_TARGETS_FILE": str(targets_file),
        }
        async with exporter(env) as proc, aiohttp.ClientSession() as session:
            for _ in range(args.rounds - 1):
                async with session.post(
                    proc.base_url + "/api/v1/admin/check",
                    json={},
                    timeout=aiohttp.ClientTimeout(total=600),
                ) as resp:
                    assert resp.status == 200, await resp.text()
            api_ms = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                async with session.get(proc.base_url + "/api/v1/targets") as resp:
                    body = await resp.read()
                api_ms.append((time.perf_counter() - started) * 1000)
            async with browser() as chromium:
                page = await chromium.new_page()  # type: ignore[attr-defined]
                await page.goto(proc.base_url + "/")
                await page.wait_for_function(
                    f"() => document.querySelectorAll('tr[data-id]').length === {args.targets}",
                    timeout=120_000,
                )
                first = await page.evaluate("window.statusPage.firstRenderAt")
                renders = [await page.evaluate(RENDER_ONCE) for _ in range(args.repeat)]
                filters = [
                    await page.evaluate(FILTER_ONCE, needle)
                    for needle in ["app7", "t12", "503", "", "unhealthy"][: args.repeat]
                ]
                rows = await page.evaluate("document.querySelectorAll('tr[data-id]').length")
        folder.cleanup()
    results = {
        "targets": args.targets,
        "rounds": args.rounds,
        "first_render_after_navigation_ms": round(first),
        "render_ms_median": round(statistics.median(renders)),
        "filter_ms_median": round(statistics.median(filters)),
        "api_targets_ms_median": round(statistics.median(api_ms)),
        "api_targets_bytes": len(body),
        "rows_after_last_filter": rows,
    }
    print(json.dumps(results, indent=2))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
