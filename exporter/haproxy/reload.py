"""Ways to make HAProxy load a new config file, each raising ReloadError with HAProxy's words.

- signal: SIGUSR2 to the master process (its pid from the pid file), as `systemctl reload` does;
- master-socket: `reload` on the master CLI (`haproxy -W -S /path`); HAProxy 2.6 answers nothing,
  so the outcome is read from the master's reload and failure counters in `show proc`;
- command: any command (e.g. a container runtime's kill), judged by its exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

_MASTER_LINE = re.compile(r"^\d+\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?", re.MULTILINE)
_OUTPUT_LIMIT = 2000  # characters of a command's output kept for the log


class ReloadError(Exception):
    """A reload, check or CLI command failed; the message is one line fit for a log."""


class Reloader(Protocol):
    mode: str

    async def reload(self) -> None: ...


async def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run `argv` (no shell); return its output, or raise ReloadError on failure or timeout.

    The command runs in a process group of its own: on timeout, or when we are cancelled (a
    SIGTERM of the exporter), the whole group is killed, so no child it started is orphaned.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        raise ReloadError(f"cannot run {shlex.join(argv)}: {err.strerror or err}") from None
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        raise ReloadError(f"{shlex.join(argv)} timed out after {timeout:g}s") from None
    except BaseException:  # cancelled: do not leave the command running behind us
        _kill_group(proc.pid)
        raise
    text = " | ".join(output.decode(errors="replace").strip().splitlines())[:_OUTPUT_LIMIT]
    if proc.returncode != 0:
        raise ReloadError(f"{shlex.join(argv)} exited with status {proc.returncode}: {text}")
    return text


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def split_command(command: str, file: Path | None = None) -> list[str]:
    """Split a command line like a shell would (no shell runs it); `{file}` becomes `file`."""
    argv = shlex.split(command)
    if file is not None:
        argv = [arg.replace("{file}", str(file)) for arg in argv]
    return argv


async def cli_command(socket_path: Path, command: str, timeout: float) -> str:
    """Send one command to an HAProxy CLI socket (stats or master) and return the answer."""
    async with asyncio.timeout(timeout):
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError as err:
            raise ReloadError(f"cannot connect to {socket_path}: {err.strerror or err}") from None
        try:
            writer.write(command.encode() + b"\n")
            writer.write_eof()  # non-interactive: HAProxy answers, then closes
            answer = await reader.read()
        except OSError as err:  # e.g. reset by a master that re-executes
            raise ReloadError(f"{socket_path}: {command!r}: {err.strerror or err}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return answer.decode(errors="replace")


class SignalReloader:
    mode = "signal"

    def __init__(self, pidfile: Path) -> None:
        self.pidfile = pidfile

    async def reload(self) -> None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError) as err:
            raise ReloadError(f"cannot read the master pid from {self.pidfile}: {err}") from None
        try:
            os.kill(pid, signal.SIGUSR2)
        except OSError as err:
            raise ReloadError(f"cannot signal HAProxy master {pid}: {err.strerror}") from None


class MasterSocketReloader:
    mode = "master-socket"
    RESEND_AFTER = 1.0  # seconds without a change in the master's counters
    POLL_TIMEOUT = 0.5  # a connection made while the master re-executes may never be answered

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def counters(self) -> tuple[int, int]:
        """(reloads, failed reloads) of the master, from `show proc`."""
        answer = await cli_command(
            self.socket_path, "show proc", min(self.timeout, self.POLL_TIMEOUT)
        )
        match = _MASTER_LINE.search(answer)
        if match is None:
            raise ReloadError(f"unexpected `show proc` answer: {answer.strip()[:200]!r}")
        return int(match.group(1)), int(match.group(2) or 0)

    async def _send_reload(self) -> None:
        # 2.6 answers nothing and may keep the connection open across its re-exec: the outcome
        # is read from the counters, so do not wait for an answer.
        with contextlib.suppress(TimeoutError):
            await cli_command(self.socket_path, "reload", self.POLL_TIMEOUT)

    async def reload(self) -> None:
        loop = asyncio.get_running_loop()
        reloads, failed = await self.counters()
        async with asyncio.timeout(self.timeout):
            sent = loop.time()
            await self._send_reload()
            while True:
                await asyncio.sleep(0.05)
                try:
                    now_reloads, now_failed = await self.counters()
                except (ReloadError, TimeoutError):
                    continue  # the master is re-executing; its socket comes back
                if (now_reloads, now_failed) == (reloads, failed):
                    if loop.time() - sent > self.RESEND_AFTER:
                        # A `reload` that reaches a master still starting up is lost (seen with
                        # 2.6): asking again is harmless, it loads the same file.
                        sent = loop.time()
                        await self._send_reload()
                    continue
                if now_failed > failed:
                    raise ReloadError(
                        "HAProxy rejected the new configuration (master CLI: failed reloads "
                        f"{failed} -> {now_failed}); the previous workers keep serving"
                    )
                if now_reloads > reloads:
                    return


class CommandReloader:
    mode = "command"

    def __init__(self, command: str, timeout: float) -> None:
        self.argv = split_command(command)
        self.timeout = timeout

    async def reload(self) -> None:
        await run_command(self.argv, self.timeout)


class NoReloader:
    mode = "none"

    async def reload(self) -> None:
        return None
