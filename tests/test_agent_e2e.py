"""Agent mode with real HAProxies: two HAProxy 2.6 instances load the same generated file, two
exporters sharded 0/2 and 1/2 answer their agent checks, clients send requests through both.

Health flips reach both HAProxies with no reload and no Runtime API command; an exporter that
stops leaves its servers as they were (fail static) and takes over again when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from exporter.haproxy.agent import AgentServer, AnswerFromState
from exporter.haproxy.render import AgentCheck
from exporter.model import Target
from exporter.settings import parse_duration
from exporter.shard import shard_of
from exporter.state import StateTracker
from tests.haproxy_proc import (
    MAIN_CFG,
    RUNNING,
    SERVER_STATE,
    STATE_FILE_CFG,
    Backend,
    HAProxy,
    Load,
    Request,
    backends,
    haproxy,
    haproxy_binary,
    load,
    reload_env,
    unexplained_failures,
)
from tests.process import ExporterProcess, exporter, stop_process, value
from tests.servers import unused_port
from tests.test_haproxy_e2e import dump_log_on_failure, write_targets

pytestmark = pytest.mark.skipif(
    haproxy_binary() is None, reason="haproxy not installed (scripts/test.sh installs it)"
)

# One frontend, two apps: /api goes to the api backend, everything else to web.
TWO_APPS_CFG = MAIN_CFG.replace(
    "    default_backend web\n",
    "    use_backend api if {{ path /api }}\n    default_backend web\n",
)
INTERVAL, FALL, RISE, AGENT_INTER = "200ms", 2, 2, "300ms"
# The bound: a dead backend leaves both HAProxies within fall x interval + agent-inter
# + 1 s of its death.
EVICTION_BOUND = FALL * parse_duration(INTERVAL) + parse_duration(AGENT_INTER) + 1.0


async def wait_everywhere(
    proxies: list[HAProxy],
    condition: Callable[[dict[str, int]], bool],
    timeout: float,
    backends: tuple[str, ...] = ("web", "api"),
) -> float:
    """Poll every HAProxy until `condition` holds in all of them; returns when it did."""
    deadline = time.monotonic() + timeout
    while True:
        states = [await hx.op_states(*backends) for hx in proxies]
        if all(condition(s) for s in states):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"HAProxy states never matched within {timeout:.1f}s: {states}")
        await asyncio.sleep(0.02)


async def kill_and_wait_eviction(
    backend: Backend, server: str, proxies: list[HAProxy]
) -> tuple[float, float]:
    """Kill `backend`; (kill, eviction) once no HAProxy runs `server` any more, within the
    issue's bound."""
    killed = time.monotonic()
    await backend.kill()
    evicted = await wait_everywhere(proxies, lambda s: s[server] != RUNNING, EVICTION_BOUND)
    return killed, evicted


def pick_ids(app: str) -> list[str]:
    """Three ids for `app`, at least one in each of the two shards."""
    candidates = [f"{app}-{k}" for k in range(100)]
    first = next(c for c in candidates if shard_of(c, 2) == 0)
    second = next(c for c in candidates if shard_of(c, 2) == 1)
    third = next(c for c in candidates if c not in (first, second))
    return [first, second, third]


class Fleet:
    """Six backends over two apps, their ids and the exporters' shared settings."""

    def __init__(self, started: list[Backend]) -> None:
        self.ids = pick_ids("web") + pick_ids("api")
        self.backend = dict(zip(self.ids, started, strict=True))
        self.agent_ports = [unused_port(), unused_port()]

    def targets(self) -> str:
        return json.dumps(
            [
                {"id": i, "app": i.split("-")[0], "ip": "127.0.0.1", "port": b.port,
                 "path": "/health"}
                for i, b in self.backend.items()
            ]
        )  # fmt: skip

    def owned_by(self, shard: int, app: str) -> str:
        return next(i for i in self.ids if i.startswith(app) and shard_of(i, 2) == shard)

    def env(self, shard: int, hx: HAProxy) -> dict[str, str]:
        return {
            "HEALTHCHECK_TARGETS": self.targets(),
            "HEALTHCHECK_INTERVAL": INTERVAL,
            # The backends share the test's event loop with the clients: on a loaded machine a
            # healthy one can take long to answer, and must not flap.
            "HEALTHCHECK_TIMEOUT": "2s",
            "HEALTHCHECK_FALL": str(FALL),
            "HEALTHCHECK_RISE": str(RISE),
            "HEALTHCHECK_SHARD": f"{shard}/2",
            "HEALTHCHECK_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{self.agent_ports[shard]}",
            "HEALTHCHECK_AGENT_SHARD_ADDRESSES": ",".join(
                f"127.0.0.1:{p}" for p in self.agent_ports
            ),
            "HEALTHCHECK_AGENT_INTER": AGENT_INTER,
            "HEALTHCHECK_HAPROXY_CONFIG": str(hx.backends_cfg),
            "HEALTHCHECK_HAPROXY_RELOAD": "master-socket",
            "HEALTHCHECK_HAPROXY_MASTER_SOCKET": str(hx.master_socket),
            "HEALTHCHECK_HAPROXY_MIN_RELOAD_INTERVAL": "100ms",
        }


def counters(metrics: str) -> tuple[float, float]:
    """(successful reloads, Runtime API commands) an exporter made."""
    reloads = value(metrics, "healthcheck_haproxy_reloads_total", result="success") or 0.0
    commands = sum(
        value(metrics, "healthcheck_haproxy_runtime_commands_total", result=r) or 0.0
        for r in ("success", "failure")
    )
    return reloads, commands


@contextlib.asynccontextmanager
async def clients(proxies: list[HAProxy]) -> AsyncIterator[list[Load]]:
    """A client through each HAProxy, each to another app (web, api)."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(load(hx.url + path))
            for hx, path in zip(proxies, ("", "api"), strict=True)
        ]


def describe_failures(failed: list[Request], windows: list[tuple[float, float]]) -> str:
    """Failed requests and kill-to-eviction windows in seconds after the first kill."""
    zero = windows[0][0]
    return (
        "failed requests (start, end, answer): "
        + ", ".join(
            f"({r.started - zero:.3f}, {r.ended - zero:.3f}, {r.detail[:40]!r})" for r in failed
        )
        + "; windows: "
        + ", ".join(f"({a - zero:.3f}, {b - zero:.3f})" for a, b in windows)
    )


def log_of(*procs: ExporterProcess) -> str:
    return "\n".join(line for p in procs for line in p.log[-30:])


async def test_two_haproxies_two_sharded_exporters_in_agent_mode(tmp_path: Path):
    (tmp_path / "h0").mkdir()
    (tmp_path / "h1").mkdir()
    initial = "backend web\nbackend api\n"
    async with (
        backends(6) as started,
        haproxy(tmp_path / "h0", initial, TWO_APPS_CFG) as hx0,
        haproxy(tmp_path / "h1", initial, TWO_APPS_CFG) as hx1,
    ):
        fleet = Fleet(started)
        proxies = [hx0, hx1]
        everyone = set(fleet.ids)
        async with exporter(fleet.env(0, hx0)) as e0:
            exporter1 = exporter(fleet.env(1, hx1))
            e1 = await exporter1.__aenter__()
            try:
                await wait_everywhere(
                    proxies, lambda s: set(s) == everyone and set(s.values()) == {RUNNING}, 15
                )
                assert hx0.backends_cfg.read_text() == hx1.backends_cfg.read_text()
                # Each exporter's first write loads the file: that is its only reload.
                before = [
                    counters(await e.wait_for_metrics(lambda m: counters(m)[0] == 1))
                    for e in (e0, e1)
                ]
                windows: list[tuple[float, float]] = []
                async with clients(proxies) as loads:
                    # A health flip: out of both HAProxies within the bound, then back after rise.
                    dead = fleet.owned_by(0, "web")
                    windows.append(await kill_and_wait_eviction(fleet.backend[dead], dead, proxies))
                    await fleet.backend[dead].start()
                    await wait_everywhere(proxies, lambda s: s[dead] == RUNNING, 15)
                    assert f"target={dead} " in await e0.wait_for_log(
                        rf"target healthy.*target={dead} .*consecutive_successes={RISE}"
                    )
                    after = [counters(await e.metrics()) for e in (e0, e1)]
                    assert after == before, "agent mode flips need no reload, no Runtime API"

                    # Replica 1 stops with one of its targets down: its servers keep their state.
                    down1 = fleet.owned_by(1, "api")
                    windows.append(
                        await kill_and_wait_eviction(fleet.backend[down1], down1, proxies)
                    )
                    frozen = time.monotonic()
                    await stop_process(e1.proc)
                    expected = {i: (RUNNING if i != down1 else 0) for i in fleet.ids}
                    while time.monotonic() < frozen + 6 * parse_duration(AGENT_INTER):
                        for hx in proxies:
                            assert await hx.op_states("web", "api") == expected
                        await asyncio.sleep(0.05)
                    stopped_requests = [r for c in loads for r in c.results if r.started > frozen]

                    # It comes back: never `up` for what it has not checked, then it takes over.
                    await exporter1.__aexit__(None, None, None)
                    exporter1 = exporter(fleet.env(1, hx1))
                    e1 = await exporter1.__aenter__()
                    for _ in range(4):  # a few agent rounds after the restart
                        for hx in proxies:
                            assert (await hx.op_states("web", "api"))[down1] != RUNNING
                        await asyncio.sleep(parse_duration(AGENT_INTER))
                    await fleet.backend[down1].start()
                    await wait_everywhere(proxies, lambda s: s[down1] == RUNNING, 15)
                    metrics1 = await e1.metrics()
            except AssertionError as err:
                raise AssertionError(f"{err}\nexporter logs:\n{log_of(e0, e1)}") from None
            finally:
                await exporter1.__aexit__(None, None, None)
    results = [r for c in loads for r in c.results]
    print(
        f"\nagent mode: {len(results)} requests, evictions after "
        + ", ".join(f"{b - a:.3f}s" for a, b in windows)
        + f" (bound {EVICTION_BOUND:.1f}s)"
    )
    bad = unexplained_failures(results, windows)
    assert bad == [], describe_failures(bad, windows)
    assert all(r.ok for r in stopped_requests) and len(stopped_requests) > 20
    assert {r.detail for r in results if r.ok} == {f"b{i}" for i in range(6)}
    assert value(metrics1, "healthcheck_agent_requests_total", result="up") > 0
    assert value(metrics1, "healthcheck_agent_requests_total", result="error") == 0


async def test_unknown_and_pending_answers_change_nothing_in_haproxy(tmp_path: Path):
    """HAProxy 2.6 keeps a server's state, up or down, when the agent answers an empty line (an
    unknown id or a state not confirmed yet)."""
    tracker = StateTracker(fall=1, rise=1)
    pending = Target("pending", "web", "127.0.0.1", "1")
    tracker.apply_targets([pending])
    agent = AgentServer(AnswerFromState(tracker), logging.getLogger("test.agent"))
    port = int((await agent.start("127.0.0.1", 0))[0].rsplit(":", 1)[1])
    check = AgentCheck((("127.0.0.1", port),), 0.1)
    servers = "".join(
        f"    server {name} 127.0.0.1:1 {check.server_options(name)}\n"
        for name in ("ghost", "pending")
    )
    try:
        async with haproxy(tmp_path, "backend web\n" + servers) as hx:
            for forced in ("down", "up", "down"):
                for name in ("ghost", "pending"):
                    await hx.admin(f"set server web/{name} agent {forced}")
                asked = sum(agent.stats.requests.values())
                while sum(agent.stats.requests.values()) < asked + 10:  # five rounds each
                    states = await hx.op_states()
                    assert states == dict.fromkeys(
                        ("ghost", "pending"), 0 if forced == "down" else RUNNING
                    )
                    await asyncio.sleep(0.02)
    finally:
        await agent.stop()
    assert agent.stats.requests["unknown"] >= 15 and agent.stats.requests["pending"] >= 15
    assert agent.stats.requests["up"] == agent.stats.requests["down"] == 0


async def test_a_reload_keeps_a_down_server_down_with_the_server_state_file(tmp_path: Path):
    """Without the saved states, a reload starts the dead server UP until its agent answers
    (up to agent-inter, bench.failover mode agent); with them it never comes back."""
    async with backends(3) as started, haproxy(tmp_path, "backend web\n", STATE_FILE_CFG) as hx:
        targets_file = tmp_path / "targets.yml"
        write_targets(targets_file, started)
        env = {
            "HEALTHCHECK_INTERVAL": "200ms",
            "HEALTHCHECK_TIMEOUT": "1s",
            "HEALTHCHECK_FALL": "2",
            "HEALTHCHECK_TARGETS_FILE": str(targets_file),
            "HEALTHCHECK_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{unused_port()}",
            "HEALTHCHECK_AGENT_INTER": "2s",
            **reload_env("master-socket", hx),
            "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": str(hx.admin_socket),
            "HEALTHCHECK_HAPROXY_SERVER_STATE_FILE": str(tmp_path / SERVER_STATE),
        }
        async with exporter(env) as proc, dump_log_on_failure(proc):
            await wait_everywhere([hx], lambda s: len(s) == 3, 15, ("web",))
            # The last server's first agent check after a reload comes last (HAProxy spreads
            # them over agent-inter by position): the widest window.
            dead = max(started, key=lambda b: b.server)
            await dead.kill()
            await wait_everywhere([hx], lambda s: s[dead.server] != RUNNING, 15, ("web",))
            write_targets(targets_file, started, extra=[("web", unused_port())])  # a reload
            deadline = time.monotonic() + 30
            while len(states := await hx.op_states()) < 4:
                assert states[dead.server] != RUNNING, "the reload brought the dead server back"
                assert time.monotonic() < deadline, "the new target never reached HAProxy"
                await asyncio.sleep(0.01)
            watch_until = time.monotonic() + 2 * 2.0  # two agent-inters after the reload
            while time.monotonic() < watch_until:
                assert (await hx.op_states())[dead.server] != RUNNING, "UP after the reload"
                await asyncio.sleep(0.01)
            metrics = await proc.metrics()
    assert value(metrics, "healthcheck_haproxy_reloads_total", result="success") == 2
    assert (tmp_path / SERVER_STATE).read_text().startswith("1\n")
