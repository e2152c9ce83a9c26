"""The seed's data types: Config, RetryConfig, Target, Result, TargetState and the two interfaces.

Follows `internal/healthcheck/types.go` of haloydev/haloy. Durations are float seconds; the Go
`Err error` is split into a human message (`error`) and a machine-readable `reason`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Config:
    """Health monitor configuration (seed: `Config`)."""

    enabled: bool = True  # whether health monitoring runs at all
    interval: float = 15.0  # seconds between two checks of one target
    fall: int = 3  # consecutive failures that mark a healthy target unhealthy
    rise: int = 2  # consecutive successes that mark an unhealthy target healthy
    timeout: float = 5.0  # per-check timeout in seconds
    max_concurrent: int = 100  # checks in flight at once (not in the seed, which fixes 10)
    # HAProxy's fastinter/downinter (not in the seed); None: the interval.
    fastinter: float | None = None  # interval while in transition (going down or coming back)
    downinter: float | None = None  # interval while unhealthy


def default_config() -> Config:
    """The Go package's defaults: enabled, 15 s interval, fall 3, rise 2, 5 s timeout."""
    return Config()


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry behaviour of `HTTPChecker.check_with_retry` (seed: `RetryConfig`)."""

    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 8.0


def default_retry_config() -> RetryConfig:
    """The Go package's defaults: 5 retries, backoff doubling from 0.5 s up to 8 s."""
    return RetryConfig()


DEFAULT_EXPECT_STATUS: tuple[tuple[int, int], ...] = ((200, 399),)
"""Status codes judged healthy by default: 2xx and 3xx, as HAProxy's and the seed's checks."""


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """How one target is checked, beyond its address and path: one validated, immutable value.

    Every field's default is the plain check of the seed (`GET`, healthy on 2xx/3xx), so a target
    without options compares equal to `DEFAULT_CHECK_OPTIONS` and the plain-HTTP path can test
    for it once. Timing fields are None where the exporter-wide value applies. Validation lives
    with the parsers (`exporter.targets`), never here: a CheckOptions is always valid.
    """

    scheme: str = "http"  # http, https or tcp
    method: str = "GET"
    host: str | None = None  # the Host header; None: the target's address
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers, in order
    body: str | None = None  # request body, sent with Content-Length
    expect_status: tuple[tuple[int, int], ...] = DEFAULT_EXPECT_STATUS  # inclusive ranges
    expect_body: str | None = None  # a regular expression searched in the first 16 KiB
    tls_server_name: str | None = None  # SNI and verified name; None: derived (see checks.tls)
    tls_insecure_skip_verify: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_min_version: str = "TLS12"  # TLS12 or TLS13
    interval: float | None = None
    timeout: float | None = None
    fall: int | None = None
    rise: int | None = None
    fastinter: float | None = None
    downinter: float | None = None


DEFAULT_CHECK_OPTIONS = CheckOptions()


@dataclass(frozen=True, slots=True)
class Target:
    """A backend to health check (seed: `Target`). `ip` may also be a hostname.

    `options` is not in the seed: how the target is checked (scheme, method, expectations,
    TLS, per-target timing).
    """

    id: str
    app_name: str = ""
    ip: str = ""
    port: str = ""
    health_check_path: str = "/health"
    options: CheckOptions = DEFAULT_CHECK_OPTIONS

    @property
    def address(self) -> str:
        """`ip:port`, with an IPv6 literal in brackets, as used in URLs and the `address` label."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        if self.options.scheme == "tcp":
            return f"tcp://{self.address}"
        return f"{self.options.scheme}://{self.address}{self.health_check_path}"


class FailureReason(enum.StrEnum):
    """Why a check failed, as a short machine-readable label value."""

    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    HTTP_STATUS = "http_status"
    DNS = "dns"
    PROTOCOL_ERROR = "protocol_error"
    NETWORK_UNREACHABLE = "network_unreachable"
    TLS = "tls"  # handshake or certificate verification failed
    BODY_MISMATCH = "body_mismatch"  # expect_body did not match the start of the body
    # The exporter itself lacked a resource (file descriptors, memory, epoll watches): says
    # nothing about the target, so the state machine does not count it against the target.
    LOCAL_RESOURCES = "local_resources"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one check (seed: `Result`; `Latency` is `duration`, in seconds).

    `status_code` is 0 when no HTTP status line was received. `reason` is None exactly when
    `healthy` is true. `checked_at` is the wall-clock time (Unix seconds) the check ended.
    `tls_not_after` is the NotAfter (Unix seconds) of the leaf certificate the server presented,
    verified or not; `tls_resumed` whether the TLS session was resumed; both None without TLS.
    """

    target: Target
    healthy: bool
    status_code: int = 0
    error: str | None = None
    duration: float = 0.0
    reason: FailureReason | None = None
    checked_at: float = 0.0
    tls_not_after: float | None = None
    tls_resumed: bool | None = None


class TargetState(enum.IntEnum):
    """Health state of a target (seed: `TargetState`); `str()` gives `healthy`/`unhealthy`."""

    HEALTHY = 0
    UNHEALTHY = 1

    def __str__(self) -> str:
        return self.name.lower()


@runtime_checkable
class TargetProvider(Protocol):
    """Supplies the targets to check (seed: `TargetProvider`)."""

    def get_health_check_targets(self) -> Sequence[Target]: ...


@runtime_checkable
class ConfigUpdater(Protocol):
    """Told the healthy targets whenever the healthy set may have changed (seed: `ConfigUpdater`).

    The monitor calls it from a worker thread, one call at a time, so a slow updater (a file
    write, a proxy reload) never delays checks.
    """

    def on_health_change(self, healthy_targets: Sequence[Target]) -> None: ...


class UpdateFailed(Exception):
    """Raised by a `ConfigUpdater` whose update did not reach the proxy (it has logged why): the
    monitor counts the call as failed and calls again with backoff until one succeeds."""
