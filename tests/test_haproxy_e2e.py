"""The exporter driving a real HAProxy (master-worker) in front of real backends, under load.

A client sends requests through HAProxy all along. A request may fail only while a killed backend
is still in HAProxy's rotation (between the kill and its eviction); those are counted and
reported, every other failure fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.haproxy_proc import (
    FAST,
    REQUIRES_HAPROXY,
    Backend,
    backends,
    haproxy,
    haproxy_binary,
    in_rotation,
    load,
    reload_env,
    unexplained_failures,
)
from tests.process import ExporterProcess, exporter, value
from tests.servers import target_server

pytestmark = REQUIRES_HAPROXY


@contextlib.asynccontextmanager
async def dump_log_on_failure(proc: ExporterProcess) -> AsyncIterator[None]:
    try:
        yield
    except AssertionError as err:
        raise AssertionError(f"{err}\nexporter log:\n" + "\n".join(proc.log[-40:])) from None


@pytest.mark.parametrize("mode", ["signal", "master-socket", "command", "runtime-api"])
async def test_flapping_backend_under_load_fails_no_request_after_eviction(
    tmp_path: Path, mode: str
):
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        targets = ", ".join(b.target for b in (b0, b1, b2))
        env = {**FAST, **reload_env(mode, hx), "HEALTHCHECK_TARGETS": targets}
        async with exporter(env) as proc:
            await hx.wait_for_servers(lambda s: len(s) == 3)
            windows: list[tuple[float, float]] = []
            evictions: list[float] = []
            async with load(hx.url) as client, dump_log_on_failure(proc):
                for _ in range(25):  # 50 state flips of b1
                    killed = time.monotonic()
                    await b1.kill()
                    await hx.wait_for_servers(lambda s: not in_rotation(s, b1.server))
                    evicted = time.monotonic()
                    windows.append((killed, evicted))
                    evictions.append(evicted - killed)
                    await b1.start()
                    await hx.wait_for_servers(lambda s: in_rotation(s, b1.server))
                    await asyncio.sleep(0.05)
            metrics = await proc.metrics()
    failures = [r for r in client.results if not r.ok]
    served = {r.detail for r in client.results if r.ok}
    print(
        f"\n{mode}: {len(client.results)} requests, {len(failures)} failed before eviction, "
        f"eviction after {sum(evictions) / len(evictions):.3f}s on average"
    )
    assert unexplained_failures(client.results, windows) == []
    assert served == {"b0", "b1", "b2"}
    assert len(client.results) > 200
    assert value(metrics, "healthcheck_haproxy_reloads_total", result="failure") == 0
    if mode == "runtime-api":  # every flip through the stats socket, not one reload
        assert value(metrics, "healthcheck_haproxy_reloads_total", result="success") == 0
        assert value(metrics, "healthcheck_haproxy_runtime_commands_total", result="success") >= 50
        assert value(metrics, "healthcheck_haproxy_runtime_commands_total", result="failure") == 0
    else:  # changes that meet inside the minimum reload interval share one reload
        assert value(metrics, "healthcheck_haproxy_reloads_total", result="success") >= 25


async def test_dead_backend_rejoins_after_rise_successes(tmp_path: Path):
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        targets = ", ".join(b.target for b in (b0, b1, b2))
        env = {
            **FAST,
            **reload_env("master-socket", hx),
            "HEALTHCHECK_RISE": "5",
            "HEALTHCHECK_INTERVAL": "200ms",
            "HEALTHCHECK_TARGETS": targets,
        }
        async with exporter(env) as proc:
            await hx.wait_for_servers(lambda s: len(s) == 3)
            await b2.kill()
            await hx.wait_for_servers(lambda s: b2.server not in s)
            assert b2.server not in hx.backends_cfg.read_text()
            revived = time.monotonic()
            await b2.start()
            await hx.wait_for_servers(lambda s: b2.server in s)
            rejoined = time.monotonic() - revived
            log = "\n".join(proc.log)
    assert rejoined >= 4 * 0.2  # five successes, 200 ms apart, at the least
    assert "consecutive_successes=5" in log


BAD_WHEN_PORT = """\
{{ header }}
{% for b in backends %}
backend {{ b.name }}
{% for s in b.servers %}
    server {{ s.name }} {{ s.address }}\
{{ " no-such-keyword" if s.target.port == "%(port)s" else "" }}
{% endfor %}
{% endfor %}
"""


@pytest.mark.parametrize("guard", ["check-command", "reload-failure", "signal-reload-failure"])
async def test_config_haproxy_rejects_leaves_it_serving_the_last_good_one(
    tmp_path: Path, guard: str
):
    """A template whose output HAProxy refuses once a third backend appears: with a check command
    the file never goes live; without one the reload fails and the old workers keep serving (in
    signal mode, seen as no new worker under the master within the reload timeout)."""
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        template = tmp_path / "backends.cfg.j2"
        template.write_text(BAD_WHEN_PORT.replace("%(port)s", str(b2.port)))
        targets_file = tmp_path / "targets.txt.yml"
        write_targets(targets_file, [b0, b1])
        env = {
            **FAST,
            **reload_env("signal" if guard.startswith("signal") else "master-socket", hx),
            "HEALTHCHECK_HAPROXY_TEMPLATE": str(template),
            "HEALTHCHECK_TARGETS_FILE": str(targets_file),
            "HEALTHCHECK_HAPROXY_RELOAD_TIMEOUT": "2s",
        }
        if guard == "check-command":
            env["HEALTHCHECK_HAPROXY_CHECK_COMMAND"] = hx.check_command()
        async with exporter(env) as proc, dump_log_on_failure(proc):
            await hx.wait_for_servers(lambda s: len(s) == 2)
            good = hx.backends_cfg.read_text()
            async with load(hx.url) as client:
                write_targets(targets_file, [b0, b1, b2])
                counter = (
                    "healthcheck_haproxy_config_check_failures_total 1.0"
                    if guard == "check-command"
                    else 'healthcheck_haproxy_reloads_total{result="failure"} 1.0'
                )
                await proc.wait_for_metrics(lambda m: counter in m, what=counter)
                await asyncio.sleep(0.3)
            error = await proc.wait_for_log("level=error")
            servers = await hx.servers()
    assert set(servers) == {b0.server, b1.server}
    assert [r for r in client.results if not r.ok] == []
    assert {r.detail for r in client.results} == {"b0", "b1"}
    assert "no-such-keyword" in error or "rejected" in error
    if guard == "check-command":
        assert hx.backends_cfg.read_text() == good


def write_targets(
    path: Path,
    items: list[Backend],
    extra: Sequence[tuple[str, int]] = (),
) -> None:
    """Atomically replace the targets file (YAML list of objects); `extra`: (app, port) pairs."""
    pairs = [("web", b.port) for b in items] + list(extra)
    lines = [f"- {{app: {app}, ip: 127.0.0.1, port: {port}, path: /health}}" for app, port in pairs]
    tmp = path.with_suffix(".new")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


async def test_runtime_api_adds_and_deletes_servers_without_reload(tmp_path: Path):
    async with backends() as (b0, b1, b2), haproxy(tmp_path) as hx:
        targets_file = tmp_path / "targets.yml"
        write_targets(targets_file, [b0, b1])
        env = {
            **FAST,
            **reload_env("runtime-api", hx),
            "HEALTHCHECK_TARGETS_FILE": str(targets_file),
        }
        async with exporter(env) as proc, dump_log_on_failure(proc):
            await hx.wait_for_servers(
                lambda s: in_rotation(s, b0.server) and in_rotation(s, b1.server)
            )
            write_targets(targets_file, [b0, b1, b2])
            await hx.wait_for_servers(lambda s: in_rotation(s, b2.server))
            write_targets(targets_file, [b0, b2])
            await hx.wait_for_servers(lambda s: b1.server not in s)
            metrics = await proc.metrics()
            assert value(metrics, "healthcheck_haproxy_reloads_total", result="success") == 0
            assert f"server {b2.server}" in hx.backends_cfg.read_text()
            assert f"server {b1.server}" not in hx.backends_cfg.read_text()
            # A new app needs a new backend: only a reload can add one.
            write_targets(targets_file, [b0, b2], extra=[("api", b1.port)])
            await hx.wait_for_servers(lambda s: len(s) == 1, backend="api")
            await proc.wait_for_metrics(
                lambda m: value(m, "healthcheck_haproxy_reloads_total", result="success") == 1
            )
            await proc.wait_for_log("runtime API could not apply")


async def test_exporter_killed_during_writes_leaves_a_valid_file(tmp_path: Path):
    """SIGKILL the real exporter while it rewrites a 400-server file many times a second."""
    binary = haproxy_binary()
    assert binary is not None
    main_cfg = tmp_path / "haproxy.cfg"
    main_cfg.write_text("defaults\n    mode http\n    timeout connect 1s\n"
                        "    timeout client 1s\n    timeout server 1s\n"
                        "frontend fe\n    bind 127.0.0.1:1\n    default_backend web\n")  # fmt: skip
    config = tmp_path / "backends.cfg"
    async with target_server() as srv:
        targets = [
            {"id": f"t{i}", "app": "web", "ip": "127.0.0.1", "port": srv.port, "path": "/flip"}
            for i in range(400)
        ]
        env = {
            "HEALTHCHECK_INTERVAL": "50ms",
            "HEALTHCHECK_FALL": "1",
            "HEALTHCHECK_RISE": "1",
            "HEALTHCHECK_TARGETS": json.dumps(targets),
            "HEALTHCHECK_HAPROXY_CONFIG": str(config),
        }
        for round_ in range(5):
            async with exporter(env) as proc:
                await proc.wait_for_metrics(lambda m: "haproxy_config_writes_total" in m)
                for _ in range(10 + 7 * round_):  # flips keep the writer busy until the kill
                    srv.flip.healthy = not srv.flip.healthy
                    await asyncio.sleep(0.01)
                proc.proc.kill()
                await proc.proc.wait()
            check = await asyncio.create_subprocess_exec(
                binary, "-c", "-q", "-f", str(main_cfg), "-f", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await check.communicate()
            assert check.returncode == 0, output.decode()
            text = config.read_text()
            assert text.startswith("# Generated by healthcheck-exporter")
            assert text.endswith("\n")
            servers = re.findall(r"^    server (t\d+) 127\.0\.0\.1:\d+$", text, re.MULTILINE)
            assert text.count("\n    server ") == len(servers) == len(set(servers))
