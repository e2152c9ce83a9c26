"""HEALTHCHECK_STATE_FILE: the format, bad files ignored, saves, and the monitor restoring it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import statefile
from exporter.model import Config, Result, Target, TargetState
from exporter.monitor import HealthMonitor
from exporter.state import StateTracker
from exporter.statefile import SavedTarget, StateFileError, StateSaver, decode, encode
from tests.process import exporter
from tests.servers import target_server

UP, DOWN = TargetState.HEALTHY, TargetState.UNHEALTHY
LOG = logging.getLogger("test.statefile")
WEB = [Target(f"web-{i}", "web", "127.0.0.1", str(9000 + i)) for i in range(3)]


def tracker_with_history() -> StateTracker:
    tracker = StateTracker(fall=2, rise=2)
    tracker.apply_targets(WEB)
    for _ in range(3):
        tracker.record_result(Result(WEB[0], False, reason="timeout", checked_at=50.0))  # type: ignore[arg-type]
    tracker.record_result(Result(WEB[1], True, checked_at=60.0))
    return tracker


def test_encode_then_decode_gives_back_every_checked_target():
    saved = decode(encode(tracker_with_history().entries(), 100.0))
    assert saved == {
        "web-0": SavedTarget("127.0.0.1:9000", DOWN, 3, 0, 50.0),
        "web-1": SavedTarget("127.0.0.1:9001", UP, 0, 1, None),
    }  # web-2 was never checked: nothing to restore


def test_restore_puts_state_streaks_and_last_change_back():
    tracker = StateTracker(fall=2, rise=2)
    tracker.apply_targets(WEB)
    assert tracker.restore("web-0", DOWN, 3, 0, 50.0)
    assert not tracker.restore("nope", DOWN, 1, 0, None)
    entry = tracker.get_entry("web-0")
    assert entry is not None
    assert (entry.state, entry.consecutive_failures, entry.last_change, entry.checked) == (
        DOWN,
        3,
        50.0,
        True,
    )
    assert tracker.get_stats() == (3, 2, 1)
    assert tracker.restore("web-0", UP, 0, 2, 70.0)
    assert tracker.get_stats() == (3, 3, 0)


GOOD = encode(tracker_with_history().entries(), 100.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (GOOD[: len(GOOD) // 2], "not valid JSON"),  # truncated
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"targets": {}}', "not a healthcheck-exporter state file"),
        (b'{"format": "healthcheck-exporter/state", "version": 7}', "unsupported version"),
        (GOOD.replace(b'"unhealthy"', b'"sick"'), "neither healthy nor unhealthy"),
        (GOOD.replace(b'"consecutive_failures":3', b'"consecutive_failures":-3'), "not a count"),
        (GOOD.replace(b'"last_change":50.0', b'"last_change":"soon"'), "not a time"),
    ],
)
def test_a_bad_file_is_refused_saying_why(data: bytes, message: str):
    with pytest.raises(StateFileError, match=message):
        decode(data)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_decode_or_raise_state_file_error(data: bytes):
    with contextlib.suppress(StateFileError):
        decode(data)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    )
)
def test_any_json_in_a_target_entry_decodes_or_raises_state_file_error(item: object):
    document = {"format": statefile.FORMAT, "version": 1, "targets": {"t": item}}
    with contextlib.suppress(StateFileError):
        decode(json.dumps(document).encode())


def test_missing_fifo_directory_and_huge_files_are_ignored_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    assert statefile.load(tmp_path / "missing.json", LOG) == {}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert statefile.load(fifo, LOG) == {}  # returns at once: a FIFO must not hang startup
    assert statefile.load(tmp_path, LOG) == {}
    assert statefile.load(Path("/dev/zero"), LOG) == {}
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_bytes(GOOD[:-20])
    assert statefile.load(corrupt, LOG) == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    good = tmp_path / "good.json"
    good.write_bytes(GOOD)
    assert set(statefile.load(good, LOG)) == {"web-0", "web-1"}


async def test_saver_saves_after_a_change_and_drops_targets_no_longer_configured(tmp_path: Path):
    path = tmp_path / "state.json"
    tracker = tracker_with_history()
    saver = StateSaver(path, tracker, LOG)
    task = asyncio.create_task(saver.run())
    try:
        await wait_until(lambda: saver.stats.writes["success"] == 1)
        assert set(decode(path.read_bytes())) == {"web-0", "web-1"}
        tracker.apply_targets(WEB[1:])
        await wait_until(lambda: saver.stats.writes["success"] == 2)
        assert set(decode(path.read_bytes())) == {"web-1"}
        await asyncio.sleep(1.5)  # no change: no write
        assert saver.stats.writes["success"] == 2
    finally:
        task.cancel()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (callable(condition) and condition()):
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.02)


class Updater:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.monitor: HealthMonitor | None = None
        self.ready_at_call: list[bool] = []

    def on_health_change(self, healthy_targets: Sequence[Target]) -> None:
        self.calls.append(sorted(t.id for t in healthy_targets))
        self.ready_at_call.append(self.monitor is not None and self.monitor.ready)


class Provider:
    def __init__(self, items: list[Target]) -> None:
        self.items = items

    def get_health_check_targets(self) -> list[Target]:
        return list(self.items)


async def test_monitor_restores_known_targets_and_tells_the_updater_before_the_first_round():
    async with target_server() as srv:
        srv.down.add("dead")
        alive = srv.target("/t/alive", target_id="alive")
        dead = srv.target("/t/dead", target_id="dead")
        moved = srv.target("/t/moved", target_id="moved")
        saved = {
            "dead": SavedTarget(dead.address, DOWN, 5, 0, 10.0),
            "moved": SavedTarget("10.9.9.9:1", DOWN, 5, 0, 10.0),  # another server now
            "gone": SavedTarget("10.9.9.9:2", DOWN, 5, 0, 10.0),
        }
        hung = srv.target("/hang", target_id="hung")  # holds the first round for the timeout
        updater = Updater()
        config = Config(interval=60, fall=3, rise=2, timeout=1.0)
        monitor = HealthMonitor(config, Provider([alive, dead, moved, hung]), updater)
        updater.monitor = monitor
        monitor.restore_state(saved)
        monitor.start()
        await wait_until(lambda: bool(updater.calls))
        # The first call comes from the restored state, before the first round has ended.
        assert updater.calls[0] == ["alive", "hung", "moved"]
        assert updater.ready_at_call[0] is False
        assert monitor.restored == 1
        assert monitor.tracker.get_state("dead") is DOWN
        await monitor.wait_ready()
        assert all("dead" not in call for call in updater.calls)
        await monitor.stop()


async def test_initial_unhealthy_targets_wait_for_rise_successes():
    async with target_server() as srv:
        item = srv.target("/t/a", target_id="a")
        updater = Updater()
        config = Config(interval=0.05, fall=1, rise=3, timeout=1.0)
        monitor = HealthMonitor(config, Provider([item]), updater, initial_state=DOWN)
        monitor.start()
        await monitor.wait_ready()
        await wait_until(lambda: updater.calls[-1:] == [["a"]])
        assert updater.calls[0] == []
        assert srv.hits["a"] >= 3
        await monitor.stop()


@pytest.mark.parametrize("content", [b'{"format": "healthcheck-exporter/state", "v', b"\x00" * 9])
async def test_the_exporter_starts_with_a_corrupt_state_file_and_replaces_it(
    tmp_path: Path, content: bytes
):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    async with target_server() as srv:
        env = {
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/health",
            "HEALTHCHECK_STATE_FILE": str(path),
        }
        async with exporter(env) as proc:
            line = await proc.wait_for_log("ignoring the state file")
            assert "level=warning" in line and str(path) in line
            await wait_until(lambda: path.read_bytes() != content)
    assert set(decode(path.read_bytes())) == {f"web-127.0.0.1-{srv.port}"}


async def test_with_checks_disabled_nothing_is_restored():
    item = Target("dead", "web", "127.0.0.1", "1")
    updater = Updater()
    config = Config(enabled=False, interval=60, fall=3, rise=2, timeout=1.0)
    monitor = HealthMonitor(config, Provider([item]), updater)
    monitor.restore_state({"dead": SavedTarget(item.address, DOWN, 5, 0, 10.0)})
    monitor.start()
    await wait_until(lambda: updater.calls == [["dead"]])  # every target counts as healthy
    assert monitor.restored == 0
    await monitor.stop()
