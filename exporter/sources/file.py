"""The targets file (`HEALTHCHECK_TARGETS_FILE`): loading a JSON/YAML file and watching it."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from exporter.checks.options import OptionValues
from exporter.model import Target
from exporter.settings import ConfigError
from exporter.sources.base import SourceHealth
from exporter.targets import (
    NESTED_TOO_DEEPLY,
    NUMBER_TOO_LONG,
    decode_json,
    parse_targets_document,
)

MAX_FILE_BYTES = 64 * 1024 * 1024
"""A targets file larger than this is refused (64 MiB holds several hundred thousand targets)."""

# libyaml's loader when PyYAML was built with it: 10-20 times faster than the pure-Python one.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader, C or Python
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ValueError(f"invalid YAML: {NESTED_TOO_DEEPLY}") from None
    except ValueError:  # int() refusing a number of thousands of digits
        raise ValueError(f"invalid YAML: {NUMBER_TOO_LONG}") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# What identifies one version of the file: (device, inode, size, mtime, ctime, mode) while it
# can be stat'ed, else the errno name (ENOENT, EACCES, ...). ctime changes on chmod, so a
# version fixed by its permissions alone is a new version; the inode changes on a rename and on
# a Kubernetes ConfigMap update (a swap of the `..data` symlink that `os.stat` follows).
_Signature = tuple[int, int, int, int, int, int] | str


def _signature_of(status: os.stat_result) -> _Signature:
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
        status.st_mode,
    )


def _file_signature(path: Path) -> _Signature:
    try:
        return _signature_of(os.stat(path))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def _read_bytes(path: Path) -> tuple[_Signature, bytes]:
    """The file's content and the signature of exactly the version read; raises ConfigError."""
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{path}: not a regular file ({_file_kind(status.st_mode)})")
        if status.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: file is larger than {MAX_FILE_BYTES >> 20} MiB")
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise ConfigError(f"{path}: file is larger than {MAX_FILE_BYTES >> 20} MiB")
    return _signature_of(status), data


def _decode_document(path: Path, data: bytes) -> object:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return decode_json(text)
        if suffix in (".yml", ".yaml"):
            return _load_yaml(text)
        try:
            return decode_json(text)
        except ValueError:
            return _load_yaml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_targets_file(
    path: Path, *, defaults: OptionValues | None = None
) -> tuple[_Signature, list[Target]]:
    """The targets of one version of the file and that version's signature; raises ConfigError.

    Blocking and CPU-bound for large files: the watcher runs it in a worker thread.
    """
    signature, data = _read_bytes(path)
    document = _decode_document(path, data)
    return signature, parse_targets_document(document, str(path), defaults=defaults)


def load_targets_file(path: Path, *, defaults: OptionValues | None = None) -> list[Target]:
    """Targets from a JSON (`.json`) or YAML (`.yml`, `.yaml`) file; other names: JSON, else YAML.

    Refuses an empty file: a writer that truncated it is more likely than a wish for no targets
    (write `[]` for that). Refuses what is not a regular file, and files over 64 MiB.
    """
    return read_targets_file(path, defaults=defaults)[1]


# --- is a writer still at work? ------------------------------------------------------------------


def _ignore_lease_break_signal() -> None:
    """Let the write probe below run safely: the kernel signals a lease holder with SIGIO.

    The probe holds a read lease for microseconds; a writer opening the file in that window
    makes the kernel send SIGIO, whose default action ends the process. Nothing else here
    uses SIGIO. Signal dispositions can only be changed from the main thread.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGIO, signal.SIG_IGN)


def held_open_for_writing(path: Path) -> bool:
    """True when some process (any container on this kernel) has the file open for writing.

    Linux refuses a read lease (`F_SETLEASE`, `F_RDLCK`) with EAGAIN exactly then. This is how
    a writer that rewrites the file in place and pauses is told from one that has finished:
    their contents may both parse. False when it cannot be told (not Linux, not the file's
    owner without CAP_LEASE, a file system without leases, SIGIO not ignored).
    """
    set_lease = getattr(fcntl, "F_SETLEASE", None)
    if set_lease is None or signal.getsignal(signal.SIGIO) != signal.SIG_IGN:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, set_lease, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    else:
        fcntl.fcntl(fd, set_lease, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


# --- the source ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Version:
    """One read of the file: its targets, or why it was refused."""

    signature: _Signature
    targets: list[Target] | None
    error: str | None


class FileSource:
    """Targets from a file, kept at the last good version while the file is broken or missing.

    The seed's `TargetProvider` and a `Source` (`exporter.sources.base`). Every version of the
    file is read once: a bad one is one log line and one failure (`health`), however long it
    stays; a good one replaces the targets. Reads and parsing run in a worker thread, so a
    large file never stalls checks or `/metrics`. `reload_successes` counts the initial load.
    """

    name = "file"

    def __init__(
        self,
        path: Path,
        logger: logging.Logger,
        poll_interval: float = 1.0,
        writer_grace: float = 30.0,
        *,
        defaults: OptionValues | None = None,
    ) -> None:
        self.path = path
        self._defaults = defaults  # HEALTHCHECK_CHECK_DEFAULTS
        self.poll_interval = poll_interval
        self.writer_grace = writer_grace  # longest wait for a writer holding the file open
        self.health = SourceHealth()
        self.reload_successes = 0
        self._logger = logger
        self._targets: list[Target] = []
        self._loaded: _Signature | None = None  # the version read last, good or bad
        self._refresh_requested = asyncio.Event()
        _ignore_lease_break_signal()

    # ReloadStats (healthcheck_targets_file_reloads_total and friends)
    @property
    def reload_failures(self) -> int:
        return self.health.failures

    @property
    def last_reload_success_time(self) -> float:
        return self.health.last_success_time

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    def load_initial(self) -> None:
        """Load the file at startup; raises ConfigError if it is unreadable or invalid."""
        signature, targets = read_targets_file(self.path, defaults=self._defaults)
        self._accept(_Version(signature, targets, None))

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    def refresh(self) -> None:
        self._refresh_requested.set()

    def reload(self) -> bool:
        """Re-read the file now, in this thread; True if the targets changed."""
        return self._accept(self._read())

    def _read(self) -> _Version:
        try:
            signature, targets = read_targets_file(self.path, defaults=self._defaults)
        except ConfigError as exc:
            return _Version(_file_signature(self.path), None, str(exc))
        return _Version(signature, targets, None)

    def _accept(self, version: _Version) -> bool:
        """Take a version read; True if the targets changed. A bad one keeps the old targets."""
        self._loaded = version.signature
        if version.targets is None:
            error = version.error or "unreadable"
            self.health.failed(error)
            self._logger.error(
                "targets file invalid, keeping previous targets",
                extra={"file": str(self.path), "error": error},
            )
            return False
        changed = version.targets != self._targets
        self._targets = version.targets
        self.reload_successes += 1
        self.health.succeeded(len(version.targets))
        if changed:
            self._logger.info(
                "targets file reloaded",
                extra={"file": str(self.path), "targets": len(self._targets)},
            )
        return changed

    async def run(self, on_change: Callable[[], None]) -> None:
        """Read each new version of the file once it has settled; until cancelled.

        Polls the signature with `os.stat`. A new version is read after it held still for a
        poll and no process has it open for writing any more (at most `writer_grace`
        seconds), so a writer that rewrites it in place and pauses is not read half-way. A
        version that changed while being read is read again once it settles. `refresh()`
        reads at once.
        """
        candidate: _Signature | None = None  # a new version seen, not yet settled
        writer_seen_at: float | None = None
        while True:
            forced = await self._wait_for_poll()
            try:
                current = _file_signature(self.path)
                if not forced:
                    if current == self._loaded:
                        candidate = None
                        continue
                    if current != candidate:
                        candidate, writer_seen_at = current, None
                        continue
                    if await asyncio.to_thread(held_open_for_writing, self.path):
                        writer_seen_at = writer_seen_at or time.monotonic()
                        if time.monotonic() - writer_seen_at < self.writer_grace:
                            continue
                        self._logger.warning(
                            "targets file still open for writing, reading it anyway",
                            extra={"file": str(self.path), "waited": round(self.writer_grace)},
                        )
                candidate, writer_seen_at = None, None
                version = await asyncio.to_thread(self._read)
                if not forced and version.signature != current:
                    continue  # written to while being read: read it again once it settles
                if self._accept(version):
                    on_change()
            except Exception:
                self._logger.exception(
                    "handling a targets file change failed", extra={"file": str(self.path)}
                )

    async def _wait_for_poll(self) -> bool:
        """Sleep one poll interval; True if woken early by `refresh()`."""
        try:
            await asyncio.wait_for(self._refresh_requested.wait(), self.poll_interval)
        except TimeoutError:
            return False
        self._refresh_requested.clear()
        return True


FileTargetProvider = FileSource  # the name the seed's interface gave it
