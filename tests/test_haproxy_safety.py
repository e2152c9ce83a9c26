"""Issue 13 with a real HAProxy: the safety floor, and health that survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.haproxy_proc import (
    FAST,
    REQUIRES_HAPROXY,
    backends,
    haproxy,
    in_rotation,
    reload_env,
)
from tests.process import ExporterProcess, exporter, value
from tests.test_haproxy_e2e import dump_log_on_failure

pytestmark = REQUIRES_HAPROXY


def up(metrics: str, server: str) -> float | None:
    return value(metrics, "healthcheck_target_up", target=server)


async def api_panic(proc: ExporterProcess, app: str = "web") -> object:
    """The app's `panic` field in GET /api/v1/targets (the status page reads the same)."""
    status, body = await proc.get("/api/v1/targets")
    assert status == 200, body
    [summary] = [a for a in json.loads(body)["data"]["apps"] if a["app"] == app]
    return summary["panic"]


def reloaded_since_change(metrics: str) -> bool:
    changed = value(metrics, "healthcheck_haproxy_last_config_change_timestamp_seconds")
    reloaded = value(metrics, "healthcheck_haproxy_last_reload_success_timestamp_seconds")
    return changed is not None and reloaded is not None and reloaded >= changed


async def wait_metric(proc: ExporterProcess, what: str, check: object) -> str:
    assert callable(check)
    return await proc.wait_for_metrics(check, what=what)


@pytest.mark.parametrize("mode", ["signal", "master-socket", "command", "runtime-api"])
async def test_panic_keeps_every_server_in_haproxy_until_one_comes_back(tmp_path: Path, mode: str):
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        env = {
            **FAST,
            **reload_env(mode, hx),
            "HEALTHCHECK_TARGETS": ", ".join(b.target for b in (b0, b1, b2)),
            "HEALTHCHECK_PANIC_THRESHOLD": "50%",
            # HAProxy 2.6 loses a SIGUSR2 that arrives while its master re-executes: reloads
            # 100 ms apart (the eviction of b1, then the panic) can leave the older file live.
            "HEALTHCHECK_HAPROXY_MIN_RELOAD_INTERVAL": "1s",
        }
        every = (b0.server, b1.server, b2.server)
        async with exporter(env) as proc, dump_log_on_failure(proc):
            await hx.wait_for_servers(lambda s: all(in_rotation(s, name) for name in every))
            await b1.kill()
            await b2.kill()
            await wait_metric(
                proc,
                "b1 and b2 down, web in panic",
                lambda m: (
                    up(m, b1.server) == up(m, b2.server) == 0
                    and value(m, "healthcheck_app_panic", app="web") == 1
                ),
            )
            await proc.wait_for_log("app in panic")
            assert await api_panic(proc) is True  # what the status page shows
            if mode != "runtime-api":  # HAProxy has loaded the file written in panic
                await wait_metric(proc, "a reload after the last write", reloaded_since_change)
            # Every server stays (or is back) in rotation, and stays there round after round.
            await hx.wait_for_servers(lambda s: all(in_rotation(s, name) for name in every))
            # A signal "succeeds" once sent: give a reload still under way (the one that evicted
            # the first dead server, before the panic) time to land before judging.
            await asyncio.sleep(1.0)
            await hx.wait_for_servers(lambda s: all(in_rotation(s, name) for name in every))
            deadline = time.monotonic() + 1.0  # ten check intervals
            while time.monotonic() < deadline:
                servers = await hx.servers()
                assert all(in_rotation(servers, name) for name in every), servers
                await asyncio.sleep(0.05)
            assert all(f"server {name} " in hx.backends_cfg.read_text() for name in every)
            await b1.start()
            await wait_metric(
                proc,
                "web out of panic",
                lambda m: value(m, "healthcheck_app_panic", app="web") == 0,
            )
            await proc.wait_for_log("app left panic")
            assert await api_panic(proc) is False
            servers = await hx.wait_for_servers(lambda s: not in_rotation(s, b2.server))
            assert in_rotation(servers, b0.server) and in_rotation(servers, b1.server)


@contextlib.asynccontextmanager
async def watch_file(path: Path, forbidden: str) -> AsyncIterator[list[str]]:
    """Read `path` every few milliseconds meanwhile; yields the contents seen with `forbidden`."""
    seen: list[str] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text()
                if forbidden in text:
                    seen.append(text)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        stop.set()
        await task


async def first_scrape(proc: ExporterProcess) -> str:
    """/metrics as soon as the exporter listens (before its first round of checks ends)."""
    return await proc.metrics()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_a_restarted_exporter_never_puts_a_known_dead_backend_back(
    tmp_path: Path, stop_signal: signal.Signals
):
    state = tmp_path / "state.json"
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        env = {
            **FAST,
            **reload_env("master-socket", hx),
            "HEALTHCHECK_TARGETS": ", ".join(b.target for b in (b0, b1, b2)),
            "HEALTHCHECK_STATE_FILE": str(state),
            # Slow checks after the restart: without the saved state, b2 would be healthy
            # (the initial state) for fall x interval.
            "HEALTHCHECK_INTERVAL": "1s",
            "HEALTHCHECK_FALL": "3",
        }
        async with exporter({**env, "HEALTHCHECK_INTERVAL": "100ms"}) as proc:
            await hx.wait_for_servers(lambda s: len(s) == 3)
            await b2.kill()
            await hx.wait_for_servers(lambda s: b2.server not in s)
            # Saved within a second of the change (a SIGKILL gives no chance to save later).
            deadline = time.monotonic() + 5
            while '"state":"unhealthy"' not in (state.read_text() if state.exists() else ""):
                assert time.monotonic() < deadline, "state never saved"
                await asyncio.sleep(0.05)
            proc.proc.send_signal(stop_signal)
            await proc.proc.wait()
        assert b2.server not in hx.backends_cfg.read_text()
        async with (
            watch_file(hx.backends_cfg, b2.server) as seen,
            exporter(env, ready=False) as proc,
        ):
            metrics = await first_scrape(proc)
            assert up(metrics, b2.server) == 0
            assert up(metrics, b0.server) == up(metrics, b1.server) == 1
            await proc.wait_for_log("restored target states")
            await proc.wait_for_metrics(lambda m: value(m, "healthcheck_ready") == 1)
            await asyncio.sleep(1.5)  # a round or two more
            servers = await hx.servers()
        assert seen == []
        assert set(servers) == {b0.server, b1.server}
