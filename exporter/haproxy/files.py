"""Atomic replacement of the config file, so HAProxy never reads a half-written one.

Write a temporary file in the same directory, fsync it, rename it over the old file, fsync the
directory: whenever the process dies, the path holds either the old or the new content. The
temporary names end in `.tmp`, never `.cfg`, so an HAProxy that loads a whole directory
(`-f /etc/haproxy/conf.d`) never picks one up.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"
DEFAULT_MODE = 0o644


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def write_temp(path: Path, data: bytes) -> Path:
    """A written, fsynced sibling of `path` with the old file's mode (and owner, if we may)."""
    try:
        old = path.stat()
        mode, owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
    except FileNotFoundError:
        mode, owner = DEFAULT_MODE, None
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(file.fileno(), *owner)
            os.fsync(file.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def install(temp: Path, path: Path) -> None:
    """Rename `temp` over `path` and make the rename itself durable."""
    os.replace(temp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: Path, data: bytes) -> None:
    temp = write_temp(path, data)
    try:
        install(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path` (at most `limit` + 1 of them).

    Raises FileNotFoundError if there is none, ValueError saying why for anything else that
    cannot be read: not a regular file (opened without blocking, so a FIFO cannot hang us),
    permissions, I/O errors.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # sockets cannot even be opened
            raise ValueError(f"{path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            raise ValueError(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read() if limit is None else file.read(limit + 1)
    except OSError as err:
        raise ValueError(f"{path}: cannot read it: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_existing(path: Path) -> bytes | None:
    """The current content of a file we are to replace; None if there is none.

    Raises ValueError, saying why, for a path we must not take over: not a regular file,
    unreadable, or not UTF-8 text (probably not the file meant).
    """
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return None
    try:
        data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: is it the right file?") from None
    return data


def check_directory_writable(path: Path) -> None:
    """Raise ValueError unless a temporary file can be created beside `path` (as every atomic
    replace does), e.g. in a read-only directory or file system."""
    try:
        fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise ValueError(
            f"cannot create files in {path.parent} ({err.strerror or err}); the file is replaced "
            "through a temporary file beside it, so its directory must be writable"
        ) from None
    os.close(fd)
    os.unlink(name)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temporary files a killed earlier run left beside `path`; returns them."""
    stale = [
        p
        for p in path.parent.glob(temp_prefix(path) + "*" + TEMP_SUFFIX)
        if p.is_file() and p != path
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_single_file_mount(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether `path` itself is a mount point (e.g. a container's single-file bind mount).

    An atomic rename gives the path a new inode, which a single-file bind mount never sees: the
    container keeps reading the old file. Mount the directory instead.
    """
    target = os.path.realpath(path)
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (`\\040`)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field
