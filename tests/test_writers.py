"""Writers that fail: the HAProxy file and the state file on a real tmpfs that fills up or turns
read-only, then recovers, with no further health change needed for the files to catch up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import exporter, run_cli, value
from tests.servers import target_server


def can_mount() -> bool:
    """Mounting a tmpfs needs root; in CI (run as root) its absence is a failure."""
    if os.geteuid() == 0:
        return True
    if os.environ.get("CI"):
        raise AssertionError("the writer tests mount a tmpfs: CI runs the tests as root")
    return False


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True)  # fmt: skip
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(100_000):  # bounded: 400 MB at most
            os.write(fd, b"x" * 4096)
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


def remount(directory: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("failure", ["full", "read-only"])
async def test_failed_writes_keep_the_last_good_files_and_catch_up_when_the_disk_recovers(
    tmp_path: Path, failure: str
):
    with small_tmpfs(tmp_path / "disk") as disk:
        config, state = disk / "backends.cfg", disk / "state.json"
        async with target_server() as srv:
            targets = [
                {"id": n, "app": "web", "ip": "127.0.0.1", "port": srv.port, "path": f"/t/{n}"}
                for n in ("a", "b", "c")
            ]
            env = {
                "HEALTHCHECK_INTERVAL": "100ms",
                "HEALTHCHECK_FALL": "1",
                "HEALTHCHECK_RISE": "1",
                "HEALTHCHECK_TARGETS": json.dumps(targets),
                "HEALTHCHECK_HAPROXY_CONFIG": str(config),
                "HEALTHCHECK_STATE_FILE": str(state),
            }
            async with exporter(env) as proc:
                await proc.wait_for_metrics(
                    lambda m: value(m, "healthcheck_state_file_writes_total", result="success") == 1
                )
                good_config, good_state = config.read_text(), state.read_text()
                assert "server c " in good_config
                filler = fill(disk) if failure == "full" else None
                if failure == "read-only":
                    remount(disk, "ro")
                before = await proc.metrics()
                srv.down.add("c")
                broken = await proc.wait_for_metrics(
                    lambda m: (
                        value(m, "healthcheck_haproxy_config_stale") == 1
                        and value(m, "healthcheck_state_file_stale") == 1
                        and value(m, "healthcheck_haproxy_config_writes_total", result="failure")
                        >= 2
                    ),  # retried, with no further change
                    what="both writers failing and retrying",
                )
                assert config.read_text() == good_config  # the last good files stay
                assert state.read_text() == good_state
                assert sorted(p.name for p in disk.iterdir() if p.name != "filler") == [
                    "backends.cfg",
                    "state.json",
                ]  # no temporary file left behind
                success = ("healthcheck_config_updates_total", {"result": "success"})
                assert value(broken, success[0], **success[1]) == value(
                    before, success[0], **success[1]
                )  # a failed write is not a successful update
                assert value(broken, "healthcheck_config_updates_total", result="failure") >= 2
                await proc.wait_for_log("cannot write the HAProxy config")
                await proc.wait_for_log("cannot write the state file")
                if filler is not None:
                    filler.unlink()
                else:
                    remount(disk, "rw")
                await proc.wait_for_metrics(
                    lambda m: (
                        value(m, "healthcheck_haproxy_config_stale") == 0
                        and value(m, "healthcheck_state_file_stale") == 0
                    ),
                    timeout=45,  # the backoff may have reached its 30 s cap under load
                    what="both files written again",
                )
                assert "server c " not in config.read_text()
                saved = json.loads(state.read_text())["targets"]
                assert saved["c"]["state"] == "unhealthy"


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def test_sigterm_while_the_check_command_runs_kills_its_whole_process_group(
    tmp_path: Path,
):
    command = (
        f"sh -c 'echo $$ > {tmp_path}/cmd.pid; sleep 300 & echo $! > {tmp_path}/child.pid; wait'"
    )
    async with target_server() as srv:
        env = {
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/health",
            "HEALTHCHECK_HAPROXY_CONFIG": str(tmp_path / "backends.cfg"),
            "HEALTHCHECK_HAPROXY_CHECK_COMMAND": command,
            "HEALTHCHECK_HAPROXY_RELOAD_TIMEOUT": "5m",
        }
        async with exporter(env) as proc:
            child_pid = tmp_path / "child.pid"
            deadline = time.monotonic() + 10
            while not (child_pid.exists() and child_pid.read_text().strip()):
                assert time.monotonic() < deadline, "the check command never started"
                await asyncio.sleep(0.02)
            pids = [int((tmp_path / f).read_text()) for f in ("cmd.pid", "child.pid")]
            assert all(alive(pid) for pid in pids)
            proc.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.proc.wait(), 5) == 0
    deadline = time.monotonic() + 5
    try:
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, f"orphaned: {[p for p in pids if alive(p)]}"
            await asyncio.sleep(0.02)
    finally:  # a failing run must not leave them behind either
        for pid in filter(alive, pids):
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "backends.cfg").exists()  # never checked: never installed


def unusable_path(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "backends.cfg"
    if kind == "not UTF-8":
        path.write_bytes(b"backend web\n\xff\xfe\x00 binary\n")
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "socket":
        path = tmp_path / "s.sock"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [("not UTF-8", "not UTF-8 text"), ("FIFO", "not a regular file"), ("socket", "not a regular")],
)
async def test_an_existing_haproxy_file_we_cannot_take_over_exits_2_naming_the_variable(
    tmp_path: Path, kind: str, words: str
):
    path = unusable_path(kind, tmp_path)
    before = path.read_bytes() if kind == "not UTF-8" else None
    env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:8080", "HEALTHCHECK_HAPROXY_CONFIG": str(path)}
    for command in ("validate", "run"):  # a FIFO used to hang `run`: bounded by run_cli
        code, _, err = await run_cli(command, env=env)
        assert code == 2, err
        [line] = err.strip().splitlines()
        assert "HEALTHCHECK_HAPROXY_CONFIG" in line and words in line, line
    if before is not None:
        assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["FIFO", "not UTF-8"])
async def test_a_template_we_cannot_read_exits_2_naming_the_variable(tmp_path: Path, kind: str):
    template = unusable_path(kind, tmp_path)
    env = {
        "HEALTHCHECK_TARGETS": "web=127.0.0.1:8080",
        "HEALTHCHECK_HAPROXY_CONFIG": str(tmp_path / "out.cfg"),
        "HEALTHCHECK_HAPROXY_TEMPLATE": str(template),
    }
    code, _, err = await run_cli("validate", env=env)  # a FIFO used to hang it
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert "HEALTHCHECK_HAPROXY_TEMPLATE" in line and str(template) in line, line


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("variable", ["HEALTHCHECK_HAPROXY_CONFIG", "HEALTHCHECK_STATE_FILE"])
async def test_a_file_in_a_read_only_directory_exits_2_at_startup_naming_the_variable(
    tmp_path: Path, variable: str
):
    with small_tmpfs(tmp_path / "ro") as directory:
        remount(directory, "ro")
        env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:8080", variable: str(directory / "f")}
        for command in ("validate", "run"):
            code, _, err = await run_cli(command, env=env)
            assert code == 2, err
            [line] = err.strip().splitlines()
            assert variable in line and "Read-only file system" in line, line
            assert ".tmp" not in line  # no internal temporary name
