"""Active checks: one socket engine (`engine`), one module per kind of check (`http`, `tcp`, `tls`),
and the per-target options that configure them (`options`).

Shaped as blackbox_exporter's `prober/`: the engine drives sockets, each protocol module speaks
its protocol; `tcp` and `tls` register their probes with the engine on import.
"""

from exporter.checks import tcp, tls  # noqa: F401 -- register their probes with the engine
from exporter.checks.engine import HTTPChecker, OnResult, Probe

__all__ = ["HTTPChecker", "OnResult", "Probe"]
