"""Real health check targets on loopback, started inside the running event loop.

Two kinds, both async context managers that yield a handle with the bound port and counters:

- `target_server()`: an aiohttp application, for everything a well-behaved HTTP server does.
- `raw_server(mode)`: a bare asyncio TCP server, for peers that misbehave below HTTP.

    async with target_server() as srv:
        result = await checker.check(srv.target("/t/a"))
        assert srv.hits["a"] == 1
        srv.flip.healthy = False  # /flip now answers 503
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from exporter.model import Target

LOOPBACK = "127.0.0.1"
IPV6_LOOPBACK = "::1"


def unused_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` with nothing listening (bound once to port 0, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ipv6_loopback_available() -> bool:
    """Whether this machine can listen on `::1`."""
    try:
        unused_port(IPV6_LOOPBACK)
    except OSError:
        return False
    return True


def _target(host: str, port: int, path: str, target_id: str | None) -> Target:
    return Target(id=target_id or path, ip=host, port=str(port), health_check_path=path)


@dataclass
class Flip:
    """The answer of `/flip`, changed by the test: 200 while `healthy`, else 503."""

    healthy: bool = True


@dataclass
class TargetServer:
    """A running `target_server()`.

    Routes:
      /health           200
      /status/{code}    that status code
      /redirect         302 to /elsewhere, which answers 500 (healthy only if not followed)
      /slow?delay=S     200 after S seconds
      /hang             never answers; the handler ends when the client disconnects
      /flip             200 or 503 after `flip.healthy`
      /t/{name}         200, counted in `hits[name]`; 503 while `name in down`, and for the first
                        N hits of the name with `?fail_first=N`
    """

    host: str
    port: int
    flip: Flip = field(default_factory=Flip)
    hits: Counter[str] = field(default_factory=Counter)  # /t/{name} requests by name
    down: set[str] = field(default_factory=set)  # names whose /t/{name} answers 503
    path_hits: Counter[str] = field(default_factory=Counter)  # every request, by path
    in_flight: int = 0  # requests being handled now
    max_in_flight: int = 0  # most requests handled at once so far

    def target(self, path: str = "/health", *, target_id: str | None = None) -> Target:
        """A target for `path` on this server; its id is `target_id`, or else the path."""
        return _target(self.host, self.port, path, target_id)

    @web.middleware
    async def _track(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.path_hits[request.path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    def _application(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def status(request: web.Request) -> web.Response:
            return web.Response(status=int(request.match_info["code"]))

        async def redirect(_: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": "/elsewhere"})

        async def elsewhere(_: web.Request) -> web.Response:
            return web.Response(status=500)

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(float(request.query.get("delay", "1")))
            return web.Response(text="ok")

        async def hang(_: web.Request) -> web.Response:
            await asyncio.Event().wait()
            raise AssertionError("unreachable: /hang only ends by cancellation")

        async def flip(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.flip.healthy else 503)

        async def named(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            self.hits[name] += 1
            failing = self.hits[name] <= int(request.query.get("fail_first", "0"))
            return web.Response(status=503 if failing or name in self.down else 200)

        app = web.Application(middlewares=[self._track])
        app.router.add_get("/health", health)
        app.router.add_get("/status/{code:\\d{3}}", status)
        app.router.add_get("/redirect", redirect)
        app.router.add_get("/elsewhere", elsewhere)
        app.router.add_get("/slow", slow)
        app.router.add_get("/hang", hang)
        app.router.add_get("/flip", flip)
        app.router.add_get("/t/{name}", named)
        return app


@contextlib.asynccontextmanager
async def target_server(host: str = LOOPBACK) -> AsyncIterator[TargetServer]:
    """Serve the `TargetServer` routes on `host`, on a free port, for the `async with` block."""
    server = TargetServer(host=host, port=0)
    # handler_cancellation: a client that gives up (timeout, cancellation) ends its handler,
    # so /hang never outlives the check and shutdown does not wait for it.
    runner = web.AppRunner(
        server._application(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        server.port = runner.addresses[0][1]
        yield server
    finally:
        await runner.cleanup()


RawMode = Literal["reset", "close", "garbage", "huge_headers", "stream_body", "reply"]
"""What `raw_server` does with each connection:

- reset: accepts, then aborts with SO_LINGER 0 so the client gets an RST.
- close: reads the request, then closes without answering.
- garbage: reads the request, answers `hello world\\r\\n\\r\\n`.
- huge_headers: reads the request, answers a 200 status line and 64 KiB of headers.
- stream_body: reads the request, answers a complete 200 header block, then body bytes forever.
- reply: reads the request (with its body), answers the `reply` bytes given to `raw_server`.

All but reset and close then wait for the client to close the connection.
"""

HUGE_HEADERS = b"HTTP/1.1 200 OK\r\n" + b"".join(
    b"X-Filler-%04d: %s\r\n" % (i, b"x" * 40) for i in range(64 * 1024 // 56 + 1)
)


@dataclass
class RawServer:
    """A running `raw_server()`."""

    host: str
    port: int
    mode: RawMode
    connections: int = 0  # connections accepted so far
    requests: list[bytes] = field(default_factory=list)  # request heads read, in order

    def target(self, path: str = "/health", *, target_id: str | None = None) -> Target:
        """A target for `path` on this server; its id is `target_id`, or else the path."""
        return _target(self.host, self.port, path, target_id)


@contextlib.asynccontextmanager
async def raw_server(
    mode: RawMode, *, reply: bytes = b"", host: str = LOOPBACK
) -> AsyncIterator[RawServer]:
    """Serve `mode` (see `RawMode`) on `host`, on a free port, for the `async with` block."""
    state = RawServer(host=host, port=0, mode=mode)
    answers = {
        "garbage": b"hello world\r\n\r\n",
        "huge_headers": HUGE_HEADERS,
        "stream_body": b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n",
        "reply": reply,
    }
    handlers: dict[asyncio.StreamWriter, asyncio.Task[object]] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        task = asyncio.current_task()
        assert task is not None
        handlers[writer] = task
        try:
            if mode == "reset":
                linger = struct.pack("ii", 1, 0)
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, linger
                )
                writer.transport.abort()
                return
            request = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *(\d+)\r\n", request, re.IGNORECASE)
            if length:  # the request's body belongs to the request
                request += await reader.readexactly(int(length[1]))
            state.requests.append(request)
            if mode == "close":
                return
            writer.write(answers[mode])
            while mode == "stream_body" and not writer.is_closing():
                writer.write(b"x" * 65536)
                await writer.drain()
            await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up first, which is what several modes provoke
        finally:
            writer.close()
            del handlers[writer]

    server = await asyncio.start_server(handle, host, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        # Ending the connections ends their handlers; cancelling the handlers instead would make
        # asyncio 3.11's start_server log each cancelled one as an error.
        tasks = list(handlers.values())
        for writer in list(handlers):
            writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
