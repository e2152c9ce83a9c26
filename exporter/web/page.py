"""The status page at `/`: one HTML file and its script and style, all served from here, so the
page works under `Content-Security-Policy: default-src 'self'` (which it is served with)."""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
PAGE_CSP = "default-src 'self'"


def _load_static() -> dict[str, tuple[bytes, str]]:
    folder = files("exporter.web").joinpath("static")
    assets = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if suffix in STATIC_TYPES:
            assets[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return assets


class StatusPage:
    def __init__(self) -> None:
        self.assets = _load_static()  # a few KiB, read once

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)

    def _serve(self, name: str) -> web.Response:
        body, content_type = self.assets[name]
        headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    async def index(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.assets or name == "index.html":
            raise web.HTTPNotFound()
        return self._serve(name)
