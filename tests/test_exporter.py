"""The exporter process end to end: env vars in, /metrics, logs, signals and exit statuses out."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from tests.process import exporter, promtool, run_cli, samples, value
from tests.servers import target_server, unused_port

FAST = {"HEALTHCHECK_INTERVAL": "100ms", "HEALTHCHECK_TIMEOUT": "1s", "HEALTHCHECK_FALL": "2"}


async def test_metrics_show_each_target_with_fall_rise_state():
    async with target_server() as srv:
        refused = unused_port()
        entries = [
            {"id": name, "app": app, "ip": "127.0.0.1", "port": port, "path": path}
            for name, app, port, path in [
                ("ok", "web", srv.port, "/health"),
                ("err", "web", srv.port, "/status/500"),
                ("moved", "web", srv.port, "/redirect"),
                ("gone", "api", refused, "/health"),
            ]
        ]
        env = {**FAST, "HEALTHCHECK_TARGETS": json.dumps(entries)}
        async with exporter(env) as proc:
            body = await proc.wait_for_metrics(
                lambda b: samples(b, "healthcheck_targets").get((("state", "unhealthy"),)) == 2,
                what="two targets down",
            )
            ids = {dict(k)["target"]: v for k, v in samples(body, "healthcheck_target_up").items()}
            assert ids == {"ok": 1, "err": 0, "moved": 1, "gone": 0}
            address = f"127.0.0.1:{srv.port}"
            assert value(body, "healthcheck_target_up", app="api") == 0
            assert value(body, "healthcheck_target_last_status_code", app="api") == 0
            codes = samples(body, "healthcheck_target_last_status_code")
            assert sorted(codes.values()) == [0, 200, 302, 500]
            assert value(body, "healthcheck_target_up", address=address) is not None
            assert (
                value(body, "healthcheck_checks_total", app="api", result="connection_refused") >= 2
            )
            assert value(body, "healthcheck_checks_total", result="http_status") >= 2
            assert (
                value(body, "healthcheck_state_transitions_total", app="api", to="unhealthy") == 1
            )
            assert value(body, "healthcheck_target_consecutive_failures", app="api") >= 2
            assert value(body, "healthcheck_check_duration_seconds_count", app="web") >= 3
            assert value(body, "healthcheck_exporter_build_info") == 1
            assert value(body, "healthcheck_monitor_enabled") == 1
            assert value(body, "process_resident_memory_bytes") is not None
            for key in samples(body, "healthcheck_target_up"):
                assert {k for k, _ in key} == {"app", "target", "address"}


async def test_metrics_pass_promtool_check_metrics():
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (scripts/test.sh installs it)")
    async with target_server() as srv:
        env = {
            **FAST,
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/status/503, "
            f"api=127.0.0.1:{srv.port}/health",
        }
        async with exporter(env) as proc:
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_target_up", app="web") == 0, what="web down"
            )
    lint = await asyncio.create_subprocess_exec(
        tool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    out, err = await lint.communicate(body.encode())
    assert (lint.returncode, out, err) == (0, b"", b"")


async def test_openmetrics_and_gzip_by_negotiation():
    async with target_server() as srv:
        env = {**FAST, "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}"}
        async with exporter(env) as proc, aiohttp.ClientSession(auto_decompress=False) as s:
            url = proc.base_url + "/metrics"
            headers = {
                "Accept": "application/openmetrics-text; version=1.0.0",
                "Accept-Encoding": "identity",
            }
            async with s.get(url, headers=headers) as resp:
                assert "Content-Encoding" not in resp.headers
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                text = await resp.text()
            assert text.endswith("# EOF\n")
            names = {f.name for f in parse_openmetrics(text)}
            assert "healthcheck_target_up" in names
            assert "healthcheck_checks" in names  # counter family, samples end in _total
            async with s.get(url, headers={"Accept-Encoding": "deflate, gzip"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                plain = gzip.decompress(await resp.read()).decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert "healthcheck_target_up{" in plain


async def test_health_ready_and_landing_page():
    async with target_server() as srv:
        env = {
            **FAST,
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}, api=127.0.0.1:{unused_port()}",
        }
        async with exporter(env) as proc:
            assert await proc.get("/-/healthy") == (200, "Healthy\n")
            assert (await proc.get("/-/ready"))[0] == 200
            status, page = await proc.get("/")
            assert status == 200
            assert 'href="metrics"' in page and 'src="static/status.js"' in page
            status, script = await proc.get("/static/status.js")
            assert status == 200 and "api/v1/targets" in script
            assert (await proc.get("/nope"))[0] == 404


async def test_not_ready_until_first_round_completes():
    async with target_server() as srv:
        env = {"HEALTHCHECK_TIMEOUT": "2s", "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/hang"}
        async with exporter(env, ready=False) as proc:
            status, _ = await proc.get("/-/ready")
            assert status == 503
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_ready") == 1, what="ready"
            )
            assert value(body, "healthcheck_checks_total", result="timeout") == 1
            assert (await proc.get("/-/ready"))[0] == 200


async def test_state_transition_is_logged_once_with_fields():
    async with target_server() as srv:
        env = {**FAST, "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/flip"}
        async with exporter(env) as proc:
            srv.flip.healthy = False
            line = await proc.wait_for_log(r"target unhealthy")
            for field in (
                "target=web-127.0.0.1-",
                "app=web",
                "from=healthy",
                "to=unhealthy",
                "reason=http_status",
                "consecutive_failures=2",
                "level=warning",
            ):
                assert field in line, line
            srv.flip.healthy = True
            line = await proc.wait_for_log(r"target healthy")
            assert "to=healthy" in line and "consecutive_successes=2" in line
            await asyncio.sleep(0.3)
        transitions = [x for x in proc.log if 'msg="target ' in x or "msg=target" in x]
        assert len(transitions) == 2, transitions
        assert not [x for x in proc.log if "level=info" in x and "/flip" in x]


async def test_json_log_format():
    async with target_server() as srv:
        env = {
            **FAST,
            "HEALTHCHECK_LOG_FORMAT": "json",
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/flip",
        }
        async with exporter(env) as proc:
            srv.flip.healthy = False
            line = await proc.wait_for_log(r"target unhealthy")
        record = json.loads(line)
        assert record["to"] == "unhealthy" and record["app"] == "web"
        assert record["level"] == "warning"


async def test_sigterm_shuts_down_cleanly_within_a_second():
    async with target_server() as srv:
        env = {
            **FAST,
            "HEALTHCHECK_TIMEOUT": "30s",
            "HEALTHCHECK_TARGETS": (
                f"web=127.0.0.1:{srv.port}/hang api=127.0.0.1:{srv.port}"
                f" db=127.0.0.1:{srv.port}/hang cache=127.0.0.1:{srv.port}/hang"
            ),
            "HEALTHCHECK_MAX_CONCURRENT": "2",
        }
        for sig in (signal.SIGTERM, signal.SIGINT):
            async with exporter(env, ready=False) as proc:
                # Three hang: two hold both slots, the third waits for one.
                await proc.wait_for_metrics(
                    lambda b: (
                        (
                            value(b, "healthcheck_checks_in_flight"),
                            value(b, "healthcheck_checks_queued"),
                        )
                        == (2, 1)
                    )
                )
                started = time.monotonic()
                proc.proc.send_signal(sig)
                code = await asyncio.wait_for(proc.proc.wait(), 5)
                elapsed = time.monotonic() - started
            assert code == 0, proc.log
            assert elapsed < 1.0
            output = "\n".join(proc.log)
            for bad in ("Unclosed", "Task was destroyed", "Traceback", "never retrieved"):
                assert bad not in output, output


async def test_disabled_monitor_says_so_and_runs_no_checks():
    async with target_server() as srv:
        env = {
            **FAST,
            "HEALTHCHECK_ENABLED": "false",
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/t/a",
        }
        async with exporter(env) as proc:
            body = await proc.metrics()
            await asyncio.sleep(0.3)
            assert srv.hits["a"] == 0
            _, status = await proc.get("/api/v1/status")
        assert value(body, "healthcheck_monitor_enabled") == 0
        assert value(body, "healthcheck_target_up", app="web") == 1
        assert value(body, "healthcheck_target_last_check_timestamp_seconds") is None
        assert json.loads(status)["data"]["checks"]["enabled"] is False


async def test_targets_file_reload_on_change_and_sighup(tmp_path: Path):
    async with target_server() as srv:
        path = tmp_path / "targets.yml"
        path.write_text(f"- app: web\n  ip: 127.0.0.1\n  port: {srv.port}\n  path: /t/a\n")
        env = {**FAST, "HEALTHCHECK_TARGETS_FILE": str(path)}
        async with exporter(env) as proc:
            first = f"web-127.0.0.1-{srv.port}"
            await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_target_up", target=first) == 1
            )
            # file_sd shape, written by atomic rename: the old target's series disappear.
            tmp = tmp_path / "new.json"
            tmp.write_text(
                json.dumps(
                    [
                        {
                            "targets": [f"127.0.0.1:{srv.port}"],
                            "labels": {"app": "api", "path": "/t/b"},
                        }
                    ]
                )
            )
            os.replace(tmp, path)
            body = await proc.wait_for_metrics(
                lambda b: (
                    value(b, "healthcheck_target_up", app="api") is not None
                    and value(b, "healthcheck_target_up", app="web") is None
                ),
                what="api replaced web",
            )
            assert value(body, "healthcheck_targets_file_reloads_total", result="success") >= 1
            await proc.wait_for_metrics(lambda b: srv.hits["b"] >= 1)
            # An empty (half-written) file is refused; the previous targets stay.
            path.write_text("")
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_targets_file_reloads_total", result="failure") == 1,
                what="failure counted",
            )
            assert value(body, "healthcheck_target_up", app="api") == 1
            await proc.wait_for_log(r"level=error.*targets")
            # SIGHUP re-reads at once.
            path.write_text(f"- app: web\n  ip: 127.0.0.1\n  port: {srv.port}\n  path: /t/c\n")
            proc.proc.send_signal(signal.SIGHUP)
            await proc.wait_for_metrics(lambda b: value(b, "healthcheck_target_up", app="web") == 1)
            await proc.wait_for_log(r"SIGHUP")


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"HEALTHCHECK_INTERVALL": "5s"}, "HEALTHCHECK_INTERVALL", "HEALTHCHECK_INTERVAL"),
        ({"HEALTHCHECK_INTERVAL": "15x"}, "HEALTHCHECK_INTERVAL", "15x"),
        ({"HEALTHCHECK_TIMEOUT": "-1s"}, "HEALTHCHECK_TIMEOUT", "-1s"),
        ({"HEALTHCHECK_FALL": "0"}, "HEALTHCHECK_FALL", "1"),
        ({"HEALTHCHECK_RISE": "two"}, "HEALTHCHECK_RISE", "two"),
        ({"HEALTHCHECK_ENABLED": "maybe"}, "HEALTHCHECK_ENABLED", "maybe"),
        ({"HEALTHCHECK_LOG_FORMAT": "xml"}, "HEALTHCHECK_LOG_FORMAT", "xml"),
        ({"HEALTHCHECK_LISTEN_ADDRESS": "localhost"}, "HEALTHCHECK_LISTEN_ADDRESS", "localhost"),
        ({"HEALTHCHECK_TARGETS": "web=10.0.0.5:99999"}, "HEALTHCHECK_TARGETS", "99999"),
        (
            {"HEALTHCHECK_TARGETS": "web=10.0.0.5:80, web=10.0.0.5:80"},
            "HEALTHCHECK_TARGETS",
            "duplicate",
        ),
        ({"HEALTHCHECK_TARGETS": "w@b=10.0.0.5:80"}, "HEALTHCHECK_TARGETS", "w@b"),
        (
            {"HEALTHCHECK_TARGETS": '[{"app": "web\\nbackend x", "ip": "10.0.0.5", "port": 80}]'},
            "HEALTHCHECK_TARGETS",
            "app",
        ),
        (
            {"HEALTHCHECK_TARGETS": '[{"app": "web", "ip": "10.0.0.5", "port": 80, "adress": 1}]'},
            "HEALTHCHECK_TARGETS",
            "adress",
        ),
        ({}, "HEALTHCHECK_TARGETS", "no targets"),
        (
            {"HEALTHCHECK_HAPROXY_RELOAD": "signal"},
            "HEALTHCHECK_HAPROXY_RELOAD",
            "HEALTHCHECK_HAPROXY_CONFIG",
        ),
        (
            {
                "HEALTHCHECK_HAPROXY_CONFIG": "/tmp/backends.cfg",
                "HEALTHCHECK_HAPROXY_RELOAD": "master-socket",
            },
            "HEALTHCHECK_HAPROXY_RELOAD",
            "HEALTHCHECK_HAPROXY_MASTER_SOCKET",
        ),
        (
            {
                "HEALTHCHECK_HAPROXY_CONFIG": "/tmp/backends.cfg",
                "HEALTHCHECK_HAPROXY_RELOAD": "restart",
            },
            "HEALTHCHECK_HAPROXY_RELOAD",
            "restart",
        ),
        (
            {
                "HEALTHCHECK_HAPROXY_CONFIG": "/tmp/backends.cfg",
                "HEALTHCHECK_HAPROXY_SERVER_OPTIONS": "check\nbackend evil",
            },
            "HEALTHCHECK_HAPROXY_SERVER_OPTIONS",
            "one line",
        ),
        (
            {
                "HEALTHCHECK_HAPROXY_CONFIG": "/tmp/backends.cfg",
                "HEALTHCHECK_HAPROXY_BACKEND_PREFIX": "be web",
            },
            "HEALTHCHECK_HAPROXY_BACKEND_PREFIX",
            "be web",
        ),
        (
            {"HEALTHCHECK_HAPROXY_CONFIG": "/no/such/dir/backends.cfg"},
            "HEALTHCHECK_HAPROXY_CONFIG",
            "/no/such/dir",
        ),
        (
            {
                "HEALTHCHECK_HAPROXY_CONFIG": "/tmp/backends.cfg",
                "HEALTHCHECK_HAPROXY_MIN_RELOAD_INTERVAL": "0s",
            },
            "HEALTHCHECK_HAPROXY_MIN_RELOAD_INTERVAL",
            "0s",
        ),
    ],
)
async def test_bad_configuration_exits_2_naming_the_variable(
    env: dict[str, str], variable: str, words: str
):
    env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:8080", **env}
    if words == "no targets":
        env.pop("HEALTHCHECK_TARGETS")
    for command in ("validate", "run"):
        code, out, err = await run_cli(command, env=env)
        assert code == 2, (command, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert variable in lines[0] and words in lines[0], lines[0]


async def test_bad_template_names_the_variable_and_line(tmp_path: Path):
    template = tmp_path / "backends.j2"
    template.write_text("{% for b in backends %}\nbackend {{ b.name }\n{% endfor %}\n")
    env = {
        "HEALTHCHECK_TARGETS": "web=127.0.0.1:8080",
        "HEALTHCHECK_HAPROXY_CONFIG": str(tmp_path / "backends.cfg"),
        "HEALTHCHECK_HAPROXY_TEMPLATE": str(template),
    }
    code, _, err = await run_cli("validate", env=env)
    assert code == 2
    assert "HEALTHCHECK_HAPROXY_TEMPLATE" in err and f"{template} line 2" in err
    assert not (tmp_path / "backends.cfg").exists()


async def test_bad_targets_file_names_file_and_entry(tmp_path: Path):
    path = tmp_path / "targets.json"
    path.write_text(
        '[{"app": "web", "ip": "10.0.0.1", "port": 80},'
        ' {"app": "web", "ip": "10.0.0.2", "port": 0}]'
    )
    code, _, err = await run_cli("validate", env={"HEALTHCHECK_TARGETS_FILE": str(path)})
    assert code == 2
    assert str(path) in err and "entry 2" in err


async def test_validate_accepts_good_configuration(tmp_path: Path):
    code, out, err = await run_cli(
        "validate",
        env={
            "HEALTHCHECK_TARGETS": "web=10.0.0.5:8080/healthz, web=[fd00::2]:8080",
            "HEALTHCHECK_INTERVAL": "1m30s",
        },
    )
    assert (code, err) == (0, "")
    assert "2 targets in 1 apps" in out and "interval 90s" in out


async def test_validate_prints_the_check_options_in_effect_per_target():
    targets = [
        {"app": "web", "ip": "10.0.0.5", "port": 8443, "scheme": "https", "host": "shop.test"},
        {"app": "db", "ip": "10.0.0.9", "port": 5432, "scheme": "tcp", "interval": "5s"},
        {"app": "api", "ip": "10.0.0.7", "port": 80, "expect_status": "200-399"},
    ]
    env = {
        "HEALTHCHECK_TARGETS": json.dumps(targets),
        "HEALTHCHECK_CHECK_DEFAULTS": '{"headers": {"X-Env": "prod"}, "fall": 5}',
        "HEALTHCHECK_FASTINTER": "1s",
    }
    code, out, err = await run_cli("validate", env=env)
    assert (code, err) == (0, "")
    # The summary, the options of each target, then one line per source.
    lines = out.splitlines()
    assert lines[-1] == "source env: 3 targets (api, db, web)"
    assert "interval 15s, fastinter 1s, fall 3" in lines[0]
    assert lines[1] == "check options of 3 of 3 targets (others: the plain check):"
    assert lines[2].split() == [
        "web-10.0.0.5-8443",
        "https://10.0.0.5:8443/health",
        "host=shop.test",
        "headers=X-Env",
        "fall=5",
    ]
    assert lines[3].split() == ["db-10.0.0.9-5432", "tcp://10.0.0.9:5432", "interval=5s", "fall=5"]
    assert lines[4].split() == [
        "api-10.0.0.7-80",
        "http://10.0.0.7:80/health",
        "headers=X-Env",
        "fall=5",
    ]
    code, out, _ = await run_cli("validate", env={"HEALTHCHECK_TARGETS": "web=10.0.0.5:80"})
    assert out.splitlines()[1] == "every target has the plain check (GET, healthy on 200-399)"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"HEALTHCHECK_TARGETS": '[{"app": "web", "ip": "10.0.0.5", "port": 80, "fall": 0}]'},
            "HEALTHCHECK_TARGETS: entry 1: target 'web-10.0.0.5-80': fall: must be at least 1",
        ),
        (
            {"HEALTHCHECK_TARGETS": "web=10.0.0.5:80", "HEALTHCHECK_CHECK_DEFAULTS": '{"host": 1}'},
            "HEALTHCHECK_CHECK_DEFAULTS: host: must be a string, got a number",
        ),
        (
            {"HEALTHCHECK_TARGETS": "web=https://10.0.0.5", "HEALTHCHECK_FASTINTER": "soon"},
            "HEALTHCHECK_FASTINTER: invalid duration 'soon'",
        ),
    ],
)
async def test_bad_check_option_exits_2_naming_it(env: dict[str, str], words: str):
    for command in ("validate", "check", "run"):
        code, _, err = await run_cli(command, env=env)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (command, err)


async def test_validate_loads_tls_files_and_names_target_and_key(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    target = {"app": "web", "ip": "10.0.0.5", "port": 8443, "scheme": "https"}
    targets = [target | {"tls_ca_file": str(ca)}]
    code, _, err = await run_cli("validate", env={"HEALTHCHECK_TARGETS": json.dumps(targets)})
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"healthcheck-exporter: error: target 'web-10.0.0.5-8443': tls_ca_file: {ca}"
    ), err


async def test_check_table_shows_each_targets_options():
    async with target_server() as srv:
        targets = [
            {"app": "web", "ip": "127.0.0.1", "port": srv.port, "expect_status": "200"},
            {"app": "api", "ip": "127.0.0.1", "port": srv.port, "id": "plain"},
        ]
        code, out, _ = await run_cli("check", env={"HEALTHCHECK_TARGETS": json.dumps(targets)})
    assert code == 0, out
    header, web, plain = out.splitlines()[:3]
    assert header.split() == [
        "RESULT",
        "TARGET",
        "APP",
        "URL",
        "STATUS",
        "DURATION",
        "OPTIONS",
        "ERROR",
    ]
    assert web.split()[-1] == "expect_status=200"
    assert plain.split()[-1] == "-"


async def test_check_prints_a_table_and_exits_1_when_a_check_fails():
    async with target_server() as srv:
        good = f"web=127.0.0.1:{srv.port}/health"
        code, out, _ = await run_cli("check", env={"HEALTHCHECK_TARGETS": good})
        assert code == 0, out
        assert "ok" in out and "1/1 targets healthy" in out
        bad = f"{good}, api=127.0.0.1:{srv.port}/status/503"
        code, out, _ = await run_cli("check", env={"HEALTHCHECK_TARGETS": bad})
        assert code == 1
        assert "http_status" in out and "503" in out and "1/2 targets healthy" in out


async def test_help_lists_every_variable_and_command():
    code, out, _ = await run_cli("--help")
    assert code == 0
    words = ["validate", "check", "demo", "HEALTHCHECK_TARGETS", "HEALTHCHECK_LOG_FORMAT"]
    for word in words:
        assert word in out


async def test_demo_needs_no_configuration_and_shows_state_changes():
    async with exporter({"HEALTHCHECK_INTERVAL": "200ms"}, "demo") as proc:
        body = await proc.wait_for_metrics(
            lambda b: value(b, "healthcheck_target_up", target="api-dead") == 0, what="dead down"
        )
        assert value(body, "healthcheck_target_up", target="web-healthy") == 1
        # The demo writes an HAProxy backends file too, so the writer's metrics are live.
        assert value(body, "healthcheck_haproxy_config_writes_total", result="success") >= 1
        assert value(body, "healthcheck_target_up", target="web-flapping") is not None
        banner = "\n".join(proc.log)
        assert f"{proc.base_url}/metrics" in banner


async def test_timeout_longer_than_interval_is_warned_about():
    async with target_server() as srv:
        env = {
            "HEALTHCHECK_INTERVAL": "1s",
            "HEALTHCHECK_TIMEOUT": "2s",
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}",
        }
        async with exporter(env) as proc:
            line = await proc.wait_for_log("HEALTHCHECK_TIMEOUT is longer")
    assert "level=warning" in line
