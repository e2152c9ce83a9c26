"""The safety floor (panic threshold): which targets are passed on as routable. Pure logic.

A checker that suddenly sees most of an app down is more likely cut off from it (its own network,
DNS, a bad deploy of its config) than right. As Envoy's healthy panic threshold does, when the
healthy targets of an app fall below the threshold, the app is *in panic* and every one of its
targets is passed on as routable to every integration (the `ConfigUpdater`, the HAProxy file and
Runtime API, the agent). The per-target state (and its metrics) keep the real health.

Targets still in their initial state count neither as healthy nor in the total: a target not
checked since it was added (and not restored from the state file), or one that started unhealthy,
has not failed yet and is still climbing towards `rise`. And an app does not *enter* panic while
any of its targets is still in its initial state (one already in panic stays in it), so that
`HEALTHCHECK_INITIAL_STATE=unhealthy` is not undone by a panic at startup: after a first round
with `rise` 2, every live target is `DOWN 1/2` and a single dead one would otherwise be 0 healthy
of 1 counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.model import Target, TargetState
from exporter.state import SUCCESS, TargetEntry

MAX_COUNT = 1_000_000
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_COUNT = re.compile(r"\d+")
_NOT_A_FAILURE = {SUCCESS, "local_resources"}


@dataclass(frozen=True, slots=True)
class PanicThreshold:
    """`50%` (of the counted targets of an app) or `2` (healthy targets); 0 turns it off."""

    value: float = 0.0
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> PanicThreshold:
        """Raises ValueError, saying what is wrong, for anything but `N%` (0-100) or a count."""
        body = text.strip()
        if match := _PERCENT.fullmatch(body):
            value = float(match.group(1))
            if not 0 <= value <= 100:
                raise ValueError(f"percentage {text!r} must be between 0% and 100%")
            return cls(value, percent=True)
        if _COUNT.fullmatch(body) and len(body) <= len(str(MAX_COUNT)):
            count = int(body)
            if count <= MAX_COUNT:
                return cls(float(count))
        raise ValueError(
            f"{text[:40]!r} is neither a percentage (e.g. 50%) nor a count of targets "
            f"(0 to {MAX_COUNT}; 0 turns the threshold off)"
        )

    @property
    def enabled(self) -> bool:
        return self.value > 0

    def breached(self, healthy: int, counted: int) -> bool:
        """Whether `healthy` of `counted` targets is below the floor (never for 0 counted)."""
        if not self.enabled or counted == 0:
            return False
        if self.percent:
            return healthy * 100 < self.value * counted
        return healthy < self.value

    def __str__(self) -> str:
        if self.percent:
            return f"{self.value:g}%"
        return str(math.floor(self.value))


OFF = PanicThreshold()


def counts_toward_threshold(entry: TargetEntry, initial_state: TargetState) -> bool:
    """False while the target's state is only its initial one (see the module docstring)."""
    if not entry.checked:
        return False
    if initial_state is TargetState.UNHEALTHY and entry.state is TargetState.UNHEALTHY:
        # Never flipped and never failed: still climbing from the initial state.
        return entry.last_change is not None or any(
            label not in _NOT_A_FAILURE for label in entry.checks
        )
    return True


@dataclass(frozen=True, slots=True)
class AppHealth:
    """One app as the threshold sees it."""

    healthy: int  # counted targets that are healthy
    counted: int  # targets past their initial state
    total: int  # every target of the app
    panic: bool

    @property
    def pending(self) -> int:
        """Targets still in their initial state."""
        return self.total - self.counted


@dataclass(frozen=True, slots=True)
class PanicView:
    """Every app's health against the threshold at one moment; immutable, so any thread may read
    the view the monitor last published."""

    apps: Mapping[str, AppHealth]

    def in_panic(self, app: str) -> bool:
        health = self.apps.get(app)
        return health is not None and health.panic

    @property
    def apps_in_panic(self) -> frozenset[str]:
        return frozenset(app for app, health in self.apps.items() if health.panic)


EMPTY_VIEW = PanicView({})


def evaluate(
    entries: Iterable[TargetEntry],
    threshold: PanicThreshold,
    initial_state: TargetState,
    previous: PanicView = EMPTY_VIEW,
) -> PanicView:
    """Each app's counted and healthy targets, and whether it is in panic (`previous`: the view
    before, which an app with targets in their initial state stays as it was in)."""
    tallies: dict[str, list[int]] = {}  # app -> [healthy, counted, total]
    for entry in entries:
        tally = tallies.setdefault(entry.target.app_name, [0, 0, 0])
        tally[2] += 1
        if counts_toward_threshold(entry, initial_state):
            tally[1] += 1
            if entry.state is TargetState.HEALTHY:
                tally[0] += 1
    return PanicView(
        {
            app: AppHealth(
                healthy,
                counted,
                total,
                threshold.breached(healthy, counted)
                and (counted == total or previous.in_panic(app)),
            )
            for app, (healthy, counted, total) in tallies.items()
        }
    )


def routable_states(
    entries: Iterable[TargetEntry], view: PanicView
) -> list[tuple[Target, TargetState]]:
    """Each target with the state integrations act on: healthy for every target of an app in
    panic, else its own state."""
    panicking = view.apps_in_panic
    if not panicking:
        return [(entry.target, entry.state) for entry in entries]
    return [
        (e.target, TargetState.HEALTHY if e.target.app_name in panicking else e.state)
        for e in entries
    ]


def changed_apps(old: PanicView, new: PanicView) -> tuple[list[str], list[str]]:
    """(apps that entered panic, apps that left it) between two views, sorted."""
    before, after = old.apps_in_panic, new.apps_in_panic
    return sorted(after - before), sorted(before - after)
