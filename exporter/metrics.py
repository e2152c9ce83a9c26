"""`/metrics` content, built from the monitor's state at scrape time (a custom collector).

The exporter-wide families (a few dozen series whatever the fleet size) are copied into a
`Snapshot` on the event loop and rendered by prometheus_client with the process and GC metrics.
The per-target families, the bulk at thousands of targets, are written by `exporter.exposition`.
Either way, targets that are gone are simply not in the state, so their series disappear.
"""

from __future__ import annotations

import asyncio
import copy
import platform
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector

from exporter import __version__
from exporter.checks import HTTPChecker
from exporter.haproxy.agent import AgentStats
from exporter.haproxy.stats import PassiveStats
from exporter.haproxy.updater import HAProxyStats
from exporter.model import Config, TargetState
from exporter.monitor import HealthMonitor
from exporter.sources.base import Source, SourceHealth
from exporter.statefile import StateFileStats
from exporter.stats import Histogram


class ReloadStats(Protocol):
    """What a re-readable target source (the targets file) reports about its reloads."""

    @property
    def reload_successes(self) -> int: ...
    @property
    def reload_failures(self) -> int: ...
    @property
    def last_reload_success_time(self) -> float: ...


@runtime_checkable
class CollectingSource(Protocol):
    """A source with metric families of its own (built at scrape time, on the event loop)."""

    def collect(self) -> Iterable[Metric]: ...


@dataclass(frozen=True, slots=True)
class HistogramSample:
    buckets: list[tuple[float, int]]
    sum: float


def _histogram_sample(hist: Histogram) -> HistogramSample:
    return HistogramSample(hist.cumulative(), hist.sum)


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: Config
    ready: bool
    stats: tuple[int, int, int]
    check_durations: dict[str, HistogramSample]
    schedule_lag: HistogramSample
    checks_in_flight: int
    checks_queued: int
    checks_skipped: int
    updater_calls: dict[str, int]
    provider_failures: int
    build_labels: dict[str, str]
    file_reloads: tuple[int, int, float] | None = None
    haproxy: HAProxyStats | None = None
    agent: AgentStats | None = None
    # TLS checks (issue 12): completed handshakes by resumed, None with a custom checker.
    tls_handshakes: dict[bool, int] | None = None
    sources: tuple[tuple[str, SourceHealth], ...] = ()  # (source name, copy of its health)
    source_metrics: tuple[Metric, ...] = ()  # families a source adds (DNS lookups per name)
    panic: dict[str, bool] | None = None  # app -> in panic
    state_file: StateFileStats | None = None
    asyncio_tasks: int = 0
    passive: PassiveStats | None = None


def take_snapshot(
    monitor: HealthMonitor,
    build_labels: dict[str, str],
    reloads: ReloadStats | None = None,
    haproxy: HAProxyStats | None = None,
    agent: AgentStats | None = None,
    passive: PassiveStats | None = None,
    *,
    sources: Sequence[Source] = (),
    state_file: StateFileStats | None = None,
) -> Snapshot:
    """Copy what `/metrics` shows out of the monitor. Call it on the event loop thread."""
    return Snapshot(
        config=monitor.config,
        ready=monitor.ready,
        stats=monitor.get_stats(),
        check_durations={
            app: _histogram_sample(h) for app, h in monitor.check_durations.by_label.items()
        },
        schedule_lag=_histogram_sample(monitor.schedule_lag),
        checks_in_flight=monitor.checks_in_flight,
        checks_queued=monitor.checks_queued,
        checks_skipped=monitor.checks_skipped,
        updater_calls=dict(monitor.updater_calls),
        provider_failures=monitor.provider_failures,
        build_labels=build_labels,
        file_reloads=(
            (reloads.reload_successes, reloads.reload_failures, reloads.last_reload_success_time)
            if reloads is not None
            else None
        ),
        haproxy=copy.deepcopy(haproxy),
        agent=copy.deepcopy(agent),
        tls_handshakes=(
            dict(monitor.checker.tls_handshakes)
            if isinstance(monitor.checker, HTTPChecker)
            else None
        ),
        sources=tuple((source.name, copy.copy(source.health)) for source in sources),
        source_metrics=tuple(
            family
            for source in sources
            if isinstance(source, CollectingSource)
            for family in source.collect()
        ),
        panic={app: health.panic for app, health in monitor.panic_view.apps.items()},
        state_file=copy.deepcopy(state_file),
        asyncio_tasks=len(asyncio.all_tasks()),
        passive=copy.deepcopy(passive),
    )


def build_labels(event_loop: str, shard: str = "") -> dict[str, str]:
    return {
        "version": __version__,
        "python_version": platform.python_version(),
        "event_loop": event_loop,
        "shard": shard,  # i/n with HEALTHCHECK_SHARD, else empty
    }


class SnapshotCollector(Collector):
    """Yields the exporter's metric families for one snapshot. Safe to run in any thread."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._exporter_families()
        yield from self._histograms()
        if self.snapshot.haproxy is not None:
            yield from _haproxy_families(self.snapshot.haproxy)
        if self.snapshot.passive is not None:
            yield from _passive_families(self.snapshot.passive)
        if self.snapshot.agent is not None:
            yield _counter_by_result(
                "healthcheck_agent_requests",
                "HAProxy agent checks answered, by result: up, down, pending (state not confirmed"
                " by the checks yet: nothing changes in HAProxy), unknown (id not checked here:"
                " nothing changes),"
                " error (no line in time, too long or not ASCII: dropped unanswered).",
                self.snapshot.agent.requests,
            )
        if self.snapshot.sources:
            yield from _source_families(self.snapshot.sources)
        yield from self.snapshot.source_metrics
        yield from _safety_families(self.snapshot)

    def _exporter_families(self) -> Iterator[Metric]:
        snap = self.snapshot
        labels = snap.build_labels
        info = GaugeMetricFamily(
            "healthcheck_exporter_build_info",
            "A metric with a constant '1' value labelled by version, Python version, event "
            "loop and shard (i/n, empty when not sharded) of the exporter.",
            labels=list(labels),
        )
        info.add_metric(list(labels.values()), 1)
        yield info
        yield GaugeMetricFamily(
            "healthcheck_monitor_enabled",
            "1 if health checks run, 0 if disabled (HEALTHCHECK_ENABLED=false: every target "
            "counts as healthy).",
            value=int(snap.config.enabled),
        )
        yield GaugeMetricFamily(
            "healthcheck_ready",
            "1 once the first round of checks has completed.",
            value=int(snap.ready),
        )
        cfg = snap.config
        for name, help_text, val in (
            ("healthcheck_check_interval_seconds", "Configured time between two checks of one "
             "target (HEALTHCHECK_INTERVAL).", cfg.interval),
            ("healthcheck_check_timeout_seconds", "Configured timeout of one check "
             "(HEALTHCHECK_TIMEOUT).", cfg.timeout),
            ("healthcheck_fall_threshold", "Configured consecutive failures that mark a target "
             "unhealthy (HEALTHCHECK_FALL).", cfg.fall),
            ("healthcheck_rise_threshold", "Configured consecutive successes that mark a target "
             "healthy (HEALTHCHECK_RISE).", cfg.rise),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, help_text, value=val)
        _, healthy, unhealthy = snap.stats
        targets = GaugeMetricFamily(
            "healthcheck_targets", "Targets known to the exporter, by state.", labels=["state"]
        )
        targets.add_metric([str(TargetState.HEALTHY)], healthy)
        targets.add_metric([str(TargetState.UNHEALTHY)], unhealthy)
        yield targets
        yield GaugeMetricFamily(
            "healthcheck_checks_in_flight", "Checks running now.", value=snap.checks_in_flight
        )
        yield GaugeMetricFamily(
            "healthcheck_checks_queued",
            "Checks due and waiting for a free slot under HEALTHCHECK_MAX_CONCURRENT.",
            value=snap.checks_queued,
        )
        yield CounterMetricFamily(
            "healthcheck_checks_skipped",
            "Scheduled checks skipped because the previous check of that target still ran.",
            value=snap.checks_skipped,
        )
        updates = CounterMetricFamily(
            "healthcheck_config_updates",
            "Calls of the config updater (HAProxy writer) after health changes, by result.",
            labels=["result"],
        )
        for result, count in sorted(snap.updater_calls.items()):
            updates.add_metric([result], count)
        yield updates
        yield CounterMetricFamily(
            "healthcheck_target_provider_failures",
            "Times the target provider raised an error (the previous targets were kept).",
            value=snap.provider_failures,
        )
        if snap.tls_handshakes is not None:
            handshakes = CounterMetricFamily(
                "healthcheck_tls_handshakes",
                "TLS handshakes of HTTPS checks, by whether they resumed an earlier session.",
                labels=["resumed"],
            )
            for resumed in (False, True):
                handshakes.add_metric([str(resumed).lower()], snap.tls_handshakes[resumed])
            yield handshakes
        if snap.file_reloads is not None:
            successes, failures, last_success = snap.file_reloads
            reloads = CounterMetricFamily(
                "healthcheck_targets_file_reloads",
                "Reads of HEALTHCHECK_TARGETS_FILE, by result; on failure the previous targets "
                "stay.",
                labels=["result"],
            )
            reloads.add_metric(["success"], successes)
            reloads.add_metric(["failure"], failures)
            yield reloads
            yield GaugeMetricFamily(
                "healthcheck_targets_file_last_reload_success_timestamp_seconds",
                "Unix time of the last successful read of HEALTHCHECK_TARGETS_FILE.",
                value=last_success,
            )

    def _histograms(self) -> Iterator[Metric]:
        snap = self.snapshot
        durations = HistogramMetricFamily(
            "healthcheck_check_duration_seconds",
            "Duration of checks, by app (per-target histograms would cost a dozen series each).",
            labels=["app"],
        )
        for app, hist in sorted(snap.check_durations.items()):
            durations.add_metric([app], _buckets(hist), hist.sum)
        yield durations
        lag = HistogramMetricFamily(
            "healthcheck_schedule_lag_seconds",
            "How late scheduled checks started (actual minus planned start time).",
        )
        lag.add_metric([], _buckets(snap.schedule_lag), snap.schedule_lag.sum)
        yield lag


def _counter_by_result(
    name: str, help_text: str, counts: dict[str, int], label: str = "result"
) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=[label])
    for result, count in sorted(counts.items()):
        family.add_metric([result], count)
    return family


def _haproxy_families(stats: HAProxyStats) -> Iterator[Metric]:
    yield _counter_by_result(
        "healthcheck_haproxy_config_writes",
        "Attempts to update the HAProxy config file: success (written), unchanged (same "
        "content, nothing written), failure (render, check or write failed; last good file kept).",
        stats.writes,
    )
    yield CounterMetricFamily(
        "healthcheck_haproxy_config_check_failures",
        "Candidate configs rejected by HEALTHCHECK_HAPROXY_CHECK_COMMAND.",
        value=stats.check_failures,
    )
    yield _counter_by_result(
        "healthcheck_haproxy_reloads", "HAProxy reloads, by result.", stats.reloads
    )
    yield _counter_by_result(
        "healthcheck_haproxy_runtime_commands",
        "Commands sent to the HAProxy Runtime API (reload mode runtime-api), by result.",
        stats.runtime_commands,
    )
    yield GaugeMetricFamily(
        "healthcheck_haproxy_last_reload_success_timestamp_seconds",
        "Unix time of the last successful HAProxy reload (0: none yet).",
        value=stats.last_reload_success,
    )
    yield GaugeMetricFamily(
        "healthcheck_haproxy_config_stale",
        "1 while the last attempt to update the HAProxy config file failed: the file (the last "
        "good one) no longer matches target health; retried with backoff until it does.",
        value=int(stats.stale),
    )
    yield GaugeMetricFamily(
        "healthcheck_haproxy_last_config_change_timestamp_seconds",
        "Unix time the HAProxy config file was last changed by the exporter (0: not yet).",
        value=stats.last_config_change,
    )


def _source_families(sources: tuple[tuple[str, SourceHealth], ...]) -> Iterator[Metric]:
    """Per target source (env, file, dns, http_sd, docker): what it gives, how its reads went."""
    families = (
        GaugeMetricFamily(
            "healthcheck_source_targets",
            "Targets the source gives now (its last good read).",
            labels=["source"],
        ),
        GaugeMetricFamily(
            "healthcheck_source_up",
            "1 if the source's last read succeeded; 0 while what it reads is bad or unreachable"
            " (its last good targets are kept).",
            labels=["source"],
        ),
        GaugeMetricFamily(
            "healthcheck_source_last_success_timestamp_seconds",
            "Unix time of the source's last successful read (0: never).",
            labels=["source"],
        ),
        CounterMetricFamily(
            "healthcheck_source_failures",
            "Failed reads of the source (a bad version counted once, not once per poll).",
            labels=["source"],
        ),
    )
    targets, up, last_success, failures = families
    for name, health in sources:
        targets.add_metric([name], health.targets)
        up.add_metric([name], int(health.last_error is None))
        last_success.add_metric([name], health.last_success_time)
        failures.add_metric([name], health.failures)
    yield from families


def _safety_families(snap: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "healthcheck_exporter_asyncio_tasks",
        "asyncio tasks alive in the exporter (flat in a steady state; growth is a leak).",
        value=snap.asyncio_tasks,
    )
    panic = GaugeMetricFamily(
        "healthcheck_app_panic",
        "1 while the app is in panic (its healthy targets below HEALTHCHECK_PANIC_THRESHOLD): "
        "every target of the app is passed on as routable, whatever its health.",
        labels=["app"],
    )
    for app, in_panic in sorted((snap.panic or {}).items()):
        panic.add_metric([app], int(in_panic))
    yield panic
    if snap.state_file is None:
        return
    yield _counter_by_result(
        "healthcheck_state_file_writes",
        "Saves of HEALTHCHECK_STATE_FILE, by result (a failure keeps the last good file).",
        snap.state_file.writes,
    )
    yield GaugeMetricFamily(
        "healthcheck_state_file_stale",
        "1 while the last save of HEALTHCHECK_STATE_FILE failed (retried with backoff).",
        value=int(snap.state_file.stale),
    )


def _passive_families(stats: PassiveStats) -> Iterator[Metric]:
    yield _counter_by_result(
        "healthcheck_passive_triggers",
        "Checks started at once because HAProxy's error counters (econ, eresp, hrsp_5xx, wretr,"
        " wredis) of the target's server grew (HEALTHCHECK_HAPROXY_RUNTIME_SOCKET), by app.",
        stats.triggers,
        label="app",
    )
    yield CounterMetricFamily(
        "healthcheck_passive_stat_read_failures",
        "Failed reads of `show stat` on HEALTHCHECK_HAPROXY_RUNTIME_SOCKET.",
        value=stats.read_failures,
    )


def _buckets(hist: HistogramSample) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in hist.buckets]


class ScrapeRegistry(Collector):
    """The default registry (process, platform and GC metrics) plus one snapshot's families."""

    def __init__(self, snapshot: Snapshot, base: Collector = REGISTRY) -> None:
        self.base = base
        self.exporter = SnapshotCollector(snapshot)

    def collect(self) -> Iterator[Metric]:
        yield from self.base.collect()
        yield from self.exporter.collect()
