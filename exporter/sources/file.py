"""The targets file (`HEALTHCHECK_TARGETS_FILE`): loading a JSON/YAML file and watching it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from exporter.checks.options import OptionValues
from exporter.model import Target
from exporter.settings import ConfigError
from exporter.targets import json_error_message, parse_targets_document


def _load_json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(json_error_message(exc)) from None


def _load_yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from None


def load_targets_file(path: Path, *, defaults: OptionValues | None = None) -> list[Target]:
    """Targets from a JSON (`.json`) or YAML (`.yml`, `.yaml`) file; other names: JSON, else YAML.

    Refuses an empty file: a writer that truncated it is more likely than a wish for no targets
    (write `[]` for that).
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = _load_json(text)
        elif suffix in (".yml", ".yaml"):
            data = _load_yaml(text)
        else:
            try:
                data = _load_json(text)
            except ValueError:
                data = _load_yaml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_targets_document(data, str(path), defaults=defaults)


# --- provider ------------------------------------------------------------------------------------


_FileSignature = tuple[int, int, int]


def _file_signature(path: Path) -> _FileSignature | None:
    """(mtime_ns, size, inode) of `path`; None when it cannot be stat'ed (missing, mid-rename)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


class FileTargetProvider:
    """Targets from a file, kept at the last good version while the file is broken or missing.

    `reload_successes` and `last_reload_success_time` count the initial load too.
    """

    def __init__(
        self, path: Path, logger: logging.Logger, *, defaults: OptionValues | None = None
    ) -> None:
        self.path = path
        self._defaults = defaults
        self._logger = logger
        self._targets: list[Target] = []
        self._loaded_signature: _FileSignature | None = None
        self.reload_successes = 0
        self.reload_failures = 0
        self.last_reload_success_time = 0.0
        self.last_error: str | None = None

    def load_initial(self) -> None:
        """Load the file at startup; raises ConfigError if it is unreadable or invalid."""
        self._load()

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    def reload(self) -> bool:
        """Re-read the file now; True if the targets changed. A bad file keeps the old targets."""
        previous = self._targets
        try:
            self._load()
        except ConfigError as exc:
            self.reload_failures += 1
            self.last_error = str(exc)
            self._logger.error(
                "targets file invalid, keeping previous targets",
                extra={"file": str(self.path), "error": str(exc)},
            )
            return False
        changed = self._targets != previous
        if changed:
            self._logger.info(
                "targets file reloaded",
                extra={"file": str(self.path), "targets": len(self._targets)},
            )
        return changed

    def _load(self) -> None:
        # Stat before reading: a write that lands after the stat changes the signature, so
        # watch() sees it on its next poll.
        signature = _file_signature(self.path)
        self._targets = load_targets_file(self.path, defaults=self._defaults)
        self._loaded_signature = signature
        self.reload_successes += 1
        self.last_reload_success_time = time.time()
        self.last_error = None

    async def watch(self, on_change: Callable[[], None], poll_interval: float = 1.0) -> None:
        """Reload when the file changes, calling `on_change` if the targets did; until cancelled.

        Polls (mtime_ns, size, inode) with `os.stat`, which sees in-place edits as well as
        replacement by rename. After a change it waits for two polls in a row to agree, so a
        file still being written is not read half-way. A missing file is one failure per change.
        """
        seen = self._loaded_signature
        while True:
            await asyncio.sleep(poll_interval)
            try:
                current = _file_signature(self.path)
                if current == seen:
                    continue
                while True:
                    await asyncio.sleep(poll_interval)
                    settled = _file_signature(self.path)
                    if settled == current:
                        break
                    current = settled
                seen = current
                if self.reload():
                    on_change()
            except Exception:
                self._logger.exception(
                    "handling a targets file change failed", extra={"file": str(self.path)}
                )
