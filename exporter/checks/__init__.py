"""Active checks: one socket engine (`engine`) and one module per kind of check (`http`, `tcp`).

Shaped as blackbox_exporter's `prober/`: the engine drives sockets, each protocol module speaks
its protocol; `tcp` registers its probe with the engine on import.
"""

from exporter.checks import tcp  # noqa: F401 -- registers the TCP probe with the engine
from exporter.checks.engine import HTTPChecker, OnResult, Probe

__all__ = ["HTTPChecker", "OnResult", "Probe"]
