"""A real HAProxy in master-worker mode on loopback, started per test in its own directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from exporter.haproxy.reload import cli_command
from tests.process import stop_process
from tests.servers import unused_port

MAIN_CFG = """\
global
    master-worker
    pidfile {dir}/haproxy.pid
    stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners
    log stderr format short local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    retries 0

frontend fe
    bind 127.0.0.1:{port}
    default_backend web
"""


SERVER_STATE = "server-state"
# MAIN_CFG loading the servers' states saved before a reload (HAProxy's server-state-file).
STATE_FILE_CFG = MAIN_CFG.replace(
    "    log stderr", f"    server-state-file {{dir}}/{SERVER_STATE}\n    log stderr"
).replace("    retries 0\n", "    retries 0\n    load-server-state-from-file global\n")


def haproxy_binary() -> str | None:
    """haproxy's path; in CI its absence is a failure, never a silent skip."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None and os.environ.get("CI"):
        raise AssertionError("haproxy is missing in CI: scripts/test.sh installs it")
    return path


REQUIRES_HAPROXY = pytest.mark.skipif(
    haproxy_binary() is None, reason="haproxy not installed (scripts/test.sh installs it)"
)

FAST = {  # checks and reloads fast enough for a test to see many state changes
    "HEALTHCHECK_INTERVAL": "100ms",
    "HEALTHCHECK_TIMEOUT": "500ms",
    "HEALTHCHECK_FALL": "2",
    "HEALTHCHECK_RISE": "2",
    "HEALTHCHECK_HAPROXY_MIN_RELOAD_INTERVAL": "100ms",
}


@dataclass
class HAProxy:
    binary: str
    dir: Path
    port: int
    proc: asyncio.subprocess.Process | None = None
    log: list[str] = field(default_factory=list)

    @property
    def main_cfg(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def backends_cfg(self) -> Path:
        return self.dir / "backends.cfg"

    @property
    def master_socket(self) -> Path:
        return self.dir / "master.sock"

    @property
    def admin_socket(self) -> Path:
        return self.dir / "admin.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def check_command(self) -> str:
        return f"{self.binary} -c -q -f {self.main_cfg} -f {{file}}"

    async def admin(self, command: str) -> str:
        return await cli_command(self.admin_socket, command, 5.0)

    async def servers(self, backend: str = "web") -> dict[str, int]:
        """Server name -> admin state (0 ready, 1/5... maint/disabled) from the Runtime API."""
        answer = await self.admin(f"show servers state {backend}")
        servers = {}
        for line in answer.splitlines()[2:]:
            fields = line.split()
            if len(fields) > 6:
                servers[fields[3]] = int(fields[6])
        return servers

    async def op_states(self, *backends: str) -> dict[str, int]:
        """Server name -> operational state (0 stopped, 2 running) over `backends`, from the
        Runtime API: what agent checks change."""
        states: dict[str, int] = {}
        for backend in backends or ("web",):
            answer = await self.admin(f"show servers state {backend}")
            for line in answer.splitlines()[2:]:
                fields = line.split()
                if len(fields) > 6:
                    states[fields[3]] = int(fields[5])
        return states

    async def wait_for_servers(
        self, condition: object, timeout: float = 15.0, backend: str = "web"
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                servers = await self.servers(backend)
                if callable(condition) and condition(servers):
                    return servers
            if time.monotonic() > deadline:
                raise AssertionError("HAProxy servers never matched; log:\n" + "\n".join(self.log))
            await asyncio.sleep(0.02)


async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
    while line := await stream.readline():
        sink.append(line.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def haproxy(
    directory: Path, initial_backends: str = "backend web\n", main_cfg: str = MAIN_CFG
) -> AsyncIterator[HAProxy]:
    """Start `haproxy -W -S master.sock -f haproxy.cfg -f backends.cfg` and wait until it serves.

    `main_cfg` is formatted with `dir` (the directory) and `port` (the frontend's port)."""
    binary = haproxy_binary()
    assert binary is not None
    hx = HAProxy(binary, directory, unused_port())
    hx.main_cfg.write_text(main_cfg.format(dir=directory, port=hx.port))
    hx.backends_cfg.write_text(initial_backends)
    hx.proc = await asyncio.create_subprocess_exec(
        binary, "-W", "-S", str(hx.master_socket), "-f", str(hx.main_cfg), "-f",
        str(hx.backends_cfg),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert hx.proc.stdout is not None
    pump = asyncio.create_task(_pump(hx.proc.stdout, hx.log))
    try:
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(hx.url) as resp:
                        await resp.read()
                        break
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline, "HAProxy did not start:\n" + "\n".join(
                        hx.log
                    )
                    await asyncio.sleep(0.05)
        while not hx.pidfile.exists() or not hx.admin_socket.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        yield hx
    finally:
        await stop_process(hx.proc)
        await pump
        (directory / "haproxy.log").write_text("\n".join(hx.log) + "\n")  # for post-mortems


class Backend:
    """An HTTP backend on a fixed port that can be killed (port closed) and revived."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = unused_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hello(_: web.Request) -> web.Response:
            return web.Response(text=self.name)

        app = web.Application()
        app.router.add_get("/", hello)
        app.router.add_get("/health", hello)
        app.router.add_get("/api", hello)  # a second app behind the same frontend
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def kill(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def target(self) -> str:
        return f"web=127.0.0.1:{self.port}/health"

    @property
    def server(self) -> str:
        return f"web-127.0.0.1-{self.port}"


@contextlib.asynccontextmanager
async def backends(n: int = 3) -> AsyncIterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(n)]
    for b in started:
        await b.start()
    try:
        yield started
    finally:
        for b in started:
            await b.kill()


@dataclass
class Request:
    started: float
    ended: float
    ok: bool
    detail: str


@dataclass
class Load:
    """Sequential requests through HAProxy, a new connection each, bounded in time."""

    url: str
    results: list[Request] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, limit: float = 180.0) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        connector = aiohttp.TCPConnector(force_close=True)
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    async with session.get(self.url) as resp:
                        ok, detail = resp.status == 200, (await resp.text()).strip()
                except (aiohttp.ClientError, TimeoutError) as err:
                    ok, detail = False, repr(err)
                self.results.append(Request(started, time.monotonic(), ok, detail))
                await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def load(url: str) -> AsyncIterator[Load]:
    client, stop = Load(url), asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        yield client
    finally:
        stop.set()
        await task


def reload_env(mode: str, hx: HAProxy) -> dict[str, str]:
    env = {"HEALTHCHECK_HAPROXY_CONFIG": str(hx.backends_cfg), "HEALTHCHECK_HAPROXY_RELOAD": mode}
    if mode == "signal":
        env["HEALTHCHECK_HAPROXY_PIDFILE"] = str(hx.pidfile)
    elif mode == "master-socket":
        env["HEALTHCHECK_HAPROXY_MASTER_SOCKET"] = str(hx.master_socket)
    elif mode == "command":
        env["HEALTHCHECK_HAPROXY_RELOAD_COMMAND"] = f"sh -c 'kill -USR2 $(cat {hx.pidfile})'"
    elif mode == "runtime-api":
        env["HEALTHCHECK_HAPROXY_RUNTIME_SOCKET"] = str(hx.admin_socket)
        env["HEALTHCHECK_HAPROXY_MASTER_SOCKET"] = str(hx.master_socket)  # reload fallback
    return env


MAINT = 0x01  # srv_admin_state flag: forced maintenance (no traffic)
RUNNING = 2  # srv_op_state: running (0: stopped)


def in_rotation(servers: dict[str, int], server: str) -> bool:
    """Whether HAProxy sends traffic to `server`: present and not in forced maintenance."""
    return server in servers and not servers[server] & MAINT


def unexplained_failures(
    results: list[Request], windows: list[tuple[float, float]]
) -> list[Request]:
    """Failures of requests not in flight during any (kill, eviction) window."""
    return [
        r
        for r in results
        if not r.ok and not any(r.ended >= a and r.started <= b for a, b in windows)
    ]
