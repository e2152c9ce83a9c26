"""Name look-ups for checks, so that one target's slow DNS never delays another's (issue 13, 1).

`loop.getaddrinfo` runs the blocking `getaddrinfo(3)` in a small shared pool (libuv's four threads
under uvloop, the default executor's few under asyncio) and never withdraws a look-up whose caller
gave up: names whose resolver never answers fill the pool, every check of a healthy name then
waits behind them, and the queue grows each interval. Here each name has at most one look-up in
flight, which every check of that name waiting at the time shares; a look-up nobody waits for any
more is dropped before it starts; the threads are daemon threads of our own (up to
`MAX_THREADS`), so a look-up stuck in the C library neither holds a healthy name's turn nor
delays the exit. A thread serves one look-up (and any waiting for a thread) and ends: names are
the less common case, and a thread costs less than a look-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

MAX_THREADS = 64
"""Look-ups of distinct names running at once, at most; the rest wait their turn."""

AddrInfo = list[tuple[Any, ...]]
_DROPPED = object()  # a look-up nobody waited for when its turn came


def getaddrinfo(host: str) -> AddrInfo:
    """The blocking look-up (a module attribute, so tests can stand in for a resolver)."""
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)


@dataclass(eq=False)
class _Lookup:
    host: str
    loop: asyncio.AbstractEventLoop
    waiters: list[asyncio.Future[AddrInfo]] = field(default_factory=list)


class Resolver:
    """Resolves names in threads of its own, one look-up per name at a time."""

    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        self._max_threads = max_threads
        self._in_flight: dict[str, _Lookup] = {}  # touched on the event loop's thread only
        self._lock = threading.Lock()  # guards the two below, shared with the threads
        self._pending: deque[_Lookup] = deque()  # waiting for a thread
        self._running = 0  # threads running look-ups

    async def resolve(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        """(family, sockaddr with `port`) of `host`'s addresses, in getaddrinfo's order.

        Raises as `socket.getaddrinfo` does (gaierror, UnicodeError for a name IDNA cannot
        encode). Cancelling it withdraws this caller only.
        """
        loop = asyncio.get_running_loop()
        lookup = self._in_flight.get(host)
        if lookup is None or lookup.loop is not loop:
            lookup = self._in_flight[host] = _Lookup(host, loop)
            self._submit(lookup)
        waiter: asyncio.Future[AddrInfo] = loop.create_future()
        lookup.waiters.append(waiter)
        try:
            infos = await waiter
        finally:
            if waiter.cancelled():  # this check ended first: withdraw it
                lookup.waiters.remove(waiter)
        return [(info[0], (info[4][0], port, *info[4][2:])) for info in infos]

    def _submit(self, lookup: _Lookup) -> None:
        with self._lock:
            if self._running >= self._max_threads:
                self._pending.append(lookup)
                return
            self._running += 1
        threading.Thread(
            target=self._work, args=(lookup,), name="healthcheck-resolver", daemon=True
        ).start()

    def _work(self, lookup: _Lookup | None) -> None:
        """A thread: this look-up, then any waiting for a thread, then it ends."""
        while lookup is not None:
            self._run(lookup)
            with self._lock:
                lookup = self._pending.popleft() if self._pending else None
                if lookup is None:
                    self._running -= 1

    def _run(self, lookup: _Lookup) -> None:
        if not lookup.waiters:  # every check that wanted it has ended: never start it
            outcome: object = _DROPPED
        else:
            try:
                outcome = getaddrinfo(lookup.host)
            except Exception as exc:  # gaierror, UnicodeError: the checks report it
                outcome = exc
        # RuntimeError: the loop has closed meanwhile, so nobody waits any more.
        with contextlib.suppress(RuntimeError):
            lookup.loop.call_soon_threadsafe(self._deliver, lookup, outcome)

    def _deliver(self, lookup: _Lookup, outcome: object) -> None:
        if outcome is _DROPPED and lookup.waiters:  # a check came for it meanwhile
            self._submit(lookup)
            return
        if self._in_flight.get(lookup.host) is lookup:
            del self._in_flight[lookup.host]
        for waiter in lookup.waiters:
            if waiter.done():
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(cast("AddrInfo", outcome))


RESOLVER = Resolver()
"""The resolver every check shares."""
