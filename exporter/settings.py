"""Configuration from `HEALTHCHECK_*` environment variables, validated up front.

`load_settings()` is the entry point: it refuses unknown `HEALTHCHECK_*` variables and turns every
validation problem into one `ConfigError` line naming the variable. Adding a setting means adding a
field to `Settings` (with a `description`); the unknown-variable check, the error messages and
`environment_variables()` (for `--help` and the README) all follow from the fields.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from exporter.model import Config, TargetState
from exporter.panic import PanicThreshold
from exporter.shard import Shard

ENV_PREFIX = "HEALTHCHECK_"
# The stats socket also feeds the passive fast path, which needs no HAProxy file.
PASSIVE_FIELDS = ("haproxy_runtime_socket", "haproxy_stat_interval")


class ConfigError(Exception):
    """Bad configuration; `str()` is one line naming what was wrong and where."""

    def __init__(self, message: str) -> None:
        # The message goes to logs and terminals as a single line, whatever a parser put in it.
        super().__init__(" ".join(message.splitlines()))


def quoted(value: object, limit: int = 80) -> str:
    """`repr()` of a user-supplied value for an error message: one line, at most ~`limit` chars."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    return repr(value)


def type_name(value: object) -> str:
    """What a decoded JSON/YAML value is, in the words of an error message (`a string`)."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "an object"
    return type(value).__name__


# --- durations -----------------------------------------------------------------------------------

_NANOSECONDS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN, as Go accepts
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_UNIT_HINT = "use ns, us, ms, s, m or h, e.g. 500ms, 15s, 1m30s"
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_NUMBER_AND_UNIT = re.compile(r"([0-9.]*)([^0-9.]*)")


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (`500ms`, `1m30s`, `2.5s`) or a plain number of seconds.

    Raises ValueError, saying what is wrong, for empty, negative, zero, non-finite or malformed
    input (unknown unit, a number without unit inside a compound, whitespace inside).
    """
    body = text.strip()

    def invalid(reason: str) -> ValueError:
        return ValueError(f"invalid duration {quoted(text)}: {reason}")

    if not body:
        raise invalid("empty")
    if body.startswith("-"):
        raise invalid("must not be negative")
    body = body.removeprefix("+")
    if _NUMBER.fullmatch(body):
        nanoseconds = Decimal(body) * _NANOSECONDS_PER_UNIT["s"]
    else:
        nanoseconds = Decimal(0)
        for number, unit in _NUMBER_AND_UNIT.findall(body):
            if not number and not unit:  # the empty match at the end
                continue
            if not number:
                raise invalid(f"expected a number before {quoted(unit)}")
            if not _NUMBER.fullmatch(number):
                raise invalid(f"malformed number {quoted(number)}")
            if not unit:
                raise invalid(f"missing unit after {quoted(number)} ({_UNIT_HINT})")
            if any(char.isspace() for char in unit):
                raise invalid("unexpected whitespace")
            scale = _NANOSECONDS_PER_UNIT.get(unit)
            if scale is None:
                raise invalid(f"unknown unit {quoted(unit)} ({_UNIT_HINT})")
            nanoseconds += Decimal(number) * scale
    seconds = float(nanoseconds / _NANOSECONDS_PER_UNIT["s"])
    if nanoseconds == 0:
        raise invalid("must be greater than zero")
    if not math.isfinite(seconds):
        raise invalid("too large")
    return seconds


def format_duration(seconds: float) -> str:
    """Go-style text for a duration >= 0 with zero parts left out: 15 -> `15s`, 90 -> `1m30s`."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    nanoseconds = round(seconds * 1e9)
    if nanoseconds < 1_000:
        return f"{nanoseconds}ns"
    if nanoseconds < 1_000_000:
        return _decimal_units(nanoseconds, 1_000) + "us"
    if nanoseconds < 1_000_000_000:
        return _decimal_units(nanoseconds, 1_000_000) + "ms"
    hours, rest = divmod(nanoseconds, _NANOSECONDS_PER_UNIT["h"])
    minutes, rest = divmod(rest, _NANOSECONDS_PER_UNIT["m"])
    parts = [f"{hours}h"] if hours else []
    if minutes:
        parts.append(f"{minutes}m")
    if rest or not parts:
        parts.append(_decimal_units(rest, _NANOSECONDS_PER_UNIT["s"]) + "s")
    return "".join(parts)


def _decimal_units(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def _duration_from_text(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


_PARSE_DURATION = BeforeValidator(_duration_from_text)
Duration = Annotated[float, _PARSE_DURATION, Field(gt=0, allow_inf_nan=False)]

# Bounds of numeric settings (issue 13, defects 13 and 21): a value outside them is refused with
# a clear error rather than altered or left to fail later (a 400-digit fall broke /metrics).
MIN_INTERVAL = 0.01  # the scheduler batches due checks 10 ms apart: no shorter interval is kept
MIN_TIMEOUT = 0.001
MAX_DURATION = 24 * 3600.0
MAX_COMMAND_TIME = 3600.0
MAX_THRESHOLD = 10_000
IntervalDuration = Annotated[Duration, Field(ge=MIN_INTERVAL, le=MAX_DURATION)]


def is_duration_field(name: str) -> bool:
    """Whether the Settings field `name` holds a duration (also when it may be unset)."""
    field = Settings.model_fields.get(name)
    if field is None:
        return False
    annotations = (field.annotation, *typing.get_args(field.annotation))
    return _PARSE_DURATION in field.metadata or any(
        _PARSE_DURATION in getattr(annotation, "__metadata__", ()) for annotation in annotations
    )


# --- addresses (shared with exporter.targets) ----------------------------------------------------

_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_host(host: str) -> str:
    """Return `host` if it is an IPv4/IPv6 literal (no brackets, no zone) or an RFC 1123 hostname.

    Hostnames: dot-separated labels of letters, digits and `-` (not at either end of a label),
    each at most 63 characters, at most 253 in all, no trailing dot, and a last label that is not
    all digits (that would be a malformed IPv4 address). Raises ValueError saying why not.
    """
    if not host:
        raise ValueError("missing host")
    if "%" in host:
        raise ValueError(f"invalid host {quoted(host)}: IPv6 zone ids are not supported")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    if host.startswith("["):
        raise ValueError(f"invalid host {quoted(host)}: write IPv6 addresses without brackets here")
    if ":" in host:
        raise ValueError(f"invalid host {quoted(host)}: not an IPv6 address")
    if len(host) > 253:
        raise ValueError(f"invalid host {quoted(host)}: hostname longer than 253 characters")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"invalid host {quoted(host)}: empty label (check the dots)")
        if len(label) > 63:
            raise ValueError(f"invalid host {quoted(host)}: label longer than 63 characters")
        if not _HOSTNAME_LABEL.fullmatch(label):
            raise ValueError(
                f"invalid host {quoted(host)}: label {quoted(label)} must be letters, digits"
                " and '-', not starting or ending with '-'"
            )
    if labels[-1].isdigit():
        raise ValueError(f"invalid host {quoted(host)}: not a valid IPv4 address or hostname")
    return host


def split_host_port(text: str) -> tuple[str, str]:
    """Split `host:port` or `[ipv6]:port` into host (brackets removed; may be "") and port text.

    Only the shape is checked here (callers check the host and the port range). Raises
    ValueError for a missing port, an IPv6 address outside brackets, or brackets around a
    non-IPv6 host.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']'")
        if not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        try:
            is_ipv6 = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
        except ValueError:
            is_ipv6 = False
        if not is_ipv6:
            raise ValueError(f"only IPv6 addresses go in brackets, got {quoted(host)}")
        return host, rest[1:]
    host, colon, port = text.partition(":")
    if not colon:
        raise ValueError("missing ':port'")
    if ":" in port:
        raise ValueError("put IPv6 addresses in brackets, e.g. [fd00::2]:8080")
    return host, port


def parse_port(text: str, minimum: int = 1) -> int:
    """A decimal port number in `minimum`..65535 with no sign and no leading zero."""
    if not text:
        raise ValueError("missing port")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"port {quoted(text)} is not a number")
    if len(text) > 1 and text.startswith("0"):
        raise ValueError(f"port {quoted(text)} has a leading zero")
    if len(text) > 5:  # before int(): Python refuses to convert thousands of digits
        raise ValueError(f"port {quoted(text, 12)} out of range {minimum}-65535")
    port = int(text)
    check_port_range(port, minimum)
    return port


def check_port_range(port: int, minimum: int = 1) -> None:
    if not minimum <= port <= 65535:
        shown = port if port.bit_length() <= 64 else f"of {len(str(abs(port)))} digits"
        raise ValueError(f"port {shown} out of range {minimum}-65535")


# --- settings ------------------------------------------------------------------------------------

# A mapping that replaces os.environ while load_settings() builds a Settings (see below).
_environ_override: ContextVar[Mapping[str, str] | None] = ContextVar(
    "_environ_override", default=None
)


class _MappingEnvSettingsSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars(), which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class Settings(BaseSettings):
    """Everything configurable, from `HEALTHCHECK_<FIELD>` variables (names case-insensitive).

    Empty variables count as unset. Build it with `load_settings()`, which also rejects unknown
    `HEALTHCHECK_*` variables and reports errors as `ConfigError`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, env_ignore_empty=True, extra="forbid"
    )

    enabled: bool = Field(default=True, description="Run health checks at all (true/false).")
    interval: Duration = Field(
        default=15.0,
        ge=MIN_INTERVAL,
        le=MAX_DURATION,
        description="Time between two checks of one target.",
    )
    timeout: Duration = Field(
        default=5.0, ge=MIN_TIMEOUT, le=MAX_DURATION, description="Timeout of one check."
    )
    fall: int = Field(
        default=3,
        ge=1,
        le=MAX_THRESHOLD,
        description="Consecutive failures that mark a target unhealthy.",
    )
    rise: int = Field(
        default=2,
        ge=1,
        le=MAX_THRESHOLD,
        description="Consecutive successes that mark a target healthy.",
    )
    max_concurrent: int = Field(
        default=100, ge=1, le=100_000, description="Checks in flight at once, over all targets."
    )
    listen_address: str = Field(
        default="0.0.0.0:9898",
        description="HTTP listen address: host:port, :port (all interfaces) or [ipv6]:port;"
        " port 0 picks a free port.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level: debug, info, warning or error."
    )
    log_format: Literal["logfmt", "json"] = Field(
        default="logfmt", description="Log line format: logfmt or json."
    )
    targets: str | None = Field(
        default=None,
        description="Targets inline: 'app=host:port[/path]' entries separated by commas or"
        " spaces, or a JSON list of objects.",
    )
    targets_file: Path | None = Field(
        default=None,
        description="JSON or YAML file with the targets (list of objects or Prometheus file_sd"
        " groups), reloaded on change.",
    )

    shard: str | None = Field(
        default=None,
        description="i/n: keep only the targets whose id hashes to shard i of n (Prometheus"
        " hashmod), so n replicas split a fleet with no coordination.",
    )

    # Per-target check options and HAProxy-style timing (issue 12, options).
    fastinter: IntervalDuration | None = Field(
        default=None,
        description="Interval of a target in transition (a failure seen, fall not reached; or"
        " down with a success seen, rise not reached); unset: the interval.",
    )
    downinter: IntervalDuration | None = Field(
        default=None, description="Interval of an unhealthy target; unset: the interval."
    )
    check_defaults: str | None = Field(
        default=None,
        description="JSON object of check options (scheme, method, host, headers, expect_status,"
        " tls_*, interval, ...) for every target that does not set them itself.",
    )

    # --- Docker source (issue 15) ---
    docker_host: str | None = Field(
        default=None,
        description="Docker engine whose running containers labelled healthcheck.app (or"
        " dev.haloy.appName) are the targets: unix:///var/run/docker.sock or tcp://host:port.",
    )
    docker_network: str | None = Field(
        default=None,
        description="Network whose container IP is checked, for containers on several networks"
        " (default: a container's only network; host-network containers: 127.0.0.1).",
    )

    # Target sources beyond the variable and the file (issue 15): DNS and Prometheus HTTP SD.
    dns_sd: str | None = Field(
        default=None,
        description="Targets from DNS: 'app=SRV-name', 'app=A:name:port' or"
        " 'app=AAAA:name:port' entries separated by commas or spaces (id app-ip-port).",
    )
    dns_refresh: IntervalDuration = Field(
        default=30.0,
        description="Time between two lookups of each HEALTHCHECK_DNS_SD name (a shorter record"
        " TTL wins, down to 1s).",
    )
    dns_server: str | None = Field(
        default=None,
        description="DNS server to ask, ip:port (default: the system's resolvers).",
    )
    http_sd_url: str | None = Field(
        default=None,
        description="Prometheus HTTP service discovery URL: a JSON list of {targets, labels}"
        " groups, labels as in the targets file (app, path, id).",
    )
    http_sd_refresh: IntervalDuration = Field(
        default=60.0,
        description="Time between two fetches of HEALTHCHECK_HTTP_SD_URL (ETag honoured).",
    )

    haproxy_config: Path | None = Field(
        default=None,
        description="HAProxy config fragment to keep in step with health (one backend per app);"
        " unset: no HAProxy integration.",
    )
    haproxy_template: Path | None = Field(
        default=None,
        description="Jinja2 template for that file, instead of the built-in format.",
    )
    haproxy_backend_prefix: str = Field(
        default="", description="Prefix of the backend names (backend = prefix + app)."
    )
    haproxy_server_options: str = Field(
        default="",
        description="Options appended to every server line of the built-in format,"
        " e.g. 'maxconn 100'.",
    )
    haproxy_check_command: str | None = Field(
        default=None,
        description="Command that validates a candidate file before it goes live; {file} is"
        " replaced by its path, e.g. 'haproxy -c -f /etc/haproxy/haproxy.cfg -f {file}'.",
    )
    haproxy_reload: Literal["none", "signal", "master-socket", "command", "runtime-api"] = Field(
        default="none",
        description="How HAProxy learns of a new file: none, signal (SIGUSR2 to the master),"
        " master-socket (reload on the master CLI), command, or runtime-api (no reload).",
    )
    haproxy_pidfile: Path | None = Field(
        default=None,
        description="HAProxy master pid file (reload mode signal; also a runtime-api fallback).",
    )
    haproxy_master_socket: Path | None = Field(
        default=None,
        description="HAProxy master CLI socket, haproxy -S (reload mode master-socket).",
    )
    haproxy_reload_command: str | None = Field(
        default=None,
        description="Command that reloads HAProxy (reload mode command; also a runtime-api"
        " fallback), e.g. 'docker kill -s USR2 haproxy'.",
    )
    haproxy_reload_timeout: Duration = Field(
        default=10.0,
        le=MAX_COMMAND_TIME,
        description="Time a reload (or check command) may take.",
    )
    haproxy_min_reload_interval: Duration = Field(
        default=1.0,
        le=MAX_COMMAND_TIME,
        description="At most one reload per this interval; changes in between are coalesced.",
    )
    haproxy_runtime_socket: Path | None = Field(
        default=None,
        description="HAProxy stats socket with level admin (reload mode runtime-api; in any mode"
        " also the passive fast path).",
    )
    haproxy_unhealthy_state: Literal["maint", "drain"] = Field(
        default="maint",
        description="Runtime API state for an unhealthy server: maint (no traffic) or drain"
        " (existing sessions only).",
    )

    # --- passive fast path (issue 16): HAProxy's error counters trigger checks ----------------
    haproxy_stat_interval: Duration = Field(
        default=1.0,
        description="With HEALTHCHECK_HAPROXY_RUNTIME_SOCKET (any mode, with or without the file):"
        " how often `show stat` is read; a server whose errors, 5xx or retries grow is checked at"
        " once, then at fastinter until settled.",
    )

    haproxy_server_state_file: Path | None = Field(
        default=None,
        description="Before each reload, write `show servers state` here (HAProxy's"
        " server-state-file, with load-server-state-from-file global), so that a reload keeps"
        " down servers down; needs HEALTHCHECK_HAPROXY_RUNTIME_SOCKET.",
    )

    # --- agent mode (issue 16): HAProxy agent checks answered by the exporter -------------------
    agent_listen_address: str | None = Field(
        default=None,
        description="Answer HAProxy agent checks here (host:port, :port or [ipv6]:port): HAProxy"
        " sends a target id, the exporter answers its state. Unset: no agent.",
    )
    agent_address: str | None = Field(
        default=None,
        description="host:port HAProxy connects to for agent checks (agent-addr and agent-port in"
        " the HAProxy file); default: the agent listen address, required when that is a wildcard.",
    )
    agent_inter: IntervalDuration = Field(
        default=2.0,
        description="Time between two agent checks of one server by HAProxy (agent-inter in the"
        " HAProxy file).",
    )
    agent_timeout: Duration = Field(
        default=1.0,
        ge=MIN_TIMEOUT,
        le=MAX_COMMAND_TIME,
        description="Time an agent client may take to send its line before it is dropped.",
    )
    agent_shard_addresses: str | None = Field(
        default=None,
        description="With HEALTHCHECK_SHARD=i/n: n comma-separated host:port, entry k the agent of"
        " shard k; the HAProxy file then lists every target, each pointing at its shard's agent.",
    )

    # --- safety (issue 13): the panic threshold, health that survives restarts -----------------
    panic_threshold: str = Field(
        default="0",
        description="Safety floor: when the healthy targets of an app fall below this percentage"
        " (50%) or count (2), every target of the app is passed on as routable; 0 turns it off.",
    )
    initial_state: Literal["healthy", "unhealthy"] = Field(
        default="healthy",
        description="State of a target with no saved state: healthy (routable until fall"
        " failures) or unhealthy (routable after rise successes, the first round counting).",
    )
    state_file: Path | None = Field(
        default=None,
        description="File where each target's health is saved (at most once a second) and"
        " restored from at startup; unset: nothing survives a restart.",
    )

    @field_validator("panic_threshold")
    @classmethod
    def _check_panic_threshold(cls, value: str) -> str:
        return str(PanicThreshold.parse(value))

    @property
    def panic(self) -> PanicThreshold:
        return PanicThreshold.parse(self.panic_threshold)

    @property
    def initial_target_state(self) -> TargetState:
        return TargetState.UNHEALTHY if self.initial_state == "unhealthy" else TargetState.HEALTHY

    # web (issue 14): TLS and basic auth, the admin API and the lifecycle endpoint.
    web_config_file: Path | None = Field(
        default=None,
        description="Web configuration file (TLS, basic auth, headers) in the format of"
        " Prometheus's exporter-toolkit --web.config.file; unset: plain HTTP, no auth.",
    )
    web_enable_admin_api: bool = Field(
        default=False,
        description="Enable POST /api/v1/admin/check (check targets now); else it answers 403.",
    )
    web_enable_lifecycle: bool = Field(
        default=False,
        description="Enable POST /-/reload (re-read the targets file, as SIGHUP); else 403.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments and the environment only: no .env file or secrets directory.
        environ = _environ_override.get()
        if environ is not None:
            env_settings = _MappingEnvSettingsSource(settings_cls, environ)
        return init_settings, env_settings

    @field_validator("log_level", "log_format", "initial_state", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("listen_address")
    @classmethod
    def _check_listen_address(cls, value: str) -> str:
        return checked_listen_address(value)

    @field_validator("check_defaults")
    @classmethod
    def _check_check_defaults(cls, value: str | None) -> str | None:
        # Imported here: the options module validates timing keys against these very fields.
        from exporter.checks.options import parse_check_defaults

        if value is not None:
            parse_check_defaults(value)
        return value

    @model_validator(mode="after")
    def _check_docker(self) -> Settings:
        if self.docker_network is not None and self.docker_host is None:
            raise ValueError(
                f"{ENV_PREFIX}DOCKER_NETWORK: needs {ENV_PREFIX}DOCKER_HOST (the engine to ask)"
            )
        return self

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        return None if value is None else str(Shard.parse(value))

    @field_validator("haproxy_backend_prefix", "haproxy_server_options")
    @classmethod
    def _one_line(cls, value: str) -> str:
        # Both are pasted into the generated config: a line break would inject configuration.
        if not value.isprintable():
            raise ValueError(f"must be printable text on one line (got {quoted(value)})")
        return value.strip()

    @field_validator("haproxy_backend_prefix")
    @classmethod
    def _name_characters(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._:-]+", value):
            raise ValueError(f"may only contain A-Z a-z 0-9 . _ : - (got {quoted(value)})")
        return value

    @model_validator(mode="after")
    def _check_source_options(self) -> Settings:
        for option, needs in (
            ("dns_refresh", "dns_sd"),
            ("dns_server", "dns_sd"),
            ("http_sd_refresh", "http_sd_url"),
        ):
            if getattr(self, needs) is None and getattr(self, option) != (
                type(self).model_fields[option].default
            ):
                raise ValueError(f"{_variable_name(option)}: needs {_variable_name(needs)}")
        return self

    @model_validator(mode="after")
    def _check_haproxy(self) -> Settings:
        needs = {
            "signal": ("haproxy_pidfile", self.haproxy_pidfile),
            "master-socket": ("haproxy_master_socket", self.haproxy_master_socket),
            "command": ("haproxy_reload_command", self.haproxy_reload_command),
            "runtime-api": ("haproxy_runtime_socket", self.haproxy_runtime_socket),
        }
        if self.haproxy_config is None:
            fields = type(self).model_fields
            extra = [  # set to something other than its default: it would silently do nothing
                name
                for name in fields
                if name.startswith("haproxy_")
                and name not in ("haproxy_config", *PASSIVE_FIELDS)
                and getattr(self, name) != fields[name].default
            ]
            if extra:
                needed = f"{ENV_PREFIX}HAPROXY_CONFIG (the file to write)"
                raise ValueError(f"{_variable_name(extra[0])}: needs {needed}")
            return self
        if self.haproxy_reload in needs:
            field, value = needs[self.haproxy_reload]
            if value is None:
                mode = f"{ENV_PREFIX}HAPROXY_RELOAD: {self.haproxy_reload}"
                raise ValueError(f"{mode} needs {_variable_name(field)}")
        return self

    @model_validator(mode="after")
    def _check_server_state_file(self) -> Settings:
        if self.haproxy_server_state_file is None or self.haproxy_config is None:
            return self  # without the file, _check_haproxy names the missing HAPROXY_CONFIG
        variable = f"{ENV_PREFIX}HAPROXY_SERVER_STATE_FILE"
        if self.haproxy_runtime_socket is None:
            raise ValueError(
                f"{variable}: needs {ENV_PREFIX}HAPROXY_RUNTIME_SOCKET (to read the states)"
            )
        if self.haproxy_reload == "none":
            raise ValueError(f"{variable}: the exporter makes no reload with HAPROXY_RELOAD=none")
        if not self.haproxy_server_state_file.parent.is_dir():
            raise ValueError(
                f"{variable}: directory {self.haproxy_server_state_file.parent} does not exist"
            )
        return self

    @model_validator(mode="after")
    def _check_passive(self) -> Settings:
        default = type(self).model_fields["haproxy_stat_interval"].default
        if self.haproxy_runtime_socket is None and self.haproxy_stat_interval != default:
            raise ValueError(
                f"{ENV_PREFIX}HAPROXY_STAT_INTERVAL: needs {ENV_PREFIX}HAPROXY_RUNTIME_SOCKET"
                " (the stats socket to read)"
            )
        return self

    @field_validator("agent_listen_address")
    @classmethod
    def _check_agent_listen_address(cls, value: str | None) -> str | None:
        return None if value is None else checked_listen_address(value)

    @field_validator("agent_address")
    @classmethod
    def _check_agent_address(cls, value: str | None) -> str | None:
        return None if value is None else format_address(parse_agent_address(value))

    @field_validator("agent_shard_addresses")
    @classmethod
    def _check_agent_shard_addresses(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return ",".join(format_address(parse_agent_address(a)) for a in value.split(","))

    @model_validator(mode="after")
    def _check_agent(self) -> Settings:
        if self.agent_listen_address is None:
            fields = type(self).model_fields
            extra = [
                name
                for name in fields
                if name.startswith("agent_") and getattr(self, name) != fields[name].default
            ]
            if extra:
                needed = f"{ENV_PREFIX}AGENT_LISTEN_ADDRESS (agent mode)"
                raise ValueError(f"{_variable_name(extra[0])}: needs {needed}")
            return self
        if self.agent_shard_addresses is not None:
            if self.shard is None:
                raise ValueError(
                    f"{ENV_PREFIX}AGENT_SHARD_ADDRESSES: needs {ENV_PREFIX}SHARD (i/n)"
                )
            shard = Shard.parse(self.shard)
            entries = self.agent_shard_addresses.split(",")
            if len(entries) != shard.count:
                raise ValueError(
                    f"{ENV_PREFIX}AGENT_SHARD_ADDRESSES: {ENV_PREFIX}SHARD={shard} needs"
                    f" {shard.count} addresses, one per shard (got {len(entries)})"
                )
            own = entries[shard.index]
            if self.agent_address is not None and self.agent_address != own:
                raise ValueError(
                    f"{ENV_PREFIX}AGENT_ADDRESS: {self.agent_address} differs from entry"
                    f" {shard.index} of {ENV_PREFIX}AGENT_SHARD_ADDRESSES ({own})"
                )
        if self.haproxy_config is None:
            return self
        if self.haproxy_reload == "runtime-api":
            raise ValueError(
                f"{ENV_PREFIX}HAPROXY_RELOAD: runtime-api sets server states itself, agent mode"
                f" leaves them to the agent: use signal, master-socket, command or none with"
                f" {ENV_PREFIX}AGENT_LISTEN_ADDRESS"
            )
        if self.shard is not None and self.agent_shard_addresses is None:
            raise ValueError(
                f"{ENV_PREFIX}AGENT_SHARD_ADDRESSES: required with {ENV_PREFIX}SHARD and"
                f" {ENV_PREFIX}HAPROXY_CONFIG in agent mode (the file lists every target, each"
                " pointing at the agent of its shard)"
            )
        if self.agent_address is None and self.agent_shard_addresses is None:
            host, port = _parse_listen_address(self.agent_listen_address)
            if host is None or ipaddress_is_wildcard(host) or port == 0:
                raise ValueError(
                    f"{ENV_PREFIX}AGENT_ADDRESS: required: {ENV_PREFIX}AGENT_LISTEN_ADDRESS"
                    f" {quoted(self.agent_listen_address)} does not say which address HAProxy"
                    " connects to (a wildcard host or port 0)"
                )
        return self

    def agent_host_port(self) -> tuple[str | None, int]:
        """Where the agent listens: (host, port), host None for every interface."""
        assert self.agent_listen_address is not None
        return _parse_listen_address(self.agent_listen_address)

    def agent_addresses(self) -> tuple[tuple[str, int], ...]:
        """The agents the HAProxy file points at: one per shard, or this exporter's alone."""
        if self.agent_shard_addresses is not None:
            return tuple(parse_agent_address(a) for a in self.agent_shard_addresses.split(","))
        if self.agent_address is not None:
            return (parse_agent_address(self.agent_address),)
        assert self.agent_listen_address is not None
        return (parse_agent_address(self.agent_listen_address),)

    @property
    def listen_host(self) -> str | None:
        """Host to bind; None for `:port`, which asyncio and aiohttp bind on all interfaces."""
        return _parse_listen_address(self.listen_address)[0]

    @property
    def listen_port(self) -> int:
        """Port to bind; 0 lets the OS pick a free one."""
        return _parse_listen_address(self.listen_address)[1]

    def monitor_config(self) -> Config:
        return Config(
            enabled=self.enabled,
            interval=self.interval,
            fall=self.fall,
            rise=self.rise,
            timeout=self.timeout,
            max_concurrent=self.max_concurrent,
            fastinter=self.fastinter,
            downinter=self.downinter,
        )


def checked_listen_address(value: str) -> str:
    address = value.strip()
    try:
        _parse_listen_address(address)
    except ValueError as exc:
        raise ValueError(f"invalid address {quoted(value)}: {exc}") from None
    return address


def _parse_listen_address(address: str) -> tuple[str | None, int]:
    host, port = split_host_port(address)
    return (check_host(host) if host else None), parse_port(port, minimum=0)


def ipaddress_is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def parse_agent_address(text: str) -> tuple[str, int]:
    """`host:port` (or `[ipv6]:port`) that HAProxy can connect to: a host that is not a
    wildcard, a port in 1..65535. Raises ValueError naming what is wrong."""
    address = text.strip()
    try:
        host, port = split_host_port(address)
        if not host:
            raise ValueError("missing host")
        check_host(host)
        if ipaddress_is_wildcard(host):
            raise ValueError(f"{host} is a wildcard, not an address HAProxy can connect to")
        return host, parse_port(port)
    except ValueError as exc:
        raise ValueError(f"invalid address {quoted(text)}: {exc}") from None


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _variable_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


class EnvVariable(NamedTuple):
    """One `HEALTHCHECK_*` variable for --help and the README; `default` None means unset."""

    name: str
    default: str | None
    description: str


def environment_variables() -> list[EnvVariable]:
    """Every variable `Settings` reads, in field order, with its default as it would be written."""
    variables = []
    for field_name, field in Settings.model_fields.items():
        default: Any = field.default
        if default is None:
            text = None
        elif isinstance(default, bool):
            text = str(default).lower()
        elif _PARSE_DURATION in field.metadata:
            text = format_duration(default)
        else:
            text = str(default)
        variables.append(EnvVariable(_variable_name(field_name), text, field.description or ""))
    return variables


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `environ` (default: os.environ) and nothing else; raises ConfigError."""
    if environ is None:
        environ = os.environ
    _check_variable_names(environ)
    token = _environ_override.set(environ)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe_error(error) for error in exc.errors())) from None
    finally:
        _environ_override.reset(token)


def _check_variable_names(environ: Mapping[str, str]) -> None:
    known = [name.upper() for name in Settings.model_fields]
    seen: dict[str, str] = {}
    for key in environ:
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        suffix = upper.removeprefix(ENV_PREFIX)
        if suffix not in known:
            close = difflib.get_close_matches(suffix, known, n=1)
            hint = (
                f"did you mean {ENV_PREFIX}{close[0]}?"
                if close
                else "known: " + ", ".join(ENV_PREFIX + name for name in known)
            )
            raise ConfigError(f"{key}: unknown variable ({hint})")
        if upper in seen:
            raise ConfigError(f"{key}: set twice with different case (also as {seen[upper]})")
        seen[upper] = key


def describe_validation_error(exc: ValidationError, duration: bool = False) -> str:
    """A pydantic error about one value (no variable name) in the words of a setting's error;
    `duration`: the value is a duration (its limits are written as durations)."""
    return "; ".join(_describe_error(error, duration) for error in exc.errors())


def _describe_error(error: ErrorDetails, duration: bool = False) -> str:
    """One pydantic error as `HEALTHCHECK_X: what is wrong (got 'value')`."""
    context = error.get("ctx", {})
    location = error["loc"]
    is_duration = duration or (bool(location) and is_duration_field(str(location[0])))
    limit = format_duration if is_duration else str
    match error["type"]:
        case "value_error":  # our validators' messages already quote the value
            reason = str(context["error"])
        case "greater_than_equal":
            reason = f"must be at least {limit(context['ge'])}"
        case "less_than_equal":
            reason = f"must be at most {limit(context['le'])}"
        case "greater_than":
            reason = f"must be greater than {limit(context['gt'])}"
        case "int_parsing" | "int_from_float":
            reason = "must be a whole number"
        case "float_parsing" | "finite_number":
            reason = "must be a finite number"
        case "bool_parsing":
            reason = "must be a boolean (true/false, yes/no, on/off, 1/0)"
        case "literal_error":
            reason = f"must be one of {context['expected']}"
        case _:
            reason = error["msg"]
    if error["type"] != "value_error":
        got = error["input"]
        if is_duration and isinstance(got, float) and 0 <= got < MAX_DURATION * 1000:
            got = format_duration(got)  # the parsed value, as the user would write it
        reason += f" (got {quoted(got)})"
    return f"{_variable_name(str(location[0]))}: {reason}" if location else reason
