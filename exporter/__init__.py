"""healthcheck-exporter: active HTTP health checks with fall/rise thresholds, served to Prometheus.

Ports the Go package `internal/healthcheck` of haloydev/haloy; the seed's types keep their
meaning under Pythonic names.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("healthcheck-exporter")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from exporter.checks import HTTPChecker
from exporter.model import (
    Config,
    ConfigUpdater,
    FailureReason,
    Result,
    RetryConfig,
    Target,
    TargetProvider,
    TargetState,
    default_config,
    default_retry_config,
)
from exporter.monitor import HealthMonitor
from exporter.state import StateTracker

__all__ = [
    "Config",
    "ConfigUpdater",
    "FailureReason",
    "HTTPChecker",
    "HealthMonitor",
    "Result",
    "RetryConfig",
    "StateTracker",
    "Target",
    "TargetProvider",
    "TargetState",
    "__version__",
    "default_config",
    "default_retry_config",
]
