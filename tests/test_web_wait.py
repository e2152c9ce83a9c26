"""`healthcheck-exporter wait` against a real running exporter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import yaml

from tests.certs import make_certificates
from tests.haproxy_proc import Backend
from tests.process import EXPORTER, ExporterProcess, child_env, exporter, run_cli
from tests.servers import Flip, target_server, unused_port

FAST = {"HEALTHCHECK_INTERVAL": "200ms", "HEALTHCHECK_TIMEOUT": "5s", "HEALTHCHECK_RISE": "2"}


def targets(app: str, *backends: Backend) -> str:
    return json.dumps(
        [
            {"id": f"{app}-{i}", "app": app, "ip": "127.0.0.1", "port": b.port}
            for i, b in enumerate(backends, 1)
        ]
    )


@contextlib.asynccontextmanager
async def one_up_one_down() -> AsyncIterator[tuple[ExporterProcess, Flip]]:
    """An exporter watching app `web`: web-1 up, web-2 answering 503 until the test flips it.
    (One server holds its port throughout: a port left free for a "dead" backend can be taken
    by another process on a shared machine.)"""
    async with target_server() as srv:
        srv.flip.healthy = False
        entries = [
            {"id": "web-1", "app": "web", "ip": "127.0.0.1", "port": srv.port},
            {"id": "web-2", "app": "web", "ip": "127.0.0.1", "port": srv.port, "path": "/flip"},
        ]
        async with exporter({**FAST, "HEALTHCHECK_TARGETS": json.dumps(entries)}) as proc:
            await proc.wait_for_log(r"target unhealthy.*web-2")  # DOWN, not just UP 1/3
            yield proc, srv.flip


async def test_wait_exits_0_once_every_target_is_up_with_a_line_per_change():
    async with one_up_one_down() as (proc, late):
        waiting = await asyncio.create_subprocess_exec(
            *EXPORTER,
            *("wait", "--app", "web", "--url", proc.base_url, "--timeout", "30s"),
            env=child_env({}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert waiting.stdout is not None
        first = await asyncio.wait_for(waiting.stdout.readline(), 30)
        late.healthy = True  # only once `wait` has seen it down
        rest, err = await asyncio.wait_for(waiting.communicate(), 60)
    assert waiting.returncode == 0, (first, rest, err)
    lines = [first.decode().strip(), *rest.decode().strip().splitlines()]
    assert lines[0] == "web: 1/2 up (web-2 DOWN: http_status)", lines
    assert "web: 1/2 up (web-2 DOWN 1/2: ok)" in lines  # rise 2: one success so far
    assert re.fullmatch(r"web: 2/2 up after \d+\.\ds", lines[-1]), lines
    assert len(lines) == len(set(lines))  # one line per change, no repeats


async def test_wait_times_out_with_exit_1_naming_each_target_not_up():
    async with one_up_one_down() as (proc, _):
        code, out, err = await run_cli(
            "wait", "--app", "web", "--url", proc.base_url, "--timeout", "1s"
        )
        assert code == 1, (out, err)
        assert "timed out after 1s: 1/2 up" in err
        assert "web-2 DOWN: http_status" in err
        # --min-up 1 is satisfied by the live one.
        code, out, _ = await run_cli(
            "wait", "--app", "web", "--url", proc.base_url, "--min-up", "1"
        )
        assert code == 0 and "web: 1/2 up after" in out
        # No targets of the app: keep waiting, then time out.
        code, out, err = await run_cli(
            "wait", "--app", "nope", "--url", proc.base_url, "--timeout", "500ms"
        )
        assert code == 1 and "nope: no targets yet" in out and "0/0 up" in err


async def test_a_target_healthy_only_by_its_initial_state_does_not_count():
    async with target_server() as srv:
        env = {
            "HEALTHCHECK_TIMEOUT": "30s",
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/hang",  # its check never ends
        }
        async with exporter(env, ready=False) as proc:
            code, out, err = await run_cli(
                "wait", "--app", "web", "--url", proc.base_url, "--timeout", "1s"
            )
    assert code == 1, (out, err)
    assert "0/1 up" in err and "UP: not checked yet" in err


async def test_check_now_does_not_wait_for_the_next_interval():
    async with target_server() as srv:
        srv.flip.healthy = False
        # After the first round, no check comes for an hour: only forced ones.
        env = {
            "HEALTHCHECK_INTERVAL": "1h",
            "HEALTHCHECK_FALL": "1",
            "HEALTHCHECK_RISE": "1",
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/flip",
            "HEALTHCHECK_WEB_ENABLE_ADMIN_API": "true",
        }
        async with exporter(env) as proc:
            srv.flip.healthy = True  # the first round saw it down
            wait = ["wait", "--app", "web", "--url", proc.base_url, "--timeout", "1s"]
            code, out, err = await run_cli(*wait)
            assert code == 1 and "DOWN: http_status" in err, (out, err)
            code, out, err = await run_cli(*wait, "--check-now")
            assert code == 0, (out, err)
            assert re.fullmatch(r"web: 1/1 up after \d+\.\ds", out.strip())


async def test_wait_usage_errors_are_exit_2_and_an_unreachable_exporter_is_exit_3():
    for args in (
        ["wait"],
        ["wait", "--app", "web", "--min-up", "0"],
        ["wait", "--app", "web", "--timeout", "soon"],
        ["wait", "--app", "web", "--password-file", "/nonexistent"],
    ):
        code, _, err = await run_cli(*args)
        assert code == 2, (args, err)
        assert "Traceback" not in err
    url = f"http://127.0.0.1:{unused_port()}"
    code, _, err = await run_cli("wait", "--app", "web", "--url", url)
    assert code == 3 and "cannot use the exporter" in err and "Traceback" not in err


async def test_wait_reaches_a_secured_exporter_and_wrong_credentials_are_exit_3(tmp_path: Path):
    certs = make_certificates(tmp_path / "certs")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": str(certs.server.cert),
                    "key_file": str(certs.server.key),
                },
                "basic_auth_users": {"deploy": hashed},
            }
        )
    )
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    backend = Backend("a")
    await backend.start()
    try:
        listen = f"127.0.0.1:{unused_port()}"
        env = {
            **FAST,
            "HEALTHCHECK_LISTEN_ADDRESS": listen,
            "HEALTHCHECK_TARGETS": targets("web", backend),
            "HEALTHCHECK_WEB_CONFIG_FILE": str(web),
        }
        async with exporter(env):
            common = ["wait", "--app", "web", "--username", "deploy", "--ca-file"]
            # The URL comes from HEALTHCHECK_LISTEN_ADDRESS, https because the web config says.
            code, out, err = await run_cli(
                *common, str(certs.ca.cert), "--password-file", str(good), env=env
            )
            assert code == 0, (out, err)
            code, _, err = await run_cli(
                *common, str(certs.ca.cert), "--password-file", str(bad), env=env
            )
            assert code == 3 and "refused (401)" in err
            code, _, err = await run_cli(  # the system CAs do not know our test CA
                "wait", "--app", "web", "--username", "deploy", "--password-file", str(good),
                env=env,
            )  # fmt: skip
            assert code == 3 and "certificate" in err.lower()
    finally:
        await backend.kill()
