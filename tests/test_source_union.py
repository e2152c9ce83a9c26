"""The union of target sources: order, the duplicate-id rule, startup, and re-tries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import pytest

from exporter.model import Target
from exporter.settings import ConfigError
from exporter.sources.base import Source, SourceHealth
from exporter.sources.env import StaticSource
from exporter.sources.union import SourceUnion

LOGGER = logging.getLogger("tests.union")


def target(app: str, port: int) -> Target:
    return Target(f"{app}-10.0.0.1-{port}", app, "10.0.0.1", str(port), "/health")


class FakeSource:
    """A source whose targets the test sets; `publish` plays a new version being read."""

    def __init__(self, name: str, targets: Sequence[Target] = (), fail: str | None = None):
        self.name = name
        self.health = SourceHealth()
        self.targets = list(targets)
        self.fail = fail
        self.on_change: Callable[[], None] | None = None
        self.refreshed = 0

    def get_health_check_targets(self) -> list[Target]:
        return list(self.targets)

    async def run(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        if self.fail is not None:
            self.health.failed(self.fail)
        else:
            self.health.succeeded(len(self.targets))
        await asyncio.Event().wait()

    def refresh(self) -> None:
        self.refreshed += 1

    def publish(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.health.succeeded(len(self.targets))
        assert self.on_change is not None
        self.on_change()


def test_sources_implement_the_protocol() -> None:
    assert isinstance(StaticSource([]), Source)
    assert isinstance(FakeSource("x"), Source)


def test_union_keeps_source_order_then_target_order() -> None:
    a, b = (
        FakeSource("a", [target("web", 2), target("web", 1)]),
        FakeSource("b", [target("api", 1)]),
    )
    union = SourceUnion([a, b], LOGGER)
    union.take_snapshots()
    assert [t.id for t in union.get_health_check_targets()] == [
        "web-10.0.0.1-2",
        "web-10.0.0.1-1",
        "api-10.0.0.1-1",
    ]


def test_same_id_from_two_sources_is_a_config_error_naming_both() -> None:
    union = SourceUnion(
        [FakeSource("env", [target("web", 1)]), FakeSource("dns", [target("web", 1)])], LOGGER
    )
    with pytest.raises(
        ConfigError, match=r"'web-10\.0\.0\.1-1' comes from both source env and source dns"
    ):
        union.take_snapshots()


async def test_start_fails_naming_the_source_that_could_not_be_read() -> None:
    union = SourceUnion(
        [FakeSource("env"), FakeSource("dns", fail="timeout asking 127.0.0.1:53")], LOGGER
    )
    try:
        with pytest.raises(ConfigError, match=r"^source dns: timeout asking 127\.0\.0\.1:53$"):
            await union.start()
    finally:
        await union.stop()


async def test_start_gives_up_on_a_source_that_never_answers() -> None:
    class Silent(FakeSource):
        async def run(self, on_change: Callable[[], None]) -> None:
            await asyncio.Event().wait()

    union = SourceUnion([Silent("http_sd")], LOGGER)
    try:
        with pytest.raises(ConfigError, match=r"^source http_sd: no answer within 0\.1s$"):
            await union.start(timeout=0.1)
    finally:
        await union.stop()


async def test_later_clash_rejects_that_version_once_and_takes_it_when_the_clash_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env, dns = FakeSource("env", [target("web", 1)]), FakeSource("dns", [target("api", 1)])
    union = SourceUnion([env, dns], LOGGER)
    changes: list[int] = []
    await union.start(lambda: changes.append(len(union.get_health_check_targets())))
    try:
        with caplog.at_level(logging.ERROR, logger="tests.union"):
            dns.publish([target("web", 1), target("db", 1)])
            dns.publish([target("web", 1), target("db", 1)])  # the same version read again
        assert [r.getMessage() for r in caplog.records] == [
            "source rejected: duplicate target id, keeping its previous targets"
        ]
        assert dns.health.failures == 1
        assert dns.health.last_error is not None
        assert "source env and source dns" in dns.health.last_error
        assert dns.health.targets == 1
        assert [t.app_name for t in union.get_health_check_targets()] == ["web", "api"]
        assert changes == []
        env.publish([target("cache", 1)])  # the clash is gone: dns's waiting version is taken
        assert [t.app_name for t in union.get_health_check_targets()] == ["cache", "web", "db"]
        assert changes == [3]
        assert (dns.health.last_error, dns.health.targets, dns.health.failures) == (None, 2, 1)
        union.refresh()
        assert (env.refreshed, dns.refreshed) == (1, 1)
    finally:
        await union.stop()
