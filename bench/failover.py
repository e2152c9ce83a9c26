"""Failover benchmark: how fast a dead backend leaves HAProxy's rotation, per reload mode.

Mode `passive` checks every 15 s, with `--interval` as fastinter and the passive fast path on
(HAProxy's error counters trigger a check at once): eviction within fall x fastinter plus the
stat interval, whatever the regular interval. Mode `agent` is agent mode (HAProxy asks the
exporter every `--agent-inter`; no reload, no Runtime API); it also measures the window after
an HAProxy reload, where every server starts UP until its agent answers: how long a dead server
is back in rotation, and the requests that fail; mode `agent+state-file` does the same with
HAProxy's server-state-file written before each reload.

For each mode (signal, master-socket, command, runtime-api, agent, passive) it starts a real HAProxy
(master-worker), three backends and the exporter (as a user would: env vars, subprocess), sends
requests through HAProxy without pause, kills one backend and brings it back `--kills` times, and
reports: time from the kill to the eviction (compare with the bound, interval + (fall - 1) x
fastinter, which is fall x interval without fastinter), requests that failed before and after the
eviction, and reloads performed. Loopback only; bounded in time.

    .venv/bin/python -m bench.failover [--kills 10] [--interval 500ms] [--fall 3] [--rise 2]
                                       [--fastinter 100ms] [--spread] [--modes runtime-api]
                                       [--output NAME]

`--spread` waits a random time, up to one interval, before each kill: without it every kill comes
right after the backend's revival, at the same point of its check slot, so the figures show one
case again and again rather than the spread over all of them.

Writes the table to stdout and JSON to bench/results/failover.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from exporter.settings import parse_duration
from tests.haproxy_proc import (
    MAIN_CFG,
    RUNNING,
    SERVER_STATE,
    STATE_FILE_CFG,
    Backend,
    HAProxy,
    backends,
    haproxy,
    haproxy_binary,
    in_rotation,
    load,
    reload_env,
    unexplained_failures,
)
from tests.process import exporter, value
from tests.servers import unused_port

MODES = (
    "signal",
    "master-socket",
    "command",
    "runtime-api",
    "agent",
    "agent+state-file",
    "passive",
)
PASSIVE_INTERVAL = "15s"  # mode passive: the regular interval; --interval is its fastinter
STAT_INTERVAL = 1.0  # HEALTHCHECK_HAPROXY_STAT_INTERVAL's default
RESULTS = Path(__file__).parent / "results" / "failover.json"
RELOADS = 5  # HAProxy reloads with a dead server, in mode agent


def checks_env(
    interval: str, fall: int, rise: int, targets: Sequence[Backend], fastinter: str | None = None
) -> dict[str, str]:
    return {
        "HEALTHCHECK_INTERVAL": interval,
        "HEALTHCHECK_TIMEOUT": "1s",
        "HEALTHCHECK_FALL": str(fall),
        "HEALTHCHECK_RISE": str(rise),
        **({"HEALTHCHECK_FASTINTER": fastinter} if fastinter else {}),
        "HEALTHCHECK_TARGETS": ", ".join(b.target for b in targets),
    }


def eviction_bound(interval: float, fall: int, fastinter: float | None) -> float:
    """The latest a refused backend is evicted after its death: its next slot, then the other
    fall - 1 checks at fastinter (the interval without it)."""
    return interval + (fall - 1) * (interval if fastinter is None else fastinter)


async def measure(
    mode: str,
    kills: int,
    interval: str,
    fall: int,
    rise: int,
    agent_inter: str,
    fastinter: str | None = None,
    spread: bool = False,
) -> dict[str, object]:
    if mode in ("agent", "agent+state-file"):
        return await measure_agent(
            kills, interval, fall, rise, agent_inter, mode == "agent+state-file"
        )
    expected = eviction_bound(
        parse_duration(interval), fall, parse_duration(fastinter) if fastinter else None
    )
    with tempfile.TemporaryDirectory(prefix=f"failover-{mode}-") as tmp:
        async with backends() as (b0, b1, b2), haproxy(Path(tmp)) as hx:
            if mode == "passive":  # HAProxy's counters trigger checks; fastinter until settled
                env = {
                    **reload_env("master-socket", hx),
                    **checks_env(PASSIVE_INTERVAL, fall, rise, (b0, b1, b2)),
                    "HEALTHCHECK_FASTINTER": interval,
                    "HEALTHCHECK_DOWNINTER": interval,
                    "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": str(hx.admin_socket),
                }
                expected = parse_duration(interval) * fall + STAT_INTERVAL
            else:
                env = {
                    **reload_env(mode, hx),
                    **checks_env(interval, fall, rise, (b0, b1, b2), fastinter),
                }
            async with exporter(env) as proc:
                await hx.wait_for_servers(lambda s: len(s) == 3, 30)
                windows: list[tuple[float, float]] = []
                async with load(hx.url) as client:
                    for _ in range(kills):
                        if spread:
                            await asyncio.sleep(random.uniform(0, parse_duration(interval)))
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
        "interval_s": parse_duration(interval),
        "fastinter_s": parse_duration(fastinter) if fastinter else None,
        "expected_s": expected,
        "eviction_median_s": statistics.median(evictions),
        "eviction_max_s": max(evictions),
        "requests": len(client.results),
        "failed_before_eviction": len(failed) - len(after),
        "failed_after_eviction": len(after),
        "reloads": value(metrics, "healthcheck_haproxy_reloads_total", result="success") or 0,
        "passive_triggers": value(metrics, "healthcheck_passive_triggers_total", app="web") or 0,
        "runtime_commands": value(
            metrics, "healthcheck_haproxy_runtime_commands_total", result="success"
        )
        or 0,
    }


async def wait_op_state(hx: HAProxy, server: str, running: bool, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while ((await hx.op_states()).get(server) == RUNNING) != running:
        if time.monotonic() > deadline:
            raise SystemExit(f"{server} never became {'UP' if running else 'DOWN'} in HAProxy")
        await asyncio.sleep(0.005)
    return time.monotonic()


async def reload_window(hx: HAProxy, server: str, watch: float, save_states: bool) -> float:
    """Reload HAProxy while `server` is down; how long it is back UP before its agent answers.
    With `save_states`, `show servers state` goes to HAProxy's server-state-file first (what
    HEALTHCHECK_HAPROXY_SERVER_STATE_FILE does before the exporter's reloads)."""
    if save_states:
        (hx.dir / SERVER_STATE).write_text(await hx.admin("show servers state"))
    reloaded = time.monotonic()
    os.kill(int(hx.pidfile.read_text().split()[0]), signal.SIGUSR2)
    last_up = reloaded
    while time.monotonic() < reloaded + watch:
        if (await hx.op_states()).get(server) == RUNNING:
            last_up = time.monotonic()
        await asyncio.sleep(0.005)
    return last_up - reloaded


async def measure_agent(
    kills: int, interval: str, fall: int, rise: int, agent_inter: str, save_states: bool = False
) -> dict[str, object]:
    inter = parse_duration(agent_inter)
    main_cfg = STATE_FILE_CFG if save_states else MAIN_CFG
    with tempfile.TemporaryDirectory(prefix="failover-agent-") as tmp:
        async with backends() as (b0, b1, b2), haproxy(Path(tmp), main_cfg=main_cfg) as hx:
            env = {
                **reload_env("master-socket", hx),  # loads the file once at start
                **checks_env(interval, fall, rise, (b0, b1, b2)),
                "HEALTHCHECK_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{unused_port()}",
                "HEALTHCHECK_AGENT_INTER": agent_inter,
            }
            async with exporter(env) as proc:
                await hx.wait_for_servers(lambda s: len(s) == 3, 30)
                await proc.wait_for_metrics(
                    lambda m: value(m, "healthcheck_haproxy_reloads_total", result="success") == 1
                )
                windows: list[tuple[float, float]] = []
                async with load(hx.url) as client:
                    for _ in range(kills):
                        killed = time.monotonic()
                        await b1.kill()
                        windows.append((killed, await wait_op_state(hx, b1.server, False)))
                        await b1.start()
                        await wait_op_state(hx, b1.server, True)
                    killed = time.monotonic()
                    await b1.kill()
                    windows.append((killed, await wait_op_state(hx, b1.server, False)))
                    reload_started = time.monotonic()
                    up_after_reload = [
                        await reload_window(hx, b1.server, 3 * inter, save_states)
                        for _ in range(RELOADS)
                    ]
                    await b1.start()
                    await wait_op_state(hx, b1.server, True)
                metrics = await proc.metrics()
    evictions = [b - a for a, b in windows[:-1]]  # the last kill is for the reload window
    failed = [r for r in client.results if not r.ok]
    after = unexplained_failures(client.results, windows)
    reload_failures = [r for r in after if r.started >= reload_started]
    return {
        "mode": "agent+state-file" if save_states else "agent",
        "kills": kills,
        "interval_s": parse_duration(interval),
        "fastinter_s": None,
        "expected_s": parse_duration(interval) * fall + inter,
        "eviction_median_s": statistics.median(evictions),
        "eviction_max_s": max(evictions),
        "requests": len(client.results),
        "failed_before_eviction": len(failed) - len(after),
        "failed_after_eviction": len(after) - len(reload_failures),
        "reloads": (value(metrics, "healthcheck_haproxy_reloads_total", result="success") or 0)
        - 1,  # the first load of the file at start is not a failover
        "runtime_commands": 0,
        "agent_inter_s": inter,
        "reloads_with_dead_server": RELOADS,
        "up_after_reload_median_s": statistics.median(up_after_reload),
        "up_after_reload_max_s": max(up_after_reload),
        "failed_after_reload": len(reload_failures),
    }


def table(rows: list[dict[str, object]]) -> str:
    header = (
        f"{'mode':<14}{'interval':>9}{'fastinter':>10}{'bound':>8}{'eviction p50':>14}{'max':>8}"
        f"{'requests':>10}{'failed before':>15}{'failed after':>14}{'reloads':>9}"
        f"{'runtime cmds':>14}"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['mode']:<14}{_seconds(r.get('interval_s')):>9}{_seconds(r.get('fastinter_s')):>10}"
            f"{r['expected_s']:>7.2f}s{r['eviction_median_s']:>13.3f}s"
            f"{r['eviction_max_s']:>7.3f}s{r['requests']:>10}{r['failed_before_eviction']:>15}"
            f"{r['failed_after_eviction']:>14}{r['reloads']:>9.0f}{r['runtime_commands']:>14.0f}"
        )
    return "\n".join(lines)


def _seconds(value: object) -> str:
    return f"{value:.2f}s" if isinstance(value, float) else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--interval", default="500ms")
    parser.add_argument("--fall", type=int, default=3)
    parser.add_argument("--rise", type=int, default=2)
    parser.add_argument("--fastinter", default=None, help="HEALTHCHECK_FASTINTER (default unset)")
    parser.add_argument("--spread", action="store_true", help="kill at random slot phases")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--agent-inter", default="1s")
    parser.add_argument("--output", default="failover", help="name of the JSON file in results/")
    args = parser.parse_args()
    if haproxy_binary() is None:
        raise SystemExit("haproxy is not installed (bash scripts/test.sh installs it)")
    rows = []
    for mode in args.modes.split(","):
        rows.append(
            await measure(
                mode,
                args.kills,
                args.interval,
                args.fall,
                args.rise,
                args.agent_inter,
                args.fastinter,
                args.spread,
            )
        )
        print(f"{mode}: done", flush=True)
    print(table(rows))
    for row in rows:
        if "up_after_reload_median_s" in row:
            print(
                f"agent: {RELOADS} HAProxy reloads with a dead server: it was back UP for "
                f"{row['up_after_reload_median_s']:.3f}s (median), "
                f"{row['up_after_reload_max_s']:.3f}s (max) until its agent answered "
                f"(agent-inter {row['agent_inter_s']:g}s); {row['failed_after_reload']} "
                "requests failed"
            )
    results = RESULTS.with_name(f"{args.output}.json")
    results.parent.mkdir(exist_ok=True)
    # Keep the rows of modes not measured this time (with the arguments they were taken with).
    earlier = json.loads(results.read_text()) if results.exists() else {"results": []}
    measured = {r["mode"] for r in rows}
    rows = [
        r | {"args": r.get("args", earlier.get("args", {}))}
        for r in earlier["results"]
        if r["mode"] not in measured
    ] + [r | {"args": vars(args)} for r in rows]
    results.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    print(f"written to {results}")


if __name__ == "__main__":
    asyncio.run(main())
