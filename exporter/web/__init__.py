"""The HTTP side: the aiohttp app, the status page, the JSON API, TLS and basic auth."""

from exporter.web.app import make_app

__all__ = ["make_app"]
