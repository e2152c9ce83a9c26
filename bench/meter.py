"""Windows of measurement: the measured process's CPU (from /proc, so a load generator's CPU never
counts) and what the target saw (connections accepted) between two readings."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.procs import Child
from bench.target import HAProxyProcess


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    cpu: float  # CPU seconds of the measured process
    target_cpu: float  # CPU seconds of the target HAProxy
    target_connections: int


@dataclass(frozen=True)
class Window:
    seconds: float
    cpu: float
    target_cpu: float
    target_connections: int

    @property
    def cpu_share(self) -> float:
        """CPU of the measured process as a fraction of one core."""
        return self.cpu / self.seconds

    @property
    def target_cpu_share(self) -> float:
        return self.target_cpu / self.seconds

    @property
    def target_rate(self) -> float:
        """Connections per second the target accepted (checks or probes seen from its side)."""
        return self.target_connections / self.seconds


async def read(measured: Child, target: HAProxyProcess) -> Reading:
    connections = await target.connections()
    return Reading(
        time.monotonic(), measured.cpu_seconds(), target.child.cpu_seconds(), connections
    )


def window(before: Reading, after: Reading) -> Window:
    return Window(
        after.at - before.at,
        after.cpu - before.cpu,
        after.target_cpu - before.target_cpu,
        after.target_connections - before.target_connections,
    )


def per_thousand(cpu_seconds: float, events: float) -> float | None:
    """CPU seconds per 1,000 events (None when nothing happened)."""
    return cpu_seconds / events * 1000 if events > 0 else None
