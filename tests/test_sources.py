"""Several target sources at once, and sources that fail, seen from outside the process.

The union of HEALTHCHECK_TARGETS and HEALTHCHECK_TARGETS_FILE (and the other sources), the
duplicate-id rule, the per-source metrics, `validate` per source, SIGHUP, and bad input that
must end in exit 2 with one line naming what was wrong (issues 13 and 15).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.process import EXPORTER, child_env, exporter, run_cli, stop_process, value
from tests.servers import target_server
from tests.source_tasks import validate_reports

FAST = {"HEALTHCHECK_INTERVAL": "100ms", "HEALTHCHECK_TIMEOUT": "1s"}


def json_targets(*entries: tuple[str, int]) -> str:
    return json.dumps([{"app": app, "ip": "127.0.0.1", "port": port} for app, port in entries])


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    os.replace(temporary, path)


# --- bad input at startup: exit 2, one line, no traceback ----------------------------------------


async def assert_config_error(env: dict[str, str], *words: str) -> None:
    code, out, err = await run_cli("validate", env=env)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    [line] = err.splitlines()
    for word in words:
        assert word in line


@pytest.mark.parametrize("text", [",", "   ", " , ,\t"])
async def test_targets_variable_with_separators_only_exits_2(text: str) -> None:
    await assert_config_error({"HEALTHCHECK_TARGETS": text}, "HEALTHCHECK_TARGETS", "no targets")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 3000 + "]" * 3000, "nested too deeply"),
        ('[{"app": "w", "ip": "h", "port": %s}]' % ("9" * 5000), "a number has thousands"),
        ("web=127.0.0.1:" + "9" * 5000, "out of range"),
    ],
)
async def test_hostile_targets_variable_exits_2_naming_it(text: str, reason: str) -> None:
    await assert_config_error({"HEALTHCHECK_TARGETS": text}, "HEALTHCHECK_TARGETS", reason)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("deep.yml", "[" * 5_000 + "]" * 5_000, "nesting depth"),
    ],
)
async def test_deeply_nested_targets_file_exits_2(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    await assert_config_error({"HEALTHCHECK_TARGETS_FILE": str(path)}, str(path), reason)


async def test_targets_file_that_is_a_device_exits_2() -> None:
    env = {"HEALTHCHECK_TARGETS_FILE": "/dev/zero"}
    await assert_config_error(env, "/dev/zero", "not a regular file (a character device)")


# --- SIGHUP never kills the exporter (issue 13 defect 9) -----------------------------------------


async def assert_survives_sighup(proc: asyncio.subprocess.Process) -> None:
    for _ in range(3):
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
    assert proc.returncode is None


async def test_sighup_with_inline_targets_rereads_nothing_and_goes_on() -> None:
    async with target_server() as srv:
        env = {**FAST, "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}"}
        async with exporter(env) as proc:
            await assert_survives_sighup(proc.proc)
            await proc.wait_for_log(r"re-reading the target sources.*reason=SIGHUP.*sources=env")
            assert (await proc.get("/-/ready"))[0] == 200


async def test_sighup_in_demo_does_not_end_it() -> None:
    async with exporter({"HEALTHCHECK_INTERVAL": "200ms"}, "demo") as proc:
        await assert_survives_sighup(proc.proc)
        await proc.wait_for_log(r"re-reading the target sources.*sources=demo")
        assert (await proc.get("/-/healthy"))[0] == 200


def sighup_ignored(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert ignored is not None
    return bool(int(ignored.group(1), 16) & (1 << (signal.SIGHUP - 1)))


async def test_sighup_during_a_slow_first_read_does_not_kill_the_exporter(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json_targets(*[("web", port) for port in range(1024, 6024)]))
    env = child_env({"HEALTHCHECK_TARGETS_FILE": str(path), "HEALTHCHECK_ENABLED": "false"})
    proc = await asyncio.create_subprocess_exec(
        *EXPORTER, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while not sighup_ignored(proc.pid):  # from here on the first read runs
            assert time.monotonic() < deadline, "SIGHUP never ignored during startup"
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGHUP)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        while b"listening" not in line:
            assert line, "the exporter ended during its first read"
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        await assert_survives_sighup(proc)
    finally:
        await stop_process(proc)


# --- a targets file that goes bad while running (issue 13) ---------------------------------------


def without_file_permission_override() -> list[str]:
    """As root, drop the capabilities that let root read a file whatever its mode."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def file_source(body: str) -> tuple[float | None, ...]:
    """healthcheck_source_up, _failures_total and _targets of the file source."""
    return tuple(
        value(body, f"healthcheck_source_{name}", source="file")
        for name in ("up", "failures_total", "targets")
    )


async def test_unreadable_file_is_counted_once_and_chmod_fixes_it(tmp_path: Path) -> None:
    """Defect 6: the fixed permissions are noticed; healthcheck_source_up shows the bad file."""
    async with target_server() as srv:
        path = tmp_path / "targets.json"
        path.write_text(json_targets(("web", srv.port)))
        env = {**FAST, "HEALTHCHECK_TARGETS_FILE": str(path)}
        async with exporter(env, prefix=without_file_permission_override()) as proc:
            write_atomically(path, json_targets(("web", srv.port), ("api", srv.port)), 0)
            body = await proc.wait_for_metrics(
                lambda b: file_source(b)[0] == 0, what="the file source down"
            )
            assert file_source(body) == (0, 1, 1)  # up, failures, targets
            assert value(body, "healthcheck_target_up", app="web") == 1
            assert (await proc.get("/-/ready"))[0] == 200
            await proc.wait_for_log(r"level=error.*Permission denied")
            path.chmod(0o644)
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_target_up", app="api") == 1,
                what="the fixed file read",
            )
            assert file_source(body) == (1, 1, 2)


async def test_deleted_file_keeps_targets_and_readiness(tmp_path: Path) -> None:
    async with target_server() as srv:
        directory = tmp_path / "conf"
        directory.mkdir()
        path = directory / "targets.yml"
        path.write_text(f"- {{app: web, ip: 127.0.0.1, port: {srv.port}}}\n")
        env = {**FAST, "HEALTHCHECK_TARGETS_FILE": str(path)}
        async with exporter(env) as proc:
            path.unlink()
            directory.rmdir()
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_source_failures_total", source="file") == 1
            )
            assert value(body, "healthcheck_target_up", app="web") == 1
            assert (await proc.get("/-/ready"))[0] == 200
            directory.mkdir()
            write_atomically(path, f"- {{app: api, ip: 127.0.0.1, port: {srv.port}}}\n")
            await proc.wait_for_metrics(lambda b: value(b, "healthcheck_target_up", app="api") == 1)


async def test_writer_pausing_for_seconds_mid_file_never_drops_targets(tmp_path: Path) -> None:
    """Defect 4 as found: 5 targets rewritten in place, the writer pausing 2.5 s after 2."""
    async with target_server() as srv:
        path = tmp_path / "targets.yml"
        entries = [
            f"- {{app: web, ip: 127.0.0.1, port: {srv.port}, path: /t/{n}}}\n" for n in range(6)
        ]
        entries = [
            entry.replace("path: /t/", f"id: w{n}, path: /t/") for n, entry in enumerate(entries)
        ]
        path.write_text("".join(entries[:5]))
        async with exporter({**FAST, "HEALTHCHECK_TARGETS_FILE": str(path)}) as proc:
            counts = set()
            with path.open("w") as writer:  # default 1 s polling: the pause spans two polls
                writer.write("".join(entries[:2]))
                writer.flush()
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    counts.add(
                        value(await proc.metrics(), "healthcheck_source_targets", source="file")
                    )
                    await asyncio.sleep(0.1)
                writer.write("".join(entries[2:]))
            await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_source_targets", source="file") == 6
            )
            assert counts == {5}
            body = await proc.metrics()
            assert value(body, "healthcheck_source_failures_total", source="file") == 0


# --- several sources at once (issue 15) ----------------------------------------------------------


def inline_and_file(port: int, path: Path) -> dict[str, str]:
    return {
        **FAST,
        "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{port}",
        "HEALTHCHECK_TARGETS_FILE": str(path),
    }


async def test_variable_and_file_give_the_union_with_per_source_metrics(tmp_path: Path) -> None:
    async with target_server() as srv:
        path = tmp_path / "targets.json"
        path.write_text(json_targets(("api", srv.port)))
        env = inline_and_file(srv.port, path)
        await validate_reports(env, "source env: 1 targets (web)", "source file: 1 targets (api)")
        async with exporter(env) as proc:
            body = await proc.wait_for_metrics(
                lambda b: (
                    value(b, "healthcheck_target_up", app="api") == 1
                    and value(b, "healthcheck_target_up", app="web") == 1
                )
            )
            for source in ("env", "file"):
                assert value(body, "healthcheck_source_targets", source=source) == 1
                assert value(body, "healthcheck_source_up", source=source) == 1
                assert value(body, "healthcheck_source_failures_total", source=source) == 0
                last = value(
                    body, "healthcheck_source_last_success_timestamp_seconds", source=source
                )
                assert last is not None and abs(last - time.time()) < 600


async def test_same_id_from_two_sources_at_startup_exits_2_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json_targets(("web", 8080)))
    env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:8080", "HEALTHCHECK_TARGETS_FILE": str(path)}
    await assert_config_error(
        env, "target id 'web-127.0.0.1-8080' comes from both source env and source file"
    )


async def test_new_file_version_clashing_with_another_source_is_rejected(tmp_path: Path) -> None:
    async with target_server() as srv:
        path = tmp_path / "targets.json"
        path.write_text(json_targets(("api", srv.port)))
        env = inline_and_file(srv.port, path)
        async with exporter(env) as proc:
            write_atomically(path, json_targets(("web", srv.port), ("db", srv.port)))
            body = await proc.wait_for_metrics(
                lambda b: value(b, "healthcheck_source_failures_total", source="file") == 1,
                what="the clash counted",
            )
            await proc.wait_for_log(r"source rejected: duplicate target id.*source=file")
            assert value(body, "healthcheck_target_up", app="db") is None
            assert value(body, "healthcheck_target_up", app="api") == 1
            write_atomically(path, json_targets(("db", srv.port)))
            await proc.wait_for_metrics(
                lambda b: (
                    value(b, "healthcheck_target_up", app="db") == 1
                    and value(b, "healthcheck_target_up", app="api") is None
                )
            )
