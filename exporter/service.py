"""Wires settings, target source, monitor and HTTP server into the running exporter."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import jinja2
from aiohttp import web

from exporter import statefile
from exporter.checks.options import OptionValues, build_options, parse_check_defaults
from exporter.haproxy import files
from exporter.haproxy.agent import AgentServer, AnswerFromState
from exporter.haproxy.membership import MembershipFile
from exporter.haproxy.render import AgentCheck
from exporter.haproxy.state_file import StateSavingReloader
from exporter.haproxy.stats import PassiveFastPath
from exporter.haproxy.updater import HAProxyOptions, HAProxyUpdater
from exporter.memory import heap_trimmer, trim_periodically
from exporter.metrics import ReloadStats, build_labels, take_snapshot
from exporter.model import ConfigUpdater, Target, TargetProvider
from exporter.monitor import HealthMonitor
from exporter.settings import ConfigError, Settings, quoted
from exporter.shard import Shard, ShardedProvider
from exporter.sources.base import Source
from exporter.sources.dns import DnsSource, parse_dns_sd, parse_dns_server
from exporter.sources.docker import DockerSource
from exporter.sources.docker_api import EngineAddress, EngineError
from exporter.sources.env import StaticSource
from exporter.sources.file import FileSource
from exporter.sources.http_sd import HttpSdSource, parse_http_sd_url
from exporter.sources.union import SourceUnion
from exporter.statefile import StateSaver
from exporter.targets import parse_targets_env
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
    """The configured sources, their union, and the provider the monitor reads (maybe sharded)."""

    union: SourceUnion
    provider: TargetProvider

    @classmethod
    def of(cls, sources: Sequence[Source], shard: str | None = None) -> TargetSource:
        """The union of `sources`; raises ConfigError if two of them give the same id."""
        union = SourceUnion(sources, logger)
        union.take_snapshots()
        provider: TargetProvider = union
        if shard is not None:
            provider = ShardedProvider(union, Shard.parse(shard))
        return cls(union, provider)

    @property
    def file(self) -> FileSource | None:
        return next((s for s in self.union.sources if isinstance(s, FileSource)), None)

    @property
    def docker(self) -> DockerSource | None:
        return next((s for s in self.union.sources if isinstance(s, DockerSource)), None)

    @property
    def reload_stats(self) -> ReloadStats | None:
        return self.file

    @property
    def unsharded(self) -> TargetProvider:
        """Every target, whatever this replica's shard (agent mode's HAProxy file lists all)."""
        if isinstance(self.provider, ShardedProvider):
            return self.provider.inner
        return self.provider


def target_source(settings: Settings) -> TargetSource:
    """The configured sources, those read at startup loaded and checked (raises ConfigError).

    Sources that ask a server (Docker, DNS, HTTP SD) are read by `TargetSource.union.start()`.
    """
    return TargetSource.of(configured_sources(settings), settings.shard)


def check_defaults(settings: Settings) -> OptionValues:
    """The options of `HEALTHCHECK_CHECK_DEFAULTS` (validated with the settings already)."""
    if settings.check_defaults is None:
        return {}
    try:
        return parse_check_defaults(settings.check_defaults)
    except ValueError as exc:  # a TLS file that went away since the settings were loaded
        raise ConfigError(f"HEALTHCHECK_CHECK_DEFAULTS: {exc}") from None


def configured_sources(settings: Settings) -> list[Source]:
    """One source per configured kind, in a fixed order (the order of the union)."""
    defaults = check_defaults(settings)
    sources: list[Source] = []
    if settings.targets is not None:
        sources.append(StaticSource(parse_targets_env(settings.targets, defaults=defaults)))
    if settings.targets_file is not None:
        file = FileSource(settings.targets_file, logger, defaults=defaults)
        file.load_initial()
        sources.append(file)
    docker = docker_source(settings, defaults)
    if docker is not None:
        sources.append(docker)
    if settings.dns_sd is not None:
        server = None if settings.dns_server is None else parse_dns_server(settings.dns_server)
        queries = parse_dns_sd(settings.dns_sd)
        options = build_options(defaults)
        sources.append(DnsSource(queries, logger, settings.dns_refresh, server, options))
    if settings.http_sd_url is not None:
        url = parse_http_sd_url(settings.http_sd_url)
        sources.append(HttpSdSource(url, logger, settings.http_sd_refresh, defaults=defaults))
    if not sources:
        raise ConfigError(
            "HEALTHCHECK_TARGETS: no targets configured: set HEALTHCHECK_TARGETS,"
            " HEALTHCHECK_TARGETS_FILE, HEALTHCHECK_DOCKER_HOST, HEALTHCHECK_DNS_SD or"
            " HEALTHCHECK_HTTP_SD_URL"
            " (or try `healthcheck-exporter demo`)"
        )
    return sources


def reload_targets(source: TargetSource, reason: str = "SIGHUP") -> None:
    """Re-read every source now: SIGHUP (and `POST /-/reload`) call this, and only this.

    Returns at once: each source reads in its own task, off the event loop where that is slow,
    and the monitor picks up what changed. A bad version keeps that source's previous targets.
    """
    logger.info(
        "re-reading the target sources",
        extra={"reason": reason, "sources": ",".join(s.name for s in source.union.sources)},
    )
    source.union.refresh()


RELOAD_REPORT_TIMEOUT = 10.0
"""Seconds `POST /-/reload` waits for the targets file's re-read before answering."""


async def reload_and_report(source: TargetSource) -> str | None:
    """`POST /-/reload`: re-read every source, as SIGHUP does, and wait (bounded) for the
    targets file's read to end, so that a bad file is answered as an error, as Prometheus's
    own `/-/reload` does. Other sources report through their metrics."""
    file = source.file
    reads_before = 0 if file is None else file.reload_successes + file.health.failures
    reload_targets(source, "POST /-/reload")
    if file is None:
        return None
    deadline = time.monotonic() + RELOAD_REPORT_TIMEOUT
    while file.reload_successes + file.health.failures == reads_before:
        if time.monotonic() >= deadline:
            return f"{file.path}: not re-read within {RELOAD_REPORT_TIMEOUT:g}s"
        await asyncio.sleep(0.02)
    return file.health.last_error


# --- Docker source (issue 15) ---


def docker_source(settings: Settings, defaults: OptionValues) -> DockerSource | None:
    """The Docker source if HEALTHCHECK_DOCKER_HOST is set (not yet reached); raises ConfigError.

    `defaults` (HEALTHCHECK_CHECK_DEFAULTS) lie under each container's option labels."""
    if settings.docker_host is None:
        return None
    try:
        address = EngineAddress.parse(settings.docker_host)
    except ValueError as exc:
        raise ConfigError(f"HEALTHCHECK_DOCKER_HOST: {exc}") from None
    return DockerSource(address, settings.docker_network, logger, defaults=defaults)


async def load_sources(source: TargetSource) -> None:
    """Read the sources that need I/O once (the Docker engine); raises ConfigError if one fails."""
    if source.docker is None:
        return
    try:
        await source.docker.load()
    except EngineError as exc:
        raise ConfigError(f"HEALTHCHECK_DOCKER_HOST: cannot reach the engine: {exc}") from None


def haproxy_updater(settings: Settings) -> HAProxyUpdater | None:
    """The HAProxy writer if HEALTHCHECK_HAPROXY_CONFIG is set; raises ConfigError if unusable."""
    if settings.haproxy_config is None:
        return None
    path = settings.haproxy_config
    check_replaceable_file("HEALTHCHECK_HAPROXY_CONFIG", path)
    try:
        files.read_existing(path)  # an unreadable or a binary file: refuse, not crash
    except ValueError as err:
        raise ConfigError(f"HEALTHCHECK_HAPROXY_CONFIG: {err}") from None
    # HAProxyOptions' fields are the HEALTHCHECK_HAPROXY_* settings without their prefix.
    agent = None
    if settings.agent_listen_address is not None:
        agent = AgentCheck(settings.agent_addresses(), settings.agent_inter)
    options = HAProxyOptions(
        config=path,
        agent=agent,
        **{
            f.name: getattr(settings, f"haproxy_{f.name}")
            for f in fields(HAProxyOptions)
            if f.name not in ("config", "agent")
        },
    )
    template = settings.haproxy_template
    try:
        if template is not None and template.exists() and not template.is_file():
            raise ConfigError(f"HEALTHCHECK_HAPROXY_TEMPLATE: {template} is not a regular file")
    except OSError as err:  # e.g. a name too long
        raise ConfigError(
            f"HEALTHCHECK_HAPROXY_TEMPLATE: {quoted(str(template))}: {err.strerror or err}"
        ) from None
    try:
        updater = HAProxyUpdater(options, logger)
    except jinja2.TemplateError as err:
        where = f"{settings.haproxy_template}"
        if isinstance(err, jinja2.TemplateSyntaxError):
            where += f" line {err.lineno}"
        raise ConfigError(f"HEALTHCHECK_HAPROXY_TEMPLATE: {where}: {err.message}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"HEALTHCHECK_HAPROXY_TEMPLATE: {settings.haproxy_template} is not UTF-8 text"
        ) from None
    except OSError as err:  # a directory, a FIFO...
        raise ConfigError(
            f"HEALTHCHECK_HAPROXY_TEMPLATE: {settings.haproxy_template}: {err.strerror or err}"
        ) from None
    state_file, socket = settings.haproxy_server_state_file, settings.haproxy_runtime_socket
    if state_file is not None and socket is not None and updater.reloader.mode != "none":
        updater.reloader = StateSavingReloader(
            updater.reloader, socket, state_file, settings.haproxy_reload_timeout, logger
        )
    return updater


def check_replaceable_file(variable: str, path: Path) -> None:
    """Raise ConfigError unless `path` can be replaced atomically: a regular file or nothing yet,
    in a directory where we may create files."""
    try:
        if not path.parent.is_dir():
            raise ConfigError(f"{variable}: directory {path.parent} does not exist")
        if path.is_dir():
            raise ConfigError(f"{variable}: {path} is a directory, not a file")
        if path.exists() and not path.is_file():  # replacing a device or a FIFO: a disaster
            raise ConfigError(f"{variable}: {path} is not a regular file")
        files.check_directory_writable(path)
    except ValueError as err:
        raise ConfigError(f"{variable}: {err}") from None
    except OSError as err:  # e.g. a name too long
        raise ConfigError(f"{variable}: {quoted(str(path))}: {err.strerror or err}") from None


def state_saver(settings: Settings, monitor: HealthMonitor) -> StateSaver | None:
    """With HEALTHCHECK_STATE_FILE: the saved states handed to the monitor, and the saver."""
    if settings.state_file is None:
        return None
    check_replaceable_file("HEALTHCHECK_STATE_FILE", settings.state_file)
    monitor.restore_state(statefile.load(settings.state_file, logger))
    return StateSaver(settings.state_file, monitor.tracker, logger)


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
    # SIGHUP first: before, its default action would end the process (a slow first read).
    loop.add_signal_handler(signal.SIGHUP, reload_targets, source)
    security = web_security(settings)  # before anything starts: a bad file is exit 2
    haproxy = haproxy_updater(settings) if updater is None else None
    agent_mode = settings.agent_listen_address is not None
    # In agent mode, health reaches HAProxy through the agent: the file follows membership only.
    on_health = updater or (None if agent_mode else haproxy) or LoggingUpdater()
    monitor = HealthMonitor(
        settings.monitor_config(),
        source.provider,
        on_health,
        logger,
        panic_threshold=settings.panic,
        initial_state=settings.initial_target_state,
    )
    try:
        await load_sources(source)
        await source.union.start(monitor.refresh_targets)
    except BaseException:
        loop.remove_signal_handler(signal.SIGHUP)
        await source.union.stop()
        raise
    saver = state_saver(settings, monitor)
    membership: MembershipFile | None = None
    if haproxy is not None:
        if agent_mode:
            membership = MembershipFile(source.unsharded, haproxy, logger)
            haproxy.track(membership.states)
        else:
            haproxy.track(monitor.routable_states)  # the safety floor applies to HAProxy too
        await haproxy.start()
    agent = (
        AgentServer(
            AnswerFromState(monitor.tracker, lambda app: monitor.panic_view.in_panic(app)),
            logger,
            settings.agent_timeout,
        )
        if agent_mode
        else None
    )
    passive = None
    if settings.haproxy_runtime_socket is not None:
        passive = PassiveFastPath(
            settings.haproxy_runtime_socket,
            settings.haproxy_stat_interval,
            monitor.tracker,
            monitor.check_now,
            logger,
            settings.haproxy_reload_timeout,
        )
    labels = build_labels(event_loop_name(), settings.shard or "")
    stats = haproxy.stats if haproxy is not None else None
    agent_stats = agent.stats if agent is not None else None
    passive_stats = passive.stats if passive is not None else None
    sources = source.union.sources
    saved = saver.stats if saver is not None else None
    api_options = ApiOptions(
        admin_api=settings.web_enable_admin_api,
        lifecycle=settings.web_enable_lifecycle,
        reload=lambda: reload_and_report(source),
        extensions=status_extensions(source, haproxy, monitor),
    )
    guard = None if security is None else Guard(security.config)
    app = make_app(
        monitor,
        lambda: take_snapshot(
            monitor,
            labels,
            source.reload_stats,
            stats,
            agent_stats,
            passive_stats,
            sources=sources,
            state_file=saved,
        ),
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
    follow: asyncio.Task[None] | None = None
    saving: asyncio.Task[None] | None = None
    web_watch: asyncio.Task[None] | None = None
    passive_task: asyncio.Task[None] | None = None
    trimming = loop.create_task(trim_periodically(heap_trimmer()))
    try:
        context = None if security is None else security.context
        await http.start(settings.listen_host, settings.listen_port, context)
        if security is not None and guard is not None:
            watcher = WebConfigWatcher(security.config, context, guard.apply, logger)
            web_watch = loop.create_task(watcher.watch())
        addresses = [_format_address(a) for a in http.addresses]
        if agent is not None:
            await _start_agent(agent, settings)
        if membership is not None:
            follow = loop.create_task(membership.run())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if settings.timeout > settings.interval:
            logger.warning(
                "HEALTHCHECK_TIMEOUT is longer than HEALTHCHECK_INTERVAL: a slot that comes "
                "while the target's previous check still runs is skipped "
                "(healthcheck_checks_skipped_total)"
            )
        monitor.start()
        if saver is not None:
            saving = loop.create_task(saver.run())
        if passive is not None:
            passive_task = loop.create_task(passive.run())
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
        await source.union.stop()
        for task in (follow, web_watch, passive_task, trimming):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if agent is not None:
            await agent.stop()
        await monitor.stop()
        if saving is not None and saver is not None:
            saving.cancel()
            await asyncio.gather(saving, return_exceptions=True)
            await saver.save()  # the last state, for the next start
        if haproxy is not None:
            await haproxy.stop()
        http.close()
        await runner.cleanup()


async def _start_agent(agent: AgentServer, settings: Settings) -> None:
    assert settings.agent_listen_address is not None
    host, port = settings.agent_host_port()
    try:
        bound = await agent.start(host, port)
    except OSError as err:
        raise ConfigError(
            f"HEALTHCHECK_AGENT_LISTEN_ADDRESS: cannot listen on {settings.agent_listen_address}:"
            f" {err.strerror or err}"
        ) from None
    logger.info("agent ready", extra={"address": ",".join(bound)})


def status_extensions(
    source: TargetSource, haproxy: HAProxyUpdater | None, monitor: HealthMonitor
) -> Extensions:
    """What the status page and the API show beside the checks: each app's panic state, the
    HAProxy writer, the target sources."""

    def panic_fields(app: str) -> dict[str, object]:
        """`panic`: the app is below HEALTHCHECK_PANIC_THRESHOLD, every target routed."""
        return {"panic": monitor.panic_view.in_panic(app)}

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
        return [
            {
                "source": each.name,
                "targets": each.health.targets,
                "failures": each.health.failures,
                "last_success": each.health.last_success_time or None,
                "last_error": each.health.last_error,
            }
            for each in source.union.sources
        ]

    return Extensions(
        app_fields=(panic_fields,),
        status_sections={"haproxy": haproxy_section, "sources": sources_section},
    )


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
