"""The passive fast path: HAProxy's own counters tell us first that a backend fails.

Every `HEALTHCHECK_HAPROXY_STAT_INTERVAL` the exporter reads `show stat` on the stats socket.
When a server's connection errors (`econ`), response errors (`eresp`), 5xx responses
(`hrsp_5xx`), retries (`wretr`) or redispatches (`wredis`) grow, the target of that name is
checked at once, and then at fastinter while it is in transition (the monitor's schedule). Only
our own checks decide health: the signal only makes us look sooner. HAProxy 2.6 with `retries 3`
counts `wretr` at once when a server dies and `econ` only after the retries, so retries are part
of the signal. Counters that go down (a reload or restart starts them at zero) are no increase;
what they counted since the restart is. (HAProxy manual, "9.1. CSV format" of the management guide.)
"""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.haproxy.reload import ReloadError, cli_command
from exporter.logs import RateLimitedLog
from exporter.state import StateTracker

SIGNALS = ("econ", "eresp", "hrsp_5xx", "wretr", "wredis")
LOG_EVERY = 5.0  # seconds between two log lines about one target's triggers
ERROR_LOG_EVERY = 60.0  # seconds between two log lines about an unreadable socket

Key = tuple[str, str]  # (backend, server)


def parse_show_stat(text: str) -> dict[Key, tuple[int, ...]]:
    """The signal counters of every server row of a `show stat` answer (empty fields: 0)."""
    lines = text.removeprefix("# ").splitlines()
    counters: dict[Key, tuple[int, ...]] = {}
    for row in csv.DictReader(lines):
        server = row.get("svname") or ""
        if server in ("FRONTEND", "BACKEND", "") or not row.get("pxname"):
            continue
        counters[(row["pxname"], server)] = tuple(
            int(value) if (value := row.get(name) or "").isdigit() else 0 for name in SIGNALS
        )
    return counters


@dataclass
class CounterWatch:
    """Which servers' signal counters grew since the last reading. Pure: no I/O, no clock."""

    last: dict[Key, tuple[int, ...]] | None = None  # None: no reading yet

    def grown(self, now: dict[Key, tuple[int, ...]]) -> list[Key]:
        """Servers with a counter higher than at the last reading. The first reading only sets
        a baseline (its counters may be old). A counter lower than before means the counters
        restarted (a reload): that drop is no increase, but what was counted since the restart
        is, so such a server is compared with zero, as is a server that was not there before
        (a reload added it, with counters from zero)."""
        last, self.last = self.last, now
        if last is None:
            return []
        grown = []
        for key, counters in now.items():
            before = last.get(key)
            if before is None or any(n < b for n, b in zip(counters, before, strict=True)):
                before = (0,) * len(counters)
            if counters != before:
                grown.append(key)
        return grown


@dataclass
class PassiveStats:
    """What `/metrics` shows: triggers by app, and failed reads of the stats socket."""

    triggers: dict[str, int] = field(default_factory=dict)
    read_failures: int = 0


class PassiveFastPath:
    """Reads `show stat` every `interval` and asks for an immediate check of failing servers."""

    def __init__(
        self,
        socket: Path,
        interval: float,
        tracker: StateTracker,
        check_now: Callable[[str], bool],
        logger: logging.Logger,
        timeout: float = 5.0,
    ) -> None:
        self.socket = socket
        self.interval = interval
        self.tracker = tracker
        self.check_now = check_now
        self.logger = logger
        self.timeout = timeout
        self.stats = PassiveStats()
        self.watch = CounterWatch()
        self._logged: dict[str, float] = {}  # target id -> when its last trigger was logged
        self._error_log = RateLimitedLog(
            logger, "cannot read haproxy stats for the passive fast path", ERROR_LOG_EVERY
        )

    async def run(self) -> None:
        """Poll until cancelled; a failed read is counted and logged, never fatal."""
        while True:
            for entry in self.tracker.entries():  # every app's counter shows, zero included
                self.stats.triggers.setdefault(entry.target.app_name, 0)
            try:
                answer = await cli_command(self.socket, "show stat", self.timeout)
            except (ReloadError, TimeoutError, OSError) as err:
                self._read_failed(err)
            else:
                self.trigger(self.watch.grown(parse_show_stat(answer)))
            await asyncio.sleep(self.interval)

    def trigger(self, grown: Iterable[Key]) -> None:
        """Check the targets behind these servers now (server name = target id)."""
        now = time.monotonic()
        for backend, server in grown:
            entry = self.tracker.get_entry(server)
            if entry is None or not self.check_now(server):
                continue  # not ours, or its check is already under way
            app = entry.target.app_name
            self.stats.triggers[app] = self.stats.triggers.get(app, 0) + 1
            if now - self._logged.get(server, -float("inf")) >= LOG_EVERY:
                self._logged[server] = now
                self.logger.info(
                    "haproxy saw errors: checking the target now",
                    extra={"target": server, "app": app, "backend": backend},
                )
        if len(self._logged) > 2 * len(self.tracker) + 100:  # forget targets that are gone
            self._logged = {t: at for t, at in self._logged.items() if now - at < LOG_EVERY}

    def _read_failed(self, err: Exception) -> None:
        self.stats.read_failures += 1
        self._error_log.warn(socket=str(self.socket), error=str(err) or type(err).__name__)
