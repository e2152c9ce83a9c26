"""Running a target source's task for the length of a test block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from exporter.sources.base import Source


@contextlib.asynccontextmanager
async def running(source: Source, on_change: Callable[[], None]) -> AsyncIterator[None]:
    """`source.run(on_change)` as a task for the block, cancelled after it."""
    task = asyncio.create_task(source.run(on_change))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
