"""Ways to make HAProxy load a new config file, each raising ReloadError with HAProxy's words.

- signal: SIGUSR2 to the master process (its pid from the pid file), as `systemctl reload` does,
  confirmed by a new worker process appearing under the master;
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


def child_pids(pid: int) -> frozenset[int] | None:
    """The processes whose parent is `pid`, or None if `pid` is gone or cannot be read.

    Read from /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN, which Debian's and most
    distributions' kernels have), else by scanning every /proc/<n>/stat for its parent.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    children: set[int] = set()
    try:
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                children.update(int(child) for child in listing.read().split())
    except FileNotFoundError:  # a kernel without the children files, or the task just ended
        return _child_pids_by_scan(pid)
    except OSError:
        return None
    return frozenset(children)


def _child_pids_by_scan(pid: int) -> frozenset[int] | None:
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # pid (comm) state ppid ...: comm may hold spaces and parentheses
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if fields[1] == str(pid):
            children.add(int(entry))
    return frozenset(children) if os.path.exists(f"/proc/{pid}") else None


class SignalReloader:
    """SIGUSR2 to the master, then wait for the new worker it forks once the new configuration
    is loaded. A signal that reaches a master still re-executing from the previous reload is lost
    (HAProxy 2.6 does that): without a new worker after `RESEND_AFTER`, the signal is sent again
    (it reloads the same file). No new worker within the timeout is a failed reload: the master
    rejected the configuration and the old workers keep serving. Where the master's children
    cannot be read (another PID namespace without /proc access), the signal is only sent."""

    mode = "signal"
    RESEND_AFTER = 1.0  # seconds without a new worker
    POLL = 0.05

    def __init__(self, pidfile: Path, timeout: float = 10.0) -> None:
        self.pidfile = pidfile
        self.timeout = timeout

    def _master(self) -> int:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError) as err:
            raise ReloadError(f"cannot read the master pid from {self.pidfile}: {err}") from None

    @staticmethod
    def _signal(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGUSR2)
        except OSError as err:
            raise ReloadError(f"cannot signal HAProxy master {pid}: {err.strerror}") from None

    async def reload(self) -> None:
        pid = self._master()
        # In a thread: without the children files, /proc is scanned (a few ms per look).
        before = await asyncio.to_thread(child_pids, pid)
        self._signal(pid)
        if before is None:
            return  # nothing to confirm it by
        loop = asyncio.get_running_loop()
        sent_at, signals = loop.time(), 1
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    await asyncio.sleep(self.POLL)
                    now = await asyncio.to_thread(child_pids, pid)
                    if now is None:
                        raise ReloadError(f"HAProxy master {pid} ended during the reload")
                    if now - before:
                        return
                    if loop.time() - sent_at > self.RESEND_AFTER:
                        self._signal(pid)
                        sent_at, signals = loop.time(), signals + 1
        except TimeoutError:
            raise ReloadError(
                f"HAProxy master {pid} started no new worker within {self.timeout:g}s"
                f" ({signals} SIGUSR2 sent): it rejected the new configuration (see its log)"
                " or cannot reload; the previous workers keep serving"
            ) from None


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
