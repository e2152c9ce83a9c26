"""Failover benchmark: how fast a dead backend leaves HAProxy's rotation, per reload mode.

For each mode (signal, master-socket, command, runtime-api) it starts a real HAProxy
(master-worker), three backends and the exporter (as a user would: env vars, subprocess), sends
requests through HAProxy without pause, kills one backend and brings it back `--kills` times, and
reports: time from the kill to the eviction (compare with fall x interval), requests that failed
before and after the eviction, and reloads performed. Loopback only; bounded in time.

    .venv/bin/python -m bench.failover [--kills 10] [--interval 500ms] [--fall 3] [--rise 2]

Writes the table to stdout and JSON to bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from exporter.settings import parse_duration
from tests.haproxy_proc import (
    backends,
    haproxy,
    haproxy_binary,
    in_rotation,
    load,
    reload_env,
    unexplained_failures,
)
from tests.process import exporter, value

MODES = ("signal", "master-socket", "command", "runtime-api")
RESULTS = Path(__file__).parent / "results" / "failover.json"


async def measure(mode: str, kills: int, interval: str, fall: int, rise: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"failover-{mode}-") as tmp:
        async with backends() as (b0, b1, b2), haproxy(Path(tmp)) as hx:
            env = {
                **reload_env(mode, hx),
                "HEALTHCHECK_INTERVAL": interval,
                "HEALTHCHECK_TIMEOUT": "1s",
                "HEALTHCHECK_FALL": str(fall),
                "HEALTHCHECK_RISE": str(rise),
                "HEALTHCHECK_TARGETS": ", ".join(b.target for b in (b0, b1, b2)),
            }
            async with exporter(env) as proc:
                await hx.wait_for_servers(lambda s: len(s) == 3, 30)
                windows: list[tuple[float, float]] = []
                async with load(hx.url) as client:
                    for _ in range(kills):
                        killed = time.monotonic()
                        await b1.kill()
                        await hx.wait_for_servers(lambda s: not in_rotation(s, b1.server), 60)
                        windows.append((killed, time.monotonic()))
                        await b1.start()
                        await hx.wait_for_servers(lambda s: in_rotation(s, b1.server), 60)
                metrics = await proc.metrics()
    evictions = [b - a for a, b in windows]
    failed = [r for r in client.results if not r.ok]
    after = unexplained_failures(client.results, windows)
    return {
        "mode": mode,
        "kills": kills,
        "expected_s": parse_duration(interval) * fall,
        "eviction_median_s": statistics.median(evictions),
        "eviction_max_s": max(evictions),
        "requests": len(client.results),
        "failed_before_eviction": len(failed) - len(after),
        "failed_after_eviction": len(after),
        "reloads": value(metrics, "healthcheck_haproxy_reloads_total", result="success") or 0,
        "runtime_commands": value(
            metrics, "healthcheck_haproxy_runtime_commands_total", result="success"
        )
        or 0,
    }


def table(rows: list[dict[str, object]]) -> str:
    header = (
        f"{'mode':<14}{'fall x interval':>16}{'eviction p50':>14}{'max':>8}"
        f"{'requests':>10}{'failed before':>15}{'failed after':>14}{'reloads':>9}"
        f"{'runtime cmds':>14}"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['mode']:<14}{r['expected_s']:>15.2f}s{r['eviction_median_s']:>13.3f}s"
            f"{r['eviction_max_s']:>7.3f}s{r['requests']:>10}{r['failed_before_eviction']:>15}"
            f"{r['failed_after_eviction']:>14}{r['reloads']:>9.0f}{r['runtime_commands']:>14.0f}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--interval", default="500ms")
    parser.add_argument("--fall", type=int, default=3)
    parser.add_argument("--rise", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    if haproxy_binary() is None:
        raise SystemExit("haproxy is not installed (bash scripts/test.sh installs it)")
    rows = []
    for mode in args.modes.split(","):
        rows.append(await measure(mode, args.kills, args.interval, args.fall, args.rise))
        print(f"{mode}: done", flush=True)
    print(table(rows))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "results": rows}, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
