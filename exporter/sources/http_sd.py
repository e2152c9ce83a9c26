"""Targets from Prometheus HTTP service discovery (`HEALTHCHECK_HTTP_SD_URL`).

The endpoint answers a JSON list of `{"targets": ["host:port", ...], "labels": {...}}` groups,
the `file_sd` format (https://prometheus.io/docs/prometheus/latest/http_sd/); the labels `app`,
`path` and `id` mean what they mean in the targets file, other labels are ignored. Fetched every
`HEALTHCHECK_HTTP_SD_REFRESH` with `If-None-Match`, so an unchanged list costs a 304. A failed
fetch (unreachable, timeout, a status other than 200/304) or a bad document keeps the last good
targets; a bad document is counted once, however often it is served again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import aiohttp
from prometheus_client.core import CounterMetricFamily, Metric
from yarl import URL

from exporter import __version__
from exporter.checks.options import OptionValues
from exporter.model import Target
from exporter.settings import ConfigError, quoted
from exporter.sources.base import SourceHealth
from exporter.targets import decode_json, parse_targets_document

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT = 10.0  # seconds for one fetch, body included


def parse_http_sd_url(text: str, variable: str = "HEALTHCHECK_HTTP_SD_URL") -> URL:
    """An absolute http(s) URL; raises ConfigError naming the variable."""
    try:
        url = URL(text.strip())
    except ValueError as exc:
        raise ConfigError(f"{variable}: invalid URL {quoted(text)}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{variable}: expected an http:// or https:// URL, got {quoted(text)}")
    return url


class _FetchError(Exception):
    """A fetch that gave no document (the message says why)."""


def parse_document(body: bytes, url: str, defaults: OptionValues | None = None) -> list[Target]:
    """The targets of one HTTP SD document; raises ConfigError naming the URL and entry."""
    try:
        data = decode_json(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{url}: not UTF-8 (bad byte at offset {exc.start})") from None
    except ValueError as exc:
        raise ConfigError(f"{url}: {exc}") from None
    return parse_targets_document(data, url, defaults=defaults)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused when it grows past MAX_DOCUMENT_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise _FetchError(f"document larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpSdSource:
    """A `Source` polling one HTTP SD endpoint."""

    name = "http_sd"

    def __init__(
        self,
        url: URL,
        logger: logging.Logger,
        refresh_interval: float = 60.0,
        *,
        defaults: OptionValues | None = None,
    ) -> None:
        self.url = url
        self._defaults = defaults  # HEALTHCHECK_CHECK_DEFAULTS
        self.refresh_interval = refresh_interval
        self.health = SourceHealth()
        self.fetches: Counter[str] = Counter()  # result -> count
        self._logger = logger
        self._targets: list[Target] = []
        self._etag: str | None = None  # of the last document fetched, good or bad
        self._bad_digest: bytes | None = None  # sha256 of the last document refused
        self._document_bad = False  # the last document fetched was refused
        self._refresh_requested = asyncio.Event()

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    def refresh(self) -> None:
        self._refresh_requested.set()

    async def run(self, on_change: Callable[[], None]) -> None:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"healthcheck-exporter/{__version__}",
        }
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while True:
                try:
                    if await self.fetch_once(session):
                        on_change()
                except Exception:
                    self._logger.exception("HTTP service discovery round failed")
                try:
                    await asyncio.wait_for(self._refresh_requested.wait(), self.refresh_interval)
                except TimeoutError:
                    continue
                self._refresh_requested.clear()

    async def fetch_once(self, session: aiohttp.ClientSession) -> bool:
        """Fetch the document once; True if the targets changed."""
        try:
            body = await self._fetch(session)
        except _FetchError as exc:
            self._failed("fetch", f"{self.url}: {exc}")
            return False
        if body is None:  # 304: the last document, good or bad, still holds
            self.fetches["unchanged"] += 1
            if not self._document_bad:
                self.health.succeeded(len(self._targets))
            return False
        digest = hashlib.sha256(body).digest()
        if digest == self._bad_digest:  # the same bad document again (a server without ETags)
            self.fetches["unchanged"] += 1
            return False
        try:
            targets = await asyncio.to_thread(parse_document, body, str(self.url), self._defaults)
        except ConfigError as exc:
            self._bad_digest = digest
            self._failed("document", str(exc))
            return False
        self._bad_digest = None
        self._document_bad = False
        self.fetches["success"] += 1
        changed = targets != self._targets
        self._targets = targets
        self.health.succeeded(len(targets))
        if changed:
            self._logger.info(
                "HTTP SD targets changed", extra={"url": str(self.url), "targets": len(targets)}
            )
        return changed

    async def _fetch(self, session: aiohttp.ClientSession) -> bytes | None:
        """The new document's bytes, or None when it has not changed (304)."""
        headers = {} if self._etag is None else {"If-None-Match": self._etag}
        try:
            async with session.get(self.url, headers=headers, allow_redirects=True) as response:
                if response.status == 304 and self._etag is not None:
                    return None
                if response.status != 200:
                    raise _FetchError(f"HTTP {response.status} {response.reason or ''}".strip())
                body = await _read_capped(response)
                self._etag = response.headers.get("ETag")
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _FetchError(str(exc) or type(exc).__name__) from None

    def _failed(self, result: str, error: str) -> None:
        self._document_bad = result == "document"
        self.fetches[f"{result}_failure"] += 1
        self.health.failed(error)
        self._logger.error(
            "HTTP service discovery failed, keeping the last good targets",
            extra={"url": str(self.url), "error": error},
        )

    def collect(self) -> Iterator[Metric]:
        """`healthcheck_http_sd_fetches_total{result}` (built on the event loop)."""
        family = CounterMetricFamily(
            "healthcheck_http_sd_fetches",
            "Fetches of HEALTHCHECK_HTTP_SD_URL, by result: success, unchanged (304),"
            " fetch_failure (unreachable, timeout, bad status), document_failure (bad JSON or"
            " entries); on failure the last good targets stay.",
            labels=["result"],
        )
        for result in ("success", "unchanged", "fetch_failure", "document_failure"):
            family.add_metric([result], self.fetches[result])
        yield family
