"""`HEALTHCHECK_STATE_FILE`: each target's health kept across restarts.

A restarted exporter that starts every target healthy sends HAProxy back to backends it knew were
dead for `fall * interval`. With a state file it saves each target's state (health, streaks, time
of the last change) atomically, at most once a second after changes and at shutdown, and restores
it at startup for the targets still configured (the monitor does that as it first sees them).

The file is JSON: `{"format": "healthcheck-exporter/state", "version": 1, "saved_at": <unix>,
"targets": {<id>: {"address", "state", "consecutive_failures", "consecutive_successes",
"last_change"}}}`. A file that is missing, unreadable, truncated, corrupt or written by something
else is logged and ignored: the exporter starts as it would without one. A write that fails (a
full or read-only disk) keeps the last good file and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.haproxy import files
from exporter.model import TargetState
from exporter.state import StateTracker, TargetEntry

FORMAT = "healthcheck-exporter/state"
VERSION = 1
SAVE_PERIOD = 1.0  # at most one save per second
RETRY_MAX = 30.0
MAX_SIZE = 64 * 1024 * 1024  # far above 100,000 targets; refuses /dev/zero and the like
MAX_STREAK = 1_000_000_000


class StateFileError(Exception):
    """The state file cannot be used; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class SavedTarget:
    address: str
    state: TargetState
    consecutive_failures: int
    consecutive_successes: int
    last_change: float | None


def encode(entries: Iterable[TargetEntry], saved_at: float) -> bytes:
    targets = {
        e.target.id: {
            "address": e.target.address,
            "state": str(e.state),
            "consecutive_failures": e.consecutive_failures,
            "consecutive_successes": e.consecutive_successes,
            "last_change": e.last_change,
        }
        for e in entries
        if e.checked  # a state never decided by a check is not worth restoring
    }
    document = {"format": FORMAT, "version": VERSION, "saved_at": saved_at, "targets": targets}
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes) -> dict[str, SavedTarget]:
    """The saved targets; raises StateFileError for anything but a whole file of ours."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:  # ValueError covers UnicodeDecodeError
        raise StateFileError(f"not valid JSON (truncated or corrupt?): {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateFileError(f"not a healthcheck-exporter state file (no format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise StateFileError(f"unsupported version {document.get('version')!r}")
    targets = document.get("targets")
    if not isinstance(targets, dict):
        raise StateFileError("'targets' is not an object")
    return {target_id: _saved_target(target_id, item) for target_id, item in targets.items()}


def _saved_target(target_id: str, item: Any) -> SavedTarget:
    def bad(what: str) -> StateFileError:
        return StateFileError(f"target {target_id[:80]!r}: {what}")

    if not isinstance(item, dict):
        raise bad("not an object")
    address, state = item.get("address"), item.get("state")
    if not isinstance(address, str):
        raise bad("'address' is not a string")
    if state not in ("healthy", "unhealthy"):
        raise bad(f"'state' {state!r} is neither healthy nor unhealthy")
    streaks: list[int] = []
    for key in ("consecutive_failures", "consecutive_successes"):
        streak = item.get(key)
        if type(streak) is not int or not 0 <= streak <= MAX_STREAK:
            raise bad(f"{key!r} {streak!r} is not a count")
        streaks.append(streak)
    last_change = item.get("last_change")
    if last_change is not None and (
        type(last_change) not in (int, float) or not math.isfinite(last_change)
    ):
        raise bad(f"'last_change' {last_change!r} is not a time")
    return SavedTarget(
        address,
        TargetState.HEALTHY if state == "healthy" else TargetState.UNHEALTHY,
        streaks[0],
        streaks[1],
        None if last_change is None else float(last_change),
    )


def read(path: Path) -> bytes:
    """The file's bytes; raises StateFileError if it is not a readable regular file, or huge."""
    try:
        data = files.read_regular(path, MAX_SIZE)
    except FileNotFoundError:
        raise StateFileError("no such file") from None
    except ValueError as err:
        raise StateFileError(str(err)) from None
    if len(data) > MAX_SIZE:
        raise StateFileError(f"larger than {MAX_SIZE // 1024 // 1024} MiB")
    return data


def load(path: Path, logger: logging.Logger) -> dict[str, SavedTarget]:
    """The saved targets, or none (logged) if the file is missing or unusable. Never raises."""
    try:
        saved = decode(read(path))
    except StateFileError as err:
        if path.exists() or path.is_symlink():
            logger.warning(
                "ignoring the state file: every target starts in the initial state",
                extra={"file": str(path), "error": str(err)},
            )
        else:
            logger.info("no state file yet", extra={"file": str(path)})
        return {}
    return saved


@dataclass
class StateFileStats:
    """Counters `/metrics` shows; copied at scrape time."""

    writes: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    stale: bool = False  # the last write failed: the file is older than the state
    last_write_success: float = 0.0


class StateSaver:
    """Saves the tracker's states to the file at most once a second after a change."""

    def __init__(self, path: Path, tracker: StateTracker, logger: logging.Logger) -> None:
        self.path = path
        self.tracker = tracker
        self.logger = logger
        self.stats = StateFileStats()
        self._saved_version: int | None = None

    async def run(self) -> None:
        """Until cancelled: save after changes, retrying a failed save with backoff."""
        delay = SAVE_PERIOD
        while True:
            await asyncio.sleep(delay)
            if self.tracker.version == self._saved_version:
                continue
            delay = SAVE_PERIOD if await self.save() else min(delay * 2, RETRY_MAX)

    async def save(self) -> bool:
        """Write the current states now (off the event loop); False if the write failed."""
        version = self.tracker.version
        data = encode(self.tracker.entries(), time.time())
        try:
            await asyncio.to_thread(files.atomic_write, self.path, data)
        except OSError as err:
            self.stats.writes["failure"] += 1
            self.stats.stale = True
            self.logger.error(
                "cannot write the state file; the last good one stays, will retry",
                extra={"file": str(self.path), "error": str(err)},
            )
            return False
        if self.stats.stale:
            self.logger.info("state file written again", extra={"file": str(self.path)})
        self._saved_version = version
        self.stats.writes["success"] += 1
        self.stats.stale = False
        self.stats.last_write_success = time.time()
        return True
