"""The monitor's own CPU per check, sockets left out: what scheduling costs beside the checks.

    .venv/bin/python -m bench.monitor [--targets 2000] [--interval 100ms] [--seconds 3]
                                      [--repeats 3] [--timing plain,fastinter,interval]

A stub checker answers every check at once from an event-loop callback, so the CPU measured is
the scheduler's: slots, the queue, recording the result. One child process per run (pinned to
the measured core, uvloop), alternating between timings so that a busy machine hurts them alike;
the best run of each counts. Timings: `plain` (every target at the exporter-wide interval),
`fastinter` (`FASTINTER` and `DOWNINTER` set: every result is looked at for a change of period),
`interval` (every target with an interval of its own). Prints microseconds of CPU per check and
writes bench/results/monitor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.procs import MEASURED_CORE
from exporter.checks.options import option_values
from exporter.model import CheckOptions, Config, Result, Target
from exporter.monitor import HealthMonitor
from exporter.settings import parse_duration

RESULTS = Path(__file__).parent / "results" / "monitor.json"
TIMINGS = ("plain", "fastinter", "interval")


class _InstantChecker:
    """Stands in for HTTPChecker's callback API: every check succeeds on the next loop turn."""

    def start(self, target: Target, on_done: object, loop: asyncio.AbstractEventLoop) -> object:
        return loop.call_soon(on_done, Result(target, True))  # type: ignore[arg-type]


class _Targets:
    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets

    def get_health_check_targets(self) -> list[Target]:
        return self.targets


class _Quiet:
    def on_health_change(self, healthy_targets: object) -> None:
        pass


def _setup(timing: str, targets: int, interval: float) -> tuple[Config, list[Target]]:
    config = Config(interval=interval, max_concurrent=100)
    options = CheckOptions()
    if timing == "fastinter":
        config = replace(config, fastinter=interval / 10, downinter=interval * 2)
    elif timing == "interval":
        options = CheckOptions(**option_values({"interval": interval * 1.01}))
    made = [Target(f"t{i}", "app", "127.0.0.1", "1", options=options) for i in range(targets)]
    return config, made


async def _run(timing: str, targets: int, interval: float, seconds: float) -> dict[str, float]:
    config, made = _setup(timing, targets, interval)
    monitor = HealthMonitor(config, _Targets(made), _Quiet())
    monitor.start()
    monitor._http = _InstantChecker()  # type: ignore[assignment]
    await monitor.wait_ready()
    await asyncio.sleep(min(seconds, 1.0))  # past the first round and its burst

    def checks() -> int:
        return sum(sum(entry.checks.values()) for entry in monitor.tracker.entries())

    first, cpu, wall = checks(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    count, cpu, wall = checks() - first, time.process_time() - cpu, time.monotonic() - wall
    await monitor.stop()
    return {"checks_per_s": count / wall, "cpu_us_per_check": 1e6 * cpu / max(count, 1)}


def _child(args: argparse.Namespace) -> None:
    import uvloop

    os.sched_setaffinity(0, {MEASURED_CORE})
    interval = parse_duration(args.interval)
    result = uvloop.run(_run(args.child, args.targets, interval, args.seconds))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--interval", default="100ms")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timing", default=",".join(TIMINGS))
    parser.add_argument("--child", choices=TIMINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    timings = args.timing.split(",")
    runs: dict[str, list[dict[str, float]]] = {timing: [] for timing in timings}
    for _ in range(args.repeats):
        for timing in timings:
            command = [sys.executable, "-m", "bench.monitor", *sys.argv[1:], "--child", timing]
            done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
            runs[timing].append(json.loads(done.stdout))
    best = {timing: min(r["cpu_us_per_check"] for r in runs[timing]) for timing in timings}
    for timing in timings:
        rates = ", ".join(f"{r['checks_per_s']:,.0f}" for r in runs[timing])
        print(
            f"{timing:<10} {best[timing]:6.2f} us CPU per check (best of {args.repeats}; "
            f"checks/s {rates})"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"args": vars(args), "best": best, "runs": runs}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
