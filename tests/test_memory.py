"""Handing freed memory back to the system (`exporter.memory`): glibc's malloc_trim is found and
runs, off the event loop, periodically, for as long as the service runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from exporter import memory, service
from exporter.settings import load_settings
from tests.servers import unused_port


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_c_library_trimmer_is_found_and_runs_on_glibc() -> None:
    # This machine (Debian) has glibc: a None here means the trimming silently never runs.
    trim = memory.heap_trimmer()
    assert trim is not None
    assert trim() in (0, 1)  # 1: some memory was released, 0: none could be


def test_no_trimmer_where_the_c_library_is_not_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert memory.heap_trimmer() is None


async def test_trims_repeatedly_and_off_the_event_loop_thread() -> None:
    threads: list[int] = []
    task = asyncio.create_task(
        memory.trim_periodically(lambda: threads.append(threading.get_ident()), every=0.01)
    )
    try:
        await _until(lambda: len(threads) >= 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert threading.get_ident() not in threads


async def test_nothing_to_trim_ends_at_once() -> None:
    await asyncio.wait_for(memory.trim_periodically(None, every=0.01), timeout=1)


async def test_the_service_trims_while_it_runs_and_stops_trimming_when_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(service, "heap_trimmer", lambda: lambda: calls.append(time.monotonic()))
    monkeypatch.setattr(memory, "TRIM_EVERY", 0.02)
    settings = load_settings(
        {
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{unused_port()}",
            "HEALTHCHECK_LISTEN_ADDRESS": f"127.0.0.1:{unused_port()}",
        }
    )
    listening = asyncio.Event()

    async def on_listening(addresses: list[str]) -> None:
        listening.set()

    running = asyncio.create_task(
        service.serve(settings, service.target_source(settings), on_listening=on_listening)
    )
    try:
        await asyncio.wait_for(listening.wait(), timeout=10)
        await _until(lambda: len(calls) >= 2)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    stopped_with = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == stopped_with  # the task ended with the service
