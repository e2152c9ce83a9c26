"""HealthMonitor: the seed's monitor_test.go cases, plus scheduling and updater semantics.

Targets are real aiohttp servers on 127.0.0.1 (tests/servers.py); the provider and updater are
small in-test objects because they are the seam a user plugs into.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from exporter.checks import HTTPChecker, OnResult, Probe
from exporter.model import CheckOptions, Config, Result, Target, TargetState, default_config
from exporter.monitor import HealthMonitor, phase_fraction
from tests.servers import target_server, unused_port


class Provider:
    def __init__(self, targets: Sequence[Target] = ()) -> None:
        self.targets = list(targets)

    def get_health_check_targets(self) -> list[Target]:
        return list(self.targets)


class Updater:
    """Records every call; runs in the monitor's worker thread."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[Target]] = []
        self.threads: set[int] = set()
        self.fail = fail

    def on_health_change(self, healthy_targets: Sequence[Target]) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(list(healthy_targets))
        if self.fail:
            raise RuntimeError("updater broke")


class RecordingChecker(HTTPChecker):
    """The real checker, noting when each target's check started (loop time)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.check_calls = 0

    def start(
        self, target: Target, on_done: OnResult, loop: asyncio.AbstractEventLoop | None = None
    ) -> Probe:
        self.starts[target.id].append(asyncio.get_running_loop().time())
        return super().start(target, on_done, loop)


class TaskRecordingChecker(RecordingChecker):
    """The same with `check` overridden, which the monitor must call: a task per check."""

    async def check(self, target: Target) -> Result:
        self.check_calls += 1
        return await super().check(target)


CHECKERS = pytest.mark.parametrize(
    "checker_class", [RecordingChecker, TaskRecordingChecker], ids=["callbacks", "tasks"]
)


def fast(**overrides: float) -> Config:
    return replace(Config(interval=0.05, fall=1, rise=1, timeout=1.0), **overrides)  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)


async def test_start_and_stop_are_idempotent():
    monitor = HealthMonitor(fast(), Provider(), Updater())
    monitor.start()
    monitor.start()
    assert monitor.running
    await monitor.stop()
    await monitor.stop()
    assert not monitor.running


def test_start_needs_a_running_loop():
    monitor = HealthMonitor(fast(), Provider(), Updater())
    with pytest.raises(RuntimeError):
        monitor.start()


async def test_runs_checks_repeatedly():
    async with target_server() as srv:
        monitor = HealthMonitor(fast(), Provider([srv.target("/t/a")]), Updater())
        monitor.start()
        await wait_for(lambda: srv.hits["a"] >= 3, what="three checks")
        await monitor.stop()


async def test_first_round_runs_at_once_even_with_a_long_interval():
    async with target_server() as srv:
        monitor = HealthMonitor(fast(interval=60), Provider([srv.target("/t/a")]), Updater())
        monitor.start()
        await asyncio.wait_for(monitor.wait_ready(), 5)
        assert srv.hits["a"] == 1
        await monitor.stop()


async def test_detects_unhealthy_and_tells_updater_with_no_healthy_targets():
    async with target_server() as srv:
        updater = Updater()
        monitor = HealthMonitor(fast(fall=2), Provider([srv.target("/t/a")]), updater)
        monitor.start()
        await monitor.wait_ready()
        srv.down.add("a")
        await wait_for(lambda: [] in updater.calls, what="updater called with []")
        assert monitor.get_stats() == (1, 0, 1)
        await monitor.stop()


async def test_detects_recovery_after_rise_successes():
    async with target_server() as srv:
        srv.down.add("a")
        updater = Updater()
        target = srv.target("/t/a")
        monitor = HealthMonitor(fast(rise=2), Provider([target]), updater)
        monitor.start()
        await wait_for(lambda: monitor.get_stats() == (1, 0, 1), what="unhealthy")
        hits_when_down = srv.hits["a"]
        srv.down.discard("a")
        await wait_for(lambda: updater.calls and updater.calls[-1] == [target], what="recovery")
        assert srv.hits["a"] >= hits_when_down + 2  # rise=2: two successes needed
        await monitor.stop()


async def test_force_check_runs_a_round_now():
    async with target_server() as srv:
        monitor = HealthMonitor(fast(interval=60), Provider([srv.target("/t/a")]), Updater())
        monitor.start()
        await monitor.wait_ready()
        await monitor.force_check()
        assert srv.hits["a"] == 2
        await monitor.stop()


async def test_force_check_is_a_no_op_when_stopped():
    async with target_server() as srv:
        monitor = HealthMonitor(fast(), Provider([srv.target("/t/a")]), Updater())
        await monitor.force_check()
        assert srv.hits["a"] == 0


async def test_get_healthy_targets_and_stats():
    async with target_server() as srv:
        srv.down.add("b")
        a, b = srv.target("/t/a"), srv.target("/t/b")
        monitor = HealthMonitor(fast(), Provider([a, b]), Updater())
        monitor.start()
        await wait_for(lambda: monitor.get_stats() == (2, 1, 1), what="one down")
        assert monitor.get_healthy_targets() == [a]
        await monitor.stop()


async def test_no_targets_never_calls_updater():
    updater = Updater()
    monitor = HealthMonitor(fast(), Provider([]), updater)
    monitor.start()
    await monitor.wait_ready()
    await monitor.force_check()
    await asyncio.sleep(0.2)  # several intervals: the absence of a call is what is tested
    await monitor.stop()
    assert updater.calls == []


async def test_updater_called_after_first_round_with_all_healthy_targets():
    """New targets are healthy from the start; the seed would never tell the updater."""
    async with target_server() as srv:
        targets = [srv.target("/t/a"), srv.target("/t/b")]
        updater = Updater()
        monitor = HealthMonitor(fast(interval=60), Provider(targets), updater)
        monitor.start()
        await wait_for(lambda: len(updater.calls) == 1, what="first update")
        assert updater.calls[0] == targets
        assert threading.get_ident() not in updater.threads  # called off the event loop
        await monitor.stop()


async def test_updater_called_when_a_target_is_added_or_readdressed():
    async with target_server() as srv, target_server() as other:
        a = srv.target("/t/a")
        provider = Provider([a])
        updater = Updater()
        monitor = HealthMonitor(fast(interval=60), provider, updater)
        monitor.start()
        await wait_for(lambda: len(updater.calls) == 1, what="first update")
        b = srv.target("/t/b")
        provider.targets = [a, b]
        monitor.refresh_targets()
        await wait_for(lambda: len(updater.calls) == 2, what="update after add")
        assert updater.calls[1] == [a, b]
        await wait_for(lambda: srv.hits["b"] == 1, what="new target checked at once")
        moved = replace(a, port=str(other.port))
        provider.targets = [moved, b]
        monitor.refresh_targets()
        await wait_for(lambda: len(updater.calls) == 3, what="update after readdress")
        assert updater.calls[2] == [moved, b]
        await monitor.stop()


async def test_removed_target_is_no_longer_checked():
    async with target_server() as srv:
        a, b = srv.target("/t/a"), srv.target("/t/b")
        provider = Provider([a, b])
        monitor = HealthMonitor(fast(), provider, Updater())
        monitor.start()
        await monitor.wait_ready()
        provider.targets = [a]
        monitor.refresh_targets()
        await wait_for(lambda: monitor.get_stats()[0] == 1, what="b removed")
        await asyncio.sleep(0.01)
        hits_b = srv.hits["b"]
        hits_a = srv.hits["a"]
        await wait_for(lambda: srv.hits["a"] >= hits_a + 3, what="a still checked")
        assert srv.hits["b"] <= hits_b + 1  # at most one check that was already in flight
        await monitor.stop()


async def test_dynamic_targets_picked_up_on_the_periodic_sync():
    async with target_server() as srv:
        provider = Provider([srv.target("/t/a")])
        monitor = HealthMonitor(fast(), provider, Updater())
        monitor.start()
        await wait_for(lambda: len(monitor.get_healthy_targets()) == 1)
        provider.targets = [srv.target("/t/a"), srv.target("/t/b")]
        await wait_for(lambda: len(monitor.get_healthy_targets()) == 2, what="b added")
        await wait_for(lambda: srv.hits["b"] >= 2, what="b checked")
        await monitor.stop()


async def test_failing_updater_is_counted_and_monitoring_goes_on():
    async with target_server() as srv:
        updater = Updater(fail=True)
        monitor = HealthMonitor(fast(), Provider([srv.target("/t/a")]), updater)
        monitor.start()
        await wait_for(lambda: monitor.updater_calls["failure"] == 1, what="failure counted")
        srv.down.add("a")
        await wait_for(lambda: monitor.updater_calls["failure"] == 2, what="second update")
        await monitor.stop()


async def test_failing_provider_keeps_targets():
    class Broken(Provider):
        broken = False

        def get_health_check_targets(self) -> list[Target]:
            if self.broken:
                raise OSError("provider down")
            return super().get_health_check_targets()

    async with target_server() as srv:
        provider = Broken([srv.target("/t/a")])
        monitor = HealthMonitor(fast(), provider, Updater())
        monitor.start()
        await monitor.wait_ready()
        provider.broken = True
        monitor.refresh_targets()
        await wait_for(lambda: monitor.provider_failures >= 1, what="failure counted")
        hits = srv.hits["a"]
        await wait_for(lambda: srv.hits["a"] > hits + 2, what="checks go on")
        assert monitor.get_stats()[0] == 1
        await monitor.stop()


async def test_a_checker_that_raises_counts_as_failure_and_loop_survives():
    class Exploding:
        calls = 0

        async def check(self, target: Target) -> Result:
            self.calls += 1
            raise ValueError("bug in a custom checker")

    checker = Exploding()
    monitor = HealthMonitor(
        fast(), Provider([Target("a", "app", "127.0.0.1", "1")]), Updater(), checker=checker
    )
    monitor.start()
    await wait_for(lambda: checker.calls >= 3, what="loop keeps going")
    assert monitor.tracker.get_state("a") is TargetState.UNHEALTHY
    entry = monitor.tracker.get_entry("a")
    assert entry is not None and entry.checks.get("other", 0) >= 3
    await monitor.stop()


async def test_stop_waits_for_everything_and_no_check_runs_after():
    async with target_server() as srv:
        targets = [srv.target("/hang", target_id=f"h{i}") for i in range(3)]
        monitor = HealthMonitor(fast(timeout=30), Provider(targets), Updater())
        monitor.start()
        await wait_for(lambda: srv.in_flight == 3, what="checks hanging")
        started = time.monotonic()
        await monitor.stop()
        assert time.monotonic() - started < 1.0
        assert monitor.checks_in_flight == 0
        await wait_for(lambda: srv.in_flight == 0, what="connections closed")
        hits = srv.path_hits["/hang"]
        await asyncio.sleep(0.2)
        assert srv.path_hits["/hang"] == hits


async def test_disabled_runs_no_checks_and_counts_every_target_healthy():
    async with target_server() as srv:
        srv.down.add("a")
        targets = [srv.target("/t/a"), srv.target("/t/b")]
        updater = Updater()
        monitor = HealthMonitor(fast(enabled=False), Provider(targets), updater)  # type: ignore[arg-type]
        monitor.start()
        await wait_for(lambda: monitor.ready and len(updater.calls) == 1, what="update")
        assert updater.calls[0] == targets
        await monitor.force_check()
        await asyncio.sleep(0.2)
        assert sum(srv.hits.values()) == 0
        assert monitor.get_stats() == (2, 2, 0)
        await monitor.stop()


@CHECKERS
async def test_hung_targets_never_delay_healthy_ones(checker_class: type[RecordingChecker]):
    """5 targets hang past the timeout, 20 answer; the seed's cap of 10 checks in flight."""
    interval = 0.6
    async with target_server() as srv:
        hung = [srv.target("/hang", target_id=f"hung{i}") for i in range(5)]
        healthy = [srv.target(f"/t/ok{i}") for i in range(20)]
        checker = checker_class(timeout=0.4)
        config = Config(interval=interval, timeout=0.4, max_concurrent=10)
        monitor = HealthMonitor(config, Provider(hung + healthy), Updater(), checker=checker)
        monitor.start()
        await monitor.wait_ready()
        ready_at = asyncio.get_running_loop().time()
        await wait_for(
            lambda: all(len(checker.starts[t.id]) >= 4 for t in healthy), 10, "4 checks each"
        )
        await monitor.stop()
    # Only an overridden `check` is called, and then for every check.
    assert checker.check_calls == (
        sum(map(len, checker.starts.values())) if checker_class is TaskRecordingChecker else 0
    )
    for target in healthy:
        starts = [s for s in checker.starts[target.id] if s >= ready_at]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps, target.id
        assert max(gaps) < interval * 1.5, (target.id, gaps)


async def test_hung_and_healthy_targets_at_default_settings():
    """The acceptance case at the real defaults (15 s interval, 5 s timeout): takes ~25 s."""
    async with target_server() as srv:
        hung = [srv.target("/hang", target_id=f"hung{i}") for i in range(5)]
        healthy = [srv.target(f"/t/ok{i}") for i in range(20)]
        checker = RecordingChecker(timeout=default_config().timeout)
        monitor = HealthMonitor(
            default_config(), Provider(hung + healthy), Updater(), checker=checker
        )
        monitor.start()
        await wait_for(lambda: all(srv.hits[f"ok{i}"] >= 2 for i in range(20)), 40, "2nd check")
        await monitor.stop()
    for target in healthy:
        first, second = checker.starts[target.id][:2]
        assert second - first < default_config().interval * 1.5


async def test_checks_are_spread_over_the_interval_after_the_first_round():
    interval = 1.0
    async with target_server() as srv:
        targets = [srv.target(f"/t/s{i}") for i in range(20)]
        checker = RecordingChecker(timeout=0.5)
        monitor = HealthMonitor(
            Config(interval=interval), Provider(targets), Updater(), checker=checker
        )
        monitor.start()
        await wait_for(lambda: all(len(checker.starts[t.id]) >= 3 for t in targets), 10)
        await monitor.stop()
    epoch = min(s[0] for s in checker.starts.values())
    for target in targets:
        second = checker.starts[target.id][1]
        third = checker.starts[target.id][2]
        assert third - second == pytest.approx(interval, abs=0.1)  # stable slot
        expected_phase = phase_fraction(target.id) * interval
        assert (second - epoch) % interval == pytest.approx(expected_phase, abs=0.1)
    second_starts = sorted(checker.starts[t.id][1] for t in targets)
    assert second_starts[-1] - second_starts[0] > interval / 2  # not a burst at one tick
    lag = monitor.schedule_lag
    assert lag.count >= 20 and lag.sum / lag.count < 0.05


async def test_a_slot_that_comes_while_the_previous_check_runs_is_skipped():
    async with target_server() as srv:
        target = srv.target("/slow?delay=0.3", target_id="slow")
        monitor = HealthMonitor(fast(interval=0.1, timeout=1.0), Provider([target]), Updater())
        monitor.start()
        await wait_for(lambda: monitor.checks_skipped >= 2, what="skips")
        assert srv.max_in_flight == 1  # never two checks of one target at once
        await monitor.stop()


async def test_slots_that_pass_while_a_check_runs_are_each_counted_as_skipped_once():
    """Slots every 0.1 s, checks taking 0.35 s: every slot is either checked or skipped."""
    interval = 0.1
    async with target_server() as srv:
        target = srv.target("/slow?delay=0.35", target_id="slow")
        monitor = HealthMonitor(fast(interval=interval, timeout=2.0), Provider([target]), Updater())
        monitor.start()
        await monitor.wait_ready()
        await wait_for(lambda: monitor.schedule_lag.count >= 1, what="a scheduled check")
        loop = asyncio.get_running_loop()

        def slots() -> tuple[float, int, int]:
            return loop.time(), monitor.schedule_lag.count, monitor.checks_skipped

        start = slots()
        await wait_for(lambda: monitor.schedule_lag.count >= start[1] + 5, 10, "5 more checks")
        end = slots()
        await monitor.stop()
    checked, skipped = end[1] - start[1], end[2] - start[2]
    assert skipped >= 2 * checked - 2  # each check spans at least 3 slots (one its own)
    # Skipped slots are counted when the check that outlasted them ends: at most 4 in arrears.
    assert abs(checked + skipped - (end[0] - start[0]) / interval) <= 5
    assert srv.max_in_flight == 1


async def test_refused_target_goes_down_with_reason():
    target = Target("dead", "app", "127.0.0.1", str(unused_port()))
    monitor = HealthMonitor(fast(fall=2), Provider([target]), Updater())
    monitor.start()
    await wait_for(lambda: monitor.get_stats() == (1, 0, 1), what="down")
    entry = monitor.tracker.get_entry("dead")
    assert entry is not None and entry.last_result is not None
    assert entry.last_result.reason == "connection_refused"
    assert entry.checks.get("connection_refused", 0) >= 2
    await monitor.stop()


# --- per-target interval, fastinter, downinter (issue 12) ----------------------------------------
# Each test counts the checks real backends receive while a fast target gathers 20: with the
# timing option ignored, the fast target would need 20 s or more and the wait would time out.


def timed(target: Target, **options: float) -> Target:
    return replace(target, options=CheckOptions(**options))  # type: ignore[arg-type]


def started(
    config: Config, targets: list[Target], checker_class: type[RecordingChecker] = RecordingChecker
) -> HealthMonitor:
    monitor = HealthMonitor(
        config, Provider(targets), Updater(), checker=checker_class(timeout=config.timeout)
    )
    monitor.start()
    return monitor


@CHECKERS
async def test_a_target_with_its_own_interval_is_checked_at_it(
    checker_class: type[RecordingChecker],
):
    async with target_server() as srv:
        fast_target = timed(srv.target("/t/fast"), interval=0.05)
        monitor = started(
            Config(interval=2.0, timeout=1.0), [fast_target, srv.target("/t/plain")], checker_class
        )
        await wait_for(lambda: srv.hits["fast"] >= 20, 10, "20 checks at the target's interval")
        plain = srv.hits["plain"]
        await monitor.stop()
    assert plain <= 5  # the exporter-wide 2 s interval still holds for the other target


@CHECKERS
async def test_a_target_in_transition_is_checked_at_fastinter(
    checker_class: type[RecordingChecker],
):
    """fall is never reached, so the failing target stays in transition (`UP n/1000`)."""
    async with target_server() as srv:
        srv.down.add("failing")
        monitor = started(
            Config(interval=2.0, timeout=1.0, fall=1000, fastinter=0.05),
            [srv.target("/t/failing"), srv.target("/t/steady")],
            checker_class,
        )
        await wait_for(lambda: srv.hits["failing"] >= 20, 10, "20 checks at fastinter")
        steady = srv.hits["steady"]
        entry = monitor.tracker.get_entry("/t/failing")
        assert entry is not None and entry.state is TargetState.HEALTHY
        # Recovered: no failure streak, so back to the interval.
        srv.down.clear()
        await wait_for(lambda: entry.consecutive_successes >= 1, 5, "a success")
        recovered = srv.hits["failing"]
        await asyncio.sleep(0.5)  # ten fastinter periods
        after_recovery = srv.hits["failing"] - recovered
        await monitor.stop()
    assert steady <= 5  # a healthy target without failures stays at the interval
    assert after_recovery <= 2


@CHECKERS
async def test_an_unhealthy_target_is_checked_at_downinter_then_at_fastinter_coming_back(
    checker_class: type[RecordingChecker],
):
    """Down after one failure; then successes that never reach rise: `DOWN n/1000`."""
    async with target_server() as srv:
        srv.down.add("dead")
        dead = timed(srv.target("/t/dead"), downinter=0.05, fastinter=0.05)
        config = Config(interval=2.0, timeout=1.0, fall=1, rise=1000)
        monitor = started(config, [dead, srv.target("/t/alive")], checker_class)
        await wait_for(lambda: srv.hits["dead"] >= 20, 10, "20 checks at downinter")
        alive = srv.hits["alive"]
        srv.down.clear()
        down_hits = srv.hits["dead"]
        await wait_for(lambda: srv.hits["dead"] >= down_hits + 20, 10, "20 checks at fastinter")
        assert monitor.get_stats() == (2, 1, 1)
        await monitor.stop()
    assert alive <= 5


async def test_fastinter_then_downinter_as_a_target_dies():
    """interval 2 s, fastinter 50 ms, downinter 1 s, fall 3: once the first failure is seen,
    two more come at fastinter (a clock target checked every 200 ms sees about none of that
    time go by, where it would see 20 checks at the interval); then the dead target is checked
    at downinter."""
    async with target_server() as srv:
        clock = timed(srv.target("/t/clock"), interval=0.2)
        monitor = HealthMonitor(
            Config(interval=2.0, timeout=1.0, fall=3, fastinter=0.05, downinter=1.0),
            Provider([srv.target("/t/dying"), clock]),
            Updater(),
        )
        monitor.start()
        await monitor.wait_ready()
        srv.down.add("dying")
        before = srv.hits["dying"]
        await wait_for(lambda: srv.hits["dying"] > before, 10, "the first failure")
        clock_at_first_failure = srv.hits["clock"]
        await wait_for(lambda: monitor.get_stats() == (2, 1, 1), 10, "down")
        clock_ticks = srv.hits["clock"] - clock_at_first_failure
        to_down = srv.hits["dying"] - before
        await asyncio.sleep(0.5)  # ten fastinter periods, half a downinter
        while_down = srv.hits["dying"] - before - to_down
        await monitor.stop()
    assert clock_ticks <= 4
    assert to_down == 3  # fall failures, no more: the third made it unhealthy
    assert while_down <= 1  # downinter, not fastinter, once it is down


async def test_a_changed_interval_in_the_target_list_takes_effect():
    async with target_server() as srv:
        provider = Provider([srv.target("/t/a")])
        monitor = HealthMonitor(Config(interval=2.0, timeout=1.0), provider, Updater())
        monitor.start()
        await monitor.wait_ready()
        provider.targets = [timed(srv.target("/t/a"), interval=0.05)]
        monitor.refresh_targets()
        await wait_for(lambda: srv.hits["a"] >= 20, 10, "20 checks at the new interval")
        await monitor.stop()


async def test_targets_at_the_exporter_wide_timing_take_no_per_target_path():
    """The plain path's promise: nothing per-target is kept (so nothing is looked up per check)
    for targets whose timing is the exporter-wide one, even when they spell it out."""
    async with target_server() as srv:
        same = timed(srv.target("/t/same"), interval=0.5, fastinter=0.5, downinter=0.5)
        monitor = started(Config(interval=0.5, timeout=1.0), [srv.target("/t/plain"), same])
        await wait_for(lambda: srv.hits["same"] >= 2, 5, "a scheduled check")
        assert (monitor._periods, monitor._timings) == ({}, {})
        await monitor.stop()
