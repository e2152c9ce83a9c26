"""The part of the Docker Engine API the Docker source speaks: ping, running containers, events.

Plain JSON over HTTP, on the engine's unix socket or a `tcp://` address (a socket proxy), with
aiohttp (`UnixConnector`), so no Docker SDK is needed. Endpoints and fields:
https://docs.docker.com/reference/api/engine/ (`GET /_ping`, `GET /containers/json`,
`GET /events`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from exporter.settings import check_host, parse_port, quoted, split_host_port

# The newest API version asked for: every field used here exists since 1.24 and is unchanged up
# to it. An older engine is asked in its own (lower) version, read from `GET /_ping`.
NEWEST_API_VERSION = (1, 41)
OLDEST_API_VERSION = (1, 24)
REQUEST_TIMEOUT = 10.0  # seconds for one ordinary request (not the event stream)
MAX_EVENT_SIZE = 1 << 20  # bytes; an event is a few hundred (its labels included)

Container = Mapping[str, Any]
"""One entry of `GET /containers/json`: Id, Names, Labels, State, HostConfig, NetworkSettings."""


class EngineError(Exception):
    """The engine could not be reached, or answered something other than what was asked."""


@dataclass(frozen=True, slots=True)
class EngineAddress:
    """Where the engine listens: `unix:///path/to/docker.sock` or `tcp://host:port`."""

    text: str
    socket_path: str | None  # set for unix://
    base_url: str  # what requests go to (the host part is unused on a unix socket)

    @classmethod
    def parse(cls, text: str) -> EngineAddress:
        """Raises ValueError saying what is wrong with `text`."""
        url = urlsplit(text.strip())
        if url.scheme == "unix":
            if url.netloc or not url.path.startswith("/"):
                raise ValueError(
                    f"invalid address {quoted(text)}: expected unix:///absolute/path/docker.sock"
                )
            return cls(text, url.path, "http://docker")
        if url.scheme == "tcp":
            if url.path not in ("", "/") or url.query or url.fragment:
                raise ValueError(f"invalid address {quoted(text)}: expected tcp://host:port")
            try:
                host, port = split_host_port(url.netloc)
                check_host(host)
                parse_port(port)
            except ValueError as exc:
                raise ValueError(f"invalid address {quoted(text)}: {exc}") from None
            return cls(text, None, f"http://{url.netloc}")
        raise ValueError(
            f"invalid address {quoted(text)}: use unix:///var/run/docker.sock or tcp://host:port"
        )

    def __str__(self) -> str:
        return self.text


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _negotiated_version(engine_version: str | None) -> tuple[int, int]:
    """The API version to use with an engine speaking up to `engine_version` (ping header)."""
    if engine_version is None:  # engines before 1.25 do not say: ask in the oldest version
        return OLDEST_API_VERSION
    try:
        major, minor = (int(part) for part in engine_version.split("."))
    except ValueError:
        raise EngineError(f"unexpected engine API version {quoted(engine_version)}") from None
    if (major, minor) < OLDEST_API_VERSION:
        raise EngineError(
            f"engine API version {engine_version} is older than the oldest supported,"
            f" {_version_text(OLDEST_API_VERSION)}"
        )
    return min((major, minor), NEWEST_API_VERSION)


class EngineClient:
    """One connection pool to one engine; `async with EngineClient(address) as client: ...`."""

    def __init__(self, address: EngineAddress) -> None:
        self.address = address
        self._session: aiohttp.ClientSession | None = None
        self._prefix = f"/v{_version_text(OLDEST_API_VERSION)}"

    async def __aenter__(self) -> EngineClient:
        connector: aiohttp.BaseConnector
        if self.address.socket_path is not None:
            connector = aiohttp.UnixConnector(path=self.address.socket_path)
        else:
            connector = aiohttp.TCPConnector()
        self._session = aiohttp.ClientSession(
            self.address.base_url,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use EngineClient in `async with`"
        return self._session

    async def ping(self) -> str:
        """Reach the engine and settle the API version to use; returns it (e.g. `1.41`)."""
        try:
            async with self.session.get("/_ping") as resp:
                await _check_status(resp, "GET /_ping")
                version = _negotiated_version(resp.headers.get("API-Version"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineError(_describe(exc, self.address)) from None
        self._prefix = f"/v{_version_text(version)}"
        return _version_text(version)

    async def running_containers(self) -> list[Container]:
        """Every running container, with its labels and networks (one request)."""
        path = f"{self._prefix}/containers/json"
        params = {"filters": json.dumps({"status": ["running"]})}
        try:
            async with self.session.get(path, params=params) as resp:
                await _check_status(resp, f"GET {path}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise EngineError(_describe(exc, self.address)) from None
        if not isinstance(body, list) or not all(isinstance(c, dict) for c in body):
            raise EngineError(f"GET {path}: expected a list of containers")
        return body

    @contextlib.asynccontextmanager
    async def events(self, filters: Mapping[str, Sequence[str]]) -> AsyncIterator[EventStream]:
        """The engine's event stream from now on, open once this is entered."""
        path = f"{self._prefix}/events"
        params = {"filters": json.dumps(filters)}
        # No total timeout: the stream stays open, silent while nothing happens.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT)
        try:
            resp = await self.session.get(path, params=params, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineError(_describe(exc, self.address)) from None
        try:
            await _check_status(resp, f"GET {path}")
            yield EventStream(resp, self.address)
        finally:
            resp.release()
            resp.close()


class EventStream:
    """Decoded events, one JSON object per line, as the engine writes them."""

    def __init__(self, resp: aiohttp.ClientResponse, address: EngineAddress) -> None:
        self._resp = resp
        self._address = address
        self._buffer = b""

    async def next(self) -> dict[str, Any]:
        """The next event; raises EngineError when the stream ends or breaks."""
        while b"\n" not in self._buffer:
            try:
                chunk = await self._resp.content.readany()
            except (aiohttp.ClientError, OSError) as exc:
                raise EngineError(_describe(exc, self._address)) from None
            if not chunk:
                raise EngineError(f"{self._address}: the event stream ended")
            self._buffer += chunk
            if len(self._buffer) > MAX_EVENT_SIZE and b"\n" not in self._buffer:
                raise EngineError(f"{self._address}: an event over {MAX_EVENT_SIZE} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            event = json.loads(line)
        except ValueError:
            raise EngineError(f"{self._address}: undecodable event {quoted(line)}") from None
        if not isinstance(event, dict):
            raise EngineError(f"{self._address}: an event is not a JSON object")
        return event


async def _check_status(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status != 200:
        text = (await resp.text(errors="replace")).strip()
        with contextlib.suppress(ValueError, AttributeError):  # the engine's {"message": ...}
            text = str(json.loads(text).get("message", text))
        raise EngineError(f"{what}: HTTP {resp.status}: {quoted(text, 200)}")


def _describe(exc: BaseException, address: EngineAddress) -> str:
    if isinstance(exc, TimeoutError):
        return f"{address}: no answer within {REQUEST_TIMEOUT:g}s"
    return f"{address}: {exc or type(exc).__name__}"
