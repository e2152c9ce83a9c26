"""The per-target part of `/metrics`, written straight to text at scrape time.

prometheus_client spends ~16 µs per sample line building and formatting sample objects: 1.6 s
for 10,000 targets x 8 series, on a core that must also keep the check schedule. These families
are simple (a fixed label set per target, plain numbers), so they are written here with one
f-string per line, from each target's label text prepared once when the target appears, in chunks
that yield to the event loop so a scrape never stalls checks for long. The output is checked
against prometheus_client's parser and promtool in the tests. Everything else on `/metrics`
(process metrics, exporter-wide families, histograms) still goes through prometheus_client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.model import Target, TargetState
from exporter.state import SUCCESS, TargetEntry

CHUNK = 500  # targets rendered between two yields to the event loop (~2 ms of work)


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without `_total` for counters
    kind: str  # gauge or counter
    help: str


UP = Family(
    "healthcheck_target_up",
    "gauge",
    "1 if the target is healthy (after fall/rise thresholds), 0 if unhealthy.",
)
FAILURES = Family(
    "healthcheck_target_consecutive_failures",
    "gauge",
    "Failed checks in a row (reset by a success).",
)
SUCCESSES = Family(
    "healthcheck_target_consecutive_successes",
    "gauge",
    "Successful checks in a row (reset by a failure).",
)
LAST_TIME = Family(
    "healthcheck_target_last_check_timestamp_seconds",
    "gauge",
    "Unix time the last check of the target ended (absent until its first check).",
)
LAST_DURATION = Family(
    "healthcheck_target_last_check_duration_seconds",
    "gauge",
    "Duration of the last check of the target.",
)
LAST_CODE = Family(
    "healthcheck_target_last_status_code",
    "gauge",
    "HTTP status code of the last check, 0 if no HTTP response was received.",
)
CHECKS = Family(
    "healthcheck_checks",
    "counter",
    "Checks of the target by result: success or the failure reason (timeout, "
    "connection_refused, connection_reset, http_status, dns, protocol_error, "
    "network_unreachable, other).",
)
TRANSITIONS = Family(
    "healthcheck_state_transitions",
    "counter",
    "State changes of the target, by the state it changed to.",
)
FAMILIES = (UP, FAILURES, SUCCESSES, LAST_TIME, LAST_DURATION, LAST_CODE, CHECKS, TRANSITIONS)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(target: Target) -> str:
    """`app="…",target="…",address="…"`: the labels every per-target series carries."""
    return (
        f'app="{_escape(target.app_name)}",target="{_escape(target.id)}",'
        f'address="{_escape(target.address)}"'
    )


class LabelCache:
    """Label text per target, rebuilt only when a target's identity or address changes."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Target, str]] = {}

    def get(self, target: Target) -> str:
        cached = self._cache.get(target.id)
        if cached is None or cached[0] is not target:
            cached = (target, label_text(target))
            self._cache[target.id] = cached
        return cached[1]

    def retain(self, ids: set[str]) -> None:
        if len(self._cache) > len(ids):
            for stale in [i for i in self._cache if i not in ids]:
                del self._cache[stale]


def _header(family: Family, openmetrics: bool) -> str:
    name = family.name
    if family.kind == "counter" and not openmetrics:
        name += "_total"  # the text format names the family after its samples
    return f"# HELP {name} {family.help}\n# TYPE {name} {family.kind}\n"


def _number(value: float) -> str:
    return repr(float(value))


def _render_chunk(entries: Iterable[TargetEntry], cache: LabelCache, out: list[list[str]]) -> None:
    up, failures, successes, last_time, last_duration, last_code, checks, transitions = out
    healthy = TargetState.HEALTHY
    for entry in entries:
        labels = cache.get(entry.target)
        up.append(f"healthcheck_target_up{{{labels}}} {int(entry.state is healthy)}\n")
        failures.append(
            f"healthcheck_target_consecutive_failures{{{labels}}} {entry.consecutive_failures}\n"
        )
        successes.append(
            f"healthcheck_target_consecutive_successes{{{labels}}} {entry.consecutive_successes}\n"
        )
        last = entry.last_result
        if last is not None:
            last_time.append(
                f"healthcheck_target_last_check_timestamp_seconds{{{labels}}} "
                f"{_number(last.checked_at)}\n"
            )
            last_duration.append(
                f"healthcheck_target_last_check_duration_seconds{{{labels}}} "
                f"{_number(last.duration)}\n"
            )
            last_code.append(
                f"healthcheck_target_last_status_code{{{labels}}} {last.status_code}\n"
            )
        counts = entry.checks
        if SUCCESS not in counts:  # always present, so rate() works from the start
            checks.append(f'healthcheck_checks_total{{{labels},result="success"}} 0\n')
        for result, count in sorted(counts.items()):
            checks.append(f'healthcheck_checks_total{{{labels},result="{result}"}} {count}\n')
        transitions.append(
            f'healthcheck_state_transitions_total{{{labels},to="healthy"}} '
            f"{entry.transitions_to_healthy}\n"
        )
        transitions.append(
            f'healthcheck_state_transitions_total{{{labels},to="unhealthy"}} '
            f"{entry.transitions_to_unhealthy}\n"
        )


async def render_targets(
    entries: list[TargetEntry], cache: LabelCache, openmetrics: bool = False
) -> str:
    """The per-target families for `entries`, yielding to the loop between chunks."""
    out: list[list[str]] = [[] for _ in FAMILIES]
    for start in range(0, len(entries), CHUNK):
        _render_chunk(entries[start : start + CHUNK], cache, out)
        if start + CHUNK < len(entries):
            await asyncio.sleep(0)
    cache.retain({e.target.id for e in entries})
    parts: list[str] = []
    for family, lines in zip(FAMILIES, out, strict=True):
        parts.append(_header(family, openmetrics))
        parts.extend(lines)
    return "".join(parts)
