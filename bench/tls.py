"""HTTPS and TCP checks side by side (issue 12): our check engine, blackbox_exporter and HAProxy's
`check-ssl`, against one HAProxy TLS target (ECDSA P-256), TLS 1.2 and TLS 1.3; and a TCP check
against a plain HTTP one. Phases of `bench.compare` (`--only https,tcp`).

The TLS target is one HAProxy process on the helper core: 1,000 ports on 127.0.2.1 speak only
TLS 1.2, 1,000 on 127.0.2.2 only TLS 1.3, each answering `200` with `http-request return`.
Certificates are verified by no one (`verify none`, `insecure_skip_verify`), alike for all three.

Ours is the check engine alone (`HTTPChecker`, 100 checks in flight, in a child pinned to the
measured core; CPU from its own clock), with sessions resumed as in service, and again with every
session forgotten (each check a full handshake): the difference is what resumption saves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import anchors
from bench.checker import keep_checking
from bench.ours import at_scale
from bench.procs import (
    HELPER_CORE,
    MEASURED_CORE,
    proc_status_kib,
    run_bounded,
    started,
    wait_until,
)
from bench.target import TARGET_HEADER, HAProxyProcess, endpoints, haproxy_path
from exporter.checks import HTTPChecker
from exporter.checks import tls as tls_checks
from exporter.checks.session_offer import ended, offer
from exporter.model import CheckOptions, Target

VERSIONS = {"tls12": "127.0.2.1", "tls13": "127.0.2.2"}
FIRST_PORT, PORTS = 21000, 1000
HEALTH_PATH = "/health"
CONCURRENCY = 100
HAPROXY_INTER_MS = 1000  # 1,000 servers: 1,000 checks/s, which the one-thread TLS target serves

TLS_TARGET_CFG = (
    TARGET_HEADER
    + """
frontend tls12
    maxconn 4000
    bind {tls12}:{first}-{last} ssl crt {pem} ssl-max-ver TLSv1.2
    http-request return status 200

frontend tls13
    maxconn 4000
    bind {tls13}:{first}-{last} ssl crt {pem} ssl-min-ver TLSv1.3
    http-request return status 200
"""
)

BLACKBOX_TLS_CFG = """\
modules:
  https_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        insecure_skip_verify: true
"""


def tls_endpoints(version: str, ports: int = PORTS) -> list[tuple[str, int]]:
    return [(VERSIONS[version], FIRST_PORT + i) for i in range(ports)]


def write_https_targets(path: Path, count: int) -> None:
    """A JSON targets file of `count` HTTPS targets, half TLS 1.2 and half TLS 1.3 (one app per
    version), for `ours.at_scale` against a `tls_target` with `count // 2` ports per version."""
    entries = [
        {
            "app": version,
            "ip": address,
            "port": port,
            "path": HEALTH_PATH,
            "scheme": "https",
            "tls_insecure_skip_verify": True,
        }
        for version in VERSIONS
        for address, port in tls_endpoints(version, count // 2)
    ]
    path.write_text(json.dumps(entries))


def make_certificate(work: Path) -> Path:
    """A self-signed ECDSA P-256 certificate and its key in one PEM file, as HAProxy takes it."""
    key, cert, pem = work / "tls.key", work / "tls.crt", work / "tls.pem"
    names = "subjectAltName=IP:127.0.2.1,IP:127.0.2.2"
    for argv in (
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        ["openssl", "req", "-x509", "-new", "-key", str(key), "-subj", "/CN=bench", "-days",
         "30", "-addext", names, "-out", str(cert)],
    ):  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return pem


def _handshake_ok(address: str, port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((address, port), 2) as raw,
        context.wrap_socket(raw) as conn,
    ):
        conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        return conn.recv(64).startswith(b"HTTP/1.1 200")


@contextlib.asynccontextmanager
async def tls_target(work: Path, ports: int = PORTS) -> AsyncIterator[HAProxyProcess]:
    """Start the TLS target HAProxy on the helper core (`ports` per version) and wait until both
    versions answer."""
    socket_path = work / "tls-target.sock"
    cfg = work / "tls-target.cfg"
    cfg.write_text(
        TLS_TARGET_CFG.format(
            socket=socket_path,
            pem=make_certificate(work),
            first=FIRST_PORT,
            last=FIRST_PORT + ports - 1,
            **VERSIONS,
        )
    )
    argv = [haproxy_path(), "-f", str(cfg)]
    async with started("haproxy-tls-target", argv, HELPER_CORE, work) as child:

        async def serving() -> bool:
            for address in VERSIONS.values():
                if not await asyncio.to_thread(_handshake_ok, address, FIRST_PORT):
                    return False
            return True

        await wait_until(serving, 30, "the TLS target HAProxy serving", child)
        yield HAProxyProcess(child, socket_path)


# -- ours: the check engine in a child process ------------------------------------------------


class _NoSessions(dict[Any, Any]):
    """A session store that keeps nothing: every check a full handshake."""

    def __setitem__(self, key: Any, value: Any) -> None:
        del key, value


def _child(kind: str, seconds: float, full: bool) -> None:
    """Runs in the child: check `kind` targets (tls12, tls13, tcp, http) for `seconds`."""
    os.sched_setaffinity(0, {MEASURED_CORE})
    if kind in VERSIONS:
        options = CheckOptions(scheme="https", tls_insecure_skip_verify=True)
        points = tls_endpoints(kind)
    else:
        options = CheckOptions(scheme="tcp") if kind == "tcp" else CheckOptions()
        points = endpoints(2000)
    if kind == "http":  # the plain path, exactly as a target without options takes it
        targets = [Target(f"{a}:{p}", "bench", a, str(p), HEALTH_PATH) for a, p in points]
    else:
        targets = [Target(f"{a}:{p}", "bench", a, str(p), HEALTH_PATH, options) for a, p in points]
    if full:
        tls_checks._sessions = _NoSessions()  # type: ignore[assignment]
    checker = HTTPChecker(timeout=5.0)
    import uvloop

    async def measured() -> dict[str, float]:
        # Steady state, as in service: every target checked once first (its session kept),
        # then the window is measured.
        await checker.check_all(targets, CONCURRENCY)
        checker.tls_handshakes.update({False: 0, True: 0})
        return await keep_checking(targets, CONCURRENCY, seconds, checker)

    figures: dict[str, Any] = uvloop.run(measured())
    handshakes = checker.tls_handshakes
    total = handshakes[False] + handshakes[True]
    figures["handshakes"] = total
    figures["resumed_share"] = handshakes[True] / total if total else None
    print(json.dumps(figures))


# -- the floor: OpenSSL's own work for one check, with no socket and no engine ----------------

FLOOR_HANDSHAKES = 3000
FLOOR_REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
FLOOR_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _FloorPair:
    """One client connection (the check's TLS context, its session offered as the engine offers
    it) and one in-process server, joined by memory BIOs; only the client's calls are timed."""

    def __init__(self, client: ssl.SSLContext, server: ssl.SSLContext, session: Any) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.spent = 0.0
        self.clock_reads = 2
        started = time.thread_time()
        self.client = client.wrap_bio(self.c_in, self.c_out, server_hostname=None)
        if session is not None:
            offer(self.client, session)
        self.spent += time.thread_time() - started
        self.server = server.wrap_bio(self.s_in, self.s_out, server_side=True)

    def _client_step(self, step: Callable[[], Any]) -> Any:
        # The thread's CPU clock, not the wall: another process on the core must not count.
        started = time.thread_time()
        try:
            return self._step(step, self.c_out, self.s_in)
        finally:
            self.spent += time.thread_time() - started
            self.clock_reads += 2

    def _server_step(self, step: Callable[[], Any]) -> Any:
        return self._step(step, self.s_out, self.c_in)

    @staticmethod
    def _step(step: Callable[[], Any], outgoing: ssl.MemoryBIO, peer: ssl.MemoryBIO) -> Any:
        """`step()`'s value (None when it waits for the peer); what it sent goes to the peer."""
        try:
            return step()
        except ssl.SSLWantReadError:
            return None
        finally:
            if out := outgoing.read():
                peer.write(out)

    def check(self) -> bytes:
        """Handshake, request, response, as a check has them; returns the response."""
        client_done = server_done = False
        for _ in range(8):  # a handshake is 2-3 flights: bounded all the same
            client_done = client_done or self._client_step(self._client_handshake) is True
            server_done = server_done or self._server_step(self._server_handshake) is True
            if client_done and server_done:
                break
        self._server_step(lambda: self.server.read(1024))
        self._server_step(lambda: self.server.write(FLOOR_RESPONSE))
        response: bytes = self._client_step(lambda: self.client.read(65536)) or b""
        self._client_step(lambda: ended(self.client))
        return response

    def _client_handshake(self) -> bool:
        self.client.do_handshake()
        self.client.write(FLOOR_REQUEST)
        return True

    def _server_handshake(self) -> bool:
        self.server.do_handshake()
        return True


def _floor_contexts(version: str, work: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pem = make_certificate(work)
    server.load_cert_chain(pem)
    tls_version = ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3
    server.minimum_version = server.maximum_version = tls_version
    client = tls_checks.tls_context_for(CheckOptions(scheme="https", tls_insecure_skip_verify=True))
    return client, server


def _floor_child(version: str, handshakes: int) -> None:
    """Runs in the child: the client side of `handshakes` checks, resumed and full, in process."""
    os.sched_setaffinity(0, {MEASURED_CORE})
    with tempfile.TemporaryDirectory() as tmp:
        client, server = _floor_contexts(version, Path(tmp))
    figures: dict[str, Any] = {"handshakes": handshakes}
    clock_read = _clock_read_seconds()
    for kind in ("resumed", "full"):
        first = _FloorPair(client, server, None)
        if not first.check().startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{version}: the in-process exchange did not complete")
        session = first.client.session if kind == "resumed" else None
        spent, resumed = 0.0, 0
        for _ in range(handshakes):
            pair = _FloorPair(client, server, session)
            pair.check()
            spent += pair.spent - pair.clock_reads * clock_read
            resumed += pair.client.session_reused
        figures[f"{kind}_cpu_ms"] = 1000 * spent / handshakes
        figures[f"{kind}_share"] = resumed / handshakes
    figures["kept_session_kb"] = _kept_session_kb(client, server, handshakes)
    print(json.dumps(figures))


def _clock_read_seconds() -> float:
    """What one read of the thread's CPU clock costs (a system call), to take out of `spent`."""
    reads = 100_000
    started = time.thread_time()
    for _ in range(reads):
        time.thread_time()
    return (time.thread_time() - started) / reads


def _kept_session_kb(client: ssl.SSLContext, server: ssl.SSLContext, count: int) -> float:
    """The memory one kept session holds (as the engine keeps one per HTTPS target): the RSS
    growth of `count` sessions, each from its own full handshake, over their count."""
    before = proc_status_kib(os.getpid(), "VmRSS")
    kept = []
    for _ in range(count):
        pair = _FloorPair(client, server, None)
        pair.check()
        kept.append(pair.client.session)
    return (proc_status_kib(os.getpid(), "VmRSS") - before) * 1024 / 1000 / len(kept)


async def floor(version: str) -> dict[str, Any]:
    """OpenSSL's client-side work for one HTTPS check (resumed and full), measured in process
    with no socket and no engine: what no Python check on this OpenSSL can go below."""
    argv = [sys.executable, "-m", "bench.tls", "--floor", version]
    output = await run_bounded(argv, MEASURED_CORE, 120)
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return figures


async def ours(kind: str, seconds: float, full: bool = False) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.tls", "--child", kind, "--seconds", str(seconds)]
    if full:
        argv.append("--full")
    output = await run_bounded(argv, MEASURED_CORE, seconds + 60)
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return figures


# -- the phases --------------------------------------------------------------------------------


async def _recorded(results: dict[str, Any], name: str, measure: Awaitable[dict[str, Any]]) -> None:
    """One row's measurement; a failure is recorded under `errors` and the other rows still run."""
    try:
        results[name] = await measure
    except Exception as err:
        results.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"


async def https(work: Path, seconds: int) -> dict[str, Any]:
    """Every HTTPS row: ours (resumed and full), blackbox_exporter and HAProxy, per version."""
    results: dict[str, Any] = {}
    async with tls_target(work) as target:
        for version in VERSIONS:
            urls = [f"https://{a}:{p}{HEALTH_PATH}" for a, p in tls_endpoints(version)]
            await _recorded(results, f"ours_{version}", ours(version, seconds))
            await _recorded(results, f"ours_full_{version}", ours(version, seconds, full=True))
            await _recorded(results, f"floor_{version}", floor(version))
            await _recorded(
                results,
                f"blackbox_{version}",
                anchors.blackbox(work, target, seconds, PORTS, urls, "https_2xx", BLACKBOX_TLS_CFG),
            )
            await _recorded(
                results,
                f"haproxy_{version}",
                anchors.haproxy_checks(
                    work,
                    target,
                    PORTS,
                    HAPROXY_INTER_MS,
                    seconds,
                    tls_endpoints(version),
                    " check-ssl verify none",
                ),
            )
    return results


async def https_at_scale(work: Path, targets: int, quiet_s: float, scrapes: int) -> dict[str, Any]:
    """The exporter with `targets` HTTPS targets (half TLS 1.2, half TLS 1.3) at 15 s, measured
    as `ours.at_scale` measures plain ones (phase `https10k`)."""
    async with tls_target(work, targets // 2) as target:
        return await at_scale(work, target, targets, quiet_s, scrapes, write_https_targets)


async def tcp(seconds: int) -> dict[str, Any]:
    """A TCP check against a plain HTTP one, on the plain target farm, one after the other."""
    return {"ours_tcp": await ours("tcp", seconds), "ours_http": await ours("http", seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--child", choices=[*VERSIONS, "tcp", "http"])
    mode.add_argument("--floor", choices=list(VERSIONS), help="OpenSSL's work alone, in process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--full", action="store_true", help="forget every session")
    args = parser.parse_args()
    if args.floor:
        _floor_child(args.floor, FLOOR_HANDSHAKES)
    else:
        _child(args.child, args.seconds, args.full)


if __name__ == "__main__":
    main()
