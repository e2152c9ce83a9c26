"""Agent throughput: agent checks answered per second and CPU per answer, on one core, while the
same exporter checks its targets on schedule.

The exporter (`python -m exporter`, agent mode, uvloop when installed) checks `--targets` targets
of the target HAProxy every `--interval`, pinned alone to the measured core. Three pollers (real
HAProxy, each as two processes of half the servers, on the helper core) each hold one server per
target with `agent-check
... agent-inter --agent-inter` and nothing else, as in a fleet of proxies sharing one checker:
3 x 10,000 servers every 5 s is 6,000 answers a second. Phases, each a window of `--seconds`:

1. checks only: the exporter's CPU for its checks, the baseline;
2. checks + the pollers: CPU, answers/s by result, schedule lag p99 (goal < 50 ms);
3. HAProxy's own HTTP checks at the exporter's check rate (2,000 servers, inter scaled to give
   the same checks/s), one process on the measured core: what each proxy pays when it checks
   every backend itself.

    .venv/bin/python -m bench.agent [--targets 10000] [--interval 15s] [--agent-inter 5s]

Writes the table to stdout and JSON to bench/results/agent.json. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import promtext
from bench.meter import read, window
from bench.ours import Exporter, counted, lag_figures, running_exporter, steady
from bench.procs import HELPER_CORE, Child, pin_self, run_until_stopped, started, wait_until
from bench.target import (
    CHECKER_CFG,
    HAProxyProcess,
    endpoints,
    haproxy_checker,
    haproxy_path,
    target_farm,
)
from exporter.haproxy.render import AgentCheck
from exporter.settings import parse_duration
from tests.servers import unused_port

RESULTS = Path(__file__).parent / "results" / "agent.json"
POLLERS = 3
PROCESSES_PER_POLLER = 2  # see pollers()
ANSWERS = "healthcheck_agent_requests_total"
OWN_CHECK_SERVERS = 2000
CPU_GOAL = 0.5  # of one core, for checks and answers together

# The checker's global and defaults sections, and a backend of servers with agent checks only.
POLLER_CFG = CHECKER_CFG.partition("backend checked")[0] + "backend polled\n{servers}\n"


def target_id(address: str, port: int) -> str:
    """The id the exporter gives a target of bench.ours.write_targets (`app-ip-port`)."""
    return f"app{address.rsplit('.', 1)[1]}-{address}-{port}"


@contextlib.asynccontextmanager
async def pollers(
    work: Path, count: int, targets: int, agent_port: int, inter: float
) -> AsyncIterator[list[Child]]:
    """`count` HAProxies asking the agent about every target each `inter`, on the helper core."""
    check = AgentCheck((("127.0.0.1", agent_port),), inter)
    lines = [
        f"    server {target_id(a, p)} {a}:{p} {check.server_options(target_id(a, p))}"
        for a, p in endpoints(targets)
    ]
    # HAProxy reserves two fds per server (check and agent): 10,000 servers in one process need
    # more than the 20,000 fds a container allows, so each poller is split over processes.
    size = -(-len(lines) // PROCESSES_PER_POLLER)
    async with contextlib.AsyncExitStack() as stack:
        children = []
        for i in range(count * PROCESSES_PER_POLLER):
            part = i % PROCESSES_PER_POLLER
            servers = "\n".join(lines[part * size : (part + 1) * size])
            cfg = work / f"poller{i}.cfg"
            socket = work / f"poller{i}.sock"
            cfg.write_text(POLLER_CFG.format(socket=socket, port=unused_port(), servers=servers))
            argv = [haproxy_path(), "-f", str(cfg)]
            child = await stack.enter_async_context(
                started(f"haproxy-poller{i}", argv, HELPER_CORE, work)
            )
            children.append(child)
        yield children


async def answers_flowing(exporter: Exporter, inter: float) -> None:
    """Wait one agent-inter and a half past the first answer: every server has been asked."""

    async def answered() -> bool:
        return promtext.total((await exporter.scrape()).text, ANSWERS) > 0

    await wait_until(answered, 30, "the first agent answer", exporter.child)
    await asyncio.sleep(1.5 * inter)


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    inter = parse_duration(args.agent_inter)
    interval = parse_duration(args.interval)
    agent_port = unused_port()
    env = {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{agent_port}"}
    rows: dict[str, Any] = {}
    async with target_farm(work) as target:
        async with running_exporter(
            work, "exporter", args.targets, args.interval, extra_env=env
        ) as exporter:
            await steady(exporter, interval + 10)
            rows["checks only"] = await phase(exporter, target, args.seconds)
            async with pollers(work, POLLERS, args.targets, agent_port, inter) as children:
                await answers_flowing(exporter, inter)
                before = [c.cpu_seconds() for c in children]
                rows["checks + agent"] = await phase(exporter, target, args.seconds)
                rows["checks + agent"]["pollers_cpu_share"] = (
                    sum(c.cpu_seconds() - b for c, b in zip(children, before, strict=True))
                    / rows["checks + agent"]["seconds"]
                )
        # The same check rate over fewer servers (as bench.compare): HAProxy's first checks of
        # 10,000 servers come in a burst that times out on a shared machine.
        servers = min(OWN_CHECK_SERVERS, args.targets)
        inter_ms = round(servers * interval / args.targets * 1000)
        async with haproxy_checker(work, endpoints(servers), inter_ms) as checker:
            start = await read(checker.child, target)
            await asyncio.sleep(args.seconds)
            own = window(start, await read(checker.child, target))
            rows["haproxy own checks"] = {
                "servers": servers,
                "inter_ms": inter_ms,
                "seconds": own.seconds,
                "cpu_share": own.cpu_share,
                "checks_per_s": own.target_rate,
            }
    return rows


async def phase(exporter: Exporter, target: HAProxyProcess, seconds: float) -> dict[str, Any]:
    first = await exporter.scrape()
    before = await read(exporter.child, target)
    await asyncio.sleep(seconds)
    measured = window(before, await read(exporter.child, target))
    last = await exporter.scrape()
    answers = {
        labels["result"]: value
        - dict((lb["result"], v) for lb, v in promtext.samples(first.text, ANSWERS)).get(
            labels["result"], 0.0
        )
        for labels, value in promtext.samples(last.text, ANSWERS)
    }
    return {
        "seconds": measured.seconds,
        "cpu_share": measured.cpu_share,
        "checks_per_s": counted(first, last, "healthcheck_checks_total") / measured.seconds,
        "answers_per_s": sum(answers.values()) / measured.seconds,
        "answers_by_result": answers,
        **lag_figures(first, last),
    }


def report(rows: dict[str, Any], args: argparse.Namespace) -> str:
    base, both, own = rows["checks only"], rows["checks + agent"], rows["haproxy own checks"]
    extra_cpu = both["cpu_share"] - base["cpu_share"]
    per_answer_us = extra_cpu / both["answers_per_s"] * 1e6 if both["answers_per_s"] else 0.0
    lines = [
        f"{'phase':<20}{'CPU (cores)':>12}{'checks/s':>10}{'answers/s':>11}{'lag p99':>10}",
    ]
    for name in ("checks only", "checks + agent"):
        r = rows[name]
        p99 = r["lag_p99_s"]
        lines.append(
            f"{name:<20}{r['cpu_share']:>12.3f}{r['checks_per_s']:>10.0f}"
            f"{r['answers_per_s']:>11.0f}{(p99 or 0) * 1000:>8.1f}ms"
        )
    lines += [
        f"answers by result: {both['answers_by_result']}",
        f"agent CPU per answer: {per_answer_us:.1f} us ({extra_cpu:.3f} cores for "
        f"{both['answers_per_s']:.0f} answers/s); checks + answers "
        f"{both['cpu_share']:.3f} cores (goal < {CPU_GOAL})",
        f"{POLLERS} HAProxy pollers' agent checks: {both['pollers_cpu_share']:.3f} cores together",
        f"one HAProxy checking itself at the same rate ({own['checks_per_s']:.0f} checks/s, "
        f"{own['servers']} servers every {own['inter_ms']}ms): {own['cpu_share']:.3f} cores; "
        f"{POLLERS} of them: {POLLERS * own['cpu_share']:.3f} cores",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    if args.work is not None:  # keep the processes' logs there
        args.work.mkdir(parents=True, exist_ok=True)
        rows = await measure(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
            rows = await measure(args, Path(tmp))
    print(report(rows, args))
    RESULTS.parent.mkdir(exist_ok=True)
    document = {"args": {**vars(args), "work": str(args.work)}, "results": rows}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--interval", default="15s")
    parser.add_argument("--agent-inter", default="5s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--work", type=Path, help="keep the logs in this directory")
    args = parser.parse_args()
    pin_self()
    run_until_stopped(main_async(args))


if __name__ == "__main__":
    main()
