"""Agent mode: the exporter answers HAProxy's agent checks, so health flips need no reload.

HAProxy connects to `agent-addr:agent-port` every `agent-inter`, sends its `agent-send` string
(here a target id and a newline) and reads one line back (HAProxy manual, `agent-check`). The
answer is `up`, or `down #<reason>`; a line with no state word changes nothing in HAProxy (Debian's
2.6: status "CHECKED, No status change"), and so does an agent that closes without answering or
cannot be reached: HAProxy keeps the server's last state ("fail static").

Every connection is served from event-loop callbacks (an `asyncio.Protocol`, no task each): at
thousands of agent checks a second a task per connection would cost as much as the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from exporter.logs import RateLimitedLog
from exporter.model import TargetState
from exporter.settings import format_address
from exporter.state import StateTracker, TargetEntry

LINE_LIMIT = 256  # bytes of the request line; a longer one is an error and gets no answer
LOG_PERIOD = 60.0  # seconds between two log lines about unknown ids, or about errors
BACKLOG = 4096  # pending connections: HAProxy's checks of many servers arrive in bursts

UP = b"up\n"
NO_CHANGE = b"\n"  # no state word: HAProxy changes nothing (2.6; test_agent_e2e pins it)
RESULTS = ("up", "down", "pending", "unknown", "error")

Answer = tuple[str, bytes]  # (result label of healthcheck_agent_requests_total, reply line)
Decide = Callable[[str], Answer]


class AnswerFromState:
    """What the agent answers for a target id: the checker's verdict, once it is confirmed.

    `__call__` is the one place that decides an agent answer. The safety floor (issue 13: an app
    in panic, with too few healthy targets, keeps all of them in rotation) plugs in here through
    `in_panic`: for a target of a panicking app it answers `up` whatever the state.

    `up` is said only for a state the checks have confirmed: after `rise` successes in a row, or
    after a change of state (or a restored one). Until then (a target just added, an exporter
    just restarted, even with a failure or two below `fall`) the answer changes nothing: the
    server keeps the state HAProxy last had for it, instead of an `up` nobody verified.
    Confirmation is sticky for the life of the tracker entry.
    """

    def __init__(
        self, tracker: StateTracker, in_panic: Callable[[str], bool] = lambda app: False
    ) -> None:
        self.tracker = tracker
        self.in_panic = in_panic  # app -> in panic (the monitor's safety floor)
        self._confirmed: dict[str, TargetEntry] = {}

    def __call__(self, target_id: str) -> Answer:
        entry = self.tracker.get_entry(target_id)
        if entry is None:
            return "unknown", NO_CHANGE
        if self.in_panic(entry.target.app_name):
            return "up", UP  # every target of an app in panic stays routable
        if not entry.checked:
            return "pending", NO_CHANGE
        if entry.state is TargetState.UNHEALTHY:
            return "down", down_reply(entry)
        if self._confirmed.get(target_id) is not entry:
            if entry.last_change is None and entry.consecutive_successes < entry.rise:
                return "pending", NO_CHANGE
            self._confirm(target_id, entry)
        return "up", UP

    def _confirm(self, target_id: str, entry: TargetEntry) -> None:
        confirmed = self._confirmed
        confirmed[target_id] = entry
        if len(confirmed) > 2 * len(self.tracker) + 100:  # forget targets that are gone
            for stale in [i for i, e in confirmed.items() if self.tracker.get_entry(i) is not e]:
                del confirmed[stale]


def down_reply(entry: TargetEntry) -> bytes:
    """`down #<reason>`: the text after `#` is what HAProxy shows as the check description."""
    result = entry.last_result
    reason = "unhealthy" if result is None or result.reason is None else str(result.reason)
    if result is not None and result.status_code:
        reason += f" {result.status_code}"
    return f"down #{reason}\n".encode()


@dataclass
class AgentStats:
    """Counters `/metrics` shows; updated on the event loop, copied at scrape time."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))


class _Connection(asyncio.Protocol):
    """One agent check: read a line, answer, close."""

    __slots__ = ("agent", "buffer", "timer", "transport")

    def __init__(self, agent: AgentServer) -> None:
        self.agent = agent
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.timer = self.agent.loop.call_later(self.agent.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\n")
        if end < 0:
            end = buffer.find(b"\r")
        if 0 <= end < LINE_LIMIT:
            self._answer(buffer[:end])
        elif end >= LINE_LIMIT or len(buffer) >= LINE_LIMIT:
            self._fail("line longer than the limit")
        else:
            self.buffer = buffer

    def eof_received(self) -> bool:
        self._fail("closed before sending a line")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def _timed_out(self) -> None:
        self.timer = None
        self._fail("sent no line in time")

    def _answer(self, line: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            target_id = line.decode("ascii").strip("\r\n\t ")
        except UnicodeDecodeError:
            self._fail("line is not ASCII")
            return
        transport.write(self.agent.answer(target_id))
        transport.close()
        self.transport = None

    def _fail(self, why: str) -> None:
        """Close without an answer: HAProxy keeps the server's state."""
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        self.agent.count_error(why)
        transport.abort()


class AgentServer:
    """Answers HAProxy agent checks with `decide(target_id)`; see the module docstring."""

    def __init__(self, decide: Decide, logger: logging.Logger, timeout: float = 1.0) -> None:
        self.decide = decide
        self.timeout = timeout
        self.stats = AgentStats()
        self.loop: asyncio.AbstractEventLoop  # set by start()
        self._server: asyncio.Server | None = None
        self._unknown_log = RateLimitedLog(
            logger,
            "agent check for an unknown target id; answered so that HAProxy changes nothing",
            LOG_PERIOD,
        )
        self._error_log = RateLimitedLog(
            logger, "agent client dropped without an answer", LOG_PERIOD
        )

    async def start(self, host: str | None, port: int) -> list[str]:
        """Listen on host:port (None: every interface); return the addresses bound."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, backlog=BACKLOG, reuse_address=True
        )
        return [format_address(sock.getsockname()[:2]) for sock in self._server.sockets]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def answer(self, target_id: str) -> bytes:
        """The reply line for one request, counted (an unknown id logged, rate-limited)."""
        result, reply = self.decide(target_id)
        self.stats.requests[result] += 1
        if result == "unknown":
            self._unknown_log.warn(target=target_id)
        return reply

    def count_error(self, why: str) -> None:
        self.stats.requests["error"] += 1
        self._error_log.warn(reason=why)
