"""Long-poll wakeups: a waiter is woken when the version moves; nobody waiting, no hook."""

from __future__ import annotations

import asyncio

from exporter.model import Result, Target
from exporter.state import StateTracker
from exporter.web.watch import VersionWatch

TARGET = Target("a", "web", "127.0.0.1", "80")


async def test_waiter_wakes_when_the_version_moves_and_the_hook_is_removed_after():
    tracker = StateTracker(fall=2, rise=1)
    tracker.sync_targets([TARGET])
    watch = VersionWatch(tracker)
    assert tracker.on_version is None
    waiter = asyncio.create_task(watch.wait_past(tracker.version, 60))
    await asyncio.sleep(0)
    assert watch.waiting == 1 and tracker.on_version is not None
    tracker.record_result(Result(TARGET, True))  # steady success after the initial state:
    await asyncio.sleep(0.01)  # `checked` flips, a visible change
    await asyncio.wait_for(waiter, 5)
    assert watch.waiting == 0 and tracker.on_version is None


async def test_wait_runs_out_when_nothing_visible_changes():
    tracker = StateTracker(fall=2, rise=1)
    tracker.sync_targets([TARGET])
    tracker.record_result(Result(TARGET, True))
    watch = VersionWatch(tracker)
    version = tracker.version
    waiter = asyncio.create_task(watch.wait_past(version, 0.2))
    await asyncio.sleep(0)
    tracker.record_result(Result(TARGET, True))  # UP stays UP: nothing to tell
    await asyncio.wait_for(waiter, 5)
    assert tracker.version == version and tracker.on_version is None


async def test_an_index_not_equal_to_the_version_answers_at_once():
    tracker = StateTracker(fall=2, rise=1)
    watch = VersionWatch(tracker)
    await asyncio.wait_for(watch.wait_past(tracker.version + 5, 60), 5)
    assert tracker.on_version is None
