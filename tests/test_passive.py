"""The passive fast path: HAProxy's error counters make the exporter check a target at once.

Pure parts (parsing `show stat`, telling growth from a reload's restart) on their own, and the
whole path with a real HAProxy 2.6 under client load."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from exporter.haproxy.stats import SIGNALS, CounterWatch, PassiveFastPath, parse_show_stat
from exporter.model import Target
from exporter.settings import ConfigError, load_settings
from exporter.state import StateTracker
from tests.haproxy_proc import (
    backends,
    haproxy,
    haproxy_binary,
    load,
    reload_env,
    unexplained_failures,
)
from tests.process import exporter, value

HEADER = "# pxname,svname,qcur,econ,eresp,wretr,wredis,status,hrsp_5xx,\n"


def row(backend: str, server: str, econ: int = 0, wretr: int = 0, h5xx: int | str = 0) -> str:
    return f"{backend},{server},0,{econ},0,{wretr},0,UP,{h5xx},\n"


def test_show_stat_rows_give_each_server_its_signal_counters():
    text = (
        HEADER
        + row("web", "FRONTEND")
        + row("web", "web-1", econ=3, wretr=7, h5xx=2)
        + row("web", "web-2", h5xx="")
        + row("web", "BACKEND", econ=3)
    )
    counters = parse_show_stat(text)
    assert list(counters) == [("web", "web-1"), ("web", "web-2")]
    assert dict(zip(SIGNALS, counters[("web", "web-1")], strict=True)) == {
        "econ": 3, "eresp": 0, "hrsp_5xx": 2, "wretr": 7, "wredis": 0
    }  # fmt: skip
    assert counters[("web", "web-2")] == (0,) * len(SIGNALS)


def test_growth_triggers_and_a_reload_restart_is_no_increase():
    watch = CounterWatch()
    read = lambda *rows: parse_show_stat(HEADER + "".join(rows))  # noqa: E731
    # The first reading is a baseline: its counters may be as old as HAProxy.
    assert watch.grown(read(row("web", "a", econ=5), row("web", "b"))) == []
    assert watch.grown(read(row("web", "a", econ=5), row("web", "b", wretr=1))) == [("web", "b")]
    assert watch.grown(read(row("web", "a", econ=6), row("web", "b", wretr=1))) == [("web", "a")]
    # A reload: every counter starts again at zero; the drop is no increase...
    assert watch.grown(read(row("web", "a"), row("web", "b"))) == []
    assert watch.grown(read(row("web", "a"), row("web", "b", h5xx=1))) == [("web", "b")]
    # ...but errors counted since the restart are, even when the drop is seen with them.
    assert watch.grown(read(row("web", "a", econ=2), row("web", "b", h5xx=1))) == [("web", "a")]
    assert watch.grown(read(row("web", "a", econ=1), row("web", "b"))) == [("web", "a")]
    # A server that was not there (a reload added it): its counters started at zero.
    assert watch.grown(read(row("web", "a", econ=1), row("web", "c"))) == []
    assert watch.grown(read(row("web", "a", econ=1), row("web", "d", econ=9))) == [("web", "d")]


def test_triggers_check_our_targets_once_counted_by_app(caplog: pytest.LogCaptureFixture):
    tracker = StateTracker(fall=2, rise=2)
    tracker.apply_targets([Target("web-1", "web"), Target("api-1", "api"), Target("web-2", "web")])
    asked: list[str] = []
    busy = {"web-2"}  # its check is already under way

    def check_now(target_id: str) -> bool:
        asked.append(target_id)
        return target_id not in busy

    passive = PassiveFastPath(Path("/nowhere"), 1.0, tracker, check_now, logging.getLogger("p"))
    with caplog.at_level(logging.INFO, "p"):
        passive.trigger([("web", "web-1"), ("api", "api-1"), ("web", "web-2"), ("x", "other")])
        passive.trigger([("web", "web-1")])
    assert asked == ["web-1", "api-1", "web-2", "web-1"]  # never for a server not ours
    assert passive.stats.triggers == {"web": 2, "api": 1}
    logged = [r.__dict__["target"] for r in caplog.records if "haproxy saw errors" in r.message]
    assert logged == ["web-1", "api-1"]  # one line per target every few seconds at most


async def test_an_unreadable_socket_is_counted_and_the_path_goes_on(tmp_path: Path):
    passive = PassiveFastPath(
        tmp_path / "missing.sock", 0.01, StateTracker(1, 1), lambda _: True,
        logging.getLogger("p"),
    )  # fmt: skip
    task = asyncio.create_task(passive.run())
    deadline = time.monotonic() + 10
    while passive.stats.read_failures < 3:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_stat_interval_needs_the_socket_which_needs_no_file():
    with pytest.raises(ConfigError, match="HEALTHCHECK_HAPROXY_STAT_INTERVAL: needs HEALTHCHECK_"):
        load_settings({"HEALTHCHECK_HAPROXY_STAT_INTERVAL": "2s"})
    settings = load_settings(
        {
            "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": "/run/admin.sock",
            "HEALTHCHECK_HAPROXY_STAT_INTERVAL": "500ms",
        }
    )
    assert settings.haproxy_config is None and settings.haproxy_stat_interval == 0.5


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed")
async def test_backend_dying_under_load_leaves_within_2s_at_a_30s_interval(tmp_path: Path):
    """Interval 30 s, fastinter 200 ms, fall 2: the client's failed requests make HAProxy's
    counters grow, the exporter checks at once and then at fastinter."""
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        env = {
            **reload_env("master-socket", hx),
            "HEALTHCHECK_INTERVAL": "30s",
            "HEALTHCHECK_FASTINTER": "200ms",
            "HEALTHCHECK_TIMEOUT": "500ms",
            "HEALTHCHECK_FALL": "2",
            "HEALTHCHECK_RISE": "2",
            "HEALTHCHECK_HAPROXY_MIN_RELOAD_INTERVAL": "100ms",
            "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": str(hx.admin_socket),
            "HEALTHCHECK_TARGETS": ", ".join(b.target for b in (b0, b1, b2)),
        }
        async with exporter(env) as proc:
            await hx.wait_for_servers(lambda s: len(s) == 3)
            async with load(hx.url) as client:
                await asyncio.sleep(1.5)  # traffic to every server; the counters' baselines
                killed = time.monotonic()
                await b1.kill()
                await hx.wait_for_servers(lambda s: b1.server not in s, timeout=2.0)
                evicted = time.monotonic()
                await asyncio.sleep(0.5)
            metrics = await proc.metrics()
            log = "\n".join(proc.log)
    print(f"\npassive: evicted {evicted - killed:.3f}s after the kill (interval 30s)")
    assert unexplained_failures(client.results, [(killed, evicted)]) == []
    assert value(metrics, "healthcheck_passive_triggers_total", app="web") >= 1
    assert f'haproxy saw errors: checking the target now" target={b1.server}' in log
