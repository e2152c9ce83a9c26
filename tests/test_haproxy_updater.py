"""HAProxyUpdater without HAProxy: unchanged content, coalesced reloads, retries, the check."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from exporter.haproxy.updater import HAProxyOptions, HAProxyUpdater
from exporter.model import Target, TargetState, UpdateFailed

UP, DOWN = TargetState.HEALTHY, TargetState.UNHEALTHY
TARGETS = [Target(f"web-{i}", "web", f"10.0.0.{i}", "8080") for i in range(1, 4)]


class States:
    def __init__(self) -> None:
        self.states = [(t, UP) for t in TARGETS]

    def __call__(self) -> list[tuple[Target, TargetState]]:
        return list(self.states)

    def set(self, index: int, state: TargetState) -> None:
        self.states[index] = (TARGETS[index], state)


@asynccontextmanager
async def updater(options: HAProxyOptions) -> AsyncIterator[tuple[HAProxyUpdater, States]]:
    states = States()
    writer = HAProxyUpdater(options, logging.getLogger("test.haproxy"))
    writer.track(states)
    await writer.start()
    try:
        yield writer, states
    finally:
        await writer.stop()


async def notify(writer: HAProxyUpdater, states: States) -> None:
    """As the monitor does: from a worker thread."""
    healthy = [t for t, s in states() if s is UP]
    await asyncio.to_thread(writer.on_health_change, healthy)


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (callable(condition) and condition()):
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.01)


def reload_log_command(log: Path) -> str:
    return f"sh -c 'cat {log.parent / 'backends.cfg'} | grep -c server >> {log}'"


async def test_unchanged_content_is_neither_written_nor_reloaded(tmp_path: Path):
    log = tmp_path / "reloads.log"
    options = HAProxyOptions(
        config=tmp_path / "backends.cfg",
        reload="command",
        reload_command=reload_log_command(log),
        min_reload_interval=0.05,
    )
    async with updater(options) as (writer, states):
        await notify(writer, states)
        await wait_until(lambda: writer.stats.reloads["success"] == 1)
        mtime = options.config.stat().st_mtime_ns
        await notify(writer, states)
        await notify(writer, states)
        await asyncio.sleep(0.2)  # time for a reload that must not come
        assert writer.stats.writes == {"success": 1, "unchanged": 2, "failure": 0}
        assert writer.stats.reloads["success"] == 1
        assert options.config.stat().st_mtime_ns == mtime


async def test_existing_identical_file_is_not_rewritten_at_startup(tmp_path: Path):
    options = HAProxyOptions(config=tmp_path / "backends.cfg")
    async with updater(options) as (writer, states):
        await notify(writer, states)
    async with updater(options) as (writer, states):
        await notify(writer, states)
        assert writer.stats.writes["unchanged"] == 1


async def test_changes_close_together_are_coalesced_and_the_last_state_reaches_haproxy(
    tmp_path: Path,
):
    log = tmp_path / "reloads.log"
    interval = 0.5
    options = HAProxyOptions(
        config=tmp_path / "backends.cfg",
        reload="command",
        reload_command=reload_log_command(log),
        min_reload_interval=interval,
    )
    async with updater(options) as (writer, states):
        started = time.monotonic()
        for flip in range(10):  # ten changes in quick succession
            states.set(flip % 3, DOWN if flip % 2 == 0 else UP)
            await notify(writer, states)
        states.set(0, DOWN)
        states.set(1, DOWN)
        states.set(2, UP)
        await notify(writer, states)  # the last state: one healthy server
        await wait_until(lambda: log.exists() and log.read_text().splitlines()[-1:] == ["1"])
        elapsed = time.monotonic() - started
        await asyncio.sleep(interval * 1.5)  # no reload beyond the one carrying the last state
    reloads = log.read_text().splitlines()
    assert writer.stats.writes["success"] >= 5
    assert len(reloads) <= 1 + elapsed / interval + 1
    assert len(reloads) < writer.stats.writes["success"]
    assert reloads[-1] == "1"


async def test_failed_reload_is_retried_with_backoff(tmp_path: Path):
    marker = tmp_path / "attempts"
    options = HAProxyOptions(
        config=tmp_path / "backends.cfg",
        reload="command",
        reload_command=f"sh -c 'date +%s.%N >> {marker}; exit 3'",
        min_reload_interval=0.01,
    )
    async with updater(options) as (writer, states):
        await notify(writer, states)
        await wait_until(lambda: writer.stats.reloads["failure"] >= 3, timeout=10)
        # A check round still completes while reloads fail: the writer never blocks it.
        states.set(0, DOWN)
        started = time.monotonic()
        await notify(writer, states)
        assert time.monotonic() - started < 0.5
    attempts = [float(x) for x in marker.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[1] > gaps[0] * 1.5  # backoff grows
    assert writer.stats.reloads["success"] == 0


async def test_reload_command_that_hangs_is_killed_after_the_timeout(tmp_path: Path):
    options = HAProxyOptions(
        config=tmp_path / "backends.cfg",
        reload="command",
        reload_command="sleep 30",
        reload_timeout=0.2,
    )
    async with updater(options) as (writer, states):
        await notify(writer, states)
        await wait_until(lambda: writer.stats.reloads["failure"] >= 1, timeout=5)


async def test_check_command_rejection_keeps_the_last_good_file(tmp_path: Path):
    allow = tmp_path / "allow"
    allow.write_text("yes")
    options = HAProxyOptions(
        config=tmp_path / "backends.cfg",
        check_command=f"sh -c 'grep -q yes {allow} && grep -q backend {{file}}'",
    )
    async with updater(options) as (writer, states):
        await notify(writer, states)
        good = options.config.read_text()
        allow.write_text("no")
        states.set(0, DOWN)
        with pytest.raises(UpdateFailed):  # the monitor counts it as failed and retries
            await notify(writer, states)
        assert options.config.read_text() == good
        assert writer.stats.check_failures == 1
        assert writer.stats.writes["failure"] == 1
        assert writer.stats.stale
        assert sorted(p.name for p in tmp_path.iterdir()) == ["allow", "backends.cfg"]
        allow.write_text("yes")
        await notify(writer, states)
        assert "web-1" not in options.config.read_text()


async def test_a_failed_install_is_a_counted_failure_not_a_crash(tmp_path: Path):
    """Even root cannot rename a file over a directory: the write fails, the loop goes on."""
    options = HAProxyOptions(config=tmp_path / "backends.cfg")
    async with updater(options) as (writer, states):
        options.config.mkdir()
        with pytest.raises(UpdateFailed):
            await notify(writer, states)
        assert writer.stats.writes["failure"] == 1
        assert writer.stats.stale
        options.config.rmdir()
        await notify(writer, states)
        assert not writer.stats.stale
        assert writer.stats.writes["success"] == 1
        assert [p.name for p in tmp_path.iterdir()] == ["backends.cfg"]
