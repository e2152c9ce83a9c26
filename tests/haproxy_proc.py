"""A real HAProxy in master-worker mode on loopback, started per test in its own directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from exporter.haproxy.reload import cli_command
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


def haproxy_binary() -> str | None:
    """haproxy's path; in CI its absence is a failure, never a silent skip."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None and os.environ.get("CI"):
        raise AssertionError("haproxy is missing in CI: scripts/test.sh installs it")
    return path


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
    directory: Path, initial_backends: str = "backend web\n"
) -> AsyncIterator[HAProxy]:
    """Start `haproxy -W -S master.sock -f haproxy.cfg -f backends.cfg` and wait until it serves."""
    binary = haproxy_binary()
    assert binary is not None
    hx = HAProxy(binary, directory, unused_port())
    hx.main_cfg.write_text(MAIN_CFG.format(dir=directory, port=hx.port))
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
        if hx.proc.returncode is None:
            hx.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(hx.proc.wait(), 5)
            except TimeoutError:
                hx.proc.kill()
                await hx.proc.wait()
        await pump
        (directory / "haproxy.log").write_text("\n".join(hx.log) + "\n")  # for post-mortems
