"""The Docker source: labels to targets (pure), then following a real engine in-process.

The containers are busybox httpd on the host network (see tests/docker_engine.py); the one test
with a container on a network of its own runs the source alone, which never sends it a packet.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from exporter.checks.options import parse_check_defaults
from exporter.model import CheckOptions, Target
from exporter.settings import ConfigError, load_settings
from exporter.sources.base import Source
from exporter.sources.docker import (
    Backoff,
    ContainerSkipped,
    DockerSource,
    container_address,
    container_target,
    list_targets,
    option_labels,
)
from exporter.sources.docker_api import EngineAddress, EngineError, _negotiated_version
from tests.docker_engine import BUSYBOX_IMAGE, SESSION, TEST_LABEL, Containers, Engine
from tests.observability import eventually

pytest_plugins = ("tests.docker_engine",)

CONTAINER_ID = "3f4e5d6c7b8a" + "9" * 52


def container(
    labels: dict[str, str],
    *,
    mode: str = "host",
    networks: dict[str, dict[str, str]] | None = None,
    name: str = "/web-1",
) -> dict[str, Any]:
    """An entry of `GET /containers/json`, with the fields the source reads."""
    if networks is None:
        networks = {"host": {"IPAddress": ""}} if mode == "host" else {}
    return {
        "Id": CONTAINER_ID,
        "Names": [name],
        "Labels": labels,
        "State": "running",
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": networks},
    }


WEB = {"healthcheck.app": "web", "healthcheck.port": "8080"}


# -- labels to targets -----------------------------------------------------------------------


def test_host_network_container_is_a_loopback_target_with_its_short_id() -> None:
    target = container_target(container({**WEB, "healthcheck.path": "/ping"}), None)
    assert target == Target(
        id=CONTAINER_ID[:12], app_name="web", ip="127.0.0.1", port="8080", health_check_path="/ping"
    )


def test_path_defaults_to_health() -> None:
    target = container_target(container(WEB), None)
    assert target is not None and target.health_check_path == "/health"


def test_haloy_labels_make_a_target_with_haloys_default_path() -> None:
    labels = {"dev.haloy.appName": "blog", "dev.haloy.port": "3000"}
    target = container_target(container(labels), None)
    assert target is not None
    assert (target.app_name, target.port, target.health_check_path) == ("blog", "3000", "/")
    labels["dev.haloy.health-check-path"] = "/up"
    target = container_target(container(labels), None)
    assert target is not None and target.health_check_path == "/up"


def test_healthcheck_labels_win_over_haloy_labels() -> None:
    labels = {
        **WEB,
        "healthcheck.path": "/ours",
        "dev.haloy.appName": "theirs",
        "dev.haloy.port": "1",
        "dev.haloy.health-check-path": "/theirs",
    }
    target = container_target(container(labels), None)
    assert target is not None
    assert (target.app_name, target.port, target.health_check_path) == ("web", "8080", "/ours")


def test_container_without_app_label_is_not_a_target() -> None:
    assert container_target(container({"healthcheck.port": "80", "other": "x"}), None) is None


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ({"healthcheck.app": "web"}, "'healthcheck.port' is missing"),
        ({**WEB, "healthcheck.port": "http"}, "label 'healthcheck.port': port 'http' is not"),
        ({**WEB, "healthcheck.port": "70000"}, "label 'healthcheck.port': port 70000 out of"),
        ({**WEB, "healthcheck.app": "my app"}, "label 'healthcheck.app': app 'my app' must"),
        ({**WEB, "healthcheck.path": "health"}, "label 'healthcheck.path': path 'health' must"),
        ({"dev.haloy.appName": "b", "dev.haloy.port": "x"}, "label 'dev.haloy.port': port 'x'"),
    ],
)
def test_bad_label_is_named_in_the_reason_the_container_is_skipped(
    labels: dict[str, str], named: str
) -> None:
    with pytest.raises(ContainerSkipped, match=named):
        container_target(container(labels), None)


def test_option_labels_are_the_other_healthcheck_labels_without_their_prefix() -> None:
    labels = {**WEB, "healthcheck.path": "/", "healthcheck.method": "HEAD", "haloy.x": "1"}
    assert option_labels(labels) == {"method": "HEAD"}


def test_option_labels_are_the_targets_check_options_over_the_check_defaults() -> None:
    labels = {**WEB, "healthcheck.method": "HEAD", "healthcheck.expect_status": "200-204"}
    defaults = parse_check_defaults('{"method": "OPTIONS", "fall": 5}')
    target = container_target(container(labels), None, defaults)
    assert target is not None
    assert target.options == CheckOptions(method="HEAD", expect_status=((200, 204),), fall=5)


def test_container_without_option_labels_gets_the_check_defaults() -> None:
    target = container_target(container(WEB), None, parse_check_defaults('{"scheme": "https"}'))
    assert target is not None and target.url == "https://127.0.0.1:8080/health"


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("method", "G T", "healthcheck.\\* labels: method: 'G T' is not an HTTP method"),
        ("methd", "GET", "healthcheck.\\* labels: unknown option label 'methd'"),
        ("fall", "0", "healthcheck.\\* labels: fall"),
    ],
)
def test_bad_option_label_skips_the_container_naming_the_option(
    option: str, value: str, reason: str
) -> None:
    with pytest.raises(ContainerSkipped, match=reason):
        container_target(container({**WEB, f"healthcheck.{option}": value}), None)


def test_listing_names_each_skipped_container_and_keeps_the_good_ones() -> None:
    good = container(WEB)
    bad = {**container({**WEB, "healthcheck.port": "x"}, name="/broken"), "Id": "b" * 64}
    listing = list_targets([bad, good], None)
    assert [t.id for t in listing.targets] == [CONTAINER_ID[:12]]
    assert listing.skipped == {
        "b" * 12: "container 'broken': label 'healthcheck.port': port 'x' is not a number"
    }


# -- addresses -------------------------------------------------------------------------------

NETWORKS = {
    "front": {"IPAddress": "10.1.0.5"},
    "back": {"IPAddress": "10.2.0.5"},
}


def test_address_is_the_ip_on_the_only_network() -> None:
    only = container(WEB, mode="app_default", networks={"app_default": {"IPAddress": "10.9.0.2"}})
    assert container_address(only, None) == "10.9.0.2"


def test_address_is_the_ip_on_the_configured_network() -> None:
    assert container_address(container(WEB, mode="front", networks=NETWORKS), "back") == "10.2.0.5"


def test_ipv6_only_network_gives_the_ipv6_address() -> None:
    v6 = {"v6": {"IPAddress": "", "GlobalIPv6Address": "fd00::5"}}
    assert container_address(container(WEB, mode="v6", networks=v6), None) == "fd00::5"


def test_host_network_container_is_checked_on_loopback_whatever_the_network_setting() -> None:
    assert container_address(container(WEB), "back") == "127.0.0.1"


@pytest.mark.parametrize(
    ("mode", "networks", "network", "reason"),
    [
        ("front", NETWORKS, None, r"several networks \(back, front\): set HEALTHCHECK_DOCKER_NET"),
        ("front", NETWORKS, "db", r"not on network 'db' \(HEALTHCHECK_DOCKER_NETWORK\).*back, fr"),
        ("none", {}, None, "has no network to check it on \\(network mode 'none'\\)"),
        ("x", {"x": {"IPAddress": ""}}, None, "has no IP address on network 'x'"),
    ],
)
def test_container_without_a_usable_address_is_skipped_saying_why(
    mode: str, networks: dict[str, dict[str, str]], network: str | None, reason: str
) -> None:
    with pytest.raises(ContainerSkipped, match=reason):
        container_address(container(WEB, mode=mode, networks=networks), network)


# -- engine addresses and settings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "socket", "base"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock", "http://docker"),
        ("tcp://socket-proxy:2375", None, "http://socket-proxy:2375"),
        ("tcp://[::1]:2375", None, "http://[::1]:2375"),
    ],
)
def test_engine_address_accepts_unix_sockets_and_tcp(
    text: str, socket: str | None, base: str
) -> None:
    address = EngineAddress.parse(text)
    assert (address.socket_path, address.base_url, str(address)) == (socket, base, text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("/var/run/docker.sock", "use unix:///var/run/docker.sock or tcp://host:port"),
        ("unix://var/run/docker.sock", "expected unix:///absolute/path"),
        ("tcp://proxy", "missing ':port'"),
        ("tcp://proxy:99999", "port 99999 out of range"),
        ("tcp://proxy:2375/v1.41", "expected tcp://host:port"),
        ("https://proxy:2376", "use unix:///var/run/docker.sock or tcp://host:port"),
    ],
)
def test_engine_address_rejects_other_forms_saying_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        EngineAddress.parse(text)


def test_bad_docker_host_is_a_config_error_naming_the_variable() -> None:
    from exporter.service import target_source

    settings = load_settings({"HEALTHCHECK_DOCKER_HOST": "docker.sock"})
    with pytest.raises(ConfigError, match=r"^HEALTHCHECK_DOCKER_HOST: invalid address"):
        target_source(settings)


def test_docker_network_needs_docker_host() -> None:
    with pytest.raises(ConfigError, match="HEALTHCHECK_DOCKER_NETWORK: needs HEALTHCHECK_DOCKER"):
        load_settings({"HEALTHCHECK_DOCKER_NETWORK": "front"})


@pytest.mark.parametrize(
    ("engine", "used"),
    [("1.47", "1.41"), ("1.41", "1.41"), ("1.30", "1.30"), (None, "1.24")],
)
def test_api_version_is_the_older_of_the_engines_and_ours(engine: str | None, used: str) -> None:
    assert ".".join(map(str, _negotiated_version(engine))) == used


@pytest.mark.parametrize(("engine", "reason"), [("1.12", "older than"), ("one", "unexpected")])
def test_api_version_too_old_or_garbled_is_an_engine_error(engine: str, reason: str) -> None:
    with pytest.raises(EngineError, match=reason):
        _negotiated_version(engine)


# -- following a real engine -----------------------------------------------------------------


@dataclass
class Followed:
    """A DockerSource running against the real engine, and the logs it wrote."""

    source: DockerSource
    app: str  # unique to the test: other tests' containers are not looked at
    changes: int = 0
    log: list[logging.LogRecord] = field(default_factory=list)

    def targets(self) -> list[Target]:
        return [t for t in self.source.get_health_check_targets() if t.app_name == self.app]

    async def until(self, accept: Callable[[list[Target]], bool], what: str) -> list[Target]:
        async def probe() -> list[Target]:
            return self.targets()

        return await eventually(probe, accept, what=what, timeout=15)


class _Records(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest_asyncio.fixture
async def followed(docker_engine: Engine, busybox_image: str) -> AsyncIterator[Followed]:
    del busybox_image
    logger = logging.getLogger(f"test.docker.{uuid.uuid4().hex[:6]}")
    source = DockerSource(EngineAddress.parse(docker_engine.host), None, logger)
    watched = Followed(source, app=f"app{uuid.uuid4().hex[:8]}")
    logger.addHandler(_Records(watched.log))
    logger.propagate = False
    await source.load()

    def changed() -> None:
        watched.changes += 1

    task = asyncio.create_task(source.run(changed))
    try:
        yield watched
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_docker_source_implements_the_source_protocol() -> None:
    source = DockerSource(EngineAddress.parse("unix:///nowhere.sock"), None, logging.getLogger())
    assert isinstance(source, Source) and source.name == "docker"


async def test_started_container_becomes_a_target_and_stopped_one_goes(
    followed: Followed, containers: Containers
) -> None:
    httpd = await containers.httpd(followed.app)
    found = await followed.until(lambda t: len(t) == 1, "the started container")
    assert found == [
        Target(id=httpd.short_id, app_name=followed.app, ip="127.0.0.1", port=str(httpd.port))
    ]
    changes = followed.changes
    await containers.engine.arun("stop", "--time=1", httpd.id)
    await followed.until(lambda t: t == [], "the stopped container to go")
    assert followed.changes > changes  # the monitor was told


async def test_killed_container_is_removed(followed: Followed, containers: Containers) -> None:
    httpd = await containers.httpd(followed.app)
    await followed.until(lambda t: len(t) == 1, "the started container")
    await containers.engine.arun("kill", httpd.id)
    await followed.until(lambda t: t == [], "the killed container to go")


async def test_restarted_container_is_the_same_target_again(
    followed: Followed, containers: Containers
) -> None:
    httpd = await containers.httpd(followed.app)
    before = await followed.until(lambda t: len(t) == 1, "the started container")
    listed = followed.source.health.last_success_time
    await containers.engine.arun("restart", "--time=1", httpd.id)
    await eventually(
        _value(lambda: followed.source.health.last_success_time),
        lambda t: t > listed,
        what="a re-list after the restart",
    )
    assert await followed.until(lambda t: len(t) == 1, "the restarted container") == before


async def test_relabelled_container_is_a_new_target_under_its_new_id(
    followed: Followed, containers: Containers
) -> None:
    first = await containers.httpd(followed.app, labels={"healthcheck.path": "/a"})
    await followed.until(lambda t: [x.id for x in t] == [first.short_id], "the first container")
    # Labels cannot change on a container: relabelling is re-creating it under the same name.
    await containers.engine.arun("rm", "--force", first.id)
    second = await containers.httpd(
        followed.app, labels={"healthcheck.path": "/b"}, name=first.name, port=first.port
    )
    found = await followed.until(
        lambda t: [x.id for x in t] == [second.short_id], "the re-created container alone"
    )
    assert found[0].health_check_path == "/b" and second.short_id != first.short_id


async def test_container_with_bad_labels_is_skipped_with_one_log_line(
    followed: Followed, containers: Containers
) -> None:
    bad = await containers.httpd(followed.app, labels={"healthcheck.path": "x"})
    good = await containers.httpd(followed.app)
    await followed.until(lambda t: [x.id for x in t] == [good.short_id], "the good container")
    await containers.httpd(followed.app)  # one more re-list
    await followed.until(lambda t: len(t) == 2, "the second good container")
    skipped = [r for r in followed.log if r.getMessage() == "docker container skipped"]
    ours = [getattr(r, "error", "") for r in skipped if bad.name in getattr(r, "error", "")]
    assert ours == [
        f"container '{bad.name}': label 'healthcheck.path': path 'x' must start with '/'"
    ]
    assert bad.short_id not in {t.id for t in followed.targets()}


async def test_container_on_a_network_of_its_own_is_readdressed_when_its_ip_changes(
    docker_engine: Engine, busybox_image: str, followed: Followed
) -> None:
    # Internal networks with the engine's own address pools. Nothing here ever sends a packet
    # to them: no checks run in this test, the source only reads the engine.
    networks = [f"hc-test-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    label = f"--label={TEST_LABEL}={SESSION}"
    for network in networks:
        await docker_engine.arun("network", "create", "--internal", label, network)
    name = f"hc-test-{uuid.uuid4().hex[:10]}"

    async def ip_on(network: str) -> str:
        path = f'(index .NetworkSettings.Networks "{network}").IPAddress'
        return await docker_engine.arun("inspect", f"--format={{{{{path}}}}}", name)

    try:
        await docker_engine.arun(
            "run", "--detach", f"--name={name}", f"--network={networks[0]}", label,
            f"--label=healthcheck.app={followed.app}", "--label=healthcheck.port=8080",
            BUSYBOX_IMAGE, "sleep", "600",
        )  # fmt: skip
        first = await ip_on(networks[0])
        await followed.until(lambda t: [x.ip for x in t] == [first], "the address on network 1")
        await docker_engine.arun("network", "connect", networks[1], name)
        await docker_engine.arun("network", "disconnect", networks[0], name)
        second = await ip_on(networks[1])
        await followed.until(lambda t: [x.ip for x in t] == [second], "the address on network 2")
        assert second != first
    finally:
        await docker_engine.arun("rm", "--force", name)
        await docker_engine.arun("network", "rm", *networks)


async def test_unreachable_engine_is_retried_with_doubling_backoff_each_failure_logged() -> None:
    logger = logging.getLogger("test.docker.unreachable")
    records: list[logging.LogRecord] = []
    logger.addHandler(_Records(records))
    logger.propagate = False
    address = EngineAddress.parse("unix:///nonexistent/docker.sock")
    source = DockerSource(address, None, logger, backoff=Backoff(first=0.05, longest=0.2))
    with pytest.raises(EngineError, match=r"unix:///nonexistent/docker\.sock"):
        await source.load()
    task = asyncio.create_task(source.run(lambda: None))
    try:
        await eventually(
            _value(lambda: source.health.failures), lambda n: n >= 5, what="five failed attempts"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert source.get_health_check_targets() == []
    assert source.health.last_error is not None and "nonexistent" in source.health.last_error
    failures = [r.__dict__ for r in records if r.getMessage().startswith("docker engine unreach")]
    assert [f["retry_in"] for f in failures[:5]] == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert [f["failures"] for f in failures[:5]] == [1, 2, 3, 4, 5]


def _value(read: Callable[[], Any]) -> Callable[[], Any]:
    async def probe() -> Any:
        return read()

    return probe


async def test_engine_behind_a_tcp_socket_proxy_is_followed_too(
    docker_engine: Engine, containers: Containers
) -> None:
    socket_path = docker_engine.host.removeprefix("unix://")

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        engine_reader, engine_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pipe(reader, engine_writer), pipe(engine_reader, writer))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    source = DockerSource(EngineAddress.parse(f"tcp://127.0.0.1:{port}"), None, logging.getLogger())
    app = f"app{uuid.uuid4().hex[:8]}"
    task = asyncio.create_task(source.run(lambda: None))
    try:
        httpd = await containers.httpd(app)
        await eventually(
            _value(lambda: [t.id for t in source.get_health_check_targets() if t.app_name == app]),
            lambda ids: ids == [httpd.short_id],
            what="the container, through the proxy",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        proxy.close()
        await proxy.wait_closed()


# -- an engine that misbehaves ---------------------------------------------------------------


@dataclass
class FakeEngine:
    """An HTTP server on a unix socket answering as an engine would, until told to misbehave:
    for what a real engine does not do (a 500 on the listing, a garbled event)."""

    containers: list[dict[str, Any]]
    list_status: int = 200
    event_lines: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_ping", self.ping)
        app.router.add_get("/v1.41/containers/json", self.list)
        app.router.add_get("/v1.41/events", self.events)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK", headers={"API-Version": "1.43"})

    async def list(self, request: web.Request) -> web.Response:
        if self.list_status != 200:
            return web.json_response({"message": "boom"}, status=self.list_status)
        return web.json_response(self.containers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            await resp.write(await self.event_lines.get())


@pytest_asyncio.fixture
async def fake_engine(tmp_path: Path) -> AsyncIterator[tuple[FakeEngine, DockerSource]]:
    engine = FakeEngine([container(WEB)])
    runner = web.AppRunner(engine.app(), shutdown_timeout=0.1)
    await runner.setup()
    socket_path = tmp_path / "engine.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    source = DockerSource(EngineAddress.parse(f"unix://{socket_path}"), None, logging.getLogger())
    task = asyncio.create_task(source.run(lambda: None))
    try:
        yield engine, source
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def test_failed_listing_keeps_the_targets_and_is_counted(
    fake_engine: tuple[FakeEngine, DockerSource],
) -> None:
    engine, source = fake_engine
    await eventually(_value(source.get_health_check_targets), bool, what="the first listing")
    engine.list_status = 500
    engine.containers = []
    engine.event_lines.put_nowait(b'{"Type": "container", "Action": "die"}\n')
    await eventually(_value(lambda: source.health.failures), bool, what="a failure")
    assert [t.id for t in source.get_health_check_targets()] == [CONTAINER_ID[:12]]
    assert "HTTP 500: 'boom'" in (source.health.last_error or "")
    engine.list_status = 200  # back: the re-list after the reconnect empties it, for real
    await eventually(_value(source.get_health_check_targets), lambda t: t == [], what="re-list")


@pytest.mark.parametrize(
    ("line", "error"), [(b"not json\n", "undecodable event"), (b"[1]\n", "not a JSON object")]
)
async def test_garbled_event_reconnects_keeping_the_targets(
    fake_engine: tuple[FakeEngine, DockerSource], line: bytes, error: str
) -> None:
    engine, source = fake_engine
    await eventually(_value(source.get_health_check_targets), bool, what="the first listing")
    engine.event_lines.put_nowait(line)
    last_error = _value(lambda: source.health.last_error or "")
    await eventually(last_error, lambda text: error in text, what=error)
    assert len(source.get_health_check_targets()) == 1
