"""`healthcheck-exporter wait`: block a deploy script until an app's targets are up, asking a
running exporter through its long-polling API (`GET /api/v1/targets?app=&index=&wait=`), as
`kubectl rollout status` waits on the API server. No tight loop: each request returns when the
exporter's index moves or after at most `POLL_WAIT`.

Exit statuses: 0 up, 1 timed out, 2 usage error, 3 exporter unreachable or refusing us.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

EXIT_UP, EXIT_TIMEOUT, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
POLL_WAIT = 30.0  # seconds one long poll may wait on the exporter
SLACK = 10.0  # beyond the poll's wait, for the answer to arrive
SHOWN_PROBLEMS = 3  # targets named on a progress line; all of them on a timeout


class Unreachable(Exception):
    """The exporter cannot be reached, or refuses our credentials: exit 3."""


@dataclass(frozen=True)
class WaitOptions:
    app: str
    url: str  # the exporter's base URL
    timeout: float
    min_up: int | None = None  # None: every target of the app
    check_now: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class Progress:
    up: int
    total: int
    needed: int
    down: tuple[str, ...]  # "web-3 DOWN 1/2: connection_refused", each target not up

    @property
    def done(self) -> bool:
        return self.total > 0 and self.up >= self.needed

    def line(self, app: str) -> str:
        if self.total == 0:
            return f"{app}: no targets yet"
        text = f"{app}: {self.up}/{self.total} up"
        if self.needed < self.total:
            text += f" (need {self.needed})"
        if self.down:
            shown = list(self.down[:SHOWN_PROBLEMS])
            if len(self.down) > SHOWN_PROBLEMS:
                shown.append(f"{len(self.down) - SHOWN_PROBLEMS} more")
            text += f" ({'; '.join(shown)})"
        return text


def is_up(target: Mapping[str, Any]) -> bool:
    """Up through real checks: healthy only by the initial state does not count."""
    return target.get("state") == "healthy" and target.get("checked") is True


def why_not_up(target: Mapping[str, Any]) -> str:
    last = target.get("last_check") or {}
    reason = (last.get("reason") or "ok") if target.get("checked") else "not checked yet"
    return f"{target.get('id')} {target.get('progress')}: {reason}"


def progress(data: Mapping[str, Any], min_up: int | None) -> Progress:
    targets = data.get("targets", [])
    up = sum(1 for t in targets if is_up(t))
    needed = len(targets) if min_up is None else min_up
    down = tuple(why_not_up(t) for t in targets if not is_up(t))
    return Progress(up, len(targets), needed, down)


def default_url(listen_address: str, tls: bool) -> str:
    """The exporter's URL from its HEALTHCHECK_LISTEN_ADDRESS (all interfaces: loopback)."""
    host, _, port = listen_address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


class Waiter:
    def __init__(self, options: WaitOptions, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out, self.err = out, err
        auth = None
        if options.username is not None:
            auth = aiohttp.BasicAuth(options.username, options.password or "")
        self._auth = auth
        self._ssl: ssl.SSLContext | bool = True
        if options.ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=str(options.ca_file))

    async def run(self) -> int:
        options = self.options
        started = time.monotonic()
        deadline = started + options.timeout
        async with aiohttp.ClientSession(auth=self._auth) as session:
            if options.check_now:
                await self._check_now(session)
            index: int | None = None
            last_line = ""
            current = Progress(0, 0, 0, ())
            while True:
                remaining = deadline - time.monotonic()
                data = await self._targets(session, index, max(min(remaining, POLL_WAIT), 0.0))
                index = data.get("index")
                current = progress(data, options.min_up)
                if current.done:
                    elapsed = time.monotonic() - started
                    self._say(
                        f"{options.app}: {current.up}/{current.total} up after {elapsed:.1f}s"
                    )
                    return EXIT_UP
                line = current.line(options.app)
                if line != last_line:
                    self._say(line)
                    last_line = line
                if time.monotonic() >= deadline:
                    break
        self._timed_out(current)
        return EXIT_TIMEOUT

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _timed_out(self, current: Progress) -> None:
        options = self.options
        print(
            f"{options.app}: timed out after {options.timeout:g}s: "
            f"{current.up}/{current.total} up, {current.needed or 'some'} needed",
            file=self.err,
        )
        for problem in current.down:
            print(f"  {problem}", file=self.err)

    async def _targets(
        self, session: aiohttp.ClientSession, index: int | None, wait: float
    ) -> Mapping[str, Any]:
        params = {"app": self.options.app}
        if index is not None and wait > 0:
            params.update(index=str(index), wait=f"{wait:.3f}s")
        return await self._call(session, "GET", "/api/v1/targets", wait, params=params)

    async def _check_now(self, session: aiohttp.ClientSession) -> None:
        try:
            body = {"app": self.options.app}
            await self._call(
                session, "POST", "/api/v1/admin/check", self.options.timeout, json=body
            )
        except _NotFound:
            pass  # no targets of the app yet: nothing to check, keep waiting for them

    async def _call(
        self, session: aiohttp.ClientSession, method: str, path: str, wait: float, **kwargs: Any
    ) -> Mapping[str, Any]:
        timeout = aiohttp.ClientTimeout(total=wait + SLACK)
        url = self.options.url.rstrip("/") + path
        try:
            async with session.request(
                method, url, ssl=self._ssl, timeout=timeout, **kwargs
            ) as resp:
                if resp.status in (401, 403):
                    raise Unreachable(f"{url}: refused ({resp.status}): {await _reason(resp)}")
                if resp.status == 404:
                    raise _NotFound()
                if resp.status != 200:
                    raise Unreachable(f"{url}: HTTP {resp.status}: {await _reason(resp)}")
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise Unreachable(f"{url}: {err or type(err).__name__}") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise Unreachable(f"{url}: not an answer of healthcheck-exporter")
        return data


class _NotFound(Exception):
    pass


async def _reason(resp: aiohttp.ClientResponse) -> str:
    text = await resp.text()
    try:
        return str(json.loads(text).get("error", text.strip()))
    except (ValueError, AttributeError):
        return text.strip()[:200]


def run_wait(options: WaitOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        return asyncio.run(Waiter(options, out, err).run())
    except Unreachable as problem:
        print(f"healthcheck-exporter wait: cannot use the exporter: {problem}", file=err)
        return EXIT_UNREACHABLE
