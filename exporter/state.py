"""Fall/rise state machine for many targets (seed: `StateTracker`). Pure logic: no I/O, no clock.

Besides the seed's state and consecutive counters, each entry keeps what `/metrics` shows about
the target (last result, checks by result, transitions), so metrics are built from this state at
scrape time instead of being updated as thousands of labelled children on every check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter.model import FailureReason, Result, Target, TargetState

SUCCESS = "success"  # `result` label value of a passing check
HISTORY_LENGTH = 30
"""Check results kept per target for the status page's strip."""

# The history holds one byte per result: 0 for a success, else 1 + the reason's index here.
HISTORY_CODES: tuple[str, ...] = (SUCCESS, *(str(reason) for reason in FailureReason))
_HISTORY_CODE = {label: code for code, label in enumerate(HISTORY_CODES)}


@dataclass(slots=True)
class TargetEntry:
    """Everything tracked about one target. Mutated only by `StateTracker`."""

    target: Target
    fall: int  # the target's own threshold, or the tracker's
    rise: int
    state: TargetState = TargetState.HEALTHY
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_result: Result | None = None
    checks: dict[str, int] = field(default_factory=dict)  # result label -> count
    transitions_to_healthy: int = 0
    transitions_to_unhealthy: int = 0
    # False while the state is only the initial one: no result counted since the target was
    # added (a local_resources failure does not count), and no state restored.
    checked: bool = False
    last_change: float | None = None  # Unix time of the last state change (None: never)
    # The last HISTORY_LENGTH results, oldest first, as codes into HISTORY_CODES: one byte
    # each, because 30 Result objects per target would cost megabytes at 10,000 targets.
    history: bytearray = field(default_factory=bytearray)

    @property
    def progress(self) -> str:
        """The state as HAProxy's stats page shows it: `UP`, `UP 1/3` while going down,
        `DOWN`, `DOWN 1/2` while coming back."""
        if self.state is TargetState.HEALTHY:
            if self.consecutive_failures:
                return f"UP {self.consecutive_failures}/{self.fall}"
            return "UP"
        if self.consecutive_successes:
            return f"DOWN {self.consecutive_successes}/{self.rise}"
        return "DOWN"

    def results(self) -> list[str]:
        """The last results, oldest first: `success` or a failure reason each."""
        return [HISTORY_CODES[code] for code in self.history]


@dataclass(frozen=True, slots=True)
class TargetChanges:
    """What `StateTracker.apply_targets` changed."""

    added: tuple[Target, ...] = ()
    removed: tuple[Target, ...] = ()
    updated: tuple[Target, ...] = ()  # known id whose address, app or path changed

    @property
    def membership_changed(self) -> bool:
        return bool(self.added or self.removed)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


class StateTracker:
    """Tracks health state for many targets with HAProxy-style fall/rise thresholds.

    As in the seed: thresholds below 1 act as 1; new targets start healthy; an unknown target
    reads as unhealthy; a result for an unknown target is ignored. Safe to call from several
    threads (the seed guards it with a mutex; here a lock keeps iteration consistent).

    Beyond the seed: new targets start in `initial_state` (HAProxy 3.1's `init-state`); a
    target's own `options.fall`/`options.rise` override the tracker's; a `local_resources`
    failure (the exporter's own lack of file descriptors or memory) is recorded but moves no
    counter; `version` grows with every change a viewer could see (state, fall/rise progress,
    `checked`, the target set), for long polling.
    """

    def __init__(
        self, fall: int, rise: int, initial_state: TargetState = TargetState.HEALTHY
    ) -> None:
        self._fall = max(fall, 1)
        self._rise = max(rise, 1)
        self._initial_state = initial_state
        self._entries: dict[str, TargetEntry] = {}
        self._unhealthy = 0
        self._lock = threading.Lock()
        self.version = 0
        # Called (under the lock, on whichever thread made the change) each time `version`
        # grows; set only while someone long-polls, so nobody pays for it otherwise.
        self.on_version: Callable[[], None] | None = None

    @property
    def fall(self) -> int:
        return self._fall

    @property
    def rise(self) -> int:
        return self._rise

    @property
    def initial_state(self) -> TargetState:
        return self._initial_state

    def _thresholds(self, target: Target) -> tuple[int, int]:
        options = target.options
        fall = self._fall if options.fall is None else max(options.fall, 1)
        rise = self._rise if options.rise is None else max(options.rise, 1)
        return fall, rise

    def sync_targets(self, targets: Iterable[Target]) -> bool:
        """Add new targets (healthy), drop missing ones, refresh known ones (seed: `SyncTargets`).

        Returns True if any target was added or removed; a refreshed address alone returns False,
        as in the seed. `apply_targets` tells the whole story.
        """
        return self.apply_targets(targets).membership_changed

    def apply_targets(self, targets: Iterable[Target]) -> TargetChanges:
        """Like `sync_targets`, returning which targets were added, removed and updated."""
        added: list[Target] = []
        updated: list[Target] = []
        with self._lock:
            wanted: dict[str, Target] = {t.id: t for t in targets}
            for target_id, target in wanted.items():
                entry = self._entries.get(target_id)
                if entry is None:
                    fall, rise = self._thresholds(target)
                    entry = TargetEntry(target, fall, rise, state=self._initial_state)
                    self._entries[target_id] = entry
                    if entry.state is TargetState.UNHEALTHY:
                        self._unhealthy += 1
                    added.append(target)
                elif entry.target != target:
                    entry.target = target  # IP/port may change when a container restarts
                    entry.fall, entry.rise = self._thresholds(target)
                    updated.append(target)
            removed = [e for tid, e in self._entries.items() if tid not in wanted]
            for entry in removed:
                del self._entries[entry.target.id]
                if entry.state is TargetState.UNHEALTHY:
                    self._unhealthy -= 1
            changes = TargetChanges(tuple(added), tuple(e.target for e in removed), tuple(updated))
            if changes:
                self._bump_version()
        return changes

    def record_result(self, result: Result) -> bool:
        """Count a check result; True if the target's state flipped (seed: `RecordResult`)."""
        with self._lock:
            entry = self._entries.get(result.target.id)
            if entry is None:  # removed between check and result
                return False
            entry.last_result = result
            label = SUCCESS if result.healthy else str(result.reason or "other")
            entry.checks[label] = entry.checks.get(label, 0) + 1
            history = entry.history
            history.append(_HISTORY_CODE.get(label, _HISTORY_CODE["other"]))
            if len(history) > HISTORY_LENGTH:
                del history[0]
            if result.reason is FailureReason.LOCAL_RESOURCES:
                return False  # says nothing about the target
            before = (entry.progress, entry.checked)
            entry.checked = True
            flipped = self._count(entry, result)
            if flipped:
                entry.last_change = result.checked_at
            if flipped or (entry.progress, entry.checked) != before:
                self._bump_version()
            return flipped

    def restore(
        self,
        target_id: str,
        state: TargetState,
        consecutive_failures: int,
        consecutive_successes: int,
        last_change: float | None,
    ) -> bool:
        """Put back a known target's saved state (from the state file); False if unknown.

        A restored target counts as checked: its state was decided by checks before a restart.
        """
        with self._lock:
            entry = self._entries.get(target_id)
            if entry is None:
                return False
            if entry.state is not state:
                self._unhealthy += 1 if state is TargetState.UNHEALTHY else -1
            entry.state = state
            entry.consecutive_failures = max(consecutive_failures, 0)
            entry.consecutive_successes = max(consecutive_successes, 0)
            entry.last_change = last_change
            entry.checked = True
            self._bump_version()
            return True

    def _bump_version(self) -> None:
        self.version += 1
        if self.on_version is not None:
            self.on_version()

    def _count(self, entry: TargetEntry, result: Result) -> bool:
        """Move the streaks by one result; True if the state flipped."""
        if result.healthy:
            entry.consecutive_failures = 0
            entry.consecutive_successes += 1
            if entry.state is TargetState.UNHEALTHY and entry.consecutive_successes >= entry.rise:
                entry.state = TargetState.HEALTHY
                entry.transitions_to_healthy += 1
                self._unhealthy -= 1
                return True
        else:
            entry.consecutive_successes = 0
            entry.consecutive_failures += 1
            if entry.state is TargetState.HEALTHY and entry.consecutive_failures >= entry.fall:
                entry.state = TargetState.UNHEALTHY
                entry.transitions_to_unhealthy += 1
                self._unhealthy += 1
                return True
        return False

    def get_state(self, target_id: str) -> TargetState:
        """The target's state; UNHEALTHY for an unknown id (seed: `GetState`)."""
        entry = self._entries.get(target_id)
        return TargetState.UNHEALTHY if entry is None else entry.state

    def get_entry(self, target_id: str) -> TargetEntry | None:
        return self._entries.get(target_id)

    def get_healthy_targets(self) -> list[Target]:
        return self._targets_in(TargetState.HEALTHY)

    def get_unhealthy_targets(self) -> list[Target]:
        return self._targets_in(TargetState.UNHEALTHY)

    def get_all_targets(self) -> list[Target]:
        with self._lock:
            return [e.target for e in self._entries.values()]

    def entries(self) -> list[TargetEntry]:
        """All entries in the order targets were first seen (a new list; the entries are live)."""
        with self._lock:
            return list(self._entries.values())

    def get_stats(self) -> tuple[int, int, int]:
        """(total, healthy, unhealthy), in O(1) (seed: `GetStats`)."""
        with self._lock:
            total = len(self._entries)
            return total, total - self._unhealthy, self._unhealthy

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, target_id: object) -> bool:
        return target_id in self._entries

    def _targets_in(self, state: TargetState) -> list[Target]:
        with self._lock:
            return [e.target for e in self._entries.values() if e.state is state]
