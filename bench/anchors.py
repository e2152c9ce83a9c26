"""The anchors our exporter is compared with, each measured against the same target in the same run:
the loopback ceiling (wrk, a new connection per request), blackbox_exporter probing, HAProxy's own
health checks, and prometheus_client's `generate_latest` on the series `/metrics` serves."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.meter import per_thousand, read, window
from bench.procs import HELPER_CORE, MEASURED_CORE, run_bounded, started, wait_until, which
from bench.target import HEALTH_PATH, HAProxyProcess, endpoints, haproxy_checker
from tests.servers import unused_port

BLACKBOX_CFG = """\
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
"""

# wrk sends the probes; one Lua state per thread walks the targets in turn.
PROBE_SCRIPT = """\
local paths = {{
{paths}
}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def parse_wrk(output: str) -> dict[str, float]:
    """Requests, duration, req/s and socket errors from wrk's summary."""
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if done is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": float(done.group(1)),
        "requests_per_s": float(rate.group(1)),
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
    }


def wrk_argv(url: str, seconds: int, connections: int, *extra: str) -> list[str]:
    wrk = which("wrk")
    assert wrk is not None  # ensure_tools() ran
    return [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", *extra, url]


async def loopback_ceiling(target: HAProxyProcess, seconds: int) -> dict[str, Any]:
    """wrk pinned to the measured core, `Connection: close`: a new connection per request."""
    address, port = endpoints(1)[0]
    url = f"http://{address}:{port}{HEALTH_PATH}"
    argv = wrk_argv(url, seconds, 64, "-H", "Connection: close")
    target_cpu = target.child.cpu_seconds()
    result = parse_wrk(await run_bounded(argv, MEASURED_CORE, seconds + 20))
    # wrk measures its own wall time; the target's share says whether it was the bottleneck.
    result["target_cpu_share"] = (target.child.cpu_seconds() - target_cpu) / seconds
    return result


def http_urls(count: int) -> list[str]:
    return [f"http://{address}:{port}{HEALTH_PATH}" for address, port in endpoints(count)]


def probe_script(work: Path, urls: list[str], module: str = "http_2xx") -> Path:
    lines = []
    for url in urls:
        lines.append(f'  "/probe?module={module}&target={quote(url, safe="")}",')
    script = work / "probe.lua"
    script.write_text(PROBE_SCRIPT.format(paths="\n".join(lines)))
    return script


async def _blackbox_ready(base_url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/-/healthy") as resp:
        return resp.status == 200


async def _probe_once(base_url: str, url: str, module: str) -> str:
    params = {"module": module, "target": url}
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + "/probe", params=params) as resp,
    ):
        return await resp.text()


async def blackbox(
    work: Path,
    target: HAProxyProcess,
    seconds: int,
    targets: int,
    urls: list[str] | None = None,
    module: str = "http_2xx",
    config_text: str = BLACKBOX_CFG,
) -> dict[str, Any]:
    """blackbox_exporter (one core) probing `targets` distinct targets in turn (or `urls` with
    `module` of `config_text`), driven by wrk from the helper core: probes/s, and its own CPU per
    1,000 probes from /proc."""
    urls = urls if urls is not None else http_urls(targets)
    config = work / "blackbox.yml"
    config.write_text(config_text)
    binary = which("prometheus-blackbox-exporter")
    assert binary is not None  # ensure_tools() ran
    port = unused_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    async with started("blackbox", argv, MEASURED_CORE, work) as child:
        await wait_until(lambda: _blackbox_ready(base_url), 20, "blackbox_exporter ready", child)
        if "probe_success 1" not in (answer := await _probe_once(base_url, urls[0], module)):
            raise RuntimeError(f"blackbox_exporter's probe of the target failed:\n{answer}")
        argv = wrk_argv(base_url + "/", seconds, 32, "-s", str(probe_script(work, urls, module)))
        before = await read(child, target)
        result: dict[str, Any] = parse_wrk(await run_bounded(argv, HELPER_CORE, seconds + 20))
        measured = window(before, await read(child, target))
    result["cpu_share"] = measured.cpu_share
    result["target_connections"] = measured.target_connections
    result["cpu_s_per_1000"] = per_thousand(measured.cpu, result["requests"])
    return result


async def haproxy_checks(
    work: Path,
    target: HAProxyProcess,
    servers: int,
    inter_ms: int,
    seconds: int,
    checked: list[tuple[str, int]] | None = None,
    server_options: str = "",
) -> dict[str, Any]:
    """HAProxy's `option httpchk` on `servers` targets (or the `checked` endpoints, with
    `server_options`): checks counted by the target (one connection each), CPU of the checking
    HAProxy from /proc."""
    checked = checked if checked is not None else endpoints(servers)
    async with haproxy_checker(work, checked, inter_ms, server_options) as checker:
        failed_before = sum(int(r["chkfail"] or 0) for r in await checker.servers())
        before = await read(checker.child, target)
        await asyncio.sleep(seconds)  # the measuring window: HAProxy checks on its own
        measured = window(before, await read(checker.child, target))
        failed = sum(int(r["chkfail"] or 0) for r in await checker.servers()) - failed_before
    return {
        "servers": servers,
        "inter_ms": inter_ms,
        "checks": measured.target_connections,
        "checks_per_s": measured.target_rate,
        "failed_checks": failed,
        "cpu_share": measured.cpu_share,
        "cpu_s_per_1000": per_thousand(measured.cpu, measured.target_connections),
    }


async def generate_latest(targets: int) -> dict[str, Any]:
    """Time prometheus_client's generate_latest in a process of its own on the measured core."""
    argv = [sys.executable, "-m", "bench.genlatest", str(targets)]
    output = await run_bounded(argv, MEASURED_CORE, 120)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])  # after any warning
    return result
