"""Atomic config writes: old or new content whenever the writer dies, mode kept, no litter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.haproxy.files import atomic_write, is_single_file_mount, remove_stale_temps


def test_atomic_write_replaces_content_and_keeps_mode(tmp_path: Path):
    path = tmp_path / "backends.cfg"
    path.write_text("old\n")
    path.chmod(0o640)
    atomic_write(path, b"new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["backends.cfg"]


def test_atomic_write_creates_a_new_file_readable_by_haproxy(tmp_path: Path):
    path = tmp_path / "backends.cfg"
    atomic_write(path, b"backend web\n")
    assert path.read_bytes() == b"backend web\n"
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path):
    path = tmp_path / "missing-dir" / "backends.cfg"
    with pytest.raises(FileNotFoundError):
        atomic_write(path, b"x")
    assert not path.parent.exists()


def test_stale_temps_from_a_killed_run_are_removed(tmp_path: Path):
    path = tmp_path / "backends.cfg"
    path.write_text("live\n")
    stale = tmp_path / ".backends.cfg.abc123.tmp"
    stale.write_text("half")
    unrelated = tmp_path / "other.tmp"
    unrelated.write_text("keep")
    assert remove_stale_temps(path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backends.cfg", "other.tmp"]


def test_single_file_mount_is_detected_from_mountinfo(tmp_path: Path):
    path = tmp_path / "my backends.cfg"
    path.write_text("")
    mountinfo = tmp_path / "mountinfo"
    escaped = str(path.resolve()).replace(" ", "\\040")
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"99 22 8:1 /srv/backends.cfg {escaped} rw,relatime - ext4 /dev/sda1 rw\n"
    )
    assert is_single_file_mount(path, mountinfo)
    assert not is_single_file_mount(tmp_path / "other.cfg", mountinfo)
    assert not is_single_file_mount(path, tmp_path / "no-such-file")


WRITER = """
import sys
from pathlib import Path
from exporter.haproxy.files import atomic_write
path = Path(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    # Large enough that a kill often lands in the middle of a write.
    atomic_write(path, (f"version {i}\\n" + "x" * 2_000_000 + "\\nend\\n").encode())
"""


def test_sigkill_during_writes_always_leaves_a_complete_file(tmp_path: Path):
    path = tmp_path / "backends.cfg"
    atomic_write(path, b"version 0\n" + b"x" * 2_000_000 + b"\nend\n")
    for round_ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.02 + 0.03 * round_)  # kill at varying points of the write loop
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        content = path.read_bytes()
        assert content.startswith(b"version ")
        assert content.endswith(b"\nend\n")
        assert len(content) == len(content.split(b"\n")[0]) + 1 + 2_000_000 + 5
    remove_stale_temps(path)
    assert [p.name for p in tmp_path.iterdir()] == ["backends.cfg"]
