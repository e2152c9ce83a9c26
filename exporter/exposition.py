"""The per-target part of `/metrics`, written straight to text at scrape time.

prometheus_client spends ~16 µs per sample line building and formatting sample objects: 1.6 s
for 10,000 targets x 8 series, on a core that must also keep the check schedule. These families
are simple (a fixed label set per target, plain numbers), so they are written here with one
f-string per line, from each target's label text prepared once when the target appears, and
streamed out a piece at a time: a scrape never stalls checks for long nor holds the whole text.
The output is checked against prometheus_client's parser and promtool in the tests. Everything
else on `/metrics` (process metrics, exporter-wide families, histograms) still goes through
prometheus_client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from exporter.model import Result, Target, TargetState
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
    "network_unreachable, tls, body_mismatch, local_resources, other).",
)
TRANSITIONS = Family(
    "healthcheck_state_transitions",
    "counter",
    "State changes of the target, by the state it changed to.",
)
TLS_EXPIRY = Family(
    "healthcheck_target_tls_certificate_expiry_timestamp_seconds",
    "gauge",
    "NotAfter (Unix time) of the leaf certificate the target presented at its last check, "
    "verified or not (expired and self-signed included); absent without one.",
)
FAMILIES = (
    UP, FAILURES, SUCCESSES, LAST_TIME, LAST_DURATION, LAST_CODE, CHECKS, TRANSITIONS, TLS_EXPIRY
)  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class Row:
    """One target's values, copied at once so its series agree with each other."""

    labels: str
    up: int
    consecutive_failures: int
    consecutive_successes: int
    last: Result | None  # immutable
    checks: tuple[tuple[str, int], ...]
    to_healthy: int
    to_unhealthy: int


def _row(entry: TargetEntry, cache: LabelCache) -> Row:
    counts = entry.checks
    checks = tuple(sorted(counts.items() if SUCCESS in counts else [*counts.items(), (SUCCESS, 0)]))
    return Row(
        cache.get(entry.target),
        int(entry.state is TargetState.HEALTHY),
        entry.consecutive_failures,
        entry.consecutive_successes,
        entry.last_result,
        checks,  # success always present, so rate() works from the start
        entry.transitions_to_healthy,
        entry.transitions_to_unhealthy,
    )


def _up(r: Row) -> str:
    return f"healthcheck_target_up{{{r.labels}}} {r.up}\n"


def _failures(r: Row) -> str:
    return f"healthcheck_target_consecutive_failures{{{r.labels}}} {r.consecutive_failures}\n"


def _successes(r: Row) -> str:
    return f"healthcheck_target_consecutive_successes{{{r.labels}}} {r.consecutive_successes}\n"


def _last_time(r: Row) -> str:
    if r.last is None:  # absent until the first check
        return ""
    return (
        f"healthcheck_target_last_check_timestamp_seconds{{{r.labels}}} "
        f"{_number(r.last.checked_at)}\n"
    )


def _last_duration(r: Row) -> str:
    if r.last is None:
        return ""
    return (
        f"healthcheck_target_last_check_duration_seconds{{{r.labels}}} {_number(r.last.duration)}\n"
    )


def _last_code(r: Row) -> str:
    if r.last is None:
        return ""
    return f"healthcheck_target_last_status_code{{{r.labels}}} {r.last.status_code}\n"


def _checks(r: Row) -> str:
    return "".join(
        f'healthcheck_checks_total{{{r.labels},result="{result}"}} {count}\n'
        for result, count in r.checks
    )


def _transitions(r: Row) -> str:
    return (
        f'healthcheck_state_transitions_total{{{r.labels},to="healthy"}} {r.to_healthy}\n'
        f'healthcheck_state_transitions_total{{{r.labels},to="unhealthy"}} {r.to_unhealthy}\n'
    )


def _tls_expiry(r: Row) -> str:
    if r.last is None or r.last.tls_not_after is None:  # only targets that showed a certificate
        return ""
    return (
        f"healthcheck_target_tls_certificate_expiry_timestamp_seconds{{{r.labels}}} "
        f"{_number(r.last.tls_not_after)}\n"
    )


# One line writer per family, in FAMILIES' order.
_WRITERS: tuple[Callable[[Row], str], ...] = (
    _up, _failures, _successes, _last_time, _last_duration, _last_code, _checks, _transitions,
    _tls_expiry,
)  # fmt: skip


async def iter_targets(
    entries: list[TargetEntry], cache: LabelCache, openmetrics: bool = False
) -> AsyncIterator[str]:
    """The per-target families for `entries`, in pieces of at most CHUNK targets' lines.

    Each target's values are copied first (a small row each), so its series agree; then each
    family is written from the rows, a piece at a time, so a scrape holds one piece of text, not
    the whole exposition, and the event loop runs between pieces.
    """
    rows: list[Row] = []
    for start in range(0, len(entries), CHUNK):
        rows.extend(_row(entry, cache) for entry in entries[start : start + CHUNK])
        await asyncio.sleep(0)
    cache.retain({e.target.id for e in entries})
    for family, write in zip(FAMILIES, _WRITERS, strict=True):
        yield _header(family, openmetrics)
        for start in range(0, len(rows), CHUNK):
            yield "".join(map(write, rows[start : start + CHUNK]))
            await asyncio.sleep(0)


async def render_targets(
    entries: list[TargetEntry], cache: LabelCache, openmetrics: bool = False
) -> str:
    """All of `iter_targets` as one string."""
    return "".join([piece async for piece in iter_targets(entries, cache, openmetrics)])
