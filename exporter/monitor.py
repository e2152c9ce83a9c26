"""Scheduling and lifecycle of health checks (seed: `HealthMonitor`).

The seed checks every target in a burst at each tick. Here the first round runs at once (bounded
by the concurrency cap), then each target is checked on its own slot: a stable per-target phase
within the interval, as Prometheus spreads scrapes. A slow or hung target only ever holds its own
slot (and one concurrency permit, for at most the timeout), so it never delays the others.

Checks wait for a permit in one FIFO queue and start from event-loop callbacks: with the built-in
`HTTPChecker` a check costs no task, no future and no semaphore, so that at saturation the CPU
goes to the checks themselves. Any other `Checker` runs in a task per check.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.checks import HTTPChecker
from exporter.model import (
    Config,
    ConfigUpdater,
    FailureReason,
    Result,
    Target,
    TargetProvider,
    TargetState,
    UpdateFailed,
)
from exporter.panic import (
    EMPTY_VIEW,
    OFF,
    PanicThreshold,
    PanicView,
    changed_apps,
    counts_toward_threshold,
    evaluate,
    routable_states,
)
from exporter.state import StateTracker, TargetChanges, TargetEntry
from exporter.statefile import SavedTarget
from exporter.stats import (
    CHECK_DURATION_BUCKETS,
    SCHEDULE_LAG_BUCKETS,
    Histogram,
    HistogramsByLabel,
)

OTHER = FailureReason.OTHER
# Due checks are started together at most this often: each event-loop wakeup costs about as much
# CPU as a check, so at thousands of targets one wakeup per slot doubles the cost. The delay adds
# at most this much schedule lag.
BATCH_WINDOW = 0.01
MIN_SYNC_PERIOD = 1.0
# A failed updater call (a full disk, a rejected config) is retried with this backoff even when
# no further change comes, so the proxy catches up as soon as the cause is gone.
UPDATE_RETRY_INITIAL = 0.5
UPDATE_RETRY_MAX = 30.0


class Checker(Protocol):
    async def check(self, target: Target) -> Result: ...


class _Cancellable(Protocol):
    def cancel(self) -> object: ...


@dataclass(frozen=True, slots=True)
class _Timing:
    """The periods of a target whose period follows its state (HAProxy's inter, fastinter,
    downinter): `interval` while healthy with no failure seen, `fastinter` in transition (a
    failure seen but fall not reached; or unhealthy with a success seen but rise not reached),
    `downinter` while unhealthy."""

    interval: float
    fastinter: float
    downinter: float

    def period(self, entry: TargetEntry) -> float:
        if entry.state is TargetState.HEALTHY:
            return self.fastinter if entry.consecutive_failures else self.interval
        return self.fastinter if entry.consecutive_successes else self.downinter


@dataclass(eq=False)
class _Round:
    """A round of checks someone awaits: done once every target in `waiting` has a result."""

    waiting: set[str]
    done: asyncio.Future[None] = field(repr=False)


def _callback_driven(checker: Checker) -> HTTPChecker | None:
    """The checker, when its checks can start without a task: an HTTPChecker whose `check` is
    the stock one (a subclass overriding `check` must have it called)."""
    if isinstance(checker, HTTPChecker) and type(checker).check is HTTPChecker.check:
        return checker
    return None


def phase_fraction(target_id: str) -> float:
    """A stable number in [0, 1) derived from the target id: its slot within the interval."""
    digest = hashlib.blake2b(target_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class HealthMonitor:
    """Runs continuous health checks in the background on the running asyncio loop.

    As in the seed: `start`/`stop` are idempotent, the first round runs at once, `stop` waits for
    the loop to end, `force_check` runs a whole round now (a no-op when stopped). Unlike the seed,
    the updater is called when membership, a target's address or any state changes (the seed calls
    it on state changes only), never for an empty target set, from a worker thread, one call at a
    time, with changes that arrive during a call coalesced into the next one.
    """

    def __init__(
        self,
        config: Config,
        target_provider: TargetProvider,
        config_updater: ConfigUpdater,
        logger: logging.Logger | None = None,
        *,
        checker: Checker | None = None,
        panic_threshold: PanicThreshold = OFF,
        initial_state: TargetState = TargetState.HEALTHY,
    ) -> None:
        self.config = config
        self.target_provider = target_provider
        self.config_updater = config_updater
        self.logger = logger or logging.getLogger("exporter.monitor")
        self.checker: Checker = checker or HTTPChecker(config.timeout)
        self.tracker = StateTracker(config.fall, config.rise, initial_state)
        self.panic_threshold = panic_threshold
        self._panic_enabled = panic_threshold.enabled
        # The last published view of every app against the panic threshold (replaced, never
        # mutated: the updater's thread and the web handlers read it as it is).
        self.panic_view: PanicView = EMPTY_VIEW
        self._saved: dict[str, SavedTarget] = {}  # state file entries not restored yet
        self.restored = 0  # targets whose state came from the state file
        self.check_durations = HistogramsByLabel(CHECK_DURATION_BUCKETS)
        self.schedule_lag = Histogram(SCHEDULE_LAG_BUCKETS)
        self.checks_skipped = 0  # a slot came while the previous check of that target still ran
        self.updater_calls = {"success": 0, "failure": 0}
        self.provider_failures = 0
        self._running = False
        self._ready = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # The check engine: ids waiting for a permit (with their slot, None in a round), the ids
        # queued or running (never two checks of one target at once), and the running checks.
        self._queue: deque[tuple[str, float | None]] = deque()
        self._pending: set[str] = set()
        self._active: dict[str, _Cancellable] = {}
        self._rounds: list[_Round] = []
        self._parked: dict[str, float] = {}  # id -> a slot skipped while its check ran
        self._http: HTTPChecker | None = None  # the checker, when it can run without tasks
        self._limit = max(config.max_concurrent, 1)
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}  # target id -> its live slot; other heap items are stale
        self._seq = 0
        self._epoch = 0.0
        self._next_sync = 0.0
        self._scheduling = False  # the per-target schedule runs (after the first round)
        self._phase: dict[str, float] = {}  # target id -> its slot's offset in its period
        # Per-target timing: the period of each target not checked every `config.interval` now
        # (empty, and never looked up per check, while every target runs at the interval), and
        # the timings of the targets whose period follows their state (fastinter, downinter).
        self._periods: dict[str, float] = {}
        self._timings: dict[str, _Timing] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # asyncio.get_running_loop() costs a
        # getpid() system call per call on Python 3.11: the hot path uses this instead
        self._waiter: asyncio.Future[None] | None = None
        self._sleeping_until = -math.inf  # while the scheduler sleeps: when it will wake

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def checks_in_flight(self) -> int:
        """Checks running now (holding a permit)."""
        return len(self._active)

    @property
    def checks_queued(self) -> int:
        """Checks waiting for a permit."""
        return len(self._queue)

    @property
    def ready(self) -> bool:
        """True once the first round has completed (at once when checks are disabled)."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def start(self) -> None:
        """Begin monitoring on the running event loop; a no-op if already running."""
        if self._running:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._running = True
        self._ready.clear()
        self._http = _callback_driven(self.checker)
        self._epoch = loop.time()
        if self._saved:
            # Restore now, so the updater writes the restored state before the first round ends.
            self._sync_from_provider(loop.time())
        self._spawn(self._run())
        self._spawn(self._notify_loop())

    async def stop(self) -> None:
        """Stop monitoring and wait until every task has ended; a no-op if not running."""
        if not self._running:
            return
        self._running = False
        checks = list(self._active.values())
        self._active.clear()
        for check in checks:
            check.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scheduling = False
        self._heap.clear()
        self._due.clear()
        self._queue.clear()
        self._pending.clear()
        self._parked.clear()
        for round_ in self._rounds:  # whoever awaits force_check() gets control back
            if not round_.done.done():
                round_.done.set_result(None)
        self.logger.info("health monitor stopped")

    async def force_check(self) -> None:
        """Re-read the targets and check all of them now, bypassing the schedule."""
        if not self._running:
            return
        if not self.config.enabled:
            self.refresh_targets()
            return
        await self._round()

    async def check_targets(self, target_ids: Collection[str]) -> None:
        """Check these targets now, bypassing the schedule, and return once each has a result.

        Each result counts in the state machine like any scheduled one. Unknown ids are ignored;
        a target whose check is already under way is not checked twice (that check counts).
        A no-op when stopped or when checks are disabled.
        """
        if self._running and self.config.enabled:
            await self._round(target_ids)

    def check_now(self, target_id: str) -> bool:
        """Check one target at once, out of its schedule (the passive fast path: HAProxy saw
        it fail); its slots go on from there, at fastinter if the result puts it in transition.
        False (nothing done) if the target is unknown, not scheduled yet, or being checked."""
        if not self._scheduling or target_id not in self._due or target_id in self._pending:
            return False
        assert self._loop is not None
        self._schedule(target_id, self._loop.time())
        self._wake()
        return True

    def refresh_targets(self) -> None:
        """Ask the scheduler to re-read the provider now (e.g. the targets file changed)."""
        self._next_sync = 0.0
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- queries (seed API) ------------------------------------------------------------------

    def get_healthy_targets(self) -> list[Target]:
        return self.tracker.get_healthy_targets()

    def get_stats(self) -> tuple[int, int, int]:
        return self.tracker.get_stats()

    # -- the safety floor and restored state ----------------------------------------------------

    def routable_states(self) -> list[tuple[Target, TargetState]]:
        """Every target with the state integrations act on: its own, or healthy while its app
        is in panic (safe from any thread)."""
        return routable_states(self.tracker.entries(), self.panic_view)

    def routable(self, target_id: str) -> bool:
        """Whether an integration should send traffic to the target (e.g. an agent check)."""
        entry = self.tracker.get_entry(target_id)
        if entry is None:
            return False
        return entry.state is TargetState.HEALTHY or self.panic_view.in_panic(entry.target.app_name)

    def apps_in_panic(self) -> frozenset[str]:
        """Apps whose targets are all passed on as routable because too few are healthy."""
        return self.panic_view.apps_in_panic

    def restore_state(self, saved: dict[str, SavedTarget]) -> None:
        """Saved states to put back as their targets are first seen; call before `start`. A
        target whose address changed since is a different server: it starts afresh. With checks
        disabled every target counts as healthy: nothing is restored."""
        self._saved = dict(saved) if self.config.enabled else {}

    def _restore(self, targets: tuple[Target, ...]) -> None:
        restored = 0
        for target in targets:
            saved = self._saved.pop(target.id, None)
            if saved is None or saved.address != target.address:
                continue
            restored += self.tracker.restore(
                target.id,
                saved.state,
                saved.consecutive_failures,
                saved.consecutive_successes,
                saved.last_change,
            )
        self._saved.clear()  # only the targets configured at startup are restored
        if restored:
            self.restored += restored
            self.logger.info(
                "restored target states from the state file",
                extra={"restored": restored, "unhealthy": self.tracker.get_stats()[2]},
            )

    def _publish_panic_view(self) -> None:
        """Evaluate the threshold, log each app entering or leaving panic, publish the view."""
        tracker = self.tracker
        view = evaluate(
            tracker.entries(), self.panic_threshold, tracker.initial_state, self.panic_view
        )
        entered, left = changed_apps(self.panic_view, view)
        self.panic_view = view
        for app in entered:
            health = view.apps[app]
            self.logger.warning(
                "app in panic: too few healthy targets, passing every target on as routable",
                extra={"app": app, "healthy": health.healthy, "counted": health.counted,
                       "total": health.total, "threshold": str(self.panic_threshold)},
            )  # fmt: skip
        for app in left:
            gone = app not in view.apps
            self.logger.info(
                "app left panic: only healthy targets are routable again",
                extra={"app": app, "healthy": 0 if gone else view.apps[app].healthy,
                       "total": 0 if gone else view.apps[app].total},
            )  # fmt: skip

    # -- the loop ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = (self._loop or asyncio.get_running_loop()).create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self) -> None:
        cfg = self.config
        self.logger.info(
            "health monitor started",
            extra={
                "enabled": cfg.enabled,
                "interval": cfg.interval,
                "fall": cfg.fall,
                "rise": cfg.rise,
                "timeout": cfg.timeout,
                "max_concurrent": cfg.max_concurrent,
                "fastinter": cfg.fastinter or cfg.interval,
                "downinter": cfg.downinter or cfg.interval,
            },
        )
        if not cfg.enabled:
            await self._run_disabled()
            return
        await self._round()
        self._ready.set()
        now = asyncio.get_running_loop().time()
        for target_id in list(self._due):
            self._schedule(target_id, self._next_slot(target_id, self._epoch, now))
        self._scheduling = True
        await self._schedule_loop()

    async def _run_disabled(self) -> None:
        """Checks off (as haloy's `enabled: false`): every target counts as healthy."""
        loop = asyncio.get_running_loop()
        while True:
            self._sync_from_provider(loop.time())
            self._ready.set()
            # No checks to time: re-reading the targets once a second at most is plenty (and a
            # tiny interval must not spin a core).
            await self._sleep_until(loop.time() + max(self.config.interval, MIN_SYNC_PERIOD))

    async def _schedule_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # The seed re-reads the provider every round; at sub-second intervals once a second is
        # plenty (a targets file change asks for a sync at once anyway).
        sync_every = max(self.config.interval, MIN_SYNC_PERIOD)
        self._next_sync = loop.time() + sync_every
        heap = self._heap
        while True:
            now = loop.time()
            if now >= self._next_sync:
                self._sync_from_provider(now)
                self._next_sync = now + sync_every
            while heap and heap[0][0] <= now:
                due, _, target_id = heapq.heappop(heap)
                if self._due.get(target_id) != due:
                    continue  # removed or rescheduled since it was pushed
                if target_id not in self.tracker:
                    continue
                if target_id in self._pending:  # its last check has not ended: skip this slot,
                    self.checks_skipped += 1  # and plan the next one when that check ends
                    self._parked[target_id] = due
                    continue
                self._schedule(target_id, self._next_slot(target_id, due, now))
                self._enqueue(target_id, due)
            self._start_queued()
            wake_at = min(heap[0][0] if heap else math.inf, self._next_sync)
            await self._sleep_until(max(wake_at, now + BATCH_WINDOW))

    async def _sleep_until(self, when: float) -> None:
        """Sleep until `when` or until `_wake()`; one future and one timer, no Event."""
        loop = self._loop
        assert loop is not None
        waiter = self._waiter = loop.create_future()
        handle = loop.call_at(when, self._wake)
        self._sleeping_until = when
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None
            self._sleeping_until = -math.inf

    def _next_slot(self, target_id: str, after: float, now: float) -> float:
        """The first slot of the target more than half its period after `after`, and in the
        future: missed slots are never queued up after a stall (`after` -inf: the next one)."""
        interval = self.config.interval
        if self._periods:
            interval = self._periods.get(target_id, interval)
        if after < now - interval / 2:
            after = now - interval / 2
        phase = self._phase.get(target_id)
        if phase is None:
            phase = self._phase[target_id] = phase_fraction(target_id) * interval
        k = math.floor((after + interval / 2 - self._epoch - phase) / interval) + 1
        return self._epoch + phase + k * interval

    def _schedule(self, target_id: str, due: float) -> None:
        self._seq += 1
        self._due[target_id] = due
        heapq.heappush(self._heap, (due, self._seq, target_id))

    # -- targets -----------------------------------------------------------------------------

    def _sync_from_provider(self, now: float) -> TargetChanges:
        try:
            targets = list(self.target_provider.get_health_check_targets())
        except Exception:
            self.provider_failures += 1
            self.logger.exception("target provider failed, keeping the current targets")
            return TargetChanges()
        changes = self.tracker.apply_targets(targets)
        if not changes:
            return changes
        if self._saved and changes.added:
            self._restore(changes.added)
        for target in changes.removed:
            self._due.pop(target.id, None)
            self._phase.pop(target.id, None)
            self._parked.pop(target.id, None)
            self._periods.pop(target.id, None)
            self._timings.pop(target.id, None)
        for target in changes.added:
            self._track_timing(target)
            if self._scheduling:
                self._schedule(target.id, now)  # a new target is checked at once
            else:
                self._due[target.id] = now  # slotted once the first round is over
        for target in changes.updated:
            if self._track_timing(target) and self._scheduling and target.id in self._due:
                self._schedule(target.id, self._next_slot(target.id, -math.inf, now))
        self.check_durations.retain({t.app_name for t in targets})
        self.logger.info(
            "targets changed",
            extra={
                "added": len(changes.added),
                "removed": len(changes.removed),
                "updated": len(changes.updated),
                "total": len(self.tracker),
            },
        )
        self._dirty.set()
        return changes

    # -- per-target timing -------------------------------------------------------------------

    def _track_timing(self, target: Target) -> bool:
        """Note the periods a target asks for (its options over the exporter-wide values);
        True if its period now changed."""
        cfg, options = self.config, target.options
        interval = options.interval or cfg.interval
        timing = _Timing(
            interval,
            options.fastinter or cfg.fastinter or interval,
            options.downinter or cfg.downinter or interval,
        )
        if timing.fastinter == interval == timing.downinter:
            self._timings.pop(target.id, None)
            return self._set_period(target.id, interval)
        self._timings[target.id] = timing
        entry = self.tracker.get_entry(target.id)
        return self._set_period(target.id, interval if entry is None else timing.period(entry))

    def _set_period(self, target_id: str, period: float) -> bool:
        """Make `period` the target's period; True if it changed (its slots move with it)."""
        interval = self.config.interval
        if period == self._periods.get(target_id, interval):
            return False
        if period == interval:
            del self._periods[target_id]
        else:
            self._periods[target_id] = period
        self._phase.pop(target_id, None)
        return True

    def _retime(self, target_id: str) -> None:
        """After a result: if the target's state asks for another period, its next check comes
        one new period from now, as HAProxy does; back at its interval, at its own next slot
        (within one interval: a death right after a recovery is seen as soon as ever)."""
        timing = self._timings.get(target_id)
        entry = self.tracker.get_entry(target_id)
        if timing is None or entry is None:
            return
        period = timing.period(entry)
        if not self._set_period(target_id, period):
            return
        assert self._loop is not None
        now = self._loop.time()
        after = now
        if period != timing.interval:  # slots one period apart from now on
            self._phase[target_id] = (now + period - self._epoch) % period
        else:
            after = -math.inf
        if self._scheduling and target_id in self._due:
            due = self._next_slot(target_id, after, now)
            self._schedule(target_id, due)
            if due < self._sleeping_until:
                self._wake()

    # -- checks ------------------------------------------------------------------------------

    async def _round(self, only: Collection[str] | None = None) -> None:
        """Check every target (or those of `only`) once, through the queue, and wait for every
        result."""
        assert self._loop is not None
        if only is None:
            self._sync_from_provider(self._loop.time())
            ids = [target.id for target in self.tracker.get_all_targets()]
        else:
            ids = [target_id for target_id in only if target_id in self.tracker]
        if not ids:
            return
        round_ = _Round(set(ids), self._loop.create_future())
        self._rounds.append(round_)
        try:
            for target_id in ids:
                if target_id not in self._pending:  # else its check under way counts
                    self._enqueue(target_id, None)
            self._start_queued()
            await round_.done
        finally:
            self._rounds.remove(round_)

    def _enqueue(self, target_id: str, due: float | None) -> None:
        self._pending.add(target_id)
        self._queue.append((target_id, due))

    def _start_queued(self) -> None:
        """Start queued checks while permits are free."""
        queue, active, loop = self._queue, self._active, self._loop
        assert loop is not None
        while queue and len(active) < self._limit:
            target_id, due = queue.popleft()
            entry = self.tracker.get_entry(target_id)
            if entry is None:  # removed while it waited
                self._pending.discard(target_id)
                self._settle_rounds(target_id)
                continue
            if due is not None:
                self.schedule_lag.observe(max(loop.time() - due, 0.0))
            if self._http is not None:
                active[target_id] = self._http.start(entry.target, self._http_done, loop)
            else:
                active[target_id] = loop.create_task(self._task_check(entry.target))

    def _http_done(self, result: Result) -> None:
        self._check_done(result.target.id, result)

    async def _task_check(self, target: Target) -> None:
        try:
            result = await self.checker.check(target)
        except Exception as err:  # a custom checker's bug must not end the loop
            result = Result(
                target, False, error=f"checker error: {err!r}", reason=OTHER, checked_at=time.time()
            )
        self._check_done(target.id, result)

    def _check_done(self, target_id: str, result: Result) -> None:
        """A check ended: free its permit, record it, start the next queued one."""
        if self._active.pop(target_id, None) is None:
            return  # stopped since it started
        self._pending.discard(target_id)
        if self._parked:
            self._unpark(target_id)
        try:
            self._record(result)
        except Exception:  # e.g. a failing log handler: the next checks must still start
            self.logger.exception("recording a check result failed", extra={"target": target_id})
        if self._timings:
            self._retime(target_id)
        if self._rounds:
            self._settle_rounds(target_id)
        self._start_queued()

    def _unpark(self, target_id: str) -> None:
        """Plan the next slot of a target whose slot came while its check ran; the slots that
        passed meanwhile count as skipped, as the first one did."""
        skipped_due = self._parked.pop(target_id, None)
        if skipped_due is None or self._due.get(target_id) != skipped_due:
            return  # not parked, or removed (and perhaps added again) since
        assert self._loop is not None
        due = self._next_slot(target_id, skipped_due, self._loop.time())
        period = self._periods.get(target_id, self.config.interval)
        self.checks_skipped += max(round((due - skipped_due) / period) - 1, 0)
        self._schedule(target_id, due)
        if due < self._sleeping_until:  # the loop sleeps past this slot
            self._wake()

    def _settle_rounds(self, target_id: str) -> None:
        for round_ in self._rounds:
            round_.waiting.discard(target_id)
            if not round_.waiting and not round_.done.done():
                round_.done.set_result(None)

    def _record(self, result: Result) -> None:
        if self._panic_enabled:  # a plain attribute: this runs once per check
            self._record_counting(result)
        elif self.tracker.record_result(result):
            self._log_transition(result)
            self._dirty.set()
        if result.target.id in self.tracker:
            self.check_durations.observe(result.target.app_name, result.duration)

    def _record_counting(self, result: Result) -> None:
        """`_record` with a panic threshold: a target that starts counting toward it (its first
        decisive check) may move its app in or out of panic even without a state flip."""
        entry = self.tracker.get_entry(result.target.id)
        initial = self.tracker.initial_state
        counted = entry is not None and counts_toward_threshold(entry, initial)
        if self.tracker.record_result(result):
            self._log_transition(result)
            self._dirty.set()
        elif entry is not None and not counted and counts_toward_threshold(entry, initial):
            self._dirty.set()

    def _log_transition(self, result: Result) -> None:
        entry = self.tracker.get_entry(result.target.id)
        if entry is None:
            return
        target = result.target
        fields: dict[str, object] = {
            "target": target.id,
            "app": target.app_name,
            "address": target.address,
            "from": str(TargetState(1 - entry.state)),
            "to": str(entry.state),
        }
        if entry.state is TargetState.HEALTHY:
            fields["consecutive_successes"] = entry.consecutive_successes
            fields["duration_ms"] = round(result.duration * 1000, 3)
            self.logger.info("target healthy", extra=fields)
        else:
            fields["consecutive_failures"] = entry.consecutive_failures
            fields["reason"] = str(result.reason)
            fields["error"] = result.error
            fields["status_code"] = result.status_code
            self.logger.warning("target unhealthy", extra=fields)

    # -- the updater -------------------------------------------------------------------------

    async def _notify_loop(self) -> None:
        if not self.restored:  # restored states go out at once, before the first round ends
            await self._ready.wait()
        backoff = UPDATE_RETRY_INITIAL
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if len(self.tracker) == 0:
                continue  # as in the seed: never for an empty target set
            self._publish_panic_view()
            routable = [t for t, s in self.routable_states() if s is TargetState.HEALTHY]
            try:
                await asyncio.to_thread(self.config_updater.on_health_change, routable)
            except Exception as err:
                self.updater_calls["failure"] += 1
                if isinstance(err, UpdateFailed):  # the updater logged why, once is enough
                    self.logger.debug("config update failed; will retry",
                                      extra={"retry_in": backoff})  # fmt: skip
                else:
                    self.logger.exception("config updater failed; will retry",
                                          extra={"retry_in": backoff})  # fmt: skip
                await asyncio.sleep(backoff)  # changes arriving meanwhile ride on the retry
                backoff = min(backoff * 2, UPDATE_RETRY_MAX)
                self._dirty.set()
            else:
                self.updater_calls["success"] += 1
                backoff = UPDATE_RETRY_INITIAL
