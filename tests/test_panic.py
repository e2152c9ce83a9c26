"""The safety floor: the pure threshold logic, then the monitor passing it on to the updater."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.haproxy.agent import AnswerFromState
from exporter.model import Config, Result, Target, TargetState
from exporter.monitor import HealthMonitor
from exporter.panic import (
    OFF,
    PanicThreshold,
    counts_toward_threshold,
    evaluate,
    routable_states,
)
from exporter.state import StateTracker
from tests.servers import target_server

UP, DOWN = TargetState.HEALTHY, TargetState.UNHEALTHY
HALF = PanicThreshold.parse("50%")


def targets(app: str, n: int) -> list[Target]:
    return [Target(f"{app}-{i}", app, "127.0.0.1", str(9000 + i)) for i in range(n)]


def result(target: Target, healthy: bool) -> Result:
    return Result(target, healthy, reason=None if healthy else "timeout", checked_at=1.0)  # type: ignore[arg-type]


# -- the threshold ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("0", 0, False),
        ("2", 2, False),
        (" 50% ", 50, True),
        ("12.5%", 12.5, True),
        ("100%", 100, True),
    ],
)
def test_threshold_parses_a_percentage_or_a_count(text: str, value: float, percent: bool):
    threshold = PanicThreshold.parse(text)
    assert (threshold.value, threshold.percent) == (value, percent)
    assert PanicThreshold.parse(str(threshold)) == threshold


@pytest.mark.parametrize(
    "text", ["", "-1", "101%", "1.5", "half", "50%%", "1e3", "9" * 400, "2000000"]
)
def test_threshold_refuses_anything_else_saying_what_it_takes(text: str):
    with pytest.raises(ValueError, match="percentage"):
        PanicThreshold.parse(text)


def test_breached_below_the_floor_and_never_with_nothing_counted():
    assert HALF.breached(1, 3) and not HALF.breached(2, 3) and not HALF.breached(2, 4)
    assert PanicThreshold.parse("2").breached(1, 5) and not PanicThreshold.parse("2").breached(2, 5)
    assert not HALF.breached(0, 0)
    assert not OFF.breached(0, 10)


# -- counting -----------------------------------------------------------------------------------


def test_targets_in_their_initial_state_count_neither_as_healthy_nor_in_the_total():
    web = targets("web", 4)
    tracker = StateTracker(fall=1, rise=1)
    tracker.apply_targets(web)
    tracker.record_result(result(web[0], False))  # counted, down
    view = evaluate(tracker.entries(), HALF, UP)
    assert (view.apps["web"].healthy, view.apps["web"].counted, view.apps["web"].total) == (0, 1, 4)
    assert not view.in_panic("web")  # 0 of 1 counted, but 3 not checked yet
    tracker.record_result(result(web[1], True))
    tracker.record_result(result(web[2], False))
    tracker.record_result(result(web[3], False))
    view = evaluate(tracker.entries(), HALF, UP)
    assert view.in_panic("web")  # 1 of 4
    tracker.apply_targets([*web, Target("web-new", "web", "127.0.0.1", "1")])
    view = evaluate(tracker.entries(), HALF, UP, view)
    assert view.in_panic("web")  # a new target does not end a panic before it is checked
    tracker.record_result(result(web[2], True))
    assert not evaluate(tracker.entries(), HALF, UP, view).in_panic("web")  # 2 of 4


def test_initial_unhealthy_targets_climbing_towards_rise_do_not_start_a_panic():
    """With INITIAL_STATE=unhealthy and rise 2, the first round leaves every target DOWN 1/2:
    counting them would put the app in panic and route to a dead one at startup."""
    web = targets("web", 3)
    tracker = StateTracker(fall=2, rise=2, initial_state=DOWN)
    tracker.apply_targets(web)
    tracker.record_result(result(web[0], True))
    tracker.record_result(result(web[1], True))
    tracker.record_result(result(web[2], False))  # really down: counted
    entries = {e.target.id: e for e in tracker.entries()}
    assert [counts_toward_threshold(entries[t.id], DOWN) for t in web] == [False, False, True]
    view = evaluate(tracker.entries(), HALF, DOWN)
    assert view.apps["web"].counted == 1
    assert not view.in_panic("web")  # 0 healthy of the 1 counted, but 2 still climbing
    tracker.record_result(result(web[0], True))  # rises: healthy and counted
    tracker.record_result(result(web[1], True))
    view = evaluate(tracker.entries(), HALF, DOWN)
    assert not view.in_panic("web")
    states = dict((t.id, s) for t, s in routable_states(tracker.entries(), view))
    assert states == {"web-0": UP, "web-1": UP, "web-2": DOWN}


def test_restored_targets_count():
    web = targets("web", 2)
    tracker = StateTracker(fall=1, rise=1, initial_state=DOWN)
    tracker.apply_targets(web)
    tracker.restore("web-0", DOWN, 3, 0, 100.0)
    tracker.restore("web-1", DOWN, 3, 0, 100.0)
    assert evaluate(tracker.entries(), HALF, DOWN).in_panic("web")


@st.composite
def fleets(draw: st.DrawFn) -> StateTracker:
    tracker = StateTracker(fall=draw(st.integers(1, 3)), rise=draw(st.integers(1, 3)))
    fleet = targets("a", draw(st.integers(0, 6))) + targets("b", draw(st.integers(0, 6)))
    tracker.apply_targets(fleet)
    if fleet:
        results = st.lists(st.tuples(st.integers(0, len(fleet) - 1), st.booleans()))
        for index, healthy in draw(results):
            tracker.record_result(result(fleet[index], healthy))
    return tracker


@given(fleets(), st.sampled_from(["0", "1", "2", "5", "34%", "50%", "100%"]))
def test_routable_is_everything_in_panic_and_the_real_state_otherwise(
    tracker: StateTracker, text: str
):
    threshold = PanicThreshold.parse(text)
    view = evaluate(tracker.entries(), threshold, UP)
    routed_states = routable_states(tracker.entries(), view)
    for (target, routed), entry in zip(routed_states, tracker.entries(), strict=True):
        health = view.apps[target.app_name]
        breached = threshold.breached(health.healthy, health.counted)
        assert health.panic == (breached and health.pending == 0)
        assert routed is (UP if health.panic else entry.state)
        assert health.healthy <= health.counted <= health.total


# -- in the monitor -----------------------------------------------------------------------------


class Updater:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def on_health_change(self, healthy_targets: Sequence[Target]) -> None:
        self.calls.append(sorted(t.id for t in healthy_targets))


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def fast(**overrides: float) -> Config:
    return replace(Config(interval=0.05, fall=1, rise=1, timeout=1.0), **overrides)  # type: ignore[arg-type]


class Provider:
    def __init__(self, items: list[Target]) -> None:
        self.items = items

    def get_health_check_targets(self) -> list[Target]:
        return list(self.items)


async def test_an_app_below_the_floor_is_routed_whole_and_leaves_panic_when_one_returns(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    async with target_server() as srv:
        web = [srv.target(f"/t/{name}", target_id=f"web-{name}") for name in "abc"]
        web = [replace(t, app_name="web") for t in web]
        api = [replace(srv.target("/t/api", target_id="api-x"), app_name="api")]
        updater = Updater()
        monitor = HealthMonitor(fast(), Provider(web + api), updater, panic_threshold=HALF)
        monitor.start()
        everything = ["api-x", "web-a", "web-b", "web-c"]
        await wait_for(lambda: updater.calls[-1:] == [everything], "all up")
        srv.down.update({"b", "c"})
        await wait_for(lambda: monitor.apps_in_panic() == {"web"}, "panic")
        await asyncio.sleep(0.2)  # more rounds: still every target routable
        assert updater.calls[-1] == everything
        assert monitor.get_stats() == (4, 2, 2)  # the real health stays
        assert monitor.routable("web-b") and not monitor.routable("nope")
        srv.down.discard("b")
        await wait_for(lambda: not monitor.apps_in_panic(), "panic over")
        await wait_for(lambda: updater.calls[-1] == ["api-x", "web-a", "web-b"], "c evicted")
        assert not monitor.routable("web-c")
        srv.down.add("api")  # a one-target app with 50%: 0 of 1 is below the floor
        await wait_for(lambda: monitor.apps_in_panic() == {"api"}, "api panic")
        await monitor.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("app in panic") for m in messages) == 2
    assert sum(m.startswith("app left panic") for m in messages) == 1


async def test_without_a_threshold_nothing_is_routed_for_a_dead_app():
    async with target_server() as srv:
        srv.down.update({"a", "b"})
        web = [srv.target(f"/t/{n}", target_id=n) for n in "ab"]
        updater = Updater()
        monitor = HealthMonitor(fast(), Provider(web), updater)
        monitor.start()
        await wait_for(lambda: updater.calls == [[]], "first update")
        assert monitor.apps_in_panic() == frozenset()
        await monitor.stop()


async def test_initial_unhealthy_first_round_counts_toward_rise_and_starts_no_panic():
    async with target_server() as srv:
        srv.down.add("dead")
        items = [srv.target(f"/t/{n}", target_id=n) for n in ("a", "b", "dead")]
        updater = Updater()
        monitor = HealthMonitor(
            fast(rise=2, interval=0.3), Provider(items), updater, panic_threshold=HALF,
            initial_state=DOWN,
        )  # fmt: skip
        monitor.start()
        await monitor.wait_ready()
        # The first round: one success each for a and b (DOWN 1/2), dead failed.
        await wait_for(lambda: bool(updater.calls), "first update")
        assert updater.calls[0] == []
        await wait_for(lambda: updater.calls[-1] == ["a", "b"], "a and b rise after 2 checks")
        assert all("dead" not in call for call in updater.calls)
        assert srv.hits["a"] <= 3  # the first round counted toward rise
        await monitor.stop()


def test_the_agent_answers_up_for_every_target_of_an_app_in_panic():
    web = targets("web", 3)
    tracker = StateTracker(fall=1, rise=1)
    tracker.apply_targets(web)
    for target in web[1:]:
        tracker.record_result(result(target, False))
    tracker.record_result(result(web[0], True))
    view = evaluate(tracker.entries(), HALF, UP)
    assert view.in_panic("web")
    calm = AnswerFromState(tracker)
    assert calm("web-1")[0] == "down"
    answer = AnswerFromState(tracker, view.in_panic)
    assert [answer(t.id)[0] for t in web] == ["up", "up", "up"]
    assert answer("nope")[0] == "unknown"
