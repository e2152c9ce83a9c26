"""DNS service discovery against a real dnsmasq on a loopback port (issue 15)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from exporter.checks.options import build_options, parse_check_defaults
from exporter.model import Target
from exporter.settings import ConfigError
from exporter.sources.dns import DnsQuery, DnsSource, parse_dns_sd, parse_dns_server
from tests.dns_server import DnsServer, dns_server
from tests.process import exporter, run_cli, samples, value
from tests.servers import target_server
from tests.source_tasks import running, validate_reports

LOGGER = logging.getLogger("tests.dns")
WEB_SRV = "_http._tcp.web.test"


def target(app: str, ip: str, port: int) -> Target:
    return Target(f"{app}-{ip}-{port}", app, ip, str(port), "/health")


# --- parsing -------------------------------------------------------------------------------------


def test_entries_are_srv_names_or_address_lookups_with_a_port() -> None:
    assert parse_dns_sd(
        "web=_http._tcp.web.example, api=A:api.example:9000\tv6=AAAA:h.example.:80"
    ) == [
        DnsQuery("web", "SRV", "_http._tcp.web.example."),
        DnsQuery("api", "A", "api.example.", 9000),
        DnsQuery("v6", "AAAA", "h.example.", 80),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (" , ", "HEALTHCHECK_DNS_SD: no entries in ' , '"),
        ("_http._tcp.web", "entry 1 '_http._tcp.web': expected app=SRV-name"),
        ("w@b=_http._tcp.web", "app 'w@b' must be"),
        ("web=A:api.example", "expected A:name:port"),
        ("web=A:api.example:99999", "port 99999 out of range"),
        ("web=_http._tcp.web:80", "an SRV name has no port"),
        ("web=" + "a" * 64 + ".example", "invalid DNS name"),
        ("web=", "missing DNS name"),
        ("web=a.example web=a.example", "entry 2 'web=a.example' is given twice"),
    ],
)
def test_bad_entries_name_the_variable_and_entry(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_dns_sd(text)
    assert str(excinfo.value).startswith("HEALTHCHECK_DNS_SD: ")
    assert reason in str(excinfo.value)


def test_server_is_an_ip_and_a_port() -> None:
    assert parse_dns_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_dns_server("[::1]:53") == ("::1", 53)
    for bad in ("127.0.0.1", "dns.example:53", "127.0.0.1:0"):
        with pytest.raises(ConfigError, match=r"^HEALTHCHECK_DNS_SERVER: "):
            parse_dns_server(bad)


# --- against dnsmasq -----------------------------------------------------------------------------


@pytest.fixture
async def dns(tmp_path: Path) -> AsyncIterator[DnsServer]:
    async with dns_server(tmp_path) as server:
        yield server


WEB_RECORDS = {
    "srv": [(WEB_SRV, "a.web.test", 8080), (WEB_SRV, "b.web.test", 8081)],
    "hosts": [
        ("a.web.test", "127.0.0.1"),
        ("b.web.test", "127.0.0.2,::1"),
        ("api.test", "127.0.0.9"),
    ],
}


def source_for(server: DnsServer, text: str, refresh: float = 0.1) -> DnsSource:
    return DnsSource(parse_dns_sd(text), LOGGER, refresh, ("127.0.0.1", server.port))


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def started(source: DnsSource) -> AsyncIterator[list[int]]:
    """The source's task for the block, after its first round; yields its on_change calls."""
    changes: list[int] = []
    async with running(source, lambda: changes.append(len(source._targets))):
        await wait_until(lambda: source.health.last_success_time > 0 or source.health.failures > 0)
        yield changes


async def test_srv_gives_one_target_per_record_and_address_with_the_record_port(
    dns: DnsServer,
) -> None:
    await dns.serve(**WEB_RECORDS)
    source = source_for(dns, f"web={WEB_SRV} api=A:api.test:9000 v6=AAAA:b.web.test:80")
    changed, _ = await source.refresh_once()
    assert changed
    assert sorted(source.get_health_check_targets(), key=lambda t: t.id) == [
        target("api", "127.0.0.9", 9000),
        target("v6", "::1", 80),
        target("web", "127.0.0.1", 8080),
        target("web", "127.0.0.2", 8081),
        target("web", "::1", 8081),
    ]
    assert source.health.targets == 5
    assert source.health.last_error is None


async def test_records_changed_while_running_are_followed(dns: DnsServer) -> None:
    await dns.serve(**WEB_RECORDS)
    source = source_for(dns, f"web={WEB_SRV}")
    async with started(source) as changes:
        assert len(source.get_health_check_targets()) == 3
        await dns.serve(srv=[(WEB_SRV, "a.web.test", 9090)], hosts=WEB_RECORDS["hosts"])
        await wait_until(
            lambda: source.get_health_check_targets() == [target("web", "127.0.0.1", 9090)]
        )
        assert changes[-1] == 1


async def test_a_short_ttl_is_honoured_before_the_refresh_interval(dns: DnsServer) -> None:
    await dns.serve(hosts=[("api.test", "127.0.0.9")], ttl=1)
    source = source_for(dns, "api=A:api.test:9000", refresh=3600)
    async with started(source):
        await dns.serve(hosts=[("api.test", "127.0.0.10")])
        await wait_until(
            lambda: source.get_health_check_targets() == [target("api", "127.0.0.10", 9000)]
        )


async def test_unreachable_server_keeps_the_last_good_targets_and_counts(dns: DnsServer) -> None:
    await dns.serve(**WEB_RECORDS)
    source = source_for(dns, "api=A:api.test:9000 web=A:a.web.test:80")
    async with started(source):
        await dns.stop()
        await wait_until(lambda: source.health.failures >= 1)
        assert source.health.last_error is not None and "A:api.test.:" in source.health.last_error
        assert len(source.get_health_check_targets()) == 2
        assert source.lookups[("A:api.test.", "failure")] >= 1
        await dns.serve(**WEB_RECORDS)
        await wait_until(lambda: source.health.last_error is None)
        assert len(source.get_health_check_targets()) == 2


async def test_refused_name_is_a_failure_keeping_nothing_lost(dns: DnsServer) -> None:
    await dns.serve(**WEB_RECORDS)
    source = source_for(dns, "api=A:api.test:9000 out=A:www.example:80")
    await source.refresh_once()
    assert source.get_health_check_targets() == [target("api", "127.0.0.9", 9000)]
    assert source.health.last_error is not None and "REFUSED" in source.health.last_error
    assert source.lookups[("A:www.example.", "failure")] == 1


@pytest.mark.parametrize(
    ("records", "result"),
    [
        ({"hosts": [("other.test", "127.0.0.1")]}, "nxdomain"),
        ({"hosts": [("api.test", "::1")]}, "empty"),
    ],
)
async def test_gone_name_empties_its_targets_only_when_seen_twice_in_a_row(
    dns: DnsServer, records: dict[str, list[tuple[str, str]]], result: str
) -> None:
    await dns.serve(**WEB_RECORDS)
    source = source_for(dns, "api=A:api.test:9000 web=A:a.web.test:80")
    await source.refresh_once()
    await dns.serve(**records)
    await source.refresh_once()
    assert target("api", "127.0.0.9", 9000) in source.get_health_check_targets()
    await dns.serve(**WEB_RECORDS)  # back: the streak starts over
    await source.refresh_once()
    await dns.serve(**records)
    await source.refresh_once()
    assert target("api", "127.0.0.9", 9000) in source.get_health_check_targets()
    changed, _ = await source.refresh_once()
    assert changed
    assert target("api", "127.0.0.9", 9000) not in source.get_health_check_targets()
    assert source.lookups[("A:api.test.", result)] == 3
    assert source.health.last_error is None


# --- the exporter --------------------------------------------------------------------------------


async def test_exporter_checks_targets_found_in_dns_and_validate_reports_them(
    dns: DnsServer,
) -> None:
    async with target_server() as srv:
        await dns.serve(
            srv=[(WEB_SRV, "a.web.test", srv.port)], hosts=[("a.web.test", "127.0.0.1")]
        )
        env = {
            "HEALTHCHECK_INTERVAL": "100ms",
            "HEALTHCHECK_DNS_SD": f"web={WEB_SRV}",
            "HEALTHCHECK_DNS_SERVER": dns.address,
            "HEALTHCHECK_DNS_REFRESH": "200ms",
        }
        await validate_reports(env, "source dns: 1 targets (web)")
        async with exporter(env) as proc:
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_target_up", target=f"web-127.0.0.1-{srv.port}") == 1
            )
            assert value(body, "healthcheck_source_targets", source="dns") == 1
            lookups = samples(body, "healthcheck_dns_lookups_total")
            assert lookups[(("name", "_http._tcp.web.test."), ("result", "success"))] >= 1
            await dns.stop()
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_source_up", source="dns") == 0, what="dns down"
            )
            assert value(body, "healthcheck_target_up", app="web") == 1
            assert (await proc.get("/-/ready"))[0] == 200


async def test_validate_exits_2_when_the_dns_server_cannot_be_reached(dns: DnsServer) -> None:
    env = {"HEALTHCHECK_DNS_SD": f"web={WEB_SRV}", "HEALTHCHECK_DNS_SERVER": dns.address}
    code, _, err = await run_cli("validate", env=env)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("healthcheck-exporter: error: source dns: _http._tcp.web.test.: ")


async def test_check_defaults_apply_to_dns_targets(dns: DnsServer) -> None:
    await dns.serve(**WEB_RECORDS)
    options = build_options(parse_check_defaults('{"method": "HEAD"}'))
    source = DnsSource(
        parse_dns_sd("api=A:api.test:9000"), LOGGER, 30, ("127.0.0.1", dns.port), options
    )
    await source.refresh_once()
    [found] = source.get_health_check_targets()
    assert found.options.method == "HEAD"
