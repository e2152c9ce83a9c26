"""/metrics rendering at fleet scale: our per-target writer against prometheus_client's.

    .venv/bin/python -m bench.render [--targets 10000] [--repeat 5]

Builds a state tracker with N checked targets (8-9 series each), then times, in one run, the
per-target families rendered by `exporter.exposition.render_targets` and the same families built
with prometheus_client's metric families and `generate_latest`, plus gzip of the result. Prints
medians and the ratio; JSON to bench/results/render.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import time
from pathlib import Path

from prometheus_client.exposition import generate_latest

from exporter.exposition import LabelCache, render_targets
from exporter.model import Result, Target
from exporter.state import StateTracker
from tests.test_exposition import Reference

RESULTS = Path(__file__).parent / "results" / "render.json"


def fleet(n: int) -> StateTracker:
    tracker = StateTracker(3, 2)
    targets = [
        Target(f"t{i}", f"app{i % 50}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "8080")
        for i in range(n)
    ]
    tracker.sync_targets(targets)
    now = time.time()
    for t in targets:
        tracker.record_result(Result(t, True, 200, None, 0.0012, None, now))
    return tracker


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    entries = fleet(args.targets).entries()
    cache = LabelCache()
    ours, library, gz = [], [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        text = (await render_targets(entries, cache)).encode()
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        generate_latest(Reference(entries))
        library.append(time.perf_counter() - started)
        started = time.perf_counter()
        compressed = gzip.compress(text, 6)
        gz.append(time.perf_counter() - started)
    result = {
        "targets": args.targets,
        "ours_ms": median_ms(ours),
        "generate_latest_ms": median_ms(library),
        "speedup": round(statistics.median(library) / statistics.median(ours), 1),
        "gzip_ms": median_ms(gz),
        "size_bytes": len(text),
        "gzip_bytes": len(compressed),
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
