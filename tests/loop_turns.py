"""How often other tasks ran while some work was awaited: proof that the work yields."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def turns_during(work: Awaitable[object]) -> int:
    """The number of times a ticking task ran while `work` was awaited."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    try:
        await work
    finally:
        task.cancel()
    return ticks - before
