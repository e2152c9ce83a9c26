"""Reload mode `signal` confirms its reload: SIGUSR2 to the master, then a new worker under it.

With a real HAProxy: a reload is seen through, a configuration HAProxy rejects is a failed reload
(it used to count as a success), and the next good one recovers. A master that misses a signal
(HAProxy 2.6 re-executing when it arrives) cannot be made to miss one on purpose, so a stand-in
process that ignores its first SIGUSR2 shows the signal being sent again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from exporter.haproxy import reload as reload_module
from exporter.haproxy.reload import ReloadError, SignalReloader, child_pids
from tests.haproxy_proc import REQUIRES_HAPROXY, haproxy

# Ignores its first `misses` SIGUSR2, then starts a child ("worker") on each one after; counts
# every signal in a file next to its pid file.
STAND_IN_MASTER = """
import os, signal, subprocess, sys, time
pidfile, misses = sys.argv[1], int(sys.argv[2])
count = 0
children = []
def on_usr2(signum, frame):
    global count
    count += 1
    with open(pidfile + ".signals", "w") as f:
        f.write(str(count))
    if count > misses:
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
signal.signal(signal.SIGUSR2, on_usr2)
with open(pidfile, "w") as f:
    f.write(str(os.getpid()))
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.01)
"""


@asynccontextmanager
async def stand_in_master(directory: Path, misses: int) -> AsyncIterator[Path]:
    pidfile = directory / "master.pid"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STAND_IN_MASTER, str(pidfile), str(misses)
    )
    try:
        deadline = time.monotonic() + 10
        while not pidfile.exists():
            assert time.monotonic() < deadline, "the stand-in master did not start"
            await asyncio.sleep(0.01)
        yield pidfile
    finally:
        for child in child_pids(proc.pid) or ():
            os.kill(child, signal.SIGKILL)
        proc.kill()
        await proc.wait()


def signals_received(pidfile: Path) -> int:
    counter = pidfile.with_name(pidfile.name + ".signals")
    return int(counter.read_text()) if counter.exists() else 0


# -- the children of a process ---------------------------------------------------------------


async def test_child_pids_lists_a_process_children_and_none_for_a_missing_one() -> None:
    sleeper = "import time; time.sleep(30)"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", sleeper)
    try:
        children = child_pids(os.getpid())
        assert children is not None and child.pid in children
        assert reload_module._child_pids_by_scan(os.getpid()) == children
    finally:
        child.kill()
        await child.wait()
    assert child_pids(2**22 + 12345) is None  # above the kernel's pid_max: never a process


# -- with a real HAProxy ---------------------------------------------------------------------


@REQUIRES_HAPROXY
async def test_signal_reload_waits_for_haproxys_new_worker(tmp_path: Path) -> None:
    async with haproxy(tmp_path) as hx:
        assert hx.proc is not None
        before = child_pids(hx.proc.pid)
        assert before  # the first worker
        hx.backends_cfg.write_text("backend web\n    server s1 127.0.0.1:1\n")
        await SignalReloader(hx.pidfile, timeout=10).reload()
        after = child_pids(hx.proc.pid)
        assert after is not None and after - before  # it returned once a new worker ran
        assert "s1" in await hx.servers()


@REQUIRES_HAPROXY
async def test_a_configuration_haproxy_rejects_is_a_failed_signal_reload(tmp_path: Path) -> None:
    async with haproxy(tmp_path) as hx:
        hx.backends_cfg.write_text("backend web\n    no-such-keyword\n")
        started = time.monotonic()
        with pytest.raises(ReloadError, match="started no new worker within 2s"):
            await SignalReloader(hx.pidfile, timeout=2).reload()
        assert time.monotonic() - started < 5
        # The old worker still serves; a good file then reloads as usual.
        hx.backends_cfg.write_text("backend web\n    server s2 127.0.0.1:1\n")
        await SignalReloader(hx.pidfile, timeout=10).reload()
        assert "s2" in await hx.servers()


# -- a master that misses a signal -------------------------------------------------------------


async def test_a_missed_signal_is_sent_again_until_a_worker_starts(tmp_path: Path) -> None:
    async with stand_in_master(tmp_path, misses=1) as pidfile:
        reloader = SignalReloader(pidfile, timeout=10)
        reloader.RESEND_AFTER = 0.2
        await reloader.reload()
        assert signals_received(pidfile) == 2


async def test_no_new_worker_within_the_timeout_says_how_many_signals_went(
    tmp_path: Path,
) -> None:
    async with stand_in_master(tmp_path, misses=100) as pidfile:
        reloader = SignalReloader(pidfile, timeout=1)
        reloader.RESEND_AFTER = 0.2
        with pytest.raises(ReloadError, match=r"no new worker within 1s \(\d+ SIGUSR2 sent\)"):
            await reloader.reload()
        assert signals_received(pidfile) >= 3


async def test_where_children_cannot_be_read_the_signal_is_only_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload_module, "child_pids", lambda pid: None)
    async with stand_in_master(tmp_path, misses=100) as pidfile:
        await asyncio.wait_for(SignalReloader(pidfile, timeout=10).reload(), timeout=1)
        deadline = time.monotonic() + 5
        while signals_received(pidfile) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert signals_received(pidfile) == 1


async def test_an_unreadable_pidfile_or_a_gone_master_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReloadError, match="cannot read the master pid"):
        await SignalReloader(tmp_path / "missing.pid").reload()
    pidfile = tmp_path / "gone.pid"
    pidfile.write_text(str(2**22 + 12345))
    with pytest.raises(ReloadError, match="cannot signal HAProxy master"):
        await SignalReloader(pidfile).reload()
