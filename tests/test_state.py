"""StateTracker: the seed's state_test.go cases, plus the counters /metrics reads."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.model import CheckOptions, FailureReason, Result, Target, TargetState
from exporter.state import HISTORY_LENGTH, StateTracker


def ok(target: Target) -> Result:
    return Result(target, healthy=True, status_code=200)


def fail(target: Target, reason: FailureReason = FailureReason.HTTP_STATUS) -> Result:
    return Result(target, healthy=False, status_code=503, reason=reason, error="boom")


A, B, C, D = (Target(i) for i in "abcd")


@pytest.mark.parametrize(
    ("fall", "rise", "want_fall", "want_rise"),
    [(3, 2, 3, 2), (0, 2, 1, 2), (3, 0, 3, 1), (-1, -5, 1, 1)],
)
def test_thresholds_below_one_act_as_one(fall: int, rise: int, want_fall: int, want_rise: int):
    tracker = StateTracker(fall, rise)
    assert (tracker.fall, tracker.rise) == (want_fall, want_rise)


def test_sync_adds_new_targets_as_healthy():
    tracker = StateTracker(3, 2)
    targets = [Target("a", "app1", "10.0.0.1", "8080"), Target("b", "app1", "10.0.0.2", "8080")]
    assert tracker.sync_targets(targets) is True
    assert len(tracker.get_all_targets()) == 2
    assert tracker.get_healthy_targets() == targets


def test_sync_removes_stale_targets_and_they_read_unhealthy():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([A, B, C])
    assert tracker.sync_targets([A, C]) is True
    assert tracker.get_all_targets() == [A, C]
    assert tracker.get_state("b") is TargetState.UNHEALTHY


def test_sync_refreshes_address_without_reporting_membership_change():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([Target("a", ip="10.0.0.1")])
    assert tracker.sync_targets([Target("a", ip="10.0.0.2")]) is False
    assert tracker.get_all_targets()[0].ip == "10.0.0.2"


def test_apply_targets_reports_updated_address_and_keeps_state():
    tracker = StateTracker(1, 1)
    tracker.sync_targets([Target("a", ip="10.0.0.1")])
    tracker.record_result(fail(Target("a", ip="10.0.0.1")))
    changes = tracker.apply_targets([Target("a", ip="10.0.0.2")])
    assert changes.updated == (Target("a", ip="10.0.0.2"),)
    assert not changes.membership_changed
    assert bool(changes)
    assert tracker.get_state("a") is TargetState.UNHEALTHY


def test_sync_with_same_targets_changes_nothing():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([A, B])
    assert tracker.sync_targets([A, B]) is False
    assert not tracker.apply_targets([A, B])


def test_target_marked_down_after_fall_failures():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([A])
    assert tracker.record_result(fail(A)) is False
    assert tracker.record_result(fail(A)) is False
    assert tracker.get_state("a") is TargetState.HEALTHY
    assert tracker.record_result(fail(A)) is True
    assert tracker.get_state("a") is TargetState.UNHEALTHY
    assert tracker.record_result(fail(A)) is False  # already down: no second flip


def test_target_marked_up_after_rise_successes():
    tracker = StateTracker(1, 2)
    tracker.sync_targets([A])
    tracker.record_result(fail(A))
    assert tracker.get_state("a") is TargetState.UNHEALTHY
    assert tracker.record_result(ok(A)) is False
    assert tracker.get_state("a") is TargetState.UNHEALTHY
    assert tracker.record_result(ok(A)) is True
    assert tracker.get_state("a") is TargetState.HEALTHY


def test_a_success_resets_the_failure_count():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([A])
    for result in (fail(A), fail(A), ok(A), fail(A), fail(A)):
        tracker.record_result(result)
    assert tracker.get_state("a") is TargetState.HEALTHY
    tracker.record_result(fail(A))
    assert tracker.get_state("a") is TargetState.UNHEALTHY


def test_a_failure_resets_the_success_count():
    tracker = StateTracker(1, 2)
    tracker.sync_targets([A])
    for result in (fail(A), ok(A), fail(A), ok(A)):
        tracker.record_result(result)
    assert tracker.get_state("a") is TargetState.UNHEALTHY


def test_result_for_unknown_target_is_ignored():
    tracker = StateTracker(3, 2)
    assert tracker.record_result(ok(Target("unknown"))) is False
    assert tracker.get_all_targets() == []


def test_unknown_target_reads_unhealthy():
    assert StateTracker(3, 2).get_state("nonexistent") is TargetState.UNHEALTHY


def test_healthy_and_unhealthy_lists_and_stats():
    tracker = StateTracker(1, 1)
    tracker.sync_targets([A, B, C, D])
    tracker.record_result(fail(A))
    tracker.record_result(fail(C))
    assert tracker.get_healthy_targets() == [B, D]
    assert tracker.get_unhealthy_targets() == [A, C]
    assert tracker.get_stats() == (4, 2, 2)


def test_stats_stay_right_when_an_unhealthy_target_is_removed():
    tracker = StateTracker(1, 1)
    tracker.sync_targets([A, B])
    tracker.record_result(fail(A))
    tracker.sync_targets([B])
    assert tracker.get_stats() == (1, 1, 0)


def test_entry_counts_checks_by_result_and_transitions():
    tracker = StateTracker(2, 1)
    tracker.sync_targets([A])
    for result in (fail(A, FailureReason.TIMEOUT), fail(A), ok(A), ok(A)):
        tracker.record_result(result)
    entry = tracker.get_entry("a")
    assert entry is not None
    assert entry.checks == {"timeout": 1, "http_status": 1, "success": 2}
    assert (entry.transitions_to_unhealthy, entry.transitions_to_healthy) == (1, 1)
    assert entry.consecutive_successes == 2
    assert entry.last_result == ok(A)


def test_state_string_is_lowercase_name():
    assert str(TargetState.HEALTHY) == "healthy"
    assert str(TargetState.UNHEALTHY) == "unhealthy"


def test_concurrent_access_from_threads_keeps_stats_consistent():
    tracker = StateTracker(3, 2)
    targets = [A, B, C]
    tracker.sync_targets(targets)

    def hammer(seed: int) -> None:
        for j in range(500):
            target = targets[(j + seed) % 3]
            tracker.record_result(ok(target) if (j * seed) % 2 == 0 else fail(target))
            tracker.get_healthy_targets()
            tracker.get_stats()
            if j % 50 == 0:
                tracker.sync_targets(targets[: 1 + j % 3])
                tracker.sync_targets(targets)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total, healthy, unhealthy = tracker.get_stats()
    assert total == 3
    assert healthy == len(tracker.get_healthy_targets())
    assert unhealthy == len(tracker.get_unhealthy_targets())


@given(
    fall=st.integers(1, 5),
    rise=st.integers(1, 5),
    outcomes=st.lists(st.booleans(), max_size=60),
)
def test_state_follows_fall_rise_model(fall: int, rise: int, outcomes: list[bool]):
    """Property: the state is what a reference run-length model says, and flips are reported."""
    tracker = StateTracker(fall, rise)
    tracker.sync_targets([A])
    healthy, run, last = True, 0, None
    for outcome in outcomes:
        run = run + 1 if outcome == last else 1
        last = outcome
        before = healthy
        if outcome and not healthy and run >= rise:
            healthy = True
        elif not outcome and healthy and run >= fall:
            healthy = False
        flipped = tracker.record_result(ok(A) if outcome else fail(A))
        assert flipped == (before != healthy)
        assert tracker.get_state("a") is (TargetState.HEALTHY if healthy else TargetState.UNHEALTHY)
    _, n_healthy, n_unhealthy = tracker.get_stats()
    assert (n_healthy, n_unhealthy) == ((1, 0) if healthy else (0, 1))


# --- beyond the seed: initial state, per-target thresholds, progress, history, version -------


def test_initial_state_unhealthy_needs_rise_successes():
    tracker = StateTracker(3, 2, initial_state=TargetState.UNHEALTHY)
    tracker.sync_targets([A])
    assert tracker.get_state("a") is TargetState.UNHEALTHY
    assert tracker.get_stats() == (1, 0, 1)
    assert tracker.record_result(ok(A)) is False
    assert tracker.record_result(ok(A)) is True
    assert tracker.get_stats() == (1, 1, 0)


def test_target_options_override_fall_and_rise():
    quick = Target("q", options=CheckOptions(fall=1, rise=5))
    tracker = StateTracker(3, 2)
    tracker.sync_targets([quick])
    assert tracker.record_result(fail(quick)) is True
    for _ in range(4):
        assert tracker.record_result(ok(quick)) is False
    assert tracker.record_result(ok(quick)) is True


def test_progress_reads_as_haproxy_stats_page():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([A])
    entry = tracker.get_entry("a")
    assert entry is not None and entry.progress == "UP"
    tracker.record_result(fail(A))
    assert entry.progress == "UP 1/3"
    tracker.record_result(fail(A))
    tracker.record_result(fail(A))
    assert entry.progress == "DOWN"
    tracker.record_result(ok(A))
    assert entry.progress == "DOWN 1/2"


def test_local_resource_failures_never_count_against_the_target():
    tracker = StateTracker(1, 1)
    tracker.sync_targets([A])
    entry = tracker.get_entry("a")
    assert entry is not None
    for _ in range(5):
        assert tracker.record_result(fail(A, FailureReason.LOCAL_RESOURCES)) is False
    assert entry.state is TargetState.HEALTHY
    assert (entry.consecutive_failures, entry.checked) == (0, False)
    assert entry.checks == {"local_resources": 5}
    assert entry.results() == ["local_resources"] * 5


def test_history_keeps_the_last_thirty_results_oldest_first():
    tracker = StateTracker(100, 1)
    tracker.sync_targets([A])
    for _ in range(HISTORY_LENGTH):
        tracker.record_result(fail(A, FailureReason.TIMEOUT))
    tracker.record_result(ok(A))
    entry = tracker.get_entry("a")
    assert entry is not None
    assert entry.results() == ["timeout"] * (HISTORY_LENGTH - 1) + ["success"]


def test_version_grows_on_visible_changes_only():
    tracker = StateTracker(3, 2)
    tracker.sync_targets([A])
    after_add = tracker.version
    assert after_add > 0
    tracker.record_result(ok(A))  # checked flips
    checked = tracker.version
    assert checked > after_add
    tracker.record_result(ok(A))  # healthy and still UP: nothing a viewer would see
    assert tracker.version == checked
    tracker.record_result(fail(A))  # UP 1/3
    assert tracker.version > checked


def test_last_change_is_the_time_of_the_flipping_result():
    tracker = StateTracker(1, 1)
    tracker.sync_targets([A])
    entry = tracker.get_entry("a")
    assert entry is not None and entry.last_change is None
    tracker.record_result(Result(A, healthy=False, reason=FailureReason.TIMEOUT, checked_at=42.0))
    assert entry.last_change == 42.0
