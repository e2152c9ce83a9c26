"""Real Prometheus and Alertmanager around the demo exporter, for the dashboard and alert tests.

A pytest plugin (`pytest_plugins = ("tests.observability",)` in the test modules), so its
session-scoped fixtures exist once for the whole run: one `healthcheck-exporter demo` (200 ms
interval), one Prometheus scraping it every second with the alert rules loaded, and, for the alert
tests, one Alertmanager delivering to a webhook served here. Everything listens on 127.0.0.1 and
keeps its data under the session's tmp dir; everything is stopped at the end.

Async tests that use these fixtures run on the session's event loop: mark them `SESSION_LOOP`.

PYTEST_DONT_REWRITE: the test modules import this before pytest loads it as a plugin, too late
for assertion rewriting, so the asserts here carry their own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.process import ExporterProcess, exporter, stop_process
from tests.servers import unused_port

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "healthcheck.rules.yml"
JOB = "healthcheck-exporter"  # the scrape job name the rules and docs use
SCRAPE_INTERVAL = "1s"
DEMO_ENV = {
    "HEALTHCHECK_INTERVAL": "200ms",  # fall 3 at 200 ms: a dead backend is down in 0.6 s
    "HEALTHCHECK_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{unused_port()}",  # agent panels have data
    # No HAProxy here: the passive path's panel shows zero triggers and the failed reads.
    "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": "/nonexistent/healthcheck-demo-admin.sock",
}
SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")
T = TypeVar("T")


# -- tools -----------------------------------------------------------------------------------


def require_tool(*names: str, install: str) -> str:
    """The first of `names` on PATH or beside this Python; skips if absent, fails in CI."""
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    for name in names:
        if path := shutil.which(name, path=search):
            return path
    if os.environ.get("CI"):
        raise AssertionError(f"{names[0]} is missing in CI: {install}")
    pytest.skip(f"{names[0]} not installed ({install})")


PROMTOOL_INSTALL = "scripts/test.sh installs Debian's `prometheus`"


def promtool() -> str:
    return require_tool("promtool", install=PROMTOOL_INSTALL)


async def run_tool(*argv: str, stdin: bytes = b"") -> tuple[int, str]:
    """Run a command to completion: (exit status, stdout and stderr together)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


# -- waiting ---------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    what: str,
    timeout: float = 30.0,
) -> T:
    """Call `probe` until `accept` takes its result; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {value}")
        await asyncio.sleep(0.1)


# -- processes -------------------------------------------------------------------------------


def _tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def _get_status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def _stop(proc: asyncio.subprocess.Process) -> None:
    await stop_process(proc, grace=10)


@contextlib.asynccontextmanager
async def background_process(
    argv: Sequence[str], log: Path, ready_url: str, session: aiohttp.ClientSession
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `argv`, output to `log`, until the context exits; yields once `ready_url` gives 200."""
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=asyncio.subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while await _get_status(session, ready_url) != 200:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} did not become ready:\n{_tail(log)}")
            await asyncio.sleep(0.1)
        yield proc
    finally:
        await _stop(proc)


# -- the demo --------------------------------------------------------------------------------


@dataclass
class Demo:
    """The running `healthcheck-exporter demo` and its control endpoint."""

    exporter: ExporterProcess
    control_url: str
    session: aiohttp.ClientSession

    @property
    def address(self) -> str:
        return self.exporter.base_url.removeprefix("http://")

    async def switch(self, backend: str, action: str) -> None:
        """`start` or `stop` one demo backend through the control endpoint."""
        async with self.session.post(f"{self.control_url}/backends/{backend}/{action}") as resp:
            assert resp.status == 200, await resp.text()

    async def sample_names(self) -> set[str]:
        families = text_string_to_metric_families(await self.exporter.metrics())
        return {sample.name for family in families for sample in family.samples}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def demo(http: aiohttp.ClientSession) -> AsyncIterator[Demo]:
    async with exporter(DEMO_ENV, "demo") as proc:
        line = await proc.wait_for_log(r"control:\s+http://")
        match = re.search(r"control:\s+(http://[^\s/]+)", line)
        assert match, line
        yield Demo(proc, match.group(1), http)


# -- Prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    config_file: Path
    config: dict[str, Any]
    session: aiohttp.ClientSession
    log: Path

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now; a scalar comes back as a one-element list."""
        data = await self.api("query", query=expr)
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    async def reconfigure(self, **changes: Any) -> None:
        """Rewrite prometheus.yml with `changes` and have Prometheus reload it."""
        self.config = {**self.config, **changes}
        self.config_file.write_text(yaml.safe_dump(self.config))
        async with self.session.post(f"{self.url}/-/reload") as resp:
            assert resp.status == 200, f"reload failed: {await resp.text()}\n{_tail(self.log)}"


def rules_for_tests(source: Path, destination: Path, for_duration: str = "1s") -> Path:
    """A copy of the rules with every `for` cut to `for_duration`.

    The production `for` values (minutes) ride out restarts; the tests wait seconds, not minutes.
    """
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_duration
    destination.write_text(yaml.safe_dump(rules, sort_keys=False))
    return destination


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def prometheus(
    demo: Demo, http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Prometheus]:
    """Prometheus scraping the demo every second, with the alert rules (short `for`) loaded."""
    binary = require_tool("prometheus", install=PROMTOOL_INSTALL)
    workdir = tmp_path_factory.mktemp("prometheus")
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(rules_for_tests(RULES, workdir / "rules.yml"))],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [demo.address]}]}],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{unused_port()}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--web.enable-lifecycle",  # POST /-/reload, to add Alertmanager later
    ]
    log = workdir / "prometheus.log"
    async with background_process(argv, log, f"{url}/-/ready", http):
        server = Prometheus(url, config_file, config, http, log)
        await eventually(
            lambda: server.query(f'up{{job="{JOB}"}} == 1'), bool, what="a successful scrape"
        )
        yield server


# -- Alertmanager and its webhook ------------------------------------------------------------


@dataclass
class Webhook:
    """Alertmanager webhook payloads received so far, in order."""

    url: str = ""
    payloads: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.payloads.append(await request.json())
        return web.Response()

    def alerts(self) -> Iterable[dict[str, Any]]:
        for payload in self.payloads:
            yield from payload["alerts"]

    async def wait_for_alert(
        self, status: str, labels: Mapping[str, str], timeout: float = 60
    ) -> dict[str, Any]:
        async def matching() -> list[dict[str, Any]]:
            return [
                alert
                for alert in self.alerts()
                if alert["status"] == status
                and all(alert["labels"].get(k) == v for k, v in labels.items())
            ]

        what = f"a {status} notification for {dict(labels)}"
        return (await eventually(matching, bool, timeout=timeout, what=what))[0]


@contextlib.asynccontextmanager
async def serve_webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/alerts", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/alerts"
        yield hook
    finally:
        await runner.cleanup()


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """One notification group per alert and target, flushed within a second, resolves included."""
    return {
        "route": {
            "receiver": "test",
            "group_by": ["alertname", "app", "target"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "test", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
    }


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def webhook(
    prometheus: Prometheus, http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Webhook]:
    """Alertmanager delivering to a webhook served here, with Prometheus now sending to it."""
    binary = require_tool(
        "prometheus-alertmanager",
        "alertmanager",
        install="scripts/test.sh installs Debian's `prometheus-alertmanager`",
    )
    workdir = tmp_path_factory.mktemp("alertmanager")
    async with serve_webhook() as hook:
        config_file = workdir / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(alertmanager_config(hook.url)))
        address = f"127.0.0.1:{unused_port()}"
        argv = [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={address}",
            "--cluster.listen-address=",  # a single instance: no gossip port
        ]
        async with background_process(
            argv, workdir / "alertmanager.log", f"http://{address}/-/ready", http
        ):
            target = {"static_configs": [{"targets": [address]}]}
            await prometheus.reconfigure(alerting={"alertmanagers": [target]})
            await eventually(
                lambda: prometheus.api("alertmanagers"),
                lambda data: bool(data["activeAlertmanagers"]),
                what="Prometheus to pick up Alertmanager",
            )
            yield hook


# -- queries ---------------------------------------------------------------------------------

METRIC_NAME = re.compile(r"\b(?:healthcheck|process)_[a-z0-9_]+\b")


def metric_names(exprs: Iterable[str]) -> set[str]:
    """The exporter's metric names (healthcheck_*, process_*) that PromQL expressions read."""
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def documented_metrics() -> set[str]:
    """Metric names README.md promises, including those the demo does not show (targets file)."""
    return set(METRIC_NAME.findall((ROOT / "README.md").read_text()))


async def unknown_metrics(exprs: Iterable[str], demo: Demo) -> set[str]:
    """Metric names in `exprs` that the demo does not expose and README.md does not document."""
    known = await demo.sample_names() | documented_metrics()
    histogram_part = re.compile(r"_(bucket|sum|count)$")
    return {
        name
        for name in metric_names(exprs)
        if name not in known and histogram_part.sub("", name) not in known
    }


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    return any(item["value"][1] not in ("NaN", "+Inf", "-Inf") for item in result)
