"""HAProxy on both sides of a check: the fast non-Python target every tool probes, and HAProxy's own
health checks (`option httpchk`), the anchor for CPU per check.

The target is one HAProxy process (one thread, on the helper core) answering `200` from
`http-request return` on 1,000 ports of each of ten loopback addresses: 10,000 distinct targets,
no backend, no Python, so it is never the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.procs import HELPER_CORE, MEASURED_CORE, Child, started, wait_until, which
from tests.servers import unused_port

ADDRESSES = tuple(f"127.0.1.{i}" for i in range(1, 11))
FIRST_PORT = 20000  # below the ephemeral range, so no client socket can take one
PORTS_PER_ADDRESS = 1000
MAX_TARGETS = len(ADDRESSES) * PORTS_PER_ADDRESS
HEALTH_PATH = "/health"

TARGET_HEADER = """\
global
    nbthread 1
    # 10,000 listeners + 2 fds per connection must fit the fd limit (20,000 in containers).
    maxconn 4000
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout http-request 5s
"""
"""What every target HAProxy's config begins with (the plain one here, the TLS one in bench.tls)."""

TARGET_CFG = (
    TARGET_HEADER
    + """
frontend targets
    maxconn 4000
{binds}
    http-request return status 200
"""
)

CHECKER_CFG = """\
global
    nbthread 1
    maxconn 4000
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 2s

# HAProxy refuses to start without a listener.
frontend alive
    bind 127.0.0.1:{port}
    http-request return status 200

backend checked
    option httpchk GET {path}
    default-server check inter {inter_ms}ms{server_options}
{servers}
"""


def endpoints(count: int) -> list[tuple[str, int]]:
    """The first `count` distinct (address, port) pairs the target answers on."""
    if not 0 < count <= MAX_TARGETS:
        raise ValueError(f"1..{MAX_TARGETS} targets available, {count} asked")
    return [
        (ADDRESSES[i // PORTS_PER_ADDRESS], FIRST_PORT + i % PORTS_PER_ADDRESS)
        for i in range(count)
    ]


def haproxy_path() -> str:
    path = which("haproxy")
    if path is None:
        raise SystemExit("bench: haproxy is not installed (bash scripts/test.sh installs it)")
    return path


async def haproxy_cli(socket: Path, command: str, timeout: float = 5.0) -> str:
    """One command on an HAProxy stats socket (non-interactive: it answers and closes)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(socket))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def http_status(address: str, port: int, timeout: float = 2.0) -> int:
    """Status code of a plain GET over a new connection (0 if the reply is not HTTP)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(address, port)
        try:
            writer.write(f"GET {HEALTH_PATH} HTTP/1.0\r\n\r\n".encode())
            fields = (await reader.readline()).split()
        finally:
            writer.close()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


@dataclass
class HAProxyProcess:
    child: Child
    socket: Path

    async def info(self) -> dict[str, str]:
        answer = await haproxy_cli(self.socket, "show info")
        pairs = (line.partition(": ") for line in answer.splitlines())
        return {key: value for key, sep, value in pairs if sep}

    async def connections(self) -> int:
        """Connections accepted since start (`CumConns`): one per check, probe or request."""
        return int((await self.info())["CumConns"])

    async def servers(self) -> list[dict[str, str]]:
        """`show stat` rows of the servers (not the frontend/backend summary rows)."""
        answer = await haproxy_cli(self.socket, "show stat")
        rows = csv.DictReader(answer.removeprefix("# ").splitlines())
        return [r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND") and r["pxname"]]


def _binds() -> str:
    last = FIRST_PORT + PORTS_PER_ADDRESS - 1
    return "\n".join(f"    bind {address}:{FIRST_PORT}-{last}" for address in ADDRESSES)


@contextlib.asynccontextmanager
async def target_farm(work: Path) -> AsyncIterator[HAProxyProcess]:
    """Start the target HAProxy and wait until its first and last endpoints answer 200."""
    socket = work / "target.sock"
    cfg = work / "target.cfg"
    cfg.write_text(TARGET_CFG.format(socket=socket, binds=_binds()))
    argv = [haproxy_path(), "-f", str(cfg)]
    async with started("haproxy-target", argv, HELPER_CORE, work) as child:
        first, last = endpoints(MAX_TARGETS)[0], endpoints(MAX_TARGETS)[-1]

        async def serving() -> bool:
            return await http_status(*first) == 200 and await http_status(*last) == 200

        await wait_until(serving, 30, "the target HAProxy serving", child)
        yield HAProxyProcess(child, socket)


@contextlib.asynccontextmanager
async def haproxy_checker(
    work: Path, targets: list[tuple[str, int]], inter_ms: int, server_options: str = ""
) -> AsyncIterator[HAProxyProcess]:
    """HAProxy checking every target each `inter_ms`, one thread on the measured core; yields once
    every server has passed a check (so the measuring window sees only steady-state checks).
    `server_options` are added to every server (` check-ssl verify none` for HTTPS checks)."""
    socket = work / "checker.sock"
    cfg = work / "checker.cfg"
    servers = "\n".join(f"    server t{i} {a}:{p}" for i, (a, p) in enumerate(targets))
    cfg.write_text(
        CHECKER_CFG.format(
            socket=socket,
            port=unused_port(),
            path=HEALTH_PATH,
            inter_ms=inter_ms,
            server_options=server_options,
            servers=servers,
        )
    )
    argv = [haproxy_path(), "-f", str(cfg)]
    async with started("haproxy-checker", argv, MEASURED_CORE, work) as child:
        checker = HAProxyProcess(child, socket)

        async def all_checked() -> bool:
            rows = await checker.servers()
            return len(rows) == len(targets) and all(r["check_status"] == "L7OK" for r in rows)

        await wait_until(all_checked, 30, "HAProxy checking every server once", child)
        yield checker
