"""Wires settings, target source, monitor and HTTP server into the running exporter."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields

import jinja2
from aiohttp import web

from exporter.haproxy.updater import HAProxyOptions, HAProxyUpdater
from exporter.metrics import ReloadStats, build_labels, take_snapshot
from exporter.model import ConfigUpdater, Target, TargetProvider
from exporter.monitor import HealthMonitor
from exporter.settings import ConfigError, Settings
from exporter.shard import Shard, ShardedProvider
from exporter.targets import FileTargetProvider, StaticTargetProvider, parse_targets_env
from exporter.web import make_app
from exporter.web.api import ApiOptions
from exporter.web.auth import Guard
from exporter.web.config import WebConfig, load_web_config
from exporter.web.server import (
    HTTPServer,
    connection_limit,
    raise_open_files_limit,
    runner_options,
)
from exporter.web.tls import WebConfigWatcher, server_context
from exporter.web.views import Extensions

logger = logging.getLogger("exporter")


class LoggingUpdater:
    """The updater used when no proxy integration is configured: one log line per change."""

    def on_health_change(self, healthy_targets: Sequence[Target]) -> None:
        logger.info("healthy targets changed", extra={"healthy": len(healthy_targets)})


@dataclass
class TargetSource:
    provider: TargetProvider
    file: FileTargetProvider | None = None

    @property
    def reload_stats(self) -> ReloadStats | None:
        return self.file


def target_source(settings: Settings) -> TargetSource:
    """The configured target source, loaded, validated and sharded (raises ConfigError)."""
    source = _unsharded_source(settings)
    if settings.shard is not None:
        source.provider = ShardedProvider(source.provider, Shard.parse(settings.shard))
    return source


def _unsharded_source(settings: Settings) -> TargetSource:
    if settings.targets is not None:
        return TargetSource(StaticTargetProvider(parse_targets_env(settings.targets)))
    if settings.targets_file is not None:
        provider = FileTargetProvider(settings.targets_file, logger)
        provider.load_initial()
        return TargetSource(provider, provider)
    raise ConfigError(
        "HEALTHCHECK_TARGETS: no targets configured: set HEALTHCHECK_TARGETS or "
        "HEALTHCHECK_TARGETS_FILE (or try `healthcheck-exporter demo`)"
    )


def haproxy_updater(settings: Settings) -> HAProxyUpdater | None:
    """The HAProxy writer if HEALTHCHECK_HAPROXY_CONFIG is set; raises ConfigError if unusable."""
    if settings.haproxy_config is None:
        return None
    path = settings.haproxy_config
    if not path.parent.is_dir():
        raise ConfigError(f"HEALTHCHECK_HAPROXY_CONFIG: directory {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"HEALTHCHECK_HAPROXY_CONFIG: {path} is a directory, not a file")
    # HAProxyOptions' fields are the HEALTHCHECK_HAPROXY_* settings without their prefix.
    options = HAProxyOptions(
        config=path,
        **{
            f.name: getattr(settings, f"haproxy_{f.name}")
            for f in fields(HAProxyOptions)
            if f.name != "config"
        },
    )
    try:
        return HAProxyUpdater(options, logger)
    except jinja2.TemplateError as err:
        where = f"{settings.haproxy_template}"
        if isinstance(err, jinja2.TemplateSyntaxError):
            where += f" line {err.lineno}"
        raise ConfigError(f"HEALTHCHECK_HAPROXY_TEMPLATE: {where}: {err.message}") from None


@dataclass
class WebSecurity:
    """HEALTHCHECK_WEB_CONFIG_FILE, loaded: its config and the TLS context (None: plain HTTP)."""

    config: WebConfig
    context: ssl.SSLContext | None


def web_security(settings: Settings) -> WebSecurity | None:
    """The web config, validated and its certificates loaded; raises ConfigError if unusable."""
    if settings.web_config_file is None:
        return None
    config = load_web_config(settings.web_config_file)
    return WebSecurity(config, None if config.tls is None else server_context(config.tls))


def event_loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def serve(
    settings: Settings,
    source: TargetSource,
    *,
    updater: ConfigUpdater | None = None,
    on_listening: Callable[[list[str]], Awaitable[None]] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    security = web_security(settings)  # before anything starts: a bad file is exit 2
    haproxy = haproxy_updater(settings) if updater is None else None
    monitor = HealthMonitor(
        settings.monitor_config(), source.provider, updater or haproxy or LoggingUpdater(), logger
    )
    if haproxy is not None:
        haproxy.track(lambda: [(e.target, e.state) for e in monitor.tracker.entries()])
        await haproxy.start()
    labels = build_labels(event_loop_name(), settings.shard or "")
    stats = haproxy.stats if haproxy is not None else None
    api_options = ApiOptions(
        admin_api=settings.web_enable_admin_api,
        lifecycle=settings.web_enable_lifecycle,
        reload=lambda: reload_targets(source, monitor),
        extensions=status_extensions(source, haproxy),
    )
    guard = None if security is None else Guard(security.config)
    app = make_app(
        monitor,
        lambda: take_snapshot(monitor, labels, source.reload_stats, stats),
        api_options,
        guard,
    )
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=0.5, **runner_options()
    )
    await runner.setup()
    soft_fd_limit, _ = raise_open_files_limit()
    http = HTTPServer(runner, connection_limit(soft_fd_limit))
    stop = asyncio.Event()
    watch: asyncio.Task[None] | None = None
    web_watch: asyncio.Task[None] | None = None
    try:
        context = None if security is None else security.context
        await http.start(settings.listen_host, settings.listen_port, context)
        if security is not None and guard is not None:
            watcher = WebConfigWatcher(security.config, context, guard.apply, logger)
            web_watch = loop.create_task(watcher.watch())
        addresses = [_format_address(a) for a in http.addresses]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if source.file is not None:
            watch = loop.create_task(source.file.watch(monitor.refresh_targets))
            loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, source.file, monitor)
        if settings.timeout > settings.interval:
            logger.warning(
                "HEALTHCHECK_TIMEOUT is longer than HEALTHCHECK_INTERVAL: a slot that comes "
                "while the target's previous check still runs is skipped "
                "(healthcheck_checks_skipped_total)"
            )
        monitor.start()
        total = len(source.provider.get_health_check_targets())
        logger.info(
            "listening",
            extra={
                "address": ",".join(addresses),
                "tls": context is not None,
                "targets": total,
                "event_loop": labels["event_loop"],
                "version": labels["version"],
            },
        )
        if on_listening is not None:
            await on_listening(addresses)
        await stop.wait()
        logger.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in (watch, web_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await monitor.stop()
        if haproxy is not None:
            await haproxy.stop()
        http.close()
        await runner.cleanup()


def _reload_on_sighup(provider: FileTargetProvider, monitor: HealthMonitor) -> None:
    logger.info("SIGHUP: re-reading the targets file", extra={"file": str(provider.path)})
    reload_targets(TargetSource(provider, provider), monitor)


def reload_targets(source: TargetSource, monitor: HealthMonitor) -> str | None:
    """Re-read the targets file now (SIGHUP, POST /-/reload); the file's error, if it is bad."""
    if source.file is not None:
        source.file.reload()
    monitor.refresh_targets()
    return None if source.file is None else source.file.last_error


def status_extensions(source: TargetSource, haproxy: HAProxyUpdater | None) -> Extensions:
    """What the status page and /api/v1/status show of the integrations beside the checks."""

    def haproxy_section() -> object:
        if haproxy is None:
            return None
        stats = haproxy.stats
        return {
            "config": str(haproxy.options.config),
            "reload_mode": haproxy.options.reload,
            "writes": dict(stats.writes),
            "check_failures": stats.check_failures,
            "reloads": dict(stats.reloads),
            "last_config_change": stats.last_config_change or None,
            "last_reload_success": stats.last_reload_success or None,
        }

    def sources_section() -> object:
        file = source.file
        if file is None:
            return [{"kind": "static"}]
        return [
            {
                "kind": "file",
                "path": str(file.path),
                "reload_successes": file.reload_successes,
                "reload_failures": file.reload_failures,
                "last_reload_success": file.last_reload_success_time or None,
                "last_error": file.last_error,
            }
        ]

    return Extensions(status_sections={"haproxy": haproxy_section, "sources": sources_section})


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def run_event_loop(main: Callable[[], Awaitable[int]]) -> int:
    """Run `main` on uvloop when it is installed, else on the standard asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_as_coroutine(main))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_as_coroutine(main))


async def _as_coroutine(main: Callable[[], Awaitable[int]]) -> int:
    return await main()
