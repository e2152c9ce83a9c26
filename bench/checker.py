"""The checker alone, without the exporter around it: `HTTPChecker.check` in a loop.

    .venv/bin/python -m bench.checker [--concurrency 100] [--seconds 5]

Starts the benchmark's HAProxy target (core 1), then, in this process pinned to core 0, keeps
`--concurrency` checks in flight for `--seconds` against 2,000 of its endpoints, once on the
standard asyncio loop and once on uvloop (each in a child process, so neither warms the other).
Prints checks/s and CPU-ms per check (this process's own CPU: the target runs elsewhere) and
writes them to bench/results/checker.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import MEASURED_CORE, pin_self, run_until_stopped
from bench.target import endpoints, target_farm
from exporter.checks import HTTPChecker
from exporter.model import Target

RESULTS = Path(__file__).parent / "results" / "checker.json"
LOOPS = ("asyncio", "uvloop")
TARGETS = 2000


async def keep_checking(
    targets: list[Target], concurrency: int, seconds: float, checker: HTTPChecker | None = None
) -> dict[str, float]:
    """`concurrency` workers, each checking the next target as soon as its last check ended."""
    checker = checker or HTTPChecker(timeout=5.0)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    counts = {"checks": 0, "failed": 0}
    order = iter(range(sys.maxsize))

    async def worker() -> None:
        while loop.time() < stop_at:
            result = await checker.check(targets[next(order) % len(targets)])
            counts["checks"] += 1
            counts["failed"] += not result.healthy

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {
        **counts,
        "checks_per_s": counts["checks"] / wall,
        "cpu_ms_per_check": 1000 * cpu / max(counts["checks"], 1),
        "cpu_share": cpu / wall,
    }


def measure_in_child(loop_name: str, concurrency: int, seconds: float) -> dict[str, float]:
    """One loop's run, in a fresh interpreter pinned to the measured core."""
    argv = [sys.executable, "-m", "bench.checker", "--child", loop_name]
    argv += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=True, cwd=Path.cwd()
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def child(loop_name: str, concurrency: int, seconds: float) -> None:
    os.sched_setaffinity(0, {MEASURED_CORE})
    targets = [
        Target(f"{host}:{port}", "bench", host, str(port), "/health")
        for host, port in endpoints(TARGETS)
    ]
    main = keep_checking(targets, concurrency, seconds)
    if loop_name == "uvloop":
        import uvloop

        figures = uvloop.run(main)
    else:
        figures = asyncio.run(main)
    print(json.dumps(figures))


async def run(concurrency: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-checker-") as tmp:
        async with target_farm(Path(tmp)):
            return {
                name: await asyncio.to_thread(measure_in_child, name, concurrency, seconds)
                for name in LOOPS
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=100, help="checks in flight at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--child", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.concurrency, args.seconds)
        return
    pin_self()
    results = run_until_stopped(run(args.concurrency, args.seconds))
    for name, figures in results.items():
        print(
            f"{name:8} {figures['checks_per_s']:8,.0f} checks/s  "
            f"{figures['cpu_ms_per_check']:.4f} CPU-ms per check  "
            f"{figures['cpu_share']:.0%} of core {MEASURED_CORE}  "
            f"{figures['failed']:,.0f} failed of {figures['checks']:,.0f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    document = {"concurrency": args.concurrency, "seconds": args.seconds, "results": results}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
