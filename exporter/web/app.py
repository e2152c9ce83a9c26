"""The HTTP server: `/metrics`, `/-/healthy`, `/-/ready` and a landing page at `/`."""

from __future__ import annotations

import html
from collections.abc import Callable

from aiohttp import hdrs, web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import __version__
from exporter.exposition import LabelCache, iter_targets
from exporter.metrics import ScrapeRegistry, Snapshot
from exporter.monitor import HealthMonitor
from exporter.web.api import Api, ApiOptions, error_envelope

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


async def landing(request: web.Request) -> web.Response:
    monitor = request.app[MONITOR_KEY]
    total, healthy_count, unhealthy = monitor.get_stats()
    cfg = monitor.config
    mode = "checks enabled" if cfg.enabled else "checks DISABLED: every target counts as healthy"
    rows = "".join(
        f"<tr><td>{html.escape(app)}</td><td>{up}</td><td>{down}</td></tr>"
        for app, (up, down) in sorted(_counts_by_app(monitor).items())
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>healthcheck-exporter</title></head>
<body>
<h1>healthcheck-exporter {html.escape(__version__)}</h1>
<p>{mode}; interval {cfg.interval:g}s, fall {cfg.fall}, rise {cfg.rise},
timeout {cfg.timeout:g}s.</p>
<p>Targets: {total} ({healthy_count} healthy, {unhealthy} unhealthy).</p>
<table border="1" cellpadding="4"><tr><th>app</th><th>healthy</th><th>unhealthy</th></tr>
{rows}</table>
<ul>
<li><a href="metrics">metrics</a></li>
<li><a href="-/healthy">-/healthy</a></li>
<li><a href="-/ready">-/ready</a></li>
</ul>
</body></html>
"""
    return web.Response(text=page, content_type="text/html")


def _counts_by_app(monitor: HealthMonitor) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for target in monitor.get_healthy_targets():
        up, down = counts.get(target.app_name, (0, 0))
        counts[target.app_name] = (up + 1, down)
    for target in monitor.tracker.get_unhealthy_targets():
        up, down = counts.get(target.app_name, (0, 0))
        counts[target.app_name] = (up, down + 1)
    return counts


def make_app(
    monitor: HealthMonitor,
    snapshot: Callable[[], Snapshot],
    api_options: ApiOptions | None = None,
) -> web.Application:
    app = web.Application(middlewares=[error_envelope])
    app[MONITOR_KEY] = monitor
    app[SNAPSHOT_KEY] = snapshot
    app[LABELS_KEY] = LabelCache()
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    Api(monitor, api_options or ApiOptions()).add_routes(app)
    return app
