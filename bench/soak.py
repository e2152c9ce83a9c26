"""Soak benchmark: does the exporter stay flat over time under churn?

The exporter (as a user runs it: env vars, a subprocess, pinned to the measured core) checks
`--targets` targets: 90 % on the benchmark's HAProxy target farm (always 200), 10 % flapping
(a small server here answers 200 or 503, each target flipping every `--flap-period`). It writes
an HAProxy file (reload none) and a state file, with a panic threshold set. Meanwhile this script
scrapes /metrics every second, sends SIGHUP every 30 s and rewrites the targets file every 10 s
(adding or removing 10 extra targets in turn). Every `--sample` seconds it records the exporter's
RSS (and apart: its heaps, and the file pages of its code), open fds, threads and asyncio tasks
(`healthcheck_exporter_asyncio_tasks`), and at the end fits a line to the samples after the
warm-up: the slopes (per hour) should be about zero.

    .venv/bin/python -m bench.soak [--duration 30m] [--targets 1000] [--interval 2s]

Writes a table to stdout and JSON to bench/results/soak.json. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.procs import (
    MEASURED_CORE,
    Child,
    pin_self,
    proc_status_kib,
    run_until_stopped,
    started,
    wait_until,
)
from bench.target import endpoints, target_farm
from exporter.settings import parse_duration
from tests.process import value
from tests.servers import unused_port

RESULTS = Path(__file__).parent / "results" / "soak.json"
SCRAPE_EVERY = 1.0
SIGHUP_EVERY = 30.0
REWRITE_EVERY = 10.0
EXTRA_TARGETS = 10
SERIES = ("rss_mb", "rss_anon_mb", "rss_file_mb", "fds", "threads", "tasks")


def target_list(farm: list[tuple[str, int]], flap_port: int, flapping: int, extra: bool) -> list:
    items: list[dict[str, object]] = [
        {"id": f"farm-{i}", "app": f"app{i % 20}", "ip": ip, "port": port, "path": "/health"}
        for i, (ip, port) in enumerate(farm)
    ]
    items += [
        {"id": f"flap-{i}", "app": f"app{i % 20}", "ip": "127.0.0.1", "port": flap_port,
         "path": f"/flap/{i}"}
        for i in range(flapping)
    ]  # fmt: skip
    if extra:
        items += [
            {"id": f"extra-{i}", "app": "extra", "ip": ip, "port": port, "path": "/health"}
            for i, (ip, port) in enumerate(endpoints(len(farm) + EXTRA_TARGETS)[-EXTRA_TARGETS:])
        ]
    return items


def write_targets(path: Path, items: list) -> None:
    temp = path.with_suffix(".new")
    temp.write_text(json.dumps(items))
    temp.replace(path)


@contextlib.asynccontextmanager
async def flapping_server(period: float) -> AsyncIterator[int]:
    """`/flap/{i}`: 200 or 503, target i flipping every `period` seconds (phases spread by i)."""

    async def flap(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        healthy = int(time.time() / period + i / 7) % 2 == 0
        return web.Response(status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/flap/{i:\\d+}", flap)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = unused_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return statistics.linear_regression(xs, ys).slope * 3600


async def soak(args: argparse.Namespace, work: Path) -> dict[str, object]:
    duration = parse_duration(args.duration)
    flapping = round(args.targets * args.flapping)
    farm_count = args.targets - flapping
    targets_file = work / "targets.json"
    listen_port = unused_port()
    samples: list[dict[str, float]] = []
    counts = {"scrapes": 0, "scrape_failures": 0, "sighups": 0, "rewrites": 0}
    async with target_farm(work) as _farm, flapping_server(args.flap_period) as flap_port:
        farm = endpoints(farm_count)
        write_targets(targets_file, target_list(farm, flap_port, flapping, extra=False))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HEALTHCHECK_")},
            "HEALTHCHECK_TARGETS_FILE": str(targets_file),
            "HEALTHCHECK_INTERVAL": args.interval,
            "HEALTHCHECK_TIMEOUT": "1s",
            "HEALTHCHECK_LISTEN_ADDRESS": f"127.0.0.1:{listen_port}",
            "HEALTHCHECK_HAPROXY_CONFIG": str(work / "backends.cfg"),
            "HEALTHCHECK_STATE_FILE": str(work / "state.json"),
            "HEALTHCHECK_PANIC_THRESHOLD": "50%",
            "HEALTHCHECK_LOG_LEVEL": "warning",
        }
        argv = [sys.executable, "-m", "exporter"]
        async with (
            started("exporter", argv, MEASURED_CORE, work, env) as child,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            url = f"http://127.0.0.1:{listen_port}"

            async def ready() -> bool:
                async with session.get(url + "/-/ready") as resp:
                    return resp.status == 200

            await wait_until(ready, 60, "the exporter ready", child)
            start = time.monotonic()
            next_sample = next_rewrite = start
            next_hup = start + SIGHUP_EVERY
            extra = False
            last_metrics = ""
            while (now := time.monotonic()) < start + duration:
                child.check_alive()
                try:
                    async with session.get(url + "/metrics") as resp:
                        last_metrics = await resp.text()
                        counts["scrapes"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["scrape_failures"] += 1
                if now >= next_rewrite:
                    extra = not extra
                    write_targets(targets_file, target_list(farm, flap_port, flapping, extra))
                    counts["rewrites"] += 1
                    next_rewrite += REWRITE_EVERY
                if now >= next_hup:
                    os.kill(child.pid, signal.SIGHUP)
                    counts["sighups"] += 1
                    next_hup += SIGHUP_EVERY
                if now >= next_sample:
                    samples.append(sample(child, now - start, last_metrics))
                    print(format_sample(samples[-1]), flush=True)
                    next_sample += args.sample
                await asyncio.sleep(max(0.0, SCRAPE_EVERY - (time.monotonic() - now)))
            samples.append(sample(child, time.monotonic() - start, last_metrics))
            final_metrics = last_metrics
    return summarize(args, samples, counts, final_metrics)


def sample(child: Child, elapsed: float, metrics: str) -> dict[str, float]:
    return {
        "t": round(elapsed, 1),
        "rss_mb": round(child.rss_bytes() / 1e6, 2),
        # Anonymous memory (the heaps) apart from file pages (code of the interpreter and its
        # libraries, faulted in as rarer paths first run): only the first can be a leak.
        "rss_anon_mb": round(proc_status_kib(child.pid, "RssAnon") * 1024 / 1e6, 2),
        "rss_file_mb": round(proc_status_kib(child.pid, "RssFile") * 1024 / 1e6, 2),
        "fds": open_fds(child.pid),
        "threads": proc_status_kib(child.pid, "Threads"),  # a count, read like the sizes
        "tasks": value(metrics, "healthcheck_exporter_asyncio_tasks") or 0,
        "cpu_s": round(child.cpu_seconds(), 2),
        "transitions": sum(
            v for k, v in _samples(metrics, "healthcheck_state_transitions_total").items()
        ),
    }


def _samples(metrics: str, name: str) -> dict[str, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            key, _, number = line.rpartition(" ")
            out[key] = float(number)
    return out


def format_sample(s: dict[str, float]) -> str:
    return (
        f"t={s['t']:7.1f}s rss={s['rss_mb']:7.2f}MB (anon {s['rss_anon_mb']:6.2f}) "
        f"fds={s['fds']:5.0f} "
        f"threads={s['threads']:3.0f} tasks={s['tasks']:4.0f} cpu={s['cpu_s']:8.2f}s "
        f"transitions={s['transitions']:.0f}"
    )


def summarize(
    args: argparse.Namespace, samples: list[dict[str, float]], counts: dict[str, int], metrics: str
) -> dict[str, object]:
    warm = [s for s in samples if s["t"] >= args.warmup * samples[-1]["t"]]
    slopes = {key: round(slope_per_hour([(s["t"], s[key]) for s in warm]), 3) for key in SERIES}
    first, last = warm[0], samples[-1]
    cpu_share = (last["cpu_s"] - first["cpu_s"]) / max(last["t"] - first["t"], 1e-9)
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "counts": counts,
        "config_writes": _samples(metrics, "healthcheck_haproxy_config_writes_total"),
        "slopes_per_hour_after_warmup": slopes,
        "after_warmup": {
            key: [min(s[key] for s in warm), max(s[key] for s in warm)] for key in SERIES
        },
        "cpu_share_after_warmup": round(cpu_share, 4),
        "samples": samples,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="30m", help="how long to soak (e.g. 30m, 5m)")
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--flapping", type=float, default=0.1, help="share of flapping targets")
    parser.add_argument("--flap-period", type=float, default=20.0, help="seconds per flip")
    parser.add_argument("--interval", default="2s", help="HEALTHCHECK_INTERVAL")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the run ignored")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    pin_self()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = await soak(args, Path(tmp))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    args.results.parent.mkdir(exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.results}")


if __name__ == "__main__":
    run_until_stopped(main())
