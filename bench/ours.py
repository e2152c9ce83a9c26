"""Our exporter, run as a user runs it (`python -m exporter`, env vars, a targets file), pinned to
the measured core: saturated throughput, then 1k/10k targets at a 15 s interval.

Checks are counted from `healthcheck_checks_total` between two scrapes, schedule lag from
`healthcheck_schedule_lag_seconds` bucket deltas, CPU and RSS from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import promtext
from bench.meter import Window, per_thousand, read, window
from bench.procs import MEASURED_CORE, Child, started, wait_until
from bench.target import HEALTH_PATH, HAProxyProcess, endpoints
from exporter.settings import parse_duration
from tests.process import child_env
from tests.servers import unused_port

CHECKS = "healthcheck_checks_total"
SKIPPED = "healthcheck_checks_skipped_total"
LAG = "healthcheck_schedule_lag_seconds"
LAG_GOAL = 0.05  # a bucket boundary, so the share of checks within it is exact
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Scrape:
    started: float
    ended: float
    text: str
    wire_bytes: int  # as sent: gzip bytes when the response was compressed
    encoding: str  # Content-Encoding, "" for none

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def at(self) -> float:
        """When the exporter most likely took its snapshot: mid-request."""
        return (self.started + self.ended) / 2


@dataclass
class Exporter:
    child: Child
    url: str
    session: aiohttp.ClientSession
    start_to_ready: float = 0.0

    async def scrape(self, gzip_ok: bool = False) -> Scrape:
        headers = {"Accept-Encoding": "gzip" if gzip_ok else "identity"}
        started = time.monotonic()
        async with self.session.get(self.url + "/metrics", headers=headers) as resp:
            resp.raise_for_status()
            raw = await resp.read()
            ended = time.monotonic()
            encoding = resp.headers.get("Content-Encoding", "")
        text = (gzip.decompress(raw) if encoding == "gzip" else raw).decode()
        return Scrape(started, ended, text, len(raw), encoding)

    async def ready(self) -> bool:
        async with self.session.get(self.url + "/-/ready") as resp:
            await resp.read()
            return resp.status == 200


def write_targets(path: Path, count: int) -> None:
    """A JSON targets file: one app per loopback address, ids `app-ip-port` by default."""
    entries = [
        {"app": "app" + address.rsplit(".", 1)[1], "ip": address, "port": port, "path": HEALTH_PATH}
        for address, port in endpoints(count)
    ]
    path.write_text(json.dumps(entries))


# `python -m exporter` as if uvloop were not installed (an import of it then fails).
WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; import runpy; runpy.run_module('exporter')"
)


@contextlib.asynccontextmanager
async def running_exporter(
    work: Path,
    name: str,
    targets: int,
    interval: str,
    uvloop: bool = True,
    extra_env: Mapping[str, str] | None = None,
    writer: Callable[[Path, int], None] = write_targets,
) -> AsyncIterator[Exporter]:
    """`python -m exporter` pinned to the measured core; yields once `/-/ready` (first round).
    With `uvloop` false, it runs on the standard asyncio loop although uvloop is installed;
    `extra_env` adds HEALTHCHECK_* settings; `writer` writes the targets file."""
    targets_file = work / f"{name}-targets.json"
    writer(targets_file, targets)
    port = unused_port()
    env = child_env(
        {
            "HEALTHCHECK_TARGETS_FILE": str(targets_file),
            "HEALTHCHECK_INTERVAL": interval,
            "HEALTHCHECK_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            **(extra_env or {}),
        }
    )
    argv = [sys.executable, "-m", "exporter"] if uvloop else [sys.executable, "-c", WITHOUT_UVLOOP]
    # No decompression by the client: the gzip size on the wire is a figure we report.
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session,
        started(name, argv, MEASURED_CORE, work, env) as child,
    ):
        exporter = Exporter(child, f"http://127.0.0.1:{port}", session)
        begun = time.monotonic()
        await wait_until(exporter.ready, READY_TIMEOUT, f"{name} ready", child)
        exporter.start_to_ready = time.monotonic() - begun
        yield exporter


def lag_figures(before: Scrape, after: Scrape) -> dict[str, float | None]:
    """Schedule lag between two scrapes: p50/p99 interpolated like `histogram_quantile`."""
    lag = promtext.delta(promtext.buckets(after.text, LAG), promtext.buckets(before.text, LAG))
    return {
        "lag_checks": promtext.count(lag),
        "lag_p50_s": promtext.quantile(0.5, lag),
        "lag_p99_s": promtext.quantile(0.99, lag),
        "lag_share_within_goal": promtext.share_at_most(LAG_GOAL, lag),
    }


def counted(before: Scrape, after: Scrape, name: str) -> float:
    return promtext.total(after.text, name) - promtext.total(before.text, name)


def event_loop(scrape: Scrape) -> str:
    for labels, _ in promtext.samples(scrape.text, "healthcheck_exporter_build_info"):
        return labels.get("event_loop", "?")
    return "?"


async def steady(exporter: Exporter, timeout: float) -> Scrape:
    """Wait until scheduled checks run (their lag is recorded) and return that scrape.

    After the first round every target's next slot falls between half an interval and one and a
    half intervals after the start, so from the first scheduled check on the rate is steady; a
    window opened earlier would count idle seconds."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = await exporter.scrape()
        if promtext.count(promtext.buckets(scrape.text, LAG)) > 0:
            return scrape
        exporter.child.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no scheduled check within {timeout:.0f}s of the first round")
        await asyncio.sleep(0.5)  # a poll: each scrape costs the exporter a render


async def _measured(
    exporter: Exporter, target: HAProxyProcess, seconds: float, interval_s: float
) -> tuple[Scrape, Scrape, Window]:
    """From steady state, let it run `seconds` untouched between two scrapes; CPU is read between
    the two scrapes, so their rendering does not count."""
    first = await steady(exporter, interval_s + 10)
    before = await read(exporter.child, target)
    await asyncio.sleep(seconds)  # the measuring window: the exporter runs on its own
    measured = window(before, await read(exporter.child, target))
    return first, await exporter.scrape(), measured


async def saturated(
    work: Path,
    target: HAProxyProcess,
    targets: int,
    interval: str,
    seconds: float,
    uvloop: bool = True,
) -> dict[str, Any]:
    """More checks asked for than one core can run: the checks/s it reaches, and CPU per check."""
    name = "exporter-saturated" if uvloop else "exporter-saturated-asyncio"
    async with running_exporter(work, name, targets, interval, uvloop) as exporter:
        first, last, measured = await _measured(exporter, target, seconds, parse_duration(interval))
    checks = counted(first, last, CHECKS)
    check_rate = checks / (last.at - first.at)
    return {
        "targets": targets,
        "interval": interval,
        "event_loop": event_loop(last),
        "checks": checks,
        "checks_per_s": check_rate,
        "target_connections_per_s": measured.target_rate,
        "skipped": counted(first, last, SKIPPED),
        "cpu_share": measured.cpu_share,
        # CPU rate over check rate, so that the two slightly different windows cancel out.
        "cpu_s_per_1000": per_thousand(measured.cpu_share, check_rate),
        **lag_figures(first, last),
    }


async def render_times(exporter: Exporter, repeats: int) -> dict[str, Any]:
    """`/metrics` GET time (median of `repeats`), plain and gzip, and both sizes."""
    plain = [await exporter.scrape() for _ in range(repeats)]
    zipped = [await exporter.scrape(gzip_ok=True) for _ in range(repeats)]
    return {
        "render_plain_s": statistics.median(s.seconds for s in plain),
        "render_gzip_s": statistics.median(s.seconds for s in zipped),
        "size_text_bytes": plain[-1].wire_bytes,
        "size_gzip_bytes": zipped[-1].wire_bytes if zipped[-1].encoding == "gzip" else None,
        "lines": plain[-1].text.count("\n"),
    }


async def scraped_every_second(
    exporter: Exporter, target: HAProxyProcess, scrapes: int
) -> dict[str, Any]:
    """Scrape with gzip once a second (as a Prometheus would, only faster) while checks run."""
    taken: list[Scrape] = []
    before = await read(exporter.child, target)
    start = time.monotonic()
    for k in range(scrapes):
        await asyncio.sleep(max(0.0, start + k - time.monotonic()))
        taken.append(await exporter.scrape(gzip_ok=True))
    measured = window(before, await read(exporter.child, target))
    lag = lag_figures(taken[0], taken[-1])
    return {"scraped_" + key: value for key, value in lag.items()} | {
        "scraped_cpu_share": measured.cpu_share,
        "scraped_render_median_s": statistics.median(s.seconds for s in taken),
        "scraped_render_max_s": max(s.seconds for s in taken),
    }


async def at_scale(
    work: Path,
    target: HAProxyProcess,
    targets: int,
    quiet_s: float,
    scrapes: int,
    writer: Callable[[Path, int], None] = write_targets,
) -> dict[str, Any]:
    """`targets` at a 15 s interval: lag, CPU and RSS left alone for `quiet_s` once the schedule
    is steady, then `/metrics` render time and size, then lag while scraped every second."""
    interval_s = 15.0
    name = f"exporter-{targets}"
    async with running_exporter(work, name, targets, "15s", writer=writer) as exporter:
        first, last, measured = await _measured(exporter, target, quiet_s, interval_s)
        figures: dict[str, Any] = {
            "targets": targets,
            "interval_s": interval_s,
            "start_to_ready_s": exporter.start_to_ready,
            "checks": counted(first, last, CHECKS),
            "checks_expected": targets * (last.at - first.at) / interval_s,
            "target_connections": measured.target_connections,
            "skipped": counted(first, last, SKIPPED),
            "cpu_share": measured.cpu_share,
            "rss_bytes": exporter.child.rss_bytes(),
            **lag_figures(first, last),
        }
        check_rate = figures["checks"] / (last.at - first.at)
        figures["cpu_s_per_1000"] = per_thousand(measured.cpu_share, check_rate)
        figures |= await render_times(exporter, repeats=5)
        figures |= await scraped_every_second(exporter, target, scrapes)
        figures["peak_rss_bytes"] = exporter.child.peak_rss_bytes()
    return figures
