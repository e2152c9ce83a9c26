"""`healthcheck-exporter demo`: three local backends, the exporter watching them, and a switch.

No configuration needed. One backend always answers 200 (over HTTPS, with a self-signed
certificate the check trusts, so the TLS metrics have data), one flaps between 200 and 503 every
`FLAP_PERIOD` seconds, one is dead (nothing listens on its port). With a 2 s interval and the
default fall 3 / rise 2, the flapping backend changes state within about half a minute.

A control endpoint on 127.0.0.1 (its URL is in the banner) stops and starts the backends, to see
(or test) what a crash and a recovery look like in the metrics, the dashboard and the alerts:

    GET  /                       each backend, its address and whether it is running
    POST /backends/<id>/stop     stop listening: checks of it fail with `connection_refused`
    POST /backends/<id>/start    listen again on the same port (`api-dead` then answers 200)

    curl -X POST http://127.0.0.1:<control port>/backends/web-healthy/stop
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from exporter.model import DEFAULT_CHECK_OPTIONS, CheckOptions, Target

FLAP_PERIOD = 20.0  # seconds the flapping backend spends healthy, then unhealthy
DEMO_ENV = {
    "HEALTHCHECK_INTERVAL": "2s",
    "HEALTHCHECK_TIMEOUT": "1s",
    "HEALTHCHECK_LISTEN_ADDRESS": "127.0.0.1:9898",
    # Loopback only: the status page's neighbours, check-now and `wait --check-now`, can be tried.
    "HEALTHCHECK_WEB_ENABLE_ADMIN_API": "true",
}
LOOPBACK = "127.0.0.1"
# A self-signed certificate for 127.0.0.1 and localhost, valid for a century; demo only.
DEMO_CERT = Path(__file__).with_name("demo_tls_cert.pem")
DEMO_KEY = Path(__file__).with_name("demo_tls_key.pem")

logger = logging.getLogger("exporter.demo")


@dataclass(frozen=True)
class Demo:
    """A running demo: the targets to check and the URL of the control endpoint."""

    targets: list[Target]
    control_url: str


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _health_app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_get("/health", handler)
    return app


def _make_healthy() -> web.Application:
    return _health_app(_healthy)


def _flapping_factory(started: float) -> Callable[[], web.Application]:
    """Apps whose phase counts from `started`, so a restart does not reset the flapping."""

    async def health(request: web.Request) -> web.Response:
        up = int((time.monotonic() - started) // FLAP_PERIOD) % 2 == 0
        return web.Response(status=200 if up else 503, text="ok\n" if up else "failing\n")

    return functools.partial(_health_app, health)


def _demo_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(DEMO_CERT, DEMO_KEY)
    return context


async def _listen(
    app: web.Application, port: int, tls: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve `app` on 127.0.0.1:`port` (0: a free port, see `_bound_port`), over TLS with `tls`."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, port, ssl_context=tls).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


def _bound_port(runner: web.AppRunner) -> int:
    port: int = runner.addresses[0][1]
    return port


def _unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class Backend:
    """One demo backend: a fresh aiohttp app per start, always on the same port of 127.0.0.1."""

    def __init__(
        self,
        target_id: str,
        app_name: str,
        make_app: Callable[[], web.Application],
        *,
        tls: bool = False,
    ):
        self.id = target_id
        self.app_name = app_name
        self.make_app = make_app
        self.tls = tls
        self.port = 0  # 0 until the first start picks a free port
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def target(self) -> Target:
        options = DEFAULT_CHECK_OPTIONS
        if self.tls:  # verified against the demo certificate itself
            options = CheckOptions(scheme="https", tls_ca_file=str(DEMO_CERT))
        return Target(self.id, self.app_name, LOOPBACK, str(self.port), "/health", options)

    async def start(self) -> None:
        if self._runner is None:
            tls = _demo_tls_context() if self.tls else None
            self._runner = await _listen(self.make_app(), self.port, tls)
            self.port = _bound_port(self._runner)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def describe(self) -> str:
        state = "running" if self.running else "stopped (connections refused)"
        return f"{self.id:<13} {self.target.url:<36} {state}"


def _control_app(backends: dict[str, Backend]) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="".join(b.describe() + "\n" for b in backends.values()))

    async def switch(request: web.Request) -> web.Response:
        backend = backends.get(request.match_info["id"])
        if backend is None:
            known = ", ".join(backends)
            raise web.HTTPNotFound(text=f"no demo backend {request.match_info['id']!r}: {known}\n")
        action = request.match_info["action"]
        try:
            await (backend.start() if action == "start" else backend.stop())
        except OSError as err:  # the port was taken by someone else meanwhile
            raise web.HTTPConflict(text=f"cannot start {backend.id}: {err}\n") from None
        logger.info(
            "demo backend switched",
            extra={"target": backend.id, "action": action, "port": backend.port},
        )
        return web.Response(text=backend.describe() + "\n")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/backends/{id}/{action:start|stop}", switch)
    return app


@asynccontextmanager
async def demo_backends() -> AsyncIterator[Demo]:
    """Start the backends and their control endpoint."""
    healthy = Backend("web-healthy", "web", _make_healthy, tls=True)
    flapping = Backend("web-flapping", "web", _flapping_factory(time.monotonic()))
    dead = Backend("api-dead", "api", _make_healthy)  # healthy once started by hand
    backends = {b.id: b for b in (healthy, flapping, dead)}
    await healthy.start()
    await flapping.start()
    dead.port = _unused_port()
    control = await _listen(_control_app(backends), 0)
    try:
        yield Demo(
            [b.target for b in backends.values()], f"http://{LOOPBACK}:{_bound_port(control)}"
        )
    finally:
        await control.cleanup()
        await asyncio.gather(*(b.stop() for b in backends.values()))


def print_banner(addresses: list[str], demo: Demo) -> None:
    base = f"http://{addresses[0]}" if addresses else "(no address)"
    control = demo.control_url
    lines = [
        "healthcheck-exporter demo: three local backends, checked every 2 s (fall 3, rise 2)",
        f"  status page:   {base}/  (live: stop a backend below and watch its row)",
        f"  metrics:       {base}/metrics",
        f"  JSON API:      {base}/api/v1/targets?state=unhealthy",
        f"  check now:     curl -X POST -H 'Content-Type: application/json' -d '{{}}' "
        f"{base}/api/v1/admin/check",
        f"  deploy wait:   healthcheck-exporter wait --app web --url {base} --check-now",
        "  backends:",
        *(f"    {t.id:<13} {t.url}" for t in demo.targets),
        f"  web-flapping switches between 200 and 503 every {FLAP_PERIOD:g} s; api-dead refuses",
        "  connections. Watch the log below, or: curl -s "
        f"{base}/metrics | grep healthcheck_target_up",
        f"  control:       {control}/  (backends and their state)",
        f"  stop a backend:  curl -X POST {control}/backends/web-healthy/stop",
        f"  start it again:  curl -X POST {control}/backends/web-healthy/start",
        "  Ctrl-C stops the demo.",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
