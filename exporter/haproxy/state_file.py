"""Server states saved across HAProxy reloads (`server-state-file`), before each reload.

Without it, a reload starts every server UP until its check (or, in agent mode, its agent)
answers: a dead server takes traffic for up to `agent-inter` (haproxy #918, #2085; 2.6 has no
`init-state`). With `server-state-file <path>` and `load-server-state-from-file global` in the
HAProxy config, the new workers load the states written there: the exporter writes `show servers
state` to that path just before each reload it makes. Measured on 2.6: a server its agent put
DOWN stays DOWN through the reload. (HAProxy manual: `server-state-file`,
`load-server-state-from-file`; the dump must end in a newline.)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from exporter.haproxy import files
from exporter.haproxy.reload import Reloader, ReloadError, cli_command

STATE_FORMAT_VERSION = "1"  # first line of `show servers state`


class StateSavingReloader:
    """A reloader that saves the servers' states for the new workers first."""

    def __init__(
        self,
        inner: Reloader,
        socket: Path,
        path: Path,
        timeout: float,
        logger: logging.Logger,
    ) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.socket = socket
        self.path = path
        self.timeout = timeout
        self.logger = logger
        self.failures = 0

    async def reload(self) -> None:
        try:
            await self.save()
        except (ReloadError, TimeoutError, OSError) as err:
            # A stale file would restore old states: better none, and servers start as usual.
            self.failures += 1
            self.path.unlink(missing_ok=True)
            self.logger.error(
                "cannot save the HAProxy server states before the reload; reloading without",
                extra={"file": str(self.path), "error": str(err) or type(err).__name__},
            )
        await self.inner.reload()

    async def save(self) -> None:
        answer = await cli_command(self.socket, "show servers state", self.timeout)
        if answer.split("\n", 1)[0].strip() != STATE_FORMAT_VERSION:
            raise ReloadError(f"unexpected `show servers state` answer: {answer[:80]!r}")
        text = answer if answer.endswith("\n") else answer + "\n"
        await asyncio.to_thread(files.atomic_write, self.path, text.encode())
