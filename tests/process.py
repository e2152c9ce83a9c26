"""The real exporter as a user starts it: a subprocess configured by env vars, read over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

EXPORTER = [sys.executable, "-m", "exporter"]


@dataclass
class ExporterProcess:
    proc: asyncio.subprocess.Process
    base_url: str = ""
    log: list[str] = field(default_factory=list)

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            # Self-signed test certificates when the exporter serves HTTPS: not verified here.
            session.get(self.base_url + path, headers=headers, ssl=False) as resp,
        ):
            return resp.status, await resp.text()

    async def metrics(self) -> str:
        status, body = await self.get("/metrics")
        assert status == 200
        return body

    async def wait_for_metrics(
        self, condition: Callable[[str], bool], timeout: float = 15.0, what: str = ""
    ) -> str:
        deadline = time.monotonic() + timeout
        while True:
            body = await self.metrics()
            if condition(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last metrics:\n{body}")
            await asyncio.sleep(0.05)

    async def wait_for_log(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            for line in self.log:
                if regex.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.log))
            await asyncio.sleep(0.02)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The test's environment minus any HEALTHCHECK_ variable, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHCHECK_")}
    return {**base, "HEALTHCHECK_LISTEN_ADDRESS": "127.0.0.1:0", **env}


async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
    while line := await stream.readline():
        sink.append(line.decode(errors="replace").rstrip("\n"))


def listening_url(line: str) -> str:
    if line.startswith("{"):
        address, tls = json.loads(line)["address"], json.loads(line).get("tls") is True
    else:
        match = re.search(r"address=(\S+)", line)
        assert match, line
        address, tls = match.group(1), " tls=true" in line
    return ("https://" if tls else "http://") + address.split(",")[0]


@contextlib.asynccontextmanager
async def exporter(
    env: Mapping[str, str], *args: str, ready: bool = True, prefix: Sequence[str] = ()
) -> AsyncIterator[ExporterProcess]:
    """Start `[prefix] python -m exporter [args]` with `env`; yields once listening (and ready)."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        *EXPORTER,
        *args,
        env=child_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    handle = ExporterProcess(proc)
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, handle.log))
    try:
        handle.base_url = listening_url(await handle.wait_for_log(r"\blistening\b"))
        if ready:
            deadline = time.monotonic() + 15
            while (await handle.get("/-/ready"))[0] != 200:
                assert time.monotonic() < deadline, "exporter never became ready"
                await asyncio.sleep(0.05)
        yield handle
    finally:
        await stop_process(proc)
        await pump


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_cli(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run the console script to completion: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *EXPORTER,
        *args,
        env=child_env(env or {}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def promtool() -> str | None:
    """promtool's path; in CI its absence is a failure, never a silent skip."""
    path = shutil.which("promtool")
    if path is None and os.environ.get("CI"):
        raise AssertionError("promtool is missing in CI: scripts/test.sh installs `prometheus`")
    return path


def samples(body: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric name, keyed by their sorted labels."""
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(body: str, name: str, **labels: str) -> float | None:
    for key, val in samples(body, name).items():
        if all(dict(key).get(k) == v for k, v in labels.items()):
            return val
    return None
