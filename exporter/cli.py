"""Command line: `healthcheck-exporter [run|validate|check|demo]`, configured by environment."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from exporter import __version__
from exporter.checks import HTTPChecker
from exporter.checks.options import describe_options
from exporter.checks.tls import tls_context_for
from exporter.demo import DEMO_ENV, demo_backends, print_banner
from exporter.logs import configure_logging
from exporter.model import DEFAULT_CHECK_OPTIONS, Result, Target
from exporter.service import (
    TargetSource,
    check_replaceable_file,
    haproxy_updater,
    load_sources,
    run_event_loop,
    serve,
    target_source,
    web_security,
)
from exporter.settings import (
    ConfigError,
    Settings,
    environment_variables,
    load_settings,
    parse_duration,
    quoted,
)
from exporter.sources.env import StaticSource
from exporter.web.wait import WaitOptions, default_url, run_wait

EXIT_OK, EXIT_CHECK_FAILED, EXIT_CONFIG_ERROR = 0, 1, 2

DESCRIPTION = """\
Active HTTP health checker with HAProxy-style fall/rise thresholds, exporting what it sees
to Prometheus. Configured by environment variables (prefix HEALTHCHECK_)."""

COMMANDS = {
    "run": "check the configured targets continuously and serve /metrics (the default)",
    "validate": "check the configuration (variables and targets) without starting; exit 2 if bad",
    "check": "check every target once now, print a table, exit 1 if any check failed",
    "demo": "start three local backends (healthy, flapping, dead) and the exporter watching them",
    "wait": "wait until a running exporter sees an app's targets up (for deploy scripts)",
}

WAIT_EPILOG = """\
exit status: 0 the targets are up, 1 timed out (stderr says which targets are not up
and why), 2 usage error, 3 the exporter cannot be reached or refuses the credentials"""


def _variables_help() -> str:
    rows = [
        f"  {v.name}  (default: {v.default if v.default is not None else 'unset'})\n"
        f"      {v.description}"
        for v in environment_variables()
    ]
    return "environment variables:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthcheck-exporter",
        description=DESCRIPTION,
        epilog=_variables_help()
        + "\n\nexit status: 0 ok, 1 a check failed (`check`), 2 bad configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, text in COMMANDS.items():
        command = sub.add_parser(name, help=text, description=text)
        if name == "wait":
            _wait_arguments(command)
    return parser


def _wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = WAIT_EPILOG
    parser.add_argument("--app", required=True, help="the app whose targets to wait for")
    parser.add_argument(
        "--url",
        help="the exporter's URL (default: from HEALTHCHECK_LISTEN_ADDRESS, https when"
        " HEALTHCHECK_WEB_CONFIG_FILE turns TLS on)",
    )
    parser.add_argument(
        "--timeout", default="60s", type=_duration, help="give up after this (default 60s)"
    )
    parser.add_argument(
        "--min-up",
        type=_at_least_one,
        metavar="N",
        help="enough when N targets are up (default: all of them)",
    )
    parser.add_argument(
        "--check-now",
        action="store_true",
        help="check the app's targets at once (needs HEALTHCHECK_WEB_ENABLE_ADMIN_API=true)",
    )
    parser.add_argument("--username", help="basic auth user")
    parser.add_argument("--password-file", type=Path, help="file holding the basic auth password")
    parser.add_argument("--ca-file", type=Path, help="CA certificate to verify the exporter with")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    command = args.command or "run"
    if command in ("run", "demo"):
        _ignore_sighup_until_serving()
    try:
        if command == "demo":
            return _demo(env)
        if command == "wait":
            return _wait(args, env)
        settings = load_settings(env)
        if command == "validate":
            return _validate(settings)
        if command == "check":
            return _check(settings)
        configure_logging(settings.log_level, settings.log_format)
        source = target_source(settings)
        return run_event_loop(lambda: _serve(settings, source))
    except ConfigError as err:
        print(f"healthcheck-exporter: error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


async def _serve(settings: Settings, source: TargetSource) -> int:
    await serve(settings, source)
    return EXIT_OK


def _ignore_sighup_until_serving() -> None:
    """SIGHUP's default action ends the process: ignore it until `serve` handles it (reload).

    The first read of the sources (a large targets file, a DNS server) can take a while, and a
    SIGHUP sent by a config manager then must not kill the exporter.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def read_sources(settings: Settings) -> TargetSource:
    """Every source read once (DNS and HTTP SD asked once), then stopped; raises ConfigError."""
    source = target_source(settings)

    async def read() -> int:
        try:
            await load_sources(source)
            await source.union.start()
        finally:
            await source.union.stop()
        return EXIT_OK

    # What goes wrong ends in one ConfigError line; the sources' own log lines would repeat it.
    exporter_logger = logging.getLogger("exporter")
    exporter_logger.disabled = True
    try:
        run_event_loop(read)
    finally:
        exporter_logger.disabled = False
    return source


def _wait(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    url = args.url
    if url is None:
        settings = load_settings(env)
        security = web_security(settings)
        tls = security is not None and security.context is not None
        url = default_url(settings.listen_address, tls)
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--password-file: {args.password_file}: {err}") from None
    if args.ca_file is not None and not args.ca_file.is_file():
        raise ConfigError(f"--ca-file: {args.ca_file} is not a readable file")
    options = WaitOptions(
        app=args.app,
        url=url,
        timeout=args.timeout,
        min_up=args.min_up,
        check_now=args.check_now,
        username=args.username,
        password=password,
        ca_file=args.ca_file,
    )
    return run_wait(options)


def _validate(settings: Settings) -> int:
    source = read_sources(settings)
    targets = source.provider.get_health_check_targets()
    haproxy_updater(settings)
    check_tls_files(targets)
    if settings.state_file is not None:
        check_replaceable_file("HEALTHCHECK_STATE_FILE", settings.state_file)
    web_security(settings)
    apps = sorted({t.app_name for t in targets})
    cfg = settings.monitor_config()
    timing = "".join(
        f", {name} {value:g}s"
        for name, value in (("fastinter", cfg.fastinter), ("downinter", cfg.downinter))
        if value is not None
    )
    print(
        f"configuration OK: {len(targets)} targets in {len(apps)} apps ({', '.join(apps)}); "
        f"interval {cfg.interval:g}s{timing}, fall {cfg.fall}, rise {cfg.rise}, "
        f"timeout {cfg.timeout:g}s, checks {'enabled' if cfg.enabled else 'disabled'}, "
        f"listen {settings.listen_address}"
    )
    print(format_options(targets))
    for each in source.union.sources:
        found = each.get_health_check_targets()
        names = sorted({t.app_name for t in found})
        print(f"source {each.name}: {len(found)} targets ({', '.join(names) or 'no apps'})")
    return EXIT_OK


def check_tls_files(targets: Sequence[Target]) -> None:
    """Load the CA bundle and client certificate of every https target, as its checks will:
    a file that is no PEM, or a key that does not match its certificate, is a ConfigError
    naming the target and the key (parsing only checked that the files can be read)."""
    for target in targets:
        if target.options.scheme != "https":
            continue
        try:
            tls_context_for(target.options)
        except ValueError as exc:
            raise ConfigError(f"target {quoted(target.id)}: {exc}") from None


def format_options(targets: Sequence[Target]) -> str:
    """The check options in effect (defaults included), one line per target that has any."""
    rows = [
        (t.id, t.url, describe_options(t.options))
        for t in targets
        if t.options is not DEFAULT_CHECK_OPTIONS
    ]
    if not rows:
        return "every target has the plain check (GET, healthy on 200-399)"
    lines = [f"check options of {len(rows)} of {len(targets)} targets (others: the plain check):"]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines += [f"  {i.ljust(widths[0])}  {u.ljust(widths[1])}  {o}".rstrip() for i, u, o in rows]
    return "\n".join(lines)


def _check(settings: Settings) -> int:
    targets = list(read_sources(settings).provider.get_health_check_targets())
    checker = HTTPChecker(settings.timeout)

    async def run() -> int:
        results = await checker.check_all(targets, settings.max_concurrent)
        print(format_results(results))
        return EXIT_OK if all(r.healthy for r in results) else EXIT_CHECK_FAILED

    return run_event_loop(run)


def format_results(results: Sequence[Result]) -> str:
    """A plain table, one row per target, in the configured order."""
    header = ("RESULT", "TARGET", "APP", "URL", "STATUS", "DURATION", "OPTIONS", "ERROR")
    rows = [header]
    for r in results:
        rows.append(
            (
                "ok" if r.healthy else str(r.reason),
                r.target.id,
                r.target.app_name,
                r.target.url,
                str(r.status_code or "-"),
                f"{r.duration * 1000:.1f}ms",
                describe_options(r.target.options) or "-",
                r.error or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    lines.append(f"{sum(r.healthy for r in results)}/{len(results)} targets healthy")
    return "\n".join(line.rstrip() for line in lines)


def _demo(env: Mapping[str, str]) -> int:
    user = {k: v for k, v in env.items() if k.upper().startswith("HEALTHCHECK_")}
    for key in ("HEALTHCHECK_TARGETS", "HEALTHCHECK_TARGETS_FILE"):
        user.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="healthcheck-demo-") as tmp:
        # The demo also writes an HAProxy backends file (no reload), so the HAProxy writer and
        # its metrics can be seen without an HAProxy.
        haproxy = {"HEALTHCHECK_HAPROXY_CONFIG": str(Path(tmp) / "backends.cfg")}
        settings = load_settings({**DEMO_ENV, **haproxy, **user})
        return _run_demo(settings)


def _run_demo(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> int:
        async with demo_backends() as demo:
            source = TargetSource.of([StaticSource(demo.targets, name="demo")])

            async def banner(addresses: list[str]) -> None:
                print_banner(addresses, demo)

            await serve(settings, source, on_listening=banner)
        return EXIT_OK

    return run_event_loop(run)
