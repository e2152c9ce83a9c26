"""The HTTP server: `/metrics`, `/-/healthy`, `/-/ready`, the JSON API and the status page."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import hdrs, web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter.exposition import LabelCache, iter_targets
from exporter.metrics import ScrapeRegistry, Snapshot
from exporter.monitor import HealthMonitor
from exporter.web.api import Api, ApiOptions, error_envelope
from exporter.web.auth import Guard
from exporter.web.page import StatusPage

SNAPSHOT_KEY: web.AppKey[Callable[[], Snapshot]] = web.AppKey("snapshot")
MONITOR_KEY = web.AppKey("monitor", HealthMonitor)
LABELS_KEY = web.AppKey("labels", LabelCache)
OPENMETRICS_EOF = b"# EOF\n"


async def metrics(request: web.Request) -> web.StreamResponse:
    """Text or OpenMetrics by Accept, gzip if asked; streamed, never blocking the loop for long."""
    accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
    encoder, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")
    # Exporter-wide families and process metrics: a few hundred lines, rendered by the library.
    head = encoder(ScrapeRegistry(request.app[SNAPSHOT_KEY]()))
    if openmetrics:  # one `# EOF`, at the very end
        head = head.removesuffix(OPENMETRICS_EOF)
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
    if gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
        response.enable_compression(web.ContentCoding.gzip)  # what Prometheus asks for
    await response.prepare(request)
    await response.write(head)
    entries = request.app[MONITOR_KEY].tracker.entries()
    async for piece in iter_targets(entries, request.app[LABELS_KEY], openmetrics):
        await response.write(piece.encode())
    if openmetrics:
        await response.write(OPENMETRICS_EOF)
    await response.write_eof()
    return response


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[MONITOR_KEY].ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready: the first round of checks is running\n")


def make_app(
    monitor: HealthMonitor,
    snapshot: Callable[[], Snapshot],
    api_options: ApiOptions | None = None,
    guard: Guard | None = None,
) -> web.Application:
    """The app; `guard` (from HEALTHCHECK_WEB_CONFIG_FILE) adds basic auth, client certificates
    and the configured headers."""
    middlewares = [error_envelope] if guard is None else [guard.middleware, error_envelope]
    app = web.Application(middlewares=middlewares)
    if guard is not None:
        app.on_response_prepare.append(guard.on_prepare)
    app[MONITOR_KEY] = monitor
    app[SNAPSHOT_KEY] = snapshot
    app[LABELS_KEY] = LabelCache()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    Api(monitor, api_options or ApiOptions()).add_routes(app)
    StatusPage().add_routes(app)
    return app
