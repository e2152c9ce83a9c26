"""Anchor: prometheus_client's `generate_latest` on the per-target series our `/metrics` serves,
built the usual way (labelled Gauge and Counter children), on a registry of its own.

    python -m bench.genlatest 10000    # prints one JSON line: median seconds of 3 renders, size
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from bench.target import endpoints

LABELS = ("app", "target", "address")
GAUGES = (
    "healthcheck_target_up",
    "healthcheck_target_consecutive_failures",
    "healthcheck_target_consecutive_successes",
    "healthcheck_target_last_check_timestamp_seconds",
    "healthcheck_target_last_check_duration_seconds",
    "healthcheck_target_last_status_code",
)
RENDERS = 3


def registry_for(targets: int) -> CollectorRegistry:
    """9 series per target, as ours: 6 gauges, checks{result=success}, transitions{to=...} x 2."""
    registry = CollectorRegistry()
    gauges = [Gauge(name, name, LABELS, registry=registry) for name in GAUGES]
    checks = Counter("healthcheck_checks", "checks", [*LABELS, "result"], registry=registry)
    moves = Counter("healthcheck_state_transitions", "moves", [*LABELS, "to"], registry=registry)
    for address, port in endpoints(targets):
        app = "app" + address.rsplit(".", 1)[1]
        labels = (app, f"{app}-{address}-{port}", f"{address}:{port}")
        for gauge in gauges:
            gauge.labels(*labels).set(1)
        checks.labels(*labels, "success").inc()
        moves.labels(*labels, "healthy")
        moves.labels(*labels, "unhealthy")
    return registry


def main() -> None:
    targets = int(sys.argv[1])
    registry = registry_for(targets)
    timings, body = [], b""
    for _ in range(RENDERS):
        started = time.perf_counter()
        body = generate_latest(registry)
        timings.append(time.perf_counter() - started)
    created = sum(1 for line in body.splitlines() if b"_created{" in line)
    lines = body.count(b"\n")
    print(
        json.dumps(
            {
                "targets": targets,
                "seconds": statistics.median(timings),
                "bytes": len(body),
                "lines": lines,
                "created_lines_share": created / lines,
            }
        )
    )


if __name__ == "__main__":
    main()
