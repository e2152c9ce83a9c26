"""One table from the run's figures: every figure, what it is compared with, our ratio to it, and
the issue's goals as PASS/FAIL. A figure a failed phase could not produce reads `n/a`."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

Results = dict[str, dict[str, Any]]
NOTES = """\
- Core 0 runs only the measured process; its CPU is utime+stime from its own /proc/<pid>/stat.
- Repeated figures: median of the rounds (min-max); their ratios: median of per-round ratios.
- Schedule lag p50/p99: bucket deltas between two scrapes, interpolated inside a bucket as
  PromQL's histogram_quantile does; the share within 50 ms is exact (a bucket boundary).
- /metrics times are GETs over loopback HTTP, measured by the client; generate_latest is timed
  in-process (no HTTP) on the same 9 per-target series, plus the _created lines it adds.
- "OpenSSL's client work alone": the check's TLS context against an in-process server over
  memory BIOs, no socket and no engine, only the client's calls timed: the floor under any
  Python HTTPS check on this OpenSSL (bench.tls --floor)."""
MB = 1_000_000


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    compared_with: str = ""
    ratio: str = ""
    goal: str = ""
    verdict: str = ""


def _get(results: Results, phase: str, key: str) -> Any:
    return results.get(phase, {}).get(key)


def _num(value: float | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if value is None else f"{value * scale:{spec}}{unit}"


def _ratio(ours: float | None, anchor: float | None) -> float | None:
    return None if ours is None or not anchor else ours / anchor


def _runs(results: Results, phase: str, key: str) -> list[float | None]:
    return [run.get(key) for run in results.get(phase, {}).get("runs", [])]


def _spread(results: Results, phase: str, key: str, spec: str, scale: float = 1.0) -> str:
    """` (min-max)` over the rounds of a repeated phase; empty with fewer than two."""
    values = [v for v in _runs(results, phase, key) if v is not None]
    if len(values) < 2:
        return ""
    return f" ({min(values) * scale:{spec}}-{max(values) * scale:{spec}})"


def _paired_ratio(
    results: Results, ours: tuple[str, str], anchor: tuple[str, str], scale: float = 1.0
) -> tuple[float | None, str]:
    """Median and range of the per-round ratios ours/anchor: each pair was measured minutes
    apart at most, so the machine's drift cancels better than in a ratio of medians."""
    pairs = zip(_runs(results, *ours), _runs(results, *anchor), strict=False)
    ratios = sorted(o / (a * scale) for o, a in pairs if o is not None and a)
    if not ratios:
        return None, "n/a"
    median = statistics.median(ratios)
    spread = f" ({ratios[0]:.3f}-{ratios[-1]:.3f})" if len(ratios) > 1 else ""
    return median, f"{median:.3f}{spread}"


def _verdict(measured: float | None, ok: Callable[[float], bool]) -> str:
    return "n/a" if measured is None else ("PASS" if ok(measured) else "FAIL")


def anchor_rows(results: Results) -> Iterator[Row]:
    wrk, bb, hx, gl = (results.get(k, {}) for k in ("wrk", "blackbox", "haproxy", "genlatest"))
    yield Row(
        "loopback ceiling: wrk, Connection: close (core 0)",
        _num(wrk.get("requests_per_s"), ",.0f", unit=" req/s")
        + _spread(results, "wrk", "requests_per_s", ",.0f"),
        f"reference ~19,500; target HAProxy at {_num(wrk.get('target_cpu_share'), '.0%')} "
        "of core 1",
    )
    yield Row(
        "blackbox_exporter 0.23: probes/s (wrk+lua client on core 1)",
        _num(bb.get("requests_per_s"), ",.0f", unit=" probes/s")
        + _spread(results, "blackbox", "requests_per_s", ",.0f"),
        f"reference 2,200-3,000; target saw {_num(bb.get('target_connections'), ',.0f')} "
        f"conns for {_num(bb.get('requests'), ',.0f')} probes",
    )
    yield Row(
        "blackbox_exporter: CPU-s per 1,000 probes",
        _num(bb.get("cpu_s_per_1000"), ".3f")
        + _spread(results, "blackbox", "cpu_s_per_1000", ".3f"),
        f"reference 0.55-0.76; {_num(bb.get('cpu_share'), '.0%')} of core 0",
    )
    yield Row(
        f"HAProxy 2.6 httpchk, 1 thread: checks/s ({hx.get('servers', '?')} servers, "
        f"inter {hx.get('inter_ms', '?')} ms)",
        _num(hx.get("checks_per_s"), ",.0f", unit=" checks/s")
        + _spread(results, "haproxy", "checks_per_s", ",.0f"),
        f"{_num(hx.get('failed_checks'), ',.0f')} failed",
    )
    yield Row(
        "HAProxy httpchk: CPU-s per 1,000 checks",
        _num(hx.get("cpu_s_per_1000"), ".3f")
        + _spread(results, "haproxy", "cpu_s_per_1000", ".3f"),
        f"reference ~0.05; {_num(hx.get('cpu_share'), '.0%')} of core 0",
    )
    yield Row(
        f"prometheus_client generate_latest, {gl.get('targets', '?')} targets x 9 series",
        f"{_num(gl.get('seconds'), '.3f', unit=' s')}, {_num(gl.get('bytes'), '.1f', 1 / MB)} MB",
        f"reference ~1.6 s, 15 MB; _created lines {_num(gl.get('created_lines_share'), '.0%')}",
    )


def saturated_rows(results: Results) -> Iterator[Row]:
    sat = results.get("saturated", {})
    ceiling = _get(results, "wrk", "requests_per_s")
    rate_ratio, rate_text = _paired_ratio(
        results, ("saturated", "checks_per_s"), ("wrk", "requests_per_s"), scale=0.5
    )
    yield Row(
        f"ours saturated: checks/s ({sat.get('targets', '?')} targets every "
        f"{sat.get('interval', '?')}, {sat.get('event_loop', '?')})",
        _num(sat.get("checks_per_s"), ",.0f", unit=" checks/s")
        + _spread(results, "saturated", "checks_per_s", ",.0f"),
        f"wrk ceiling/2 = {_num(ceiling, ',.0f', 0.5)}",
        rate_text,
        ">= 1",
        _verdict(rate_ratio, lambda r: r >= 1),
    )
    yield Row(
        "ours saturated: CPU of core 0; target-side checks/s; skipped slots",
        f"{_num(sat.get('cpu_share'), '.0%')}",
        f"{_num(sat.get('target_connections_per_s'), ',.0f')} checks/s seen by target; "
        f"{_num(sat.get('skipped'), ',.0f')} skipped",
    )
    cpu = sat.get("cpu_s_per_1000")
    for anchor, phase, bound, ok in (
        ("blackbox", "blackbox", "<= 0.25", lambda r: r <= 0.25),
        ("HAProxy", "haproxy", "<= 3", lambda r: r <= 3),
    ):
        ratio, ratio_text = _paired_ratio(
            results, ("saturated", "cpu_s_per_1000"), (phase, "cpu_s_per_1000")
        )
        yield Row(
            "ours saturated: CPU-s per 1,000 checks",
            _num(cpu, ".3f") + _spread(results, "saturated", "cpu_s_per_1000", ".3f"),
            f"{anchor} {_num(_get(results, phase, 'cpu_s_per_1000'), '.3f')}",
            ratio_text,
            bound,
            _verdict(ratio, ok),
        )


def event_loop_rows(results: Results) -> Iterator[Row]:
    """The same saturated run on the standard asyncio loop: what uvloop adds."""
    plain = results.get("saturated_asyncio", {})
    _, rate_text = _paired_ratio(
        results, ("saturated_asyncio", "checks_per_s"), ("saturated", "checks_per_s")
    )
    yield Row(
        f"ours saturated on {plain.get('event_loop', 'asyncio')}: checks/s",
        _num(plain.get("checks_per_s"), ",.0f", unit=" checks/s")
        + _spread(results, "saturated_asyncio", "checks_per_s", ",.0f"),
        "ours on uvloop",
        rate_text,
    )
    _, cpu_text = _paired_ratio(
        results, ("saturated_asyncio", "cpu_s_per_1000"), ("saturated", "cpu_s_per_1000")
    )
    yield Row(
        f"ours saturated on {plain.get('event_loop', 'asyncio')}: CPU-s per 1,000 checks",
        _num(plain.get("cpu_s_per_1000"), ".3f")
        + _spread(results, "saturated_asyncio", "cpu_s_per_1000", ".3f"),
        "ours on uvloop",
        cpu_text,
    )


def scale_rows(
    results: Results,
    targets: int,
    phase: str | None = None,
    kind: str = "",
    cpu_goal: float = 0.15,
    rss_goal_mb: float | None = 100,
) -> Iterator[Row]:
    """Figures of one fleet size; the issue's goals apply at 10,000 targets. `phase` and `kind`
    name another run of the same shape (`https10k`: 10,000 HTTPS targets, whose issue sets no
    memory goal)."""
    s = results.get(phase or f"scale_{targets}", {})
    goals = targets >= 10_000
    name = f"ours {targets:,} {kind}targets @15s"
    gl = _get(results, "genlatest", "seconds")

    def goal(bound: str, measured: float | None, ok: Callable[[float], bool]) -> tuple[str, str]:
        return (bound, _verdict(measured, ok)) if goals else ("", "")

    yield Row(
        f"{name}: start -> ready (first round); checks in window",
        _num(s.get("start_to_ready_s"), ".2f", unit=" s"),
        f"{_num(s.get('checks'), ',.0f')} checks "
        f"(expected {_num(s.get('checks_expected'), ',.0f')}), "
        f"{_num(s.get('skipped'), ',.0f')} skipped",
    )
    p99 = s.get("lag_p99_s")
    yield Row(
        f"{name}: schedule lag p50 / p99 (not scraped)",
        f"{_num(s.get('lag_p50_s'), '.1f', 1000)} / {_num(p99, '.1f', 1000, ' ms')}",
        f"{_num(s.get('lag_share_within_goal'), '.2%')} of checks <= 50 ms late",
        "",
        *goal("p99 < 50 ms", p99, lambda v: v < 0.05),
    )
    cpu = s.get("cpu_share")
    yield Row(
        f"{name}: CPU of a core (not scraped)",
        _num(cpu, ".1%"),
        "",
        "",
        *goal(f"< {cpu_goal:.0%}", cpu, lambda v: v < cpu_goal),
    )
    paced = s.get("cpu_s_per_1000")
    bb = _get(results, "blackbox", "cpu_s_per_1000")
    yield Row(
        f"{name}: CPU-s per 1,000 checks (paced)",
        _num(paced, ".3f"),
        f"blackbox {_num(bb, '.3f')} (saturated)",
        _num(_ratio(paced, bb), ".2f"),
    )
    rss = s.get("rss_bytes")
    yield Row(
        f"{name}: RSS (peak)",
        f"{_num(rss, '.1f', 1 / MB)} MB ({_num(s.get('peak_rss_bytes'), '.1f', 1 / MB)})",
        "",
        "",
        *(
            goal(f"< {rss_goal_mb:.0f} MB", rss, lambda v: v < rss_goal_mb * MB)
            if rss_goal_mb is not None
            else ("", "")
        ),
    )
    plain, zipped = s.get("render_plain_s"), s.get("render_gzip_s")
    slowest = max(plain, zipped) if plain is not None and zipped is not None else None
    yield Row(
        f"{name}: /metrics GET plain / gzip (median of 5)",
        f"{_num(plain, '.0f', 1000)} / {_num(zipped, '.0f', 1000, ' ms')}",
        "",
        "",
        *goal("< 250 ms", slowest, lambda v: v < 0.25),
    )
    if goals:
        speedup = _ratio(gl, slowest)
        yield Row(
            f"{name}: /metrics speed-up over generate_latest",
            _num(speedup, ".1f", unit="x"),
            f"generate_latest {_num(gl, '.3f', unit=' s')} (in-process, no HTTP)",
            _num(speedup, ".1f"),
            ">= 6",
            _verdict(speedup, lambda v: v >= 6),
        )
    yield Row(
        f"{name}: /metrics size text / gzip ({_num(s.get('lines'), ',.0f')} lines)",
        f"{_num(s.get('size_text_bytes'), '.2f', 1 / MB)} / "
        f"{_num(s.get('size_gzip_bytes'), '.2f', 1 / MB, ' MB')}",
    )
    scraped = s.get("scraped_lag_p99_s")
    yield Row(
        f"{name}: lag p50 / p99, scraped (gzip) every 1 s",
        f"{_num(s.get('scraped_lag_p50_s'), '.1f', 1000)} / {_num(scraped, '.1f', 1000, ' ms')}",
        f"{_num(s.get('scraped_lag_share_within_goal'), '.2%')} <= 50 ms; GET median / max "
        f"{_num(s.get('scraped_render_median_s'), '.0f', 1000)} / "
        f"{_num(s.get('scraped_render_max_s'), '.0f', 1000, ' ms')}; "
        f"CPU {_num(s.get('scraped_cpu_share'), '.0%')}",
        "",
        *goal("p99 < 50 ms", scraped, lambda v: v < 0.05),
    )


def https_rows(results: Results) -> Iterator[Row]:
    """Issue 12: CPU per HTTPS check, ours against blackbox_exporter and HAProxy `check-ssl`."""
    https = results.get("https", {})
    for version, label in (("tls12", "TLS 1.2"), ("tls13", "TLS 1.3")):
        ours = https.get(f"ours_{version}", {})
        full = https.get(f"ours_full_{version}", {}).get("cpu_ms_per_check")
        mine = ours.get("cpu_ms_per_check")
        bb = https.get(f"blackbox_{version}", {}).get("cpu_s_per_1000")
        hx = https.get(f"haproxy_{version}", {}).get("cpu_s_per_1000")
        yield Row(
            f"HTTPS {label}: ours, resumed where allowed (CPU-ms per check)",
            _num(mine, ".3f"),
            f"full handshakes {_num(full, '.3f')}",
        )
        floor = https.get(f"floor_{version}", {})
        yield Row(
            f"HTTPS {label}: OpenSSL's client work alone, in process (CPU-ms per check)",
            _num(floor.get("resumed_cpu_ms"), ".3f"),
            f"full handshakes {_num(floor.get('full_cpu_ms'), '.3f')}; "
            f"blackbox / 3 = {_num(bb and bb / 3, '.3f')}",
        )
        yield Row(
            f"HTTPS {label}: memory of one kept session (KB, in process)",
            _num(floor.get("kept_session_kb"), ".1f"),
            "one per HTTPS target and address",
        )
        for anchor, name, bound, limit in (
            (bb, "blackbox_exporter (CPU-ms per probe)", "<= 1/3", 1 / 3),
            (hx, "HAProxy check-ssl (CPU-ms per check)", "<= 1.5", 1.5),
        ):
            ratio = _ratio(mine, anchor)
            yield Row(
                f"HTTPS {label}: {name}",
                _num(anchor, ".3f"),
                "ours",
                _num(ratio, ".3f"),
                bound,
                _verdict(ratio, lambda r, limit=limit: r <= limit),
            )
        share = ours.get("resumed_share")
        resumed = _verdict(share, lambda v: v >= 0.95)
        yield Row(
            f"HTTPS {label}: ours, handshakes resumed",
            _num(share, ".1%"),
            goal=">= 95%",
            verdict=resumed,
        )
    tcp = results.get("tcp", {})
    tcp_ms = tcp.get("ours_tcp", {}).get("cpu_ms_per_check")
    http_ms = tcp.get("ours_http", {}).get("cpu_ms_per_check")
    ratio = _ratio(tcp_ms, http_ms)
    yield Row(
        "TCP check: ours (CPU-ms per check)",
        _num(tcp_ms, ".4f"),
        f"plain HTTP check {_num(http_ms, '.4f')}",
        _num(ratio, ".3f"),
        "<= 1",
        _verdict(ratio, lambda r: r <= 1),
    )


def rows(results: Results, scales: tuple[int, ...]) -> list[Row]:
    out = [*anchor_rows(results), *saturated_rows(results), *event_loop_rows(results)]
    for targets in scales:
        out.extend(scale_rows(results, targets))
    if "https" in results or "tcp" in results:
        out.extend(https_rows(results))
    if "https10k" in results:
        https = scale_rows(results, 10_000, "https10k", "HTTPS ", cpu_goal=0.35, rss_goal_mb=None)
        out.extend(https)
    return out


def render(table: list[Row]) -> str:
    header = Row("figure", "value", "compared with", "ratio", "goal", "result")
    cells = [list(asdict(r).values()) for r in (header, *table)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(fields(Row)))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def goals(table: list[Row]) -> list[dict[str, str]]:
    """The rows that carry a goal, for the JSON file."""
    return [
        {
            "figure": r.figure,
            "value": r.value,
            "ratio": r.ratio,
            "goal": r.goal,
            "result": r.verdict,
        }
        for r in table
        if r.verdict
    ]
