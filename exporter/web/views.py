"""What the JSON API (and so the status page) says about targets and apps: plain dicts built
from the live state, in one place so later features add their fields here.

Field names follow issue 14's API; every object may grow keys (clients ignore unknown ones).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from exporter.model import Result, TargetState
from exporter.state import TargetEntry

STATES = ("healthy", "unhealthy")

CHUNK = 500
"""Targets turned into JSON between two yields to the event loop (~5 ms of work): at 10,000
targets the whole list took 90-120 ms, during which no check could start or end."""

TargetFields = Callable[[TargetEntry], Mapping[str, object]]
AppFields = Callable[[str], Mapping[str, object]]


@dataclass(frozen=True)
class Extensions:
    """Fields that features outside the web package add to the views (an app's panic state,
    a target's source, ...): each callable's keys are merged into the object it describes."""

    target_fields: tuple[TargetFields, ...] = ()
    app_fields: tuple[AppFields, ...] = ()
    # Sections of GET /api/v1/status: name -> its current value (None: not configured).
    status_sections: Mapping[str, Callable[[], object]] = field(default_factory=dict)


def last_check_view(result: Result | None) -> dict[str, object] | None:
    if result is None:
        return None
    view: dict[str, object] = {
        "time": result.checked_at,
        "healthy": result.healthy,
        "status_code": result.status_code or None,
        "duration_seconds": round(result.duration, 6),
        "reason": None if result.reason is None else str(result.reason),
        "error": result.error,
    }
    if result.tls_not_after is not None:
        view["tls_not_after"] = result.tls_not_after
    return view


def target_view(entry: TargetEntry, extensions: Extensions | None = None) -> dict[str, object]:
    target = entry.target
    view: dict[str, object] = {
        "id": target.id,
        "app": target.app_name,
        "address": target.address,
        "scheme": target.options.scheme,
        "path": target.health_check_path,
        "url": target.url,
        "state": str(entry.state),
        "progress": entry.progress,
        "fall": entry.fall,
        "rise": entry.rise,
        "consecutive_failures": entry.consecutive_failures,
        "consecutive_successes": entry.consecutive_successes,
        "checked": entry.checked,
        "last_check": last_check_view(entry.last_result),
        "last_change": entry.last_change,
        "history": entry.results(),
    }
    if extensions is not None:
        for fields in extensions.target_fields:
            view.update(fields(entry))
    return view


async def targets_json(entries: Sequence[TargetEntry], extensions: Extensions | None = None) -> str:
    """The JSON array of `entries`' views, built CHUNK targets at a time with the event loop
    let run in between. Each target's view is taken whole at once, so it is consistent; targets
    of later chunks may show checks that ended meanwhile, as a later request would."""
    pieces: list[str] = []
    for start in range(0, len(entries), CHUNK):
        if start:
            await asyncio.sleep(0)
        views = [target_view(entry, extensions) for entry in entries[start : start + CHUNK]]
        pieces.append(json.dumps(views, separators=(",", ":"))[1:-1])
    return "[" + ",".join(pieces) + "]"


def app_summaries(
    entries: Iterable[TargetEntry], extensions: Extensions | None = None
) -> list[dict[str, object]]:
    """One summary per app, sorted by name: how many targets are up out of how many."""
    counts: dict[str, list[int]] = {}
    for entry in entries:
        total_healthy_checked = counts.setdefault(entry.target.app_name, [0, 0, 0])
        total_healthy_checked[0] += 1
        total_healthy_checked[1] += entry.state is TargetState.HEALTHY
        total_healthy_checked[2] += entry.checked
    summaries: list[dict[str, object]] = []
    for app in sorted(counts):
        total, healthy, checked = counts[app]
        summary: dict[str, object] = {
            "app": app,
            "total": total,
            "healthy": healthy,
            "unhealthy": total - healthy,
            "checked": checked,
        }
        if extensions is not None:
            for fields in extensions.app_fields:
                summary.update(fields(app))
        summaries.append(summary)
    return summaries


def select(
    entries: Iterable[TargetEntry], app: str | None = None, state: str | None = None
) -> list[TargetEntry]:
    """The entries of `app` (if given) in `state` (`healthy`/`unhealthy`, if given)."""
    wanted = None if state is None else TargetState[state.upper()]
    return [
        e
        for e in entries
        if (app is None or e.target.app_name == app) and (wanted is None or e.state is wanted)
    ]
