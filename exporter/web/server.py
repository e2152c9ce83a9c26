"""The listening socket in front of aiohttp's request handlers, hardened against hostile clients
(issue 13, defects 3, 10 and 15):

- at most `max_connections` connections at once: one more is closed at once, so idle clients can
  never take the file descriptors the checks need;
- a connection must send its request headers within `HEADER_TIMEOUT` (aiohttp's keep-alive timer,
  which runs from the connection's start), and stays idle between requests no longer;
- a header line over 8 KiB is answered 431, and bad requests log one short line (rate-limited),
  never a traceback per request;
- a listen address that cannot be bound is a ConfigError naming HEALTHCHECK_LISTEN_ADDRESS.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from exporter.logs import RateLimitedLog
from exporter.settings import ConfigError

HEADER_TIMEOUT = 10.0  # seconds to send the request headers; also the idle keep-alive limit
MAX_HEADER_LINE = 8190  # aiohttp's default limit: a longer line gets 431
LOG_EVERY = 10.0  # at most one line per this many seconds per kind of client error
CONNECTIONS_PER_FD = 4  # a quarter of the fd limit at most for web connections
MAX_CONNECTIONS = 1000

logger = logging.getLogger("exporter")


def runner_options() -> dict[str, Any]:
    """AppRunner keyword arguments that reach each aiohttp RequestHandler."""
    return {
        "keepalive_timeout": HEADER_TIMEOUT,
        "max_line_size": MAX_HEADER_LINE,
        "max_field_size": MAX_HEADER_LINE,
    }


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1024);
    returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            logger.warning("could not raise the open files limit", extra={"error": str(err)})
    return soft, hard


def connection_limit(soft_fd_limit: int) -> int:
    return max(16, min(MAX_CONNECTIONS, soft_fd_limit // CONNECTIONS_PER_FD))


# One line per LOG_EVERY seconds per kind of client error, the ones held back counted.
_malformed_logs = {
    status: RateLimitedLog(logger, "rejected a malformed HTTP request", LOG_EVERY)
    for status in (400, 431)
}
_refused_log = RateLimitedLog(logger, "too many HTTP connections, closing new ones", LOG_EVERY)


class _HardenedHandler(RequestHandler):
    """aiohttp's request handler, answering a client's malformed request itself: 431 for a too
    long header line, 400 otherwise, with a short rate-limited log line instead of aiohttp's
    traceback per request. Errors of our own handlers keep aiohttp's handling."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            status, text = 431, "Request Header Fields Too Large"
        else:
            status, text = 400, "Bad Request"
        _malformed_logs[status].warn(client=request.remote, status=status, error=type(exc).__name__)
        response = web.Response(status=status, text=text + "\n")
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class HTTPServer:
    """Serves `runner`'s app on one address with the limits above."""

    def __init__(self, runner: web.AppRunner, max_connections: int) -> None:
        self._runner = runner
        self.max_connections = max_connections
        self.refused = 0
        self._server: asyncio.Server | None = None

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= self.max_connections:
            self.refused += 1
            _refused_log.warn(limit=self.max_connections)
            return _Refused()
        handler = server()
        handler.__class__ = _HardenedHandler  # same slots: only handle_error differs
        return handler

    async def start(self, host: str | None, port: int, context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        where = f"{host or '*'}:{port}"
        try:
            self._server = await loop.create_server(
                self._protocol, host, port, ssl=context, backlog=128, reuse_address=True
            )
        except socket.gaierror as err:
            raise ConfigError(
                f"HEALTHCHECK_LISTEN_ADDRESS: cannot resolve {host!r}: {err.strerror}"
            ) from None
        except OSError as err:
            reason = err.strerror or str(err)
            raise ConfigError(
                f"HEALTHCHECK_LISTEN_ADDRESS: cannot listen on {where}: {reason}"
            ) from None

    @property
    def addresses(self) -> list[Any]:
        if self._server is None:
            return []
        return [sock.getsockname() for sock in self._server.sockets]

    def close(self) -> None:
        """Stop listening; the runner's cleanup then ends the open connections."""
        if self._server is not None:
            self._server.close()
            self._server = None
