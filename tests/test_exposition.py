"""The hand-written per-target exposition says exactly what prometheus_client would say."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporter.exposition import CHUNK, FAMILIES, LabelCache, render_targets
from exporter.model import FailureReason, Result, Target
from exporter.state import StateTracker, TargetEntry
from tests.loop_turns import turns_during

LABELS = ["app", "target", "address"]


def tracker_with_history(n: int = 7) -> StateTracker:
    tracker = StateTracker(fall=2, rise=1)
    targets = [
        Target(f"t{i}", "web" if i % 2 else "api", f"10.0.0.{i}", str(8000 + i)) for i in range(n)
    ]
    targets.append(Target("v6", "web", "fd00::2", "443"))
    targets.append(Target("odd", 'we"b\\x\ny', "host.example", "80"))  # escaping, via the API
    tracker.sync_targets(targets)
    for i, target in enumerate(targets):
        for k in range(i % 4):  # target 0 is never checked: no last_* series yet
            healthy = (i + k) % 3 != 0
            reason = None if healthy else list(FailureReason)[(i + k) % len(FailureReason)]
            tracker.record_result(
                Result(
                    target,
                    healthy,
                    200 if healthy else 503,
                    None,
                    0.001 * (i + 1),
                    reason,
                    1_795_000_000.0 + i + k * 0.125,
                    1_800_000_000.0 + i if (i + k) % 2 else None,  # a certificate, or none
                )
            )
    return tracker


class Reference(Collector):
    """The same families through prometheus_client, as metrics.py built them before."""

    def __init__(self, entries: list[TargetEntry]) -> None:
        self.entries = entries

    def collect(self) -> list[Metric]:  # type: ignore[override]
        up, cf, cs, ts, du, co = (
            GaugeMetricFamily(f.name, f.help, labels=LABELS) for f in FAMILIES[:6]
        )
        checks = CounterMetricFamily(FAMILIES[6].name, FAMILIES[6].help, labels=[*LABELS, "result"])
        trans = CounterMetricFamily(FAMILIES[7].name, FAMILIES[7].help, labels=[*LABELS, "to"])
        expiry = GaugeMetricFamily(FAMILIES[8].name, FAMILIES[8].help, labels=LABELS)
        for e in self.entries:
            lv = [e.target.app_name, e.target.id, e.target.address]
            up.add_metric(lv, int(e.state.value == 0))
            cf.add_metric(lv, e.consecutive_failures)
            cs.add_metric(lv, e.consecutive_successes)
            if e.last_result is not None:
                ts.add_metric(lv, e.last_result.checked_at)
                du.add_metric(lv, e.last_result.duration)
                co.add_metric(lv, e.last_result.status_code)
                if e.last_result.tls_not_after is not None:
                    expiry.add_metric(lv, e.last_result.tls_not_after)
            for result, count in sorted({"success": 0, **e.checks}.items()):
                checks.add_metric([*lv, result], count)
            trans.add_metric([*lv, "healthy"], e.transitions_to_healthy)
            trans.add_metric([*lv, "unhealthy"], e.transitions_to_unhealthy)
        return [up, cf, cs, ts, du, co, checks, trans, expiry]


def parsed(text: str, openmetrics: bool = False) -> dict[str, object]:
    parse = parse_om if openmetrics else text_string_to_metric_families
    return {
        f.name: (
            f.type,
            f.documentation,
            sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples),
        )
        for f in parse(text)
    }


async def test_text_format_matches_prometheus_client():
    entries = tracker_with_history().entries()
    ours = await render_targets(entries, LabelCache())
    theirs = generate_latest(Reference(entries)).decode()
    assert parsed(ours) == parsed(theirs)


async def test_openmetrics_format_matches_prometheus_client():
    entries = tracker_with_history().entries()
    ours = await render_targets(entries, LabelCache(), openmetrics=True) + "# EOF\n"
    theirs = generate_openmetrics(Reference(entries)).decode()
    assert parsed(ours, openmetrics=True) == parsed(theirs, openmetrics=True)


async def test_label_cache_follows_a_target_that_moves():
    tracker = StateTracker(1, 1)
    tracker.sync_targets([Target("a", "web", "10.0.0.1", "80")])
    cache = LabelCache()
    assert 'address="10.0.0.1:80"' in await render_targets(tracker.entries(), cache)
    tracker.sync_targets([Target("a", "web", "10.0.0.2", "80")])
    text = await render_targets(tracker.entries(), cache)
    assert 'address="10.0.0.2:80"' in text and "10.0.0.1" not in text


async def test_rendering_many_targets_yields_to_the_event_loop():
    tracker = tracker_with_history(3 * CHUNK)
    rendering = render_targets(tracker.entries(), LabelCache())
    assert await turns_during(rendering) >= 2  # other tasks ran between chunks
