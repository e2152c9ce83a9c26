"""Side-by-side benchmark (issue 6): our exporter against the loopback ceiling, blackbox_exporter
and HAProxy's own checks, on one fast HAProxy target, in one run on this machine.

    .venv/bin/python -m bench.compare [--rounds 3] [--window 10] [--quiet 30] [--scrapes 16]
                                      [--only saturated,wrk,...] [--untrack-loopback]

Core 0 runs only the process being measured (wrk, blackbox_exporter, HAProxy's checker, our
exporter, one at a time); the target HAProxy, the load generators and this script share core 1.
CPU figures come from the measured process's own /proc/<pid>/stat, so clients never count.
Loopback only; bounded to 10 minutes; every process started is stopped, also on error.
Prints one table and writes it as JSON to bench/results/compare-<date>.json and, unless `--only`
picked some phases, latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import anchors, ours, report
from bench import tls as tls_bench
from bench.procs import (
    HELPER_CORE,
    conntrack_loaded,
    conntrack_usage,
    ensure_tools,
    loopback_untracked,
    pin_self,
    run_until_stopped,
    which,
)
from bench.target import MAX_TARGETS, HAProxyProcess, haproxy_path, target_farm

RESULTS_DIR = Path(__file__).parent / "results"
BUDGET_S = 570.0  # the whole run, under the 10 minutes with room to stop and write
HAPROXY_SERVERS, HAPROXY_INTER_MS = 2000, 200  # 10,000 checks/s asked
SATURATED_TARGETS, SATURATED_INTERVAL = 2000, "100ms"  # 20,000 checks/s asked: beyond one core
SCALES = (1_000, 10_000)

Phase = Callable[[], Awaitable[dict[str, Any]]]
PHASES = (
    "wrk",
    "blackbox",
    "haproxy",
    "saturated",
    "saturated_asyncio",
    "genlatest",
    *(f"scale_{n}" for n in SCALES),
    "https",  # issue 12: HTTPS rows (TLS 1.2 and 1.3) and the TCP row
    "https10k",  # issue 12: 10,000 HTTPS targets at 15 s (half TLS 1.2, half TLS 1.3)
    "tcp",
)


class Progress:
    """Progress lines stamped with the time since the command started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def remaining(self) -> float:
        return BUDGET_S - (time.monotonic() - self.start)

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


async def run_phase(
    name: str, phase: Phase, errors: dict[str, str], say: Progress
) -> dict[str, Any] | None:
    """Run one measurement; a failure is recorded (None) and the next phases still run."""
    say(f"{name}: running")
    try:
        result = await phase()
    except Exception as err:
        errors[name] = f"{type(err).__name__}: {err}"
        say(f"{name}: FAILED: {errors[name]}")
        return None
    say(f"{name}: done")
    return result


def repeated_phases(work: Path, target: HAProxyProcess, window: int) -> dict[str, Phase]:
    """The anchors and our saturated run, repeated in alternation: their ratios are the goals,
    and on a noisy machine a median of interleaved rounds is fairer than one window each."""
    return {
        "wrk": partial(anchors.loopback_ceiling, target, window),
        "blackbox": partial(anchors.blackbox, work, target, window, MAX_TARGETS),
        "haproxy": partial(
            anchors.haproxy_checks, work, target, HAPROXY_SERVERS, HAPROXY_INTER_MS, window
        ),
        "saturated": partial(
            ours.saturated, work, target, SATURATED_TARGETS, SATURATED_INTERVAL, window
        ),
        "saturated_asyncio": partial(
            ours.saturated, work, target, SATURATED_TARGETS, SATURATED_INTERVAL, window, False
        ),
    }


def single_phases(work: Path, target: HAProxyProcess, args: argparse.Namespace) -> dict[str, Phase]:
    plan: dict[str, Phase] = {"genlatest": partial(anchors.generate_latest, max(SCALES))}
    for targets in SCALES:
        plan[f"scale_{targets}"] = partial(
            ours.at_scale, work, target, targets, args.quiet, args.scrapes
        )
    plan["https"] = partial(tls_bench.https, work, args.window)
    plan["https10k"] = partial(
        tls_bench.https_at_scale, work, max(SCALES), args.quiet, args.scrapes
    )
    plan["tcp"] = partial(tls_bench.tcp, args.window)
    return plan


def picked(phases: dict[str, Phase], only: frozenset[str] | None) -> dict[str, Phase]:
    return phases if only is None else {k: v for k, v in phases.items() if k in only}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every number over the rounds; the rounds themselves are kept under `runs`."""
    summary: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        numeric = isinstance(first, int | float) and not isinstance(first, bool)
        varies = len(set(values)) > 1  # a setting (servers, targets) keeps its type
        summary[key] = statistics.median(values) if numeric and varies else first
    return {**summary, "runs": runs}


async def measure_all(
    args: argparse.Namespace, say: Progress
) -> tuple[dict[str, Any], dict[str, str]]:
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        # The budget counts from the start of the command, installation included.
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + say.remaining()):
            with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
                work = Path(tmp)
                say(
                    f"starting the target HAProxy ({MAX_TARGETS:,} endpoints) on core {HELPER_CORE}"
                )
                async with target_farm(work) as target:
                    for n in range(1, args.rounds + 1):
                        for name, phase in picked(
                            repeated_phases(work, target, args.window), args.only
                        ).items():
                            label = f"{name} (round {n}/{args.rounds})"
                            if (result := await run_phase(label, phase, errors, say)) is not None:
                                runs.setdefault(name, []).append(result)
                    for name, phase in picked(single_phases(work, target, args), args.only).items():
                        if (result := await run_phase(name, phase, errors, say)) is not None:
                            results[name] = result
    except TimeoutError:
        errors["budget"] = f"the run exceeded {BUDGET_S:.0f}s and was stopped"
        say(errors["budget"])
    except Exception as err:  # the target itself failed: report what was measured so far
        errors["target"] = f"{type(err).__name__}: {err}"
        say(f"target: FAILED: {errors['target']}")
    results |= {name: summarize(done) for name, done in runs.items()}
    return results, errors


def version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as err:
        return f"unknown ({err})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "haproxy": version([haproxy_path(), "-v"]),
        "blackbox_exporter": version([which("prometheus-blackbox-exporter") or "", "--version"]),
        "wrk": version([which("wrk") or "", "-v"]),
    }


def _git(*args: str) -> str:
    root = Path(__file__).parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def source_state() -> dict[str, Any]:
    """The commit measured and any uncommitted change under exporter/: figures depend on both."""
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_exporter_files": _git("status", "--porcelain", "--", "exporter").splitlines(),
    }


def write_json(document: dict[str, Any], stamp: str, complete: bool) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    path = RESULTS_DIR / f"compare-{stamp}.json"
    for out in (path, RESULTS_DIR / "latest.json") if complete else (path,):
        tmp = out.with_suffix(".json.tmp")  # bench/results/*.tmp is git-ignored
        tmp.write_text(text)
        tmp.replace(out)
    return path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of anchors + saturation")
    parser.add_argument("--window", type=int, default=10, help="seconds of each of their windows")
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds left alone at 1k/10k")
    parser.add_argument("--scrapes", type=int, default=16, help="scrapes, 1 s apart, at 1k/10k")
    parser.add_argument(
        "--only",
        type=phase_names,
        help=f"run only these phases, comma-separated: {', '.join(PHASES)}",
    )
    parser.add_argument(
        "--untrack-loopback",
        action="store_true",
        help="exempt loopback from netfilter connection tracking while running (two iptables"
        " NOTRACK rules, removed at the end): needed where Docker or a firewall loaded conntrack",
    )
    return parser.parse_args()


def phase_names(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    if unknown := sorted(names - set(PHASES)):
        raise argparse.ArgumentTypeError(f"unknown phase(s) {', '.join(unknown)}")
    return names


async def main_async(args: argparse.Namespace, say: Progress) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results, errors = await measure_all(args, say)
    table = report.rows(results, SCALES)
    text = report.render(table)
    print(text)
    print(report.NOTES)
    for name, error in errors.items():
        print(f"error in {name}: {error}")
    document = {
        "date": stamp,
        "duration_s": round(time.monotonic() - say.start, 1),
        "machine": machine(),
        "source": source_state(),
        "settings": {
            **vars(args),
            "only": sorted(args.only) if args.only else None,
            "budget_s": BUDGET_S,
            "scales": SCALES,
        },
        "results": results,
        "errors": errors,
        "goals": report.goals(table),
        "table": text,
        "notes": report.NOTES,
    }
    path = write_json(document, stamp, complete=args.only is None)
    say(f"written to {path}" + ("" if args.only else f" and {RESULTS_DIR / 'latest.json'}"))
    return 1 if errors else 0


def main() -> None:
    args = parse_args()
    say = Progress()
    pin_self()
    ensure_tools()
    haproxy_path()
    with loopback_untracked(args.untrack_loopback) as untracked:
        args.loopback_untracked = untracked
        if conntrack_loaded() and not untracked:
            say(
                f"warning: netfilter tracks loopback connections ({conntrack_usage()} entries);"
                " a full table drops SYNs and stalls the saturated rounds:"
                " see --untrack-loopback"
            )
        # SIGTERM cancels the run like Ctrl-C does, so every `finally` stops its processes.
        status = run_until_stopped(main_async(args, say), say)
    sys.exit(status)


if __name__ == "__main__":
    main()
