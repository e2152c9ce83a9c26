"""Prometheus HTTP service discovery against a real aiohttp server on loopback (issue 15)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from exporter.checks.options import parse_check_defaults
from exporter.model import Target
from exporter.settings import ConfigError
from exporter.sources.http_sd import HttpSdSource, parse_http_sd_url
from tests.process import exporter, run_cli, value
from tests.servers import target_server, unused_port
from tests.source_tasks import serving, validate_reports

LOGGER = logging.getLogger("tests.http_sd")


def group(port: int, **labels: str) -> dict[str, object]:
    return {"targets": [f"127.0.0.1:{port}"], "labels": {"app": "web", **labels}}


@dataclass
class SdServer:
    """An HTTP SD endpoint: serves `document` (with an ETag unless `etags` is off)."""

    url: str = ""
    document: str = "[]"
    status: int = 200
    etags: bool = True
    requests: list[str | None] = field(default_factory=list)  # If-None-Match of each request

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.headers.get("If-None-Match"))
        if self.status != 200:
            return web.Response(status=self.status, text="broken")
        etag = '"' + hashlib.sha256(self.document.encode()).hexdigest()[:16] + '"'
        if self.etags and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304)
        headers = {"ETag": etag} if self.etags else {}
        return web.Response(text=self.document, content_type="application/json", headers=headers)


@contextlib.asynccontextmanager
async def sd_server() -> AsyncIterator[SdServer]:
    server = SdServer()
    app = web.Application()
    app.router.add_get("/sd", server.handle)
    async with serving(app) as base_url:
        server.url = base_url + "/sd"
        yield server


@pytest.fixture
async def sd() -> AsyncIterator[SdServer]:
    async with sd_server() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def fetched(sd: SdServer, session: aiohttp.ClientSession, document: str) -> HttpSdSource:
    """A source that fetched `document` once."""
    sd.document = document
    source = HttpSdSource(URL(sd.url), LOGGER)
    assert await source.fetch_once(session)
    return source


def test_url_must_be_absolute_http() -> None:
    assert parse_http_sd_url(" http://sd.example/targets ") == URL("http://sd.example/targets")
    for bad in ("sd.example/targets", "ftp://sd.example/", "http:///x"):
        with pytest.raises(ConfigError, match=r"^HEALTHCHECK_HTTP_SD_URL: "):
            parse_http_sd_url(bad)


async def test_groups_give_targets_with_app_path_and_id_labels(
    sd: SdServer, session: aiohttp.ClientSession
) -> None:
    document = [group(8080, path="/ready", __meta_zone="a", team="x"), group(8081, id="web-b")]
    source = await fetched(sd, session, json.dumps(document))
    assert source.get_health_check_targets() == [
        Target("web-127.0.0.1-8080", "web", "127.0.0.1", "8080", "/ready"),
        Target("web-b", "web", "127.0.0.1", "8081", "/health"),
    ]
    assert (source.health.targets, source.health.failures) == (2, 0)


async def test_unchanged_document_is_not_fetched_again_thanks_to_its_etag(
    sd: SdServer, session: aiohttp.ClientSession
) -> None:
    source = await fetched(sd, session, json.dumps([group(8080)]))
    assert not await source.fetch_once(session)
    assert sd.requests[0] is None and sd.requests[1] is not None
    assert source.fetches == {"success": 1, "unchanged": 1}
    assert len(source.get_health_check_targets()) == 1


@pytest.mark.parametrize("etags", [True, False])
@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("[{", "invalid JSON at line 1 column 3"),
        ('{"targets": []}', "top level must be a list of targets"),
        (json.dumps([{"targets": ["127.0.0.1:1"], "labels": {}}]), "missing label 'app'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
async def test_bad_document_keeps_the_last_good_targets_counted_once(
    sd: SdServer,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    document: str,
    reason: str,
    etags: bool,
) -> None:
    sd.etags = etags
    source = await fetched(sd, session, json.dumps([group(8080)]))
    sd.document = document
    with caplog.at_level(logging.ERROR, logger="tests.http_sd"):
        for _ in range(3):
            assert not await source.fetch_once(session)
    assert len(caplog.records) == 1
    assert source.health.failures == 1
    assert source.health.last_error is not None and reason in source.health.last_error
    assert source.health.last_error.startswith(sd.url)
    assert len(source.get_health_check_targets()) == 1
    sd.document = json.dumps([group(8080), group(8081)])
    assert await source.fetch_once(session)
    assert source.health.last_error is None


async def test_failed_fetch_keeps_the_last_good_targets(
    sd: SdServer, session: aiohttp.ClientSession
) -> None:
    source = await fetched(sd, session, json.dumps([group(8080)]))
    sd.status = 503
    assert not await source.fetch_once(session)
    assert source.health.last_error == f"{sd.url}: HTTP 503 Service Unavailable"
    gone = HttpSdSource(URL(f"http://127.0.0.1:{unused_port()}/sd"), LOGGER)
    assert not await gone.fetch_once(session)
    assert gone.fetches == {"fetch_failure": 1}
    assert len(source.get_health_check_targets()) == 1
    sd.status = 200
    assert not await source.fetch_once(session)  # the same document: 304, and healthy again
    assert source.health.last_error is None
    assert source.health.failures == 1


async def test_exporter_follows_the_endpoint_and_validate_reports_it(sd: SdServer) -> None:
    async with target_server() as srv:
        sd.document = json.dumps([group(srv.port, path="/t/a")])
        env = {
            "HEALTHCHECK_INTERVAL": "100ms",
            "HEALTHCHECK_HTTP_SD_URL": sd.url,
            "HEALTHCHECK_HTTP_SD_REFRESH": "200ms",
        }
        await validate_reports(env, "source http_sd: 1 targets (web)")
        async with exporter(env) as proc:
            await proc.wait_for_metrics(
                lambda b: (
                    value(b, "healthcheck_target_up", app="web") == 1
                    and value(b, "healthcheck_http_sd_fetches_total", result="unchanged") >= 1
                ),
                what="the target checked and the document fetched again with its ETag",
            )
            sd.document = json.dumps([group(srv.port) | {"labels": {"app": "api"}}])
            await proc.wait_for_metrics(
                lambda b: (
                    value(b, "healthcheck_target_up", app="api") == 1
                    and value(b, "healthcheck_target_up", app="web") is None
                )
            )
            sd.status = 500
            await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_source_up", source="http_sd") == 0
            )
            assert (await proc.get("/-/ready"))[0] == 200


async def test_validate_exits_2_when_the_endpoint_cannot_be_reached() -> None:
    url = f"http://127.0.0.1:{unused_port()}/sd"
    code, _, err = await run_cli("validate", env={"HEALTHCHECK_HTTP_SD_URL": url})
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"healthcheck-exporter: error: source http_sd: {url}: ")


async def test_check_defaults_and_option_labels_apply_to_http_sd_targets(
    sd: SdServer, session: aiohttp.ClientSession
) -> None:
    sd.document = json.dumps([group(8080), group(8443, scheme="https", id="secure")])
    defaults = parse_check_defaults('{"method": "HEAD"}')
    source = HttpSdSource(URL(sd.url), LOGGER, defaults=defaults)
    assert await source.fetch_once(session)
    plain, secure = source.get_health_check_targets()
    assert (plain.options.method, plain.options.scheme) == ("HEAD", "http")
    assert (secure.options.method, secure.options.scheme) == ("HEAD", "https")
