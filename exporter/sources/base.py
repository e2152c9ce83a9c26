"""What every target source is: the seed's `TargetProvider`, plus a refresh task and its health.

A source keeps its last good targets whatever happens to what it reads (a file, the Docker
engine, a DNS server, an HTTP SD endpoint): a failed read is counted and logged, never an empty
target set. The union of all sources, and the check that no two give the same id, live in one
place (`exporter.sources.union`), not in the sources.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from exporter.model import Target


@dataclass(slots=True)
class SourceHealth:
    """What `/metrics` shows per source (`healthcheck_source_*{source}`) and `/` displays."""

    targets: int = 0
    last_success_time: float = 0.0  # Unix time of the last successful read; 0: never
    failures: int = 0  # failed reads (a bad version counted once, not once per poll)
    last_error: str | None = None  # why the last read failed; None after a success

    def succeeded(self, targets: int, now: float | None = None) -> None:
        self.targets = targets
        self.last_success_time = time.time() if now is None else now
        self.last_error = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error


@runtime_checkable
class Source(Protocol):
    """A target source. `name` is its `source` label value (`file`, `docker`, `dns`, ...)."""

    name: str
    health: SourceHealth

    def get_health_check_targets(self) -> Sequence[Target]:
        """The current targets: a snapshot, never blocking, never raising."""
        ...

    async def run(self, on_change: Callable[[], None]) -> None:
        """Keep the targets current until cancelled; call `on_change` when they changed.

        Never returns on a failure: failures are counted in `health`, logged, and retried
        with backoff, keeping the last good targets.
        """
        ...

    def refresh(self) -> None:
        """Re-read now (SIGHUP, `POST /-/reload`), without waiting for the next period."""
        ...
