"""Processes the benchmark starts: pinned to one core, in a process group of their own, always
stopped (group first, SIGKILL after a grace period), and read from /proc for CPU and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MEASURED_CORE = 0  # the process being measured runs alone here
HELPER_CORE = 1  # target, load generators and this script share the other core

# command -> Debian package providing it
APT_TOOLS = {"wrk": "wrk", "prometheus-blackbox-exporter": "prometheus-blackbox-exporter"}
POLICY_RC = Path("/usr/sbin/policy-rc.d")
APT_TIMEOUT = 300.0


def which(command: str) -> str | None:
    # /usr/sbin is not on every user's PATH (haproxy lives there).
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if which("sudo") is None:
        raise SystemExit("bench: need root or sudo to apt-get install the missing tools")
    return ["sudo", "-n"]


def _apt(args: list[str], sudo: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        [*sudo, "apt-get", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"bench: apt-get {' '.join(args)} failed:\n" + "\n".join(tail))


T = TypeVar("T")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_until_stopped(main: Coroutine[Any, Any, T], say: Callable[[str], None] = _to_stderr) -> T:
    """`asyncio.run(main)`, with SIGTERM cancelling it as Ctrl-C does; either ends the process
    with status 130 after `say`ing so. The processes `started` runs are in process groups of
    their own, so a benchmark killed without its `finally` blocks would leave them running (and
    holding the target's ports for the next run)."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: every process started was stopped; nothing written")
        raise SystemExit(130) from None


def pin_self() -> None:
    """Keep this script (and the clients it runs) off the measured core."""
    available = os.sched_getaffinity(0)
    if not {MEASURED_CORE, HELPER_CORE} <= available:
        raise SystemExit(f"bench: needs cores {MEASURED_CORE} and {HELPER_CORE}; has {available}")
    os.sched_setaffinity(0, {HELPER_CORE})


def ensure_tools() -> None:
    """apt-get install wrk and prometheus-blackbox-exporter when missing, without starting the
    blackbox service (a policy-rc.d that forbids it, as scripts/test.sh does); else exit."""
    missing = sorted({pkg for cmd, pkg in APT_TOOLS.items() if which(cmd) is None})
    if not missing:
        return
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    sudo = _sudo()
    added_policy = not POLICY_RC.exists()
    if added_policy:
        script = f"printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC} && chmod +x {POLICY_RC}"
        subprocess.run([*sudo, "sh", "-c", script], check=True, timeout=30)
    try:
        _apt(["update", "-qq"], sudo)
        _apt(["install", "-y", "-qq", "--no-install-recommends", *missing], sudo)
    except subprocess.TimeoutExpired as err:
        raise SystemExit(f"bench: {err.cmd} took longer than {APT_TIMEOUT:.0f}s") from err
    finally:
        if added_policy:
            subprocess.run([*sudo, "rm", "-f", str(POLICY_RC)], check=False, timeout=30)
    still = [cmd for cmd in APT_TOOLS if which(cmd) is None]
    if still:
        raise SystemExit(f"bench: still missing after apt-get install: {', '.join(still)}")


@dataclass
class Child:
    """A started process: its pid is the real program's (taskset execs it)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc_status_kib(self.pid, "VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        return proc_status_kib(self.pid, "VmHWM") * 1024

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-10:]
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode}:\n" + "\n".join(tail)
            )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; fields after it start with the state (field 3).
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


async def stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after `grace` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@contextlib.asynccontextmanager
async def started(
    name: str,
    argv: list[str],
    core: int,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Child]:
    """Run `argv` pinned to `core` in its own session, output to `<log_dir>/<name>.log`."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", str(core), *argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield Child(name, proc, log)
    finally:
        await stop(proc)


async def run_bounded(argv: list[str], core: int, timeout: float) -> str:
    """Run a load generator pinned to `core` to completion (killed after `timeout`): its stdout."""
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", str(core), *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        await stop(proc, grace=1.0)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {out.decode()[-500:]}")
    return out.decode()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str, child: Child | None = None
) -> None:
    """Poll `condition` every 50 ms until it holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if child is not None:
            child.check_alive()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, aiohttp.ClientError):
            if await condition():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.05)


# -- netfilter connection tracking on loopback -------------------------------------------------

CONNTRACK_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")
CONNTRACK_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
NOTRACK_RULES = (("PREROUTING", "-i"), ("OUTPUT", "-o"))


def conntrack_loaded() -> bool:
    """Whether netfilter tracks connections here (Docker, firewalld and kube-proxy load it): then
    every loopback connection of a benchmark is a table entry for the TIME_WAIT timeout."""
    return CONNTRACK_COUNT.exists()


def conntrack_usage() -> str:
    """`count of max` entries in use, or "" where there is no table."""
    try:
        return f"{CONNTRACK_COUNT.read_text().strip()} of {CONNTRACK_MAX.read_text().strip()}"
    except OSError:
        return ""


def _notrack(action: str, chain: str, direction: str) -> None:
    argv = [*_sudo(), "iptables", "-t", "raw", action, chain, direction, "lo", "-j", "NOTRACK"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def loopback_untracked(wanted: bool) -> Iterator[bool]:
    """While inside, loopback traffic bypasses connection tracking (two `NOTRACK` rules in the
    raw table, removed on the way out, also on errors and Ctrl-C). At 20,000 connections a
    second the table (262,144 entries by default) fills within 15 s and drops new SYNs, which
    stalls every process measured. Yields whether the rules are in place."""
    if not (wanted and conntrack_loaded()):
        yield False
        return
    added: list[tuple[str, str]] = []
    try:
        for chain, direction in NOTRACK_RULES:
            _notrack("-I", chain, direction)
            added.append((chain, direction))
        yield True
    finally:
        for chain, direction in reversed(added):
            _notrack("-D", chain, direction)
