"""All configured sources as one `TargetProvider`: their union, with no id given by two sources.

At startup a clash is a configuration error (exit 2) naming both sources. Later, a new version
of one source that brings an id another source already gives is rejected as a whole: that
source keeps its previous targets, the rejection is logged and counted as its failure, and the
rest goes on. A rejected version is taken as soon as the clash is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from exporter.model import Target
from exporter.settings import ConfigError, quoted
from exporter.sources.base import Source


def find_clash(
    accepted: dict[str, Sequence[Target]], name: str, candidate: Sequence[Target]
) -> str | None:
    """Why `candidate` (from source `name`) cannot join the others' targets, or None."""
    owners = {t.id: other for other, targets in accepted.items() if other != name for t in targets}
    for target in candidate:
        if target.id in owners:
            return (
                f"target id {quoted(target.id)} comes from both source {owners[target.id]}"
                f" and source {name}"
            )
    return None


class SourceUnion:
    """The union of several sources' targets, in the order the sources are given."""

    def __init__(self, sources: Sequence[Source], logger: logging.Logger) -> None:
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.sources = list(sources)
        self._logger = logger
        self._accepted: dict[str, Sequence[Target]] = {}
        self._rejected: dict[str, list[Target]] = {}  # source -> the version refused
        self._targets: list[Target] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._on_change: Callable[[], None] = lambda: None

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    def take_snapshots(self) -> None:
        """Accept every source's current targets at once; raises ConfigError on a clash."""
        accepted: dict[str, Sequence[Target]] = {}
        for source in self.sources:
            candidate = list(source.get_health_check_targets())
            clash = find_clash(accepted, source.name, candidate)
            if clash is not None:
                raise ConfigError(clash)
            accepted[source.name] = candidate
        self._accepted = accepted
        self._rebuild()

    async def start(
        self, on_change: Callable[[], None] | None = None, timeout: float = 30.0
    ) -> None:
        """Run every source and wait for its first read; raises ConfigError if one failed.

        `on_change` is called whenever the union changed after that.
        """
        for source in self.sources:
            self._tasks.append(asyncio.create_task(source.run(self._changed_callback(source))))
        deadline = time.monotonic() + timeout
        while pending := [s for s in self.sources if not _first_read_done(s)]:
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise ConfigError(f"source {names}: no answer within {timeout:g}s")
            await asyncio.sleep(0.02)
        for source in self.sources:
            if source.health.last_success_time == 0 and source.health.last_error is not None:
                raise ConfigError(f"source {source.name}: {source.health.last_error}")
        self.take_snapshots()
        if on_change is not None:
            self._on_change = on_change
        self._started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def refresh(self) -> None:
        """Ask every source to re-read now (SIGHUP, `POST /-/reload`)."""
        for source in self.sources:
            source.refresh()

    def _changed_callback(self, source: Source) -> Callable[[], None]:
        def changed() -> None:
            if self._started:
                self._source_changed(source)

        return changed

    def _source_changed(self, source: Source) -> None:
        changed = self._offer(source)
        for name in sorted(self._rejected):  # a clash may have just gone away
            changed |= self._offer(next(s for s in self.sources if s.name == name))
        if changed:
            self._rebuild()
            self._on_change()

    def _offer(self, source: Source) -> bool:
        candidate = list(source.get_health_check_targets())
        clash = find_clash(self._accepted, source.name, candidate)
        if clash is None:
            if self._rejected.pop(source.name, None) is not None:
                source.health.last_error = None  # the clash was its only fault
                source.health.targets = len(candidate)
            self._accepted[source.name] = candidate
            return True
        if self._rejected.get(source.name) != candidate:  # once per version, not per re-read
            source.health.failed(clash)
            self._logger.error(
                "source rejected: duplicate target id, keeping its previous targets",
                extra={"source": source.name, "error": clash},
            )
        # The source read it fine, but what it gives is still its previous version.
        source.health.last_error = clash
        source.health.targets = len(self._accepted.get(source.name, ()))
        self._rejected[source.name] = candidate
        return False

    def _rebuild(self) -> None:
        self._targets = [t for s in self.sources for t in self._accepted.get(s.name, ())]


def _first_read_done(source: Source) -> bool:
    return source.health.last_success_time > 0 or source.health.last_error is not None
