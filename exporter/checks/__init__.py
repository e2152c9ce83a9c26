"""Active checks: one socket engine (`engine`) and one module per kind of check (`http`).

Shaped as blackbox_exporter's `prober/`: the engine drives sockets, each protocol module speaks
its protocol without I/O.
"""

from exporter.checks.engine import HTTPChecker, OnResult, Probe

__all__ = ["HTTPChecker", "OnResult", "Probe"]
