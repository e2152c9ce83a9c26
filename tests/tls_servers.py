"""TLS servers on loopback and the certificates they present, made by the `openssl` CLI.

certs = Certificates.make(tmp_dir)   # a test CA; good, expired, self-signed, wrong-name
async with tls_server(certs.server_context("good")) as srv:
    result = await checker.check(srv.target())
    assert srv.server_names == ["localhost"]
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.model import CheckOptions, Target

LOOPBACK = "127.0.0.1"
NAMES = "subjectAltName=DNS:localhost,IP:127.0.0.1"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Certificates:
    """PEM files in `directory`: `ca.pem`; for each kind, `<kind>.pem` and `<kind>.key`.

    Kinds: good (CA-signed for localhost and 127.0.0.1), expired (the same, expired a day ago),
    wrong-name (CA-signed for other.example only), self-signed (localhost, no CA), client (a
    client certificate signed by the CA), huge (good's key, its chain padded past 1 MB).
    """

    directory: Path

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        run = lambda *args: _openssl(*args, cwd=directory)  # noqa: E731
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
        run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Test CA", "-days", "30",
            "-out", "ca.pem")  # fmt: skip
        signed = {
            "good": (NAMES, "30"),
            "expired": (NAMES, "-1"),  # NotAfter a day before NotBefore: expired at once
            "wrong-name": ("subjectAltName=DNS:other.example", "30"),
            "client": ("extendedKeyUsage=clientAuth", "30"),
        }
        for kind, (extension, days) in signed.items():
            run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{kind}.key")
            run("req", "-new", "-key", f"{kind}.key", "-subj", "/CN=localhost", "-out",
                f"{kind}.csr")  # fmt: skip
            (directory / f"{kind}.ext").write_text(extension + "\n")
            run("x509", "-req", "-in", f"{kind}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", days, "-extfile", f"{kind}.ext", "-out",
                f"{kind}.pem")  # fmt: skip
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "self-signed.key")
        run("req", "-x509", "-new", "-key", "self-signed.key", "-subj", "/CN=localhost",
            "-days", "30", "-addext", NAMES, "-out", "self-signed.pem")  # fmt: skip
        certs = cls(directory)
        ca = (directory / "ca.pem").read_bytes()
        padding = ca * (1024 * 1024 // len(ca) + 1)
        (directory / "huge.pem").write_bytes((directory / "good.pem").read_bytes() + padding)
        (directory / "huge.key").write_bytes((directory / "good.key").read_bytes())
        return certs

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def not_after(self, kind: str) -> float:
        out = subprocess.run(
            ["openssl", "x509", "-in", self.path(f"{kind}.pem"), "-noout", "-enddate"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return ssl.cert_time_to_seconds(out.strip().removeprefix("notAfter="))

    def server_context(
        self,
        kind: str,
        *,
        require_client_cert: bool = False,
        versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None,
        tickets: bool = True,
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.path(f"{kind}.pem"), self.path(f"{kind}.key"))
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.path("ca.pem"))
        if versions is not None:
            context.minimum_version, context.maximum_version = versions
        if not tickets:  # no tickets, and a session cache nobody can use: no resumption
            context.options |= ssl.OP_NO_TICKET
            context.num_tickets = 0
        return context


@dataclass
class TlsServer:
    """A running `tls_server()`: what each handshake showed."""

    port: int
    server_names: list[str | None] = field(default_factory=list)  # SNI, per handshake
    resumed: list[bool] = field(default_factory=list)  # per completed handshake
    versions: list[str | None] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    peer_certs: list[bool] = field(default_factory=list)  # whether the client sent one

    def target(self, path: str = "/health", **options: object) -> Target:
        return Target(
            id=f"tls-{self.port}",
            ip=LOOPBACK,
            port=str(self.port),
            health_check_path=path,
            options=CheckOptions(scheme="https", **options),  # type: ignore[arg-type]
        )


@contextlib.asynccontextmanager
async def tls_server(
    context: ssl.SSLContext, reply: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
) -> AsyncIterator[TlsServer]:
    """Serve HTTPS on 127.0.0.1 with `context`: read one request, answer `reply`, close."""
    state = TlsServer(port=0)

    def note_server_name(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        state.server_names.append(name)

    context.sni_callback = note_server_name
    handlers: dict[asyncio.StreamWriter, asyncio.Task[object]] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[writer] = task
        try:
            tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
            state.resumed.append(tls.session_reused)
            state.versions.append(tls.version())
            state.peer_certs.append(tls.getpeercert() is not None)
            state.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            del handlers[writer]

    server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=context, ssl_handshake_timeout=5)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        tasks = list(handlers.values())  # ended by ending their connections (see raw_server)
        for writer in list(handlers):
            writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def greeting_server(greeting: bytes) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that sends `greeting` on connect and then waits; its port."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            writer.write(greeting)
            await writer.drain()
            await reader.read()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


@contextlib.contextmanager
def blocking_tls_server(
    context: ssl.SSLContext,
    reply: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    *,
    close_notify: bool = True,
) -> Iterator[int]:
    """A TLS server in a thread on blocking sockets, whose handshake failures reach the client
    as alerts (asyncio's server closes without sending them). It answers `reply`, sends its
    close_notify and keeps the connection open until the client closes (or, without
    `close_notify`, just closes the connection). Yields its port."""
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):  # ssl.SSLError included
                conn.settimeout(5)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(reply)
                    if close_notify:
                        tls.unwrap()  # close_notify, then wait for the client's end

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(5)
        listener.close()
