"""Long polling on `StateTracker.version`, as Consul's blocking queries: wait until it moves."""

from __future__ import annotations

import asyncio
import contextlib

from exporter.state import StateTracker


class VersionWatch:
    """Wakes long-polling requests when the tracker's version grows.

    The tracker's hook is set only while a request waits, so checks cost nothing extra when
    nobody polls; the wakeup is scheduled on the loop, whichever thread bumped the version.
    """

    def __init__(self, tracker: StateTracker) -> None:
        self._tracker = tracker
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait_past(self, index: int, timeout: float) -> None:
        """Return once the version differs from `index`, or after `timeout` seconds.

        An index ahead of the version (the exporter restarted since the client read it) returns
        at once, so the client starts over from the new index.
        """
        if self._tracker.version != index:
            return
        loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        self._tracker.on_version = self._version_moved
        try:
            if self._tracker.version != index:  # moved before the hook was in place
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            self._waiters.discard(waiter)
            if not self._waiters:
                self._tracker.on_version = None

    def _version_moved(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
