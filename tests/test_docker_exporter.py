"""The exporter with HEALTHCHECK_DOCKER_HOST, as a user runs it, against real engines.

Target containers are busybox httpd on the host network (tests/docker_engine.py), so every check
the exporter makes goes to 127.0.0.1. The engine-restart test uses a private engine of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import yaml

from exporter.settings import load_settings
from tests.docker_engine import INSTALL, Containers, Engine, busybox_rootfs, private_engine
from tests.observability import ROOT, require_tool, run_tool
from tests.process import ExporterProcess, exporter, run_cli, samples, value

pytest_plugins = ("tests.docker_engine",)

UNREACHABLE = "docker engine unreachable, keeping the last known targets"
FAST = {"HEALTHCHECK_INTERVAL": "200ms", "HEALTHCHECK_LOG_FORMAT": "json"}


def up(body: str) -> dict[str, float]:
    """healthcheck_target_up by target id."""
    found = samples(body, "healthcheck_target_up")
    return {dict(labels)["target"]: value for labels, value in found.items()}


async def wait_up(
    proc: ExporterProcess, accept: Callable[[dict[str, float]], bool], what: str
) -> dict[str, float]:
    body = await proc.wait_for_metrics(lambda body: accept(up(body)), timeout=30, what=what)
    return up(body)


def log_records(proc: ExporterProcess, message: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in proc.log if line.startswith("{")]
    return [r for r in records if r.get("msg") == message]


async def test_exporter_checks_containers_as_they_start_and_forgets_them_as_they_stop(
    docker_engine: Engine, containers: Containers
) -> None:
    env = {**FAST, "HEALTHCHECK_DOCKER_HOST": docker_engine.host}
    async with exporter(env) as proc:
        web = await containers.httpd("web")
        await wait_up(proc, lambda t: t.get(web.short_id) == 1, "the new container to be up")
        bad = await containers.httpd("web", labels={"healthcheck.port": "eighty"})
        await docker_engine.arun("stop", "--time=1", web.id)
        await wait_up(proc, lambda t: web.short_id not in t, "the stopped container to go")
        line = await proc.wait_for_log(f"docker container skipped.*{bad.name}")
        assert f"container '{bad.name}': label 'healthcheck.port'" in line


async def test_option_labels_change_how_the_container_is_checked(
    docker_engine: Engine, containers: Containers
) -> None:
    # busybox httpd answers 404 for a file it does not have: healthy only by the option label.
    missing = {"healthcheck.path": "/missing"}
    plain = await containers.httpd("web", labels=missing)
    expecting = await containers.httpd(
        "web", labels={**missing, "healthcheck.expect_status": "404"}
    )
    env = {**FAST, "HEALTHCHECK_DOCKER_HOST": docker_engine.host}
    async with exporter(env) as proc:
        await wait_up(
            proc,
            lambda t: t.get(expecting.short_id) == 1 and t.get(plain.short_id) == 0,
            "the container expecting 404 up, the other down",
        )


async def test_validate_and_check_list_the_engines_containers_once(
    docker_engine: Engine, containers: Containers
) -> None:
    httpd = await containers.httpd("validated")
    env = {"HEALTHCHECK_DOCKER_HOST": docker_engine.host}
    code, out, err = await run_cli("validate", env=env)
    assert code == 0, err
    found = next(line for line in out.splitlines() if line.startswith("source docker: "))
    assert "validated" in found and out.startswith("configuration OK: ")
    code, out, err = await run_cli("check", env=env)
    row = next(line for line in out.splitlines() if httpd.short_id in line)
    assert row.split()[:3] == ["ok", httpd.short_id, "validated"], out + err


async def test_unreachable_engine_is_exit_2_for_validate_and_run_naming_the_variable() -> None:
    env = {"HEALTHCHECK_DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    for command in ("validate", "run"):
        code, _, err = await run_cli(command, env=env)
        assert code == 2, (command, err)
        assert "HEALTHCHECK_DOCKER_HOST: cannot reach the engine: unix:///nonexistent" in err


async def test_engine_restart_keeps_the_targets_meanwhile_then_relists() -> None:
    with private_engine(busybox_rootfs()) as private:
        running = Containers(private.engine)
        stays = await running.httpd("stays")
        dies = await running.httpd("dies")
        dies_pid = int(await private.engine.arun("inspect", "--format={{.State.Pid}}", dies.id))
        env = {**FAST, "HEALTHCHECK_DOCKER_HOST": private.engine.host}
        async with exporter(env) as proc:
            both = {stays.short_id, dies.short_id}
            await wait_up(proc, lambda t: all(t.get(i) == 1 for i in both), "both containers up")

            private.stop()  # live restore: the containers keep running without their engine
            await proc.wait_for_log("docker engine unreachable")
            os.kill(dies_pid, signal.SIGKILL)  # a container dies while nobody can tell
            await wait_up(proc, lambda t: t.get(dies.short_id) == 0, "the dead one to be down")
            body = await proc.metrics()
            assert set(up(body)) >= both  # kept: the engine only hiccupped
            assert value(body, "healthcheck_source_up", source="docker") == 0
            assert value(body, "healthcheck_source_targets", source="docker") == 2
            assert (value(body, "healthcheck_source_failures_total", source="docker") or 0) >= 1
            assert log_records(proc, "docker engine reachable again") == []

            private.start()
            await proc.wait_for_log("docker engine reachable again", timeout=60)
            targets = await wait_up(proc, lambda t: dies.short_id not in t, "the re-list")
            assert targets.get(stays.short_id) == 1
            assert value(await proc.metrics(), "healthcheck_source_up", source="docker") == 1
            failures = log_records(proc, UNREACHABLE)
            assert failures and all(r["targets"] == 2 for r in failures)
            assert [r["failures"] for r in failures] == list(range(1, len(failures) + 1))


def readme_compose_file() -> str:
    """The compose file of the README's Docker section."""
    section = (ROOT / "README.md").read_text().split("### Docker containers", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert match, "no compose file in the README's Docker section"
    return match.group(1)


async def test_readme_compose_file_is_valid_and_mounts_the_socket_read_only(
    tmp_path: Path,
) -> None:
    text = readme_compose_file()
    exporter_service = yaml.safe_load(text)["services"]["healthcheck-exporter"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in exporter_service["volumes"]
    settings = load_settings(exporter_service["environment"])  # every variable is a real one
    assert settings.docker_host == "unix:///var/run/docker.sock"
    compose = require_tool("docker-compose", install=INSTALL)
    (tmp_path / "compose.yml").write_text(text)
    code, out = await run_tool(compose, "--file", str(tmp_path / "compose.yml"), "config", "-q")
    assert (code, out) == (0, "")
