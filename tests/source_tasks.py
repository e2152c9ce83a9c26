"""Helpers for the target source tests: a source's task, an HTTP app, `validate`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from exporter.sources.base import Source
from tests.process import run_cli


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


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free 127.0.0.1 port for the block; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def validate_reports(env: Mapping[str, str], *lines: str) -> None:
    """`healthcheck-exporter validate` with `env` succeeds and prints each of `lines`."""
    code, out, err = await run_cli("validate", env=env)
    assert code == 0, err
    for line in lines:
        assert line in out.splitlines()
