"""Targets fixed when the exporter starts: `HEALTHCHECK_TARGETS` (source `env`), the demo's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from exporter.model import Target
from exporter.sources.base import SourceHealth


class StaticSource:
    """A `Source` whose targets never change: a process's environment cannot be re-read."""

    def __init__(self, targets: Sequence[Target], name: str = "env") -> None:
        self.name = name
        self.health = SourceHealth()
        self._targets = list(targets)
        self.health.succeeded(len(self._targets))

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    async def run(self, on_change: Callable[[], None]) -> None:
        await asyncio.Event().wait()  # nothing to watch; cancelled at shutdown

    def refresh(self) -> None:
        """Nothing to re-read (SIGHUP still re-reads the other sources)."""
