"""A real DNS server for the tests: Debian's dnsmasq on a loopback port, records set per test.

dnsmasq reads SRV records only from its configuration, so `serve()` restarts it on the same
port with the new records: the exporter sees what a zone change (and a brief outage) looks like.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import unused_port


def dnsmasq() -> str:
    """dnsmasq's path; its absence fails the test (scripts/test.sh installs dnsmasq-base)."""
    path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if path is None:
        message = "dnsmasq is missing: scripts/test.sh installs dnsmasq-base"
        raise AssertionError(message)
    return path


@dataclass
class DnsServer:
    """dnsmasq answering for the zone `test.` (NXDOMAIN for unknown names, REFUSED elsewhere)."""

    directory: Path
    port: int = field(default_factory=unused_port)
    ttl: int = 300
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(
        self,
        srv: Sequence[tuple[str, str, int]] = (),
        hosts: Sequence[tuple[str, str]] = (),
        ttl: int | None = None,
    ) -> None:
        """(Re)start with these records: SRV (name, target, port), hosts (name, address)."""
        await self.stop()
        if ttl is not None:
            self.ttl = ttl
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "local=/test/",
            f"local-ttl={self.ttl}",
            "user=root" if os.geteuid() == 0 else "",
            "pid-file=",
            *(f"srv-host={name},{target},{port}" for name, target, port in srv),
            *(f"host-record={name},{address}" for name, address in hosts),
        ]
        config = self.directory / "dnsmasq.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = await asyncio.create_subprocess_exec(
            dnsmasq(), "--keep-in-foreground", f"--conf-file={config}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await self._wait_until_answering()

    async def _wait_until_answering(self) -> None:
        loop = asyncio.get_running_loop()
        query = bytes.fromhex("12340100000100000000000004746573740000010001")  # test. A
        deadline = loop.time() + 10
        while True:
            assert self.process is not None and self.process.returncode is None, "dnsmasq died"
            with contextlib.suppress(OSError, TimeoutError):
                transport, protocol = await loop.create_datagram_endpoint(
                    _Reply, remote_addr=("127.0.0.1", self.port)
                )
                try:
                    transport.sendto(query)
                    await asyncio.wait_for(protocol.answered.wait(), 0.2)
                    return
                finally:
                    transport.close()
            assert loop.time() < deadline, "dnsmasq never answered"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self.process = None


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answered = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.answered.set()


@contextlib.asynccontextmanager
async def dns_server(directory: Path) -> AsyncIterator[DnsServer]:
    server = DnsServer(directory)
    try:
        yield server
    finally:
        await server.stop()
