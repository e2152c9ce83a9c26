"""`healthcheck-exporter demo`: three local backends and the exporter watching them.

No configuration needed. One backend always answers 200, one flaps between 200 and 503 every
`FLAP_PERIOD` seconds, one is dead (nothing listens on its port). With a 2 s interval and the
default fall 3 / rise 2, the flapping backend changes state within about half a minute.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from exporter.model import Target

FLAP_PERIOD = 20.0  # seconds the flapping backend spends healthy, then unhealthy
DEMO_ENV = {
    "HEALTHCHECK_INTERVAL": "2s",
    "HEALTHCHECK_TIMEOUT": "1s",
    "HEALTHCHECK_LISTEN_ADDRESS": "127.0.0.1:9898",
}


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _make_flapping(started: float) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        up = int((time.monotonic() - started) // FLAP_PERIOD) % 2 == 0
        return web.Response(status=200 if up else 503, text="ok\n" if up else "failing\n")

    app = web.Application()
    app.router.add_get("/health", health)
    return app


def _make_healthy() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", _healthy)
    return app


def _dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


@asynccontextmanager
async def demo_backends() -> AsyncIterator[list[Target]]:
    """Start the backends; yields the three targets (apps `web` and `api`)."""
    healthy_runner, healthy_port = await _start(_make_healthy())
    flapping_runner, flapping_port = await _start(_make_flapping(time.monotonic()))
    try:
        yield [
            Target("web-healthy", "web", "127.0.0.1", str(healthy_port), "/health"),
            Target("web-flapping", "web", "127.0.0.1", str(flapping_port), "/health"),
            Target("api-dead", "api", "127.0.0.1", str(_dead_port()), "/health"),
        ]
    finally:
        await asyncio.gather(healthy_runner.cleanup(), flapping_runner.cleanup())


def print_banner(addresses: list[str], targets: list[Target]) -> None:
    base = f"http://{addresses[0]}" if addresses else "(no address)"
    lines = [
        "healthcheck-exporter demo: three local backends, checked every 2 s (fall 3, rise 2)",
        f"  metrics:       {base}/metrics",
        f"  landing page:  {base}/",
        "  backends:",
        *(f"    {t.id:<13} {t.url}" for t in targets),
        f"  web-flapping switches between 200 and 503 every {FLAP_PERIOD:g} s; api-dead refuses",
        "  connections. Watch the log below, or: curl -s "
        f"{base}/metrics | grep healthcheck_target_up",
        "  Ctrl-C stops the demo.",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
