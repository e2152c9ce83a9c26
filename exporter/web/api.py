"""The JSON API: `GET /api/v1/targets` (with long polling), `GET /api/v1/status`,
`POST /api/v1/admin/check` and `POST /-/reload`.

Answers use Prometheus's HTTP API envelope: `{"status": "success", "data": ...}` or
`{"status": "error", "errorType": ..., "error": ...}` (prometheus.io/docs/prometheus/latest/
querying/api/). Long polling follows Consul's blocking queries (`?index=N&wait=30s`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from exporter import __version__
from exporter.monitor import HealthMonitor
from exporter.settings import parse_duration
from exporter.web import views
from exporter.web.watch import VersionWatch

logger = logging.getLogger("exporter")

DEFAULT_WAIT = 300.0  # Consul's default for a blocking query
MAX_WAIT = 600.0  # and its cap
INDEX_HEADER = "X-Healthcheck-Index"
JSON_TYPE = "application/json"

Reload = Callable[[], Awaitable[str | None]]  # re-reads the targets; an error message or None


@dataclass(frozen=True)
class ApiOptions:
    admin_api: bool = False  # HEALTHCHECK_WEB_ENABLE_ADMIN_API
    lifecycle: bool = False  # HEALTHCHECK_WEB_ENABLE_LIFECYCLE
    reload: Reload | None = None
    extensions: views.Extensions = field(default_factory=views.Extensions)


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def success(data: object, headers: Mapping[str, str] | None = None) -> web.Response:
    body = json.dumps({"status": "success", "data": data}, separators=(",", ":"))
    return web.Response(text=body, content_type=JSON_TYPE, headers=headers)


def error(status: int, error_type: str, message: str) -> web.Response:
    body = json.dumps({"status": "error", "errorType": error_type, "error": message})
    return web.Response(status=status, text=body, content_type=JSON_TYPE)


@web.middleware
async def error_envelope(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors under /api/ in Prometheus's envelope, whatever raised them (404, 405, ...)."""
    try:
        return await handler(request)
    except ApiError as err:
        return error(err.status, err.error_type, err.message)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        kind = {404: "not_found", 405: "bad_data", 413: "bad_data"}.get(exc.status, "bad_data")
        response = error(exc.status, kind, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def parse_wait(query: Mapping[str, str]) -> tuple[int | None, float]:
    """`index` and `wait` of a blocking query; raises ApiError naming the bad parameter."""
    index = None
    if "index" in query:
        text = query["index"]
        if not text.isdigit() or len(text) > 18:
            raise ApiError(400, "bad_data", f"index: not a non-negative integer: {text[:40]!r}")
        index = int(text)
    wait = DEFAULT_WAIT
    if "wait" in query:
        try:
            wait = parse_duration(query["wait"])
        except ValueError as err:
            raise ApiError(400, "bad_data", f"wait: {err}") from None
        wait = min(wait, MAX_WAIT)
    return index, wait


class Api:
    """The handlers, bound to one monitor."""

    def __init__(self, monitor: HealthMonitor, options: ApiOptions) -> None:
        self.monitor = monitor
        self.options = options
        self.watch = VersionWatch(monitor.tracker)
        # Forced checks under way, by what they cover: a request for the same scope joins.
        self._forced: dict[tuple[str, str], asyncio.Future[None]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/targets", self.targets)
        app.router.add_get("/api/v1/status", self.status)
        app.router.add_post("/api/v1/admin/check", self.check)
        app.router.add_post("/-/reload", self.reload)

    async def targets(self, request: web.Request) -> web.Response:
        query = request.query
        app, state = query.get("app"), query.get("state")
        if state is not None and state not in views.STATES:
            raise ApiError(400, "bad_data", f"state: must be healthy or unhealthy, not {state!r}")
        index, wait = parse_wait(query)
        if index is not None:
            await self.watch.wait_past(index, wait)
        tracker = self.monitor.tracker
        version = tracker.version
        of_app = views.select(tracker.entries(), app=app)
        extensions = self.options.extensions
        head = {"index": version, "apps": views.app_summaries(of_app, extensions)}
        targets = await views.targets_json(views.select(of_app, state=state), extensions)
        # success()'s envelope, with the targets' JSON built in pieces (see targets_json).
        body = json.dumps({"status": "success", "data": head}, separators=(",", ":"))
        body = body[:-2] + ',"targets":' + targets + "}}"
        response = web.Response(
            text=body, content_type=JSON_TYPE, headers={INDEX_HEADER: str(version)}
        )
        response.enable_compression()  # ~4 MB at 10,000 targets; compressed off the loop
        return response

    async def status(self, request: web.Request) -> web.Response:
        cfg = self.monitor.config
        data: dict[str, object] = {
            "version": __version__,
            "ready": self.monitor.ready,
            "index": self.monitor.tracker.version,
            "checks": {
                "enabled": cfg.enabled,
                "interval_seconds": cfg.interval,
                "timeout_seconds": cfg.timeout,
                "fall": cfg.fall,
                "rise": cfg.rise,
            },
            "admin_api": self.options.admin_api,
            "lifecycle": self.options.lifecycle,
        }
        for name, section in self.options.extensions.status_sections.items():
            data[name] = section()
        return success(data)

    async def check(self, request: web.Request) -> web.Response:
        if not self.options.admin_api:
            raise ApiError(403, "forbidden", "admin API disabled: HEALTHCHECK_WEB_ENABLE_ADMIN_API")
        scope, ids = self._check_scope(await _json_object(request))
        if not self.monitor.config.enabled:
            raise ApiError(503, "unavailable", "checks are disabled (HEALTHCHECK_ENABLED=false)")
        joined = await self._forced_check(scope, ids)
        logger.info(
            "forced check",
            extra={
                "client": request.remote,
                "scope": "=".join(scope) if scope[0] != "all" else "all",
                "targets": len(ids),
                "joined": joined,
            },
        )
        tracker = self.monitor.tracker
        entries = [e for e in map(tracker.get_entry, ids) if e is not None]
        extensions = self.options.extensions
        return success({"targets": [views.target_view(e, extensions) for e in entries]})

    def _check_scope(self, body: dict[str, object]) -> tuple[tuple[str, str], list[str]]:
        unknown = sorted(set(body) - {"app", "target"})
        if unknown:
            raise ApiError(400, "bad_data", f"unknown key {unknown[0]!r}: use app or target")
        if len(body) > 1:
            raise ApiError(400, "bad_data", "give app or target, not both")
        entries = self.monitor.tracker.entries()
        if not body:
            return ("all", ""), [e.target.id for e in entries]
        key, value = next(iter(body.items()))
        if not isinstance(value, str):
            raise ApiError(400, "bad_data", f"{key}: must be a string")
        attribute = "app_name" if key == "app" else "id"
        ids = [e.target.id for e in entries if getattr(e.target, attribute) == value]
        if not ids:
            raise ApiError(404, "not_found", f"no target with {key} {value!r}")
        return (key, value), ids

    async def _forced_check(self, scope: tuple[str, str], ids: Collection[str]) -> bool:
        """Check `ids` now; a request for a scope already being checked joins that check.
        True if it joined. A client that goes away does not cancel the check for the others."""
        running = self._forced.get(scope)
        joined = running is not None
        if running is None:
            running = asyncio.ensure_future(self.monitor.check_targets(ids))
            self._forced[scope] = running
            running.add_done_callback(lambda _: self._forced.pop(scope, None))
        await asyncio.shield(running)
        return joined

    async def reload(self, request: web.Request) -> web.Response:
        if not self.options.lifecycle:
            raise ApiError(403, "forbidden", "lifecycle disabled: HEALTHCHECK_WEB_ENABLE_LIFECYCLE")
        logger.info("reload requested over HTTP", extra={"client": request.remote})
        problem = None if self.options.reload is None else await self.options.reload()
        if problem is not None:
            raise ApiError(500, "execution", f"reload failed: {problem}")
        return success(None)


async def _json_object(request: web.Request) -> dict[str, object]:
    """The body as a JSON object. Only `application/json` is accepted: a plain HTML form on
    another site cannot send it without a CORS preflight, so it cannot force checks (CSRF)."""
    if request.content_type != JSON_TYPE:
        raise ApiError(415, "bad_data", f"Content-Type must be {JSON_TYPE}")
    text = await request.text()
    try:
        body = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as err:
        raise ApiError(400, "bad_data", f"invalid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_data", "the body must be a JSON object")
    return body
