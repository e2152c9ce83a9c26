"""The listening socket against hostile clients and careless operators (issue 13, defects 3, 10
and 15): bounded connections and header-read time, the fd limit, 431 for oversized headers,
and an unbindable listen address."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.process import EXPORTER, exporter, run_cli, samples, value
from tests.servers import target_server, unused_port

TARGETS = {"HEALTHCHECK_INTERVAL": "100ms", "HEALTHCHECK_TIMEOUT": "5s"}


def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def _expect_listen_error(address: str, wrapper: list[str] | None = None) -> str:
    env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:1", "HEALTHCHECK_LISTEN_ADDRESS": address}
    if wrapper is None:
        code, out, err = await run_cli(env=env)
    else:
        proc = await asyncio.create_subprocess_exec(
            *wrapper,
            *EXPORTER,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 60)
        code, out, err = proc.returncode, raw_out.decode(), raw_err.decode()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert "HEALTHCHECK_LISTEN_ADDRESS" in lines[0]
    return lines[0]


async def test_an_unbindable_listen_address_is_exit_2_naming_the_variable():
    held = _held_port()
    try:
        line = await _expect_listen_error(f"127.0.0.1:{held.getsockname()[1]}")
        assert "address already in use" in line
    finally:
        held.close()
    line = await _expect_listen_error("192.0.2.1:9898")  # TEST-NET-1: not an address of ours
    assert "cannot assign requested address" in line
    line = await _expect_listen_error("no-such-host.invalid:9898")
    assert "cannot resolve" in line


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
async def test_a_privileged_port_for_an_unprivileged_user_is_exit_2():
    wrapper = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    line = await _expect_listen_error("127.0.0.1:81", wrapper)
    assert "permission denied" in line


async def test_an_oversized_header_gets_431_and_a_short_rate_limited_log_line():
    env = {"HEALTHCHECK_TARGETS": f"web=127.0.0.1:{unused_port()}"}
    async with exporter(env) as proc:
        host, _, port = proc.base_url.removeprefix("http://").rpartition(":")
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            status = await asyncio.wait_for(reader.readline(), 10)
            assert status.split(b" ")[1] == b"431", status
            writer.close()
        assert (await proc.get("/-/healthy"))[0] == 200
        await asyncio.sleep(0.2)
    rejected = [line for line in proc.log if "malformed HTTP request" in line]
    assert len(rejected) == 1, rejected  # rate-limited: one line for twenty requests
    assert "status=431" in rejected[0] and len(rejected[0]) < 300
    assert not [line for line in proc.log if "Traceback" in line or "aiohttp" in line]


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit (util-linux)")
async def test_idle_connections_cannot_starve_checks_and_are_closed_unless_they_send_headers():
    async with target_server() as srv:
        targets = [
            {"id": f"web-{i}", "app": "web", "ip": "127.0.0.1", "port": srv.port, "path": f"/t/{i}"}
            for i in range(20)
        ]
        env = {**TARGETS, "HEALTHCHECK_TARGETS": json.dumps(targets)}
        # A soft limit of 256 with a hard limit of 512: raised to 512 at start; then 700 idle
        # connections would take every descriptor if nothing bounded them.
        async with exporter(env, prefix=["prlimit", "--nofile=256:512"]) as proc:
            assert _limits(proc.proc.pid) == (512, 512)
            host, _, port = proc.base_url.removeprefix("http://").rpartition(":")
            idle = []
            for _ in range(700):
                idle.append(await asyncio.open_connection(host, int(port)))
            await asyncio.sleep(2)  # 20 rounds of checks while the connections are held
            closed = 0
            for reader, _ in idle:  # the server ends each: refused at once, or after 10 s
                if await asyncio.wait_for(reader.read(), 30) == b"":
                    closed += 1
            assert closed == len(idle)
            for _, writer in idle:
                writer.close()
            body = await proc.metrics()
    assert value(body, "healthcheck_checks_total", result="local_resources") is None
    failures = {k: v for k, v in samples(body, "healthcheck_checks_total").items()
                if dict(k)["result"] != "success"}  # fmt: skip
    assert value(body, "healthcheck_targets", state="unhealthy") == 0, failures
