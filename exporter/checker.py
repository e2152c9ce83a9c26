"""Active HTTP health checks: one GET per check, judged on the status line (seed: `checker.go`).

The seed uses Go's `http.Client` with keep-alives off and redirects not followed. This port speaks
just enough HTTP/1.1 itself, as an `asyncio.Protocol`, to reach thousands of checks per second on
one core: it sends one request, reads up to the end of the response's header block and closes the
connection without reading the body, as Go does when it closes an unread body.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

from exporter import __version__
from exporter.model import FailureReason, Result, RetryConfig, Target, default_retry_config

MAX_HEADER_BYTES = 16 * 1024
"""Largest response header block accepted (status line and headers, with the blank line)."""

DEFAULT_MAX_CONCURRENT = 10
"""`check_all`'s limit when given one <= 0 (the seed's fallback)."""

_ERRNO_REASONS = {
    errno.ECONNREFUSED: FailureReason.CONNECTION_REFUSED,
    errno.ECONNRESET: FailureReason.CONNECTION_RESET,
    errno.EPIPE: FailureReason.CONNECTION_RESET,
    errno.ECONNABORTED: FailureReason.CONNECTION_RESET,
    errno.ENETUNREACH: FailureReason.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: FailureReason.NETWORK_UNREACHABLE,
    errno.EADDRNOTAVAIL: FailureReason.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: FailureReason.TIMEOUT,
}


class _ResponseError(Exception):
    """A failure found in what the peer sent (or did not send), with its reason."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _parse_status_line(line: bytes) -> int:
    """The status code of `HTTP/1.x NNN[ reason]`, or 0 when the line is not of that form."""
    if (
        len(line) >= 12
        and line[:7] == b"HTTP/1."
        and line[7] in b"01"
        and line[8] == 0x20
        and line[9] in b"123456789"
        and line[10:12].isdigit()
        and (len(line) == 12 or line[12] == 0x20)
    ):
        return int(line[9:12])
    return 0


class _ResponseHeadProtocol(asyncio.Protocol):
    """Sends one request, then reads the response up to the end of its header block.

    `done` resolves (always with None) once `status` is known and the header block is complete,
    or once `error` is set; the caller then closes the connection.
    """

    __slots__ = ("_head", "_request", "done", "error", "status", "transport")

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self._request = request
        self._head = b""
        self.done = done
        self.status = 0
        self.error: Exception | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():  # a body arriving before the caller closed the connection
            return
        scanned = len(self._head)
        head = self._head + data if scanned else data
        if not self.status:
            # Judge the status line as soon as it is complete, as Go does, so that a
            # non-HTTP peer that sends a line and waits fails at once rather than by timeout.
            line_end = head.find(b"\r\n", 0, MAX_HEADER_BYTES)
            if line_end < 0:
                self._keep_or_fail(head)
                return
            self.status = _parse_status_line(head[:line_end])
            if not self.status:
                line = head[:line_end][:80].decode("ascii", "backslashreplace")
                self._fail(FailureReason.PROTOCOL_ERROR, f"malformed status line {line!r}")
                return
        # Only a terminator within the first MAX_HEADER_BYTES counts, however large the read.
        if head.find(b"\r\n\r\n", max(scanned - 3, 0), MAX_HEADER_BYTES) >= 0:
            self.done.set_result(None)
        else:
            self._keep_or_fail(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                message = "connection closed before the response headers were complete"
                exc = _ResponseError(FailureReason.CONNECTION_RESET, message)
            self.error = exc
            self.done.set_result(None)

    def close(self) -> None:
        """Close the connection at once, dropping anything unsent or unread."""
        if self.transport is not None:
            self.transport.abort()

    def _keep_or_fail(self, head: bytes) -> None:
        """Keep an incomplete header block, or fail if it can no longer end within the cap."""
        if len(head) >= MAX_HEADER_BYTES:
            message = f"response header block exceeds {MAX_HEADER_BYTES} bytes"
            self._fail(FailureReason.PROTOCOL_ERROR, message)
        else:
            self._head = head

    def _fail(self, reason: FailureReason, message: str) -> None:
        self.error = _ResponseError(reason, message)
        self.done.set_result(None)


def _is_ip_literal(host: str) -> bool:
    if ":" in host:  # of names and addresses, only IPv6 addresses contain colons
        return True
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


async def _connect(
    loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, host: str, port: int
) -> None:
    """Connect `protocol` to `host`, an IP address or a name resolved now.

    A name's addresses are tried in turn and, if all fail, the first failure is raised, as Go's
    dialer does. Names are resolved here rather than by `create_connection`, which under uvloop
    logs "Future exception was never retrieved" when a timeout cancels it while resolving
    (MagicStack/uvloop#437), and under asyncio merges differing failures into one errno-less
    `OSError`.
    """
    if _is_ip_literal(host):
        await loop.create_connection(lambda: protocol, host, port)
        return
    failures: list[OSError] = []
    for *_, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        try:
            await loop.create_connection(lambda: protocol, str(address[0]), port)
        except OSError as exc:
            failures.append(exc)
        else:
            return
    raise failures[0]


def _describe_failure(exc: Exception, target: Target, timeout: float) -> tuple[FailureReason, str]:
    """The reason and the human message (prefixed as in the seed) for a failed request."""
    if isinstance(exc, _ResponseError):
        return exc.reason, f"request failed: {exc}"
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        return FailureReason.TIMEOUT, f"request failed: timed out after {timeout:g}s"
    if isinstance(exc, socket.gaierror):
        return FailureReason.DNS, f"request failed: cannot resolve {target.ip!r}: {exc.strerror}"
    if isinstance(exc, UnicodeError):  # a name that IDNA cannot encode, e.g. with an empty label
        return FailureReason.DNS, f"request failed: cannot resolve {target.ip!r}: invalid name"
    if isinstance(exc, OSError):
        code = exc.errno
        if code in _ERRNO_REASONS:  # a fixed wording: asyncio and uvloop word these differently
            return _ERRNO_REASONS[code], f"request failed: {os.strerror(code).lower()}"
        return FailureReason.OTHER, f"request failed: {exc}"
    return FailureReason.OTHER, f"request failed: {type(exc).__name__}: {exc}"


def _invalid_request(target: Target) -> str | None:
    """Why `target` cannot be put in a request line and Host header unaltered, or None."""
    path = target.health_check_path
    if not (path.startswith("/") and path.isascii() and path.isprintable() and " " not in path):
        return (
            f"invalid request: health check path {path!r} must start with '/'"
            " and be printable ASCII without spaces"
        )
    host = target.ip
    if not (host and host.isascii() and host.isprintable() and " " not in host):
        return f"invalid request: host {host!r} must be a printable ASCII name or address"
    port = target.port
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return f"invalid request: port {port!r} must be a number from 1 to 65535"
    return None


class HTTPChecker:
    """Checks targets with `GET http://{ip}:{port}{path}` (seed: `HTTPChecker`).

    Follows the seed: keep-alives off (`Connection: close`), redirects never followed, healthy
    iff the status is 2xx or 3xx, the timeout bounding the whole check (name resolution, connect,
    request and response headers), errors prefixed `request failed:` and `unhealthy status code:`.

    Like Go, it judges the status line as soon as it arrives and never reads the body. Differs
    from the seed: only an `HTTP/1.0` or `HTTP/1.1` status line with a code from 100 up is
    accepted, anything else being a protocol error; the header block is capped at
    `MAX_HEADER_BYTES` (Go: 10 MiB); a 1xx status is final, so unhealthy (Go skips it);
    cancellation raises `asyncio.CancelledError` instead of returning a result; every failure also
    carries a `FailureReason`; a path, host or port that cannot be sent unaltered is refused
    without connecting (Go would percent-encode some of these).
    """

    __slots__ = ("_request_tail", "_timeout")

    def __init__(self, timeout: float) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"HTTPChecker timeout must be finite seconds > 0, got {timeout!r}")
        self._timeout = float(timeout)
        # What follows the Host header's value in every request.
        self._request_tail = (
            f"\r\nUser-Agent: healthcheck-exporter/{__version__}"
            "\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )

    @property
    def timeout(self) -> float:
        """Seconds one check may take in all."""
        return self._timeout

    async def check(self, target: Target) -> Result:
        """Check `target` once. Never raises, except `asyncio.CancelledError` when cancelled.

        The hostname in `target.ip`, if any, is resolved afresh for each check. The connection is
        closed before this returns or raises, whatever happened.
        """
        start = time.perf_counter()
        invalid = _invalid_request(target)
        if invalid is not None:
            return Result(
                target=target,
                healthy=False,
                error=invalid,
                duration=time.perf_counter() - start,
                reason=FailureReason.OTHER,
                checked_at=time.time(),
            )
        path, host = target.health_check_path, target.address
        request = f"GET {path} HTTP/1.1\r\nHost: {host}{self._request_tail}".encode("ascii")
        loop = asyncio.get_running_loop()
        protocol = _ResponseHeadProtocol(request, loop.create_future())
        failure: Exception | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await _connect(loop, protocol, target.ip, int(target.port))
                await protocol.done
        except Exception as exc:
            failure = exc
        finally:
            protocol.close()
        duration = time.perf_counter() - start
        status = protocol.status
        if failure is None:
            failure = protocol.error
        if failure is not None:
            reason, error = _describe_failure(failure, target, self._timeout)
        elif 200 <= status < 400:
            reason, error = None, None
        else:
            reason, error = FailureReason.HTTP_STATUS, f"unhealthy status code: {status}"
        return Result(
            target=target,
            healthy=reason is None,
            status_code=status,
            error=error,
            duration=duration,
            reason=reason,
            checked_at=time.time(),
        )

    async def check_all(self, targets: Sequence[Target], max_concurrent: int = 10) -> list[Result]:
        """Check every target, at most `max_concurrent` at once; results in input order.

        Follows the seed's `CheckAll`, including the fallback to 10 for `max_concurrent <= 0`,
        except that an empty input gives `[]` and cancellation raises `asyncio.CancelledError`
        (after closing every connection) instead of filling the remaining results with errors.
        """
        limit = max_concurrent if max_concurrent > 0 else DEFAULT_MAX_CONCURRENT
        results: list[Result | None] = [None] * len(targets)
        indices = iter(range(len(targets)))  # shared by the workers: each index is taken once

        async def worker() -> None:
            for index in indices:
                results[index] = await self.check(targets[index])

        async with asyncio.TaskGroup() as workers:
            for _ in range(min(limit, len(targets))):
                workers.create_task(worker())
        return cast("list[Result]", results)

    async def check_with_retry(
        self,
        target: Target,
        retry_config: RetryConfig | None = None,
        on_retry: Callable[[int, float], None] | None = None,
    ) -> Result:
        """Check until healthy, retrying with exponential backoff (seed: `CheckWithRetry`).

        Attempt 0 runs at once; before each of up to `max_retries` retries, `on_retry(attempt,
        backoff)` is called and `backoff` seconds slept. The backoff starts at `initial_backoff`
        and doubles after each retry, capped at `max_backoff`. Returns the first healthy result,
        or else the last one with its error prefixed `health check failed after N attempts: `.
        `retry_config` defaults to `default_retry_config()`; a negative `max_retries` counts as 0.

        Differs from the seed: cancellation (the seed's cancelled context) raises
        `asyncio.CancelledError` instead of returning a result carrying the context's error.
        """
        config = default_retry_config() if retry_config is None else retry_config
        attempts = max(config.max_retries, 0) + 1
        backoff = config.initial_backoff
        for attempt in range(attempts):
            if attempt:
                if on_retry is not None:
                    on_retry(attempt, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, config.max_backoff)
            result = await self.check(target)
            if result.healthy:
                return result
        error = f"health check failed after {attempts} attempts: {result.error}"
        return replace(result, error=error)
