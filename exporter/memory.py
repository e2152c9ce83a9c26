"""Handing memory the exporter freed back to the system, so that RSS follows the live heap.

glibc's malloc keeps what a process frees in its heaps (the main one and one per thread that
allocated, up to eight per core) and gives back only what lies at the very top of the main one.
After a peak (a scrape of a large fleet, a targets reload, a burst of checks, a gzip in an
executor thread) RSS stays at the peak, and as the free space fragments, later peaks land
elsewhere: RSS creeps up while the live heap is flat. In `bench.soak` (1,000 targets, churn)
Python's live allocations (tracemalloc) and object counts stayed flat for 15 minutes while RSS
rose, and one `malloc_trim(0)` given through gdb after 22 minutes returned 0.7 of the 1.5 MB
gained since warm-up. (The rest is Python's own arenas, which it returns only once empty.)

`malloc_trim(0)` returns the free pages of every heap, not only the top of the main one (glibc
2.8 and later). It runs in an executor thread every `TRIM_EVERY` seconds, so the event loop never
waits on the heaps' locks. Elsewhere (musl, macOS) there is nothing to do: `heap_trimmer` is None.
"""

from __future__ import annotations

import asyncio
import ctypes
import platform
from collections.abc import Callable

TRIM_EVERY = 60.0
"""Seconds between two trims: peaks come from scrapes and reloads, which are seconds apart."""

Trimmer = Callable[[], object]


def heap_trimmer() -> Trimmer | None:
    """`malloc_trim(0)` of this process's C library, or None where it has none (not glibc)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: malloc_trim(0)


async def trim_periodically(trim: Trimmer | None, every: float | None = None) -> None:
    """Run `trim` off the event loop every `every` seconds (`TRIM_EVERY` by default) until
    cancelled; return at once if there is nothing to run."""
    if trim is None:
        return
    while True:
        await asyncio.sleep(TRIM_EVERY if every is None else every)
        await asyncio.to_thread(trim)
