"""The HAProxy `ConfigUpdater`: renders, validates, atomically installs, then reloads.

`on_health_change` runs in the monitor's worker thread, one call at a time. It renders the file
from every target's state (not only the healthy list: an app with no healthy target keeps its
empty backend); identical content means no write and no reload. A candidate is checked with the
check command before it replaces the live file, so a rejected config leaves the last good one in
place. Reloads run in their own task on the event loop: at most one per minimum interval, changes
in between coalesced into the next one (the file on disk is always the latest state, so the last
reload always carries the last state), failures retried with backoff, never blocking checks.
A write that fails (render, check command, full or read-only disk) raises `UpdateFailed`, so the
monitor counts it as failed and calls again with backoff until the file catches up, also when no
further health change comes; `stale` stays true meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.haproxy import files
from exporter.haproxy.reload import (
    CommandReloader,
    MasterSocketReloader,
    NoReloader,
    Reloader,
    ReloadError,
    SignalReloader,
    run_command,
    split_command,
)
from exporter.haproxy.render import (
    AGENT_HEADER,
    HEADER,
    AgentCheck,
    Backend,
    TemplateRenderer,
    build_backends,
    render_default,
)
from exporter.haproxy.runtime import Desired, NeedsReload, RuntimeAPI, RuntimeSync, desired_servers
from exporter.model import Target, TargetState, UpdateFailed

RETRY_INITIAL = 0.5
RETRY_MAX = 30.0

StateSource = Callable[[], Sequence[tuple[Target, TargetState]]]


@dataclass(frozen=True)
class HAProxyOptions:
    config: Path
    template: Path | None = None
    backend_prefix: str = ""
    server_options: str = ""
    check_command: str | None = None
    reload: str = "none"
    pidfile: Path | None = None
    master_socket: Path | None = None
    reload_command: str | None = None
    reload_timeout: float = 10.0
    min_reload_interval: float = 1.0
    runtime_socket: Path | None = None
    unhealthy_state: str = "maint"
    agent: AgentCheck | None = None  # agent mode: servers get agent-check options


@dataclass
class HAProxyStats:
    """Counters `/metrics` shows; updated by the updater, copied at scrape time."""

    writes: dict[str, int] = field(
        default_factory=lambda: {"success": 0, "failure": 0, "unchanged": 0}
    )
    check_failures: int = 0
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    runtime_commands: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_reload_success: float = 0.0
    last_config_change: float = 0.0
    stale: bool = False  # the last write failed: the file no longer matches target health


def make_reloader(options: HAProxyOptions) -> Reloader:
    """The configured reload; in runtime-api mode, whichever way is configured as a fallback."""
    mode = options.reload
    fallback = mode == "runtime-api"
    if (mode == "master-socket" or fallback) and options.master_socket is not None:
        return MasterSocketReloader(options.master_socket, options.reload_timeout)
    if (mode == "signal" or fallback) and options.pidfile is not None:
        return SignalReloader(options.pidfile, options.reload_timeout)
    if (mode == "command" or fallback) and options.reload_command is not None:
        return CommandReloader(options.reload_command, options.reload_timeout)
    return NoReloader()


def _describe(err: Exception) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, ReloadError | NeedsReload):
        return str(err)
    return f"{type(err).__name__}: {err}"


def describe_changes(old: Sequence[Backend], new: Sequence[Backend]) -> str:
    """`web:+web-3,-web-1 api:(new)` — servers added and removed per backend."""
    before = {b.name: {s.name: s.healthy for s in b.servers} for b in old}
    after = {b.name: {s.name: s.healthy for s in b.servers} for b in new}
    parts = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            parts.append(f"{name}:(new backend)")
        elif name not in after:
            parts.append(f"{name}:(removed backend)")
        old_servers, new_servers = before.get(name, {}), after.get(name, {})
        changes = [f"+{s}" for s in sorted(new_servers.keys() - old_servers.keys())]
        changes += [f"-{s}" for s in sorted(old_servers.keys() - new_servers.keys())]
        changes += [
            f"{s}={'enabled' if up else 'disabled'}"
            for s, up in sorted(new_servers.items())
            if s in old_servers and old_servers[s] != up
        ]
        if changes:
            parts.append(f"{name}:{','.join(changes)}")
    return " ".join(parts)


class HAProxyUpdater:
    """Keeps an HAProxy config fragment in step with health (see the module docstring)."""

    def __init__(self, options: HAProxyOptions, logger: logging.Logger) -> None:
        self.options = options
        self.logger = logger
        self.stats = HAProxyStats()
        self.reloader = make_reloader(options)
        self.template = TemplateRenderer(options.template) if options.template else None
        self._states: StateSource = list
        self._current: str | None = None
        self._backends: list[Backend] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runtime: RuntimeSync | None = None
        if options.reload == "runtime-api" and options.runtime_socket is not None:
            api = RuntimeAPI(
                options.runtime_socket, options.reload_timeout, options.unhealthy_state
            )
            api.on_command = self._count_command
            self.runtime = RuntimeSync(api, options.server_options)
        self._runtime_lock = asyncio.Lock()  # runtime commands and post-reload bookkeeping
        self._written: Desired = {}  # servers in the file as last written
        self._checking: Future[str] | None = None  # the check command running now

    @property
    def include_unhealthy(self) -> bool:
        return self.options.reload == "runtime-api"

    def track(self, states: StateSource) -> None:
        """Where every target's state comes from (the monitor's tracker)."""
        self._states = states

    async def start(self) -> None:
        """Read the current file, clean up after a killed run, start the reload task."""
        path = self.options.config
        self._loop = asyncio.get_running_loop()
        for stale in files.remove_stale_temps(path):
            self.logger.warning("removed a temporary file left by an earlier run",
                                extra={"file": str(stale)})  # fmt: skip
        if files.is_single_file_mount(path):
            self.logger.warning(
                "the HAProxy config path is a mount point of its own (a single-file bind "
                "mount?): atomic renames give it a new inode that the other side never sees; "
                "mount the directory instead",
                extra={"file": str(path)},
            )
        if self.runtime is not None and isinstance(self.reloader, NoReloader):
            self.logger.warning(
                "runtime-api mode has no reload to fall back on (set HEALTHCHECK_HAPROXY_"
                "MASTER_SOCKET, _PIDFILE or _RELOAD_COMMAND): a change the Runtime API cannot "
                "make (a new app) reaches HAProxy only at its next reload"
            )
        try:
            existing = files.read_existing(path)
        except ValueError as err:  # checked at startup; changed since: it will be replaced
            self.logger.warning("cannot read the current HAProxy config; replacing it",
                                extra={"file": str(path), "error": str(err)})  # fmt: skip
            existing = None
        self._current = None if existing is None else existing.decode()
        self._task = self._loop.create_task(self._reload_loop())

    async def stop(self) -> None:
        checking = self._checking
        if checking is not None:
            checking.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- called from the monitor's worker thread ----------------------------------------------

    def on_health_change(self, healthy_targets: Sequence[Target]) -> None:
        try:
            backends = build_backends(
                self._states(),
                self.options.backend_prefix,
                self.include_unhealthy,
                self.options.agent,
            )
            text = self._render(backends)
        except Exception as err:
            self._write_failed("cannot render the HAProxy config", err)
            raise UpdateFailed(str(err)) from None
        if text == self._current:
            self.stats.writes["unchanged"] += 1
            self.stats.stale = False
            self._backends = backends
            return
        if not self._install(text):
            if self.runtime is not None:  # health must reach HAProxy even if the file cannot
                self._on_loop(self._apply_runtime(desired_servers(backends)))
            raise UpdateFailed(f"{self.options.config} not updated")
        self.logger.info(
            "haproxy config written",
            extra={
                "file": str(self.options.config),
                "changes": describe_changes(self._backends, backends) or "(format)",
                "healthy": len(healthy_targets),
            },
        )
        self._current, self._backends = text, backends
        self.stats.writes["success"] += 1
        self.stats.stale = False
        self.stats.last_config_change = time.time()
        if self.runtime is None:
            self.request_reload()
            return
        desired = desired_servers(backends)
        self._written = desired
        self._on_loop(self._apply_runtime(desired))

    def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the event loop and wait for it (we are in the worker thread)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _count_command(self, ok: bool) -> None:
        self.stats.runtime_commands["success" if ok else "failure"] += 1

    async def _apply_runtime(self, desired: Desired) -> None:
        assert self.runtime is not None
        async with self._runtime_lock:
            try:
                await self.runtime.apply(desired)
            except (NeedsReload, ReloadError, TimeoutError, OSError) as err:
                self.runtime.applied = None  # unknown now: read it again after the reload
                self.logger.warning(
                    "haproxy runtime API could not apply the change; reloading the file instead",
                    extra={"reason": _describe(err), "mode": self.reloader.mode},
                )
                self.request_reload()

    def _render(self, backends: list[Backend]) -> str:
        if self.template is not None:
            return self.template.render(
                backends, self.include_unhealthy, self.options.agent is not None
            )
        header = HEADER if self.options.agent is None else AGENT_HEADER
        return render_default(backends, self.options.server_options, header)

    def _install(self, text: str) -> bool:
        """Write, check (if configured) and install `text`; False if it must not go live."""
        path = self.options.config
        try:
            temp = files.write_temp(path, text.encode())
        except OSError as err:
            self._write_failed("cannot write the HAProxy config", err)
            return False
        try:
            if self.options.check_command is not None:
                self._check(temp)
            files.install(temp, path)
        except ReloadError as err:
            self.stats.check_failures += 1
            self._write_failed("HAProxy rejected the new config; the last good file stays", err)
            return False
        except OSError as err:
            self._write_failed("cannot install the HAProxy config", err)
            return False
        finally:
            temp.unlink(missing_ok=True)
        return True

    def _check(self, candidate: Path) -> None:
        assert self.options.check_command is not None and self._loop is not None
        argv = split_command(self.options.check_command, candidate)
        future: Future[str] = asyncio.run_coroutine_threadsafe(
            run_command(argv, self.options.reload_timeout), self._loop
        )
        self._checking = future  # cancelled by stop(): the command's process group is killed
        try:
            future.result()
        except CancelledError:
            raise ReloadError("the check command was stopped (the exporter is stopping)") from None
        finally:
            self._checking = None

    def _write_failed(self, message: str, err: Exception) -> None:
        self.stats.writes["failure"] += 1
        self.stats.stale = True
        self.logger.error(message, extra={"file": str(self.options.config), "error": str(err)})

    def request_reload(self) -> None:
        """Ask for a reload soon; safe from any thread."""
        if isinstance(self.reloader, NoReloader) or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._reload_wanted.set)

    # -- on the event loop --------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_attempt = -float("inf")
        backoff = RETRY_INITIAL
        while True:
            await self._reload_wanted.wait()
            delay = last_attempt + self.options.min_reload_interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # changes arriving meanwhile ride on this reload
            self._reload_wanted.clear()
            last_attempt = loop.time()
            try:
                await self.reloader.reload()
            except Exception as err:  # whatever happens, the loop must go on
                self.stats.reloads["failure"] += 1
                self.logger.error(
                    "haproxy reload failed; will retry",
                    extra={"mode": self.reloader.mode, "error": _describe(err),
                           "retry_in": backoff},
                )  # fmt: skip
                self._reload_wanted.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
            else:
                backoff = RETRY_INITIAL
                if self.runtime is not None:
                    async with self._runtime_lock:
                        self.runtime.reloaded(self._written)
                self.stats.reloads["success"] += 1
                self.stats.last_reload_success = time.time()
                self.logger.info(
                    "haproxy reloaded",
                    extra={"mode": self.reloader.mode,
                           "duration_ms": round((loop.time() - last_attempt) * 1000, 1)},
                )  # fmt: skip
