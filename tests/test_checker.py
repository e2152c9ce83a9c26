"""HTTPChecker against real servers on loopback (ports the seed's `checker_test.go`, and more)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import math
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvloop

from exporter import __version__
from exporter.checks import HTTPChecker
from exporter.checks import engine as checker_module
from exporter.checks import resolver as resolver_module
from exporter.checks.http import MAX_HEADER_BYTES, ResponseHead
from exporter.model import CheckOptions, FailureReason, Result, RetryConfig, Target
from tests.servers import (
    LOOPBACK,
    RawMode,
    TargetServer,
    ipv6_loopback_available,
    raw_server,
    target_server,
    unused_port,
)

# Not a valid host name, so glibc fails it without asking a DNS server (which, on some machines,
# drops concurrent queries and so makes a look-up take 5 s).
LOCALLY_UNRESOLVABLE = "-not-a-host-name-.invalid"

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `condition()` holds, failing the test if it does not within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 -- polls state that offers no event
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"condition still false after {within}s")


def refused_target() -> Target:
    return Target(id="refused", ip=LOOPBACK, port=str(unused_port()))


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def server() -> AsyncIterator[TargetServer]:
    async with target_server() as srv:
        yield srv


@pytest.fixture
def checker() -> HTTPChecker:
    return HTTPChecker(timeout=2.0)


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1.0, math.nan, math.inf])
def test_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        HTTPChecker(timeout)


def test_timeout_is_a_read_only_property() -> None:
    checker = HTTPChecker(1.5)
    assert checker.timeout == 1.5
    with pytest.raises(AttributeError):
        checker.timeout = 3.0  # type: ignore[misc]


# --- check: healthy and status codes --------------------------------------------------------


async def test_healthy_target_has_no_error_and_a_positive_duration(
    server: TargetServer, checker: HTTPChecker
) -> None:
    before = time.time()
    result = await checker.check(server.target("/health"))
    assert result == Result(
        target=server.target("/health"),
        healthy=True,
        status_code=200,
        duration=result.duration,
        checked_at=result.checked_at,
    )
    assert 0 < result.duration < 2.0
    assert before <= result.checked_at <= time.time()
    assert server.path_hits["/health"] == 1


@pytest.mark.parametrize(
    ("code", "healthy"),
    [(200, True), (201, True), (301, True), (400, False), (404, False), (500, False), (503, False)],
)
async def test_2xx_and_3xx_are_healthy_other_statuses_are_not(
    server: TargetServer, checker: HTTPChecker, code: int, healthy: bool
) -> None:
    result = await checker.check(server.target(f"/status/{code}"))
    assert (result.healthy, result.status_code) == (healthy, code)
    if healthy:
        assert (result.error, result.reason) == (None, None)
    else:
        assert result.error == f"unhealthy status code: {code}"
        assert result.reason is FailureReason.HTTP_STATUS


async def test_redirect_is_not_followed_and_counts_as_healthy(
    server: TargetServer, checker: HTTPChecker
) -> None:
    result = await checker.check(server.target("/redirect"))
    assert (result.healthy, result.status_code) == (True, 302)
    assert server.path_hits["/elsewhere"] == 0


async def test_flip_toggles_health(server: TargetServer, checker: HTTPChecker) -> None:
    assert (await checker.check(server.target("/flip"))).healthy
    server.flip.healthy = False
    assert (await checker.check(server.target("/flip"))).status_code == 503


async def test_request_is_a_minimal_http11_get_without_keep_alive(checker: HTTPChecker) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n") as srv:
        result = await checker.check(srv.target("/ready?full=1"))
    assert result.healthy
    assert srv.requests == [
        b"GET /ready?full=1 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"User-Agent: healthcheck-exporter/%s\r\n"
        b"Accept: */*\r\n"
        b"Connection: close\r\n\r\n" % (srv.port, __version__.encode())
    ]


@needs_ipv6
async def test_ipv6_literal_target_is_reached_with_bracketed_host_header(
    checker: HTTPChecker,
) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n", host="::1") as srv:
        result = await checker.check(srv.target())
    assert result.healthy
    assert b"\r\nHost: [::1]:%d\r\n" % srv.port in srv.requests[0]


async def test_hostname_is_resolved_and_sent_as_host_header(checker: HTTPChecker) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 204 No Content\r\n\r\n") as srv:
        result = await checker.check(Target(id="named", ip="localhost", port=str(srv.port)))
    assert (result.healthy, result.status_code) == (True, 204)
    assert b"\r\nHost: localhost:%d\r\n" % srv.port in srv.requests[0]


async def test_body_is_never_read(checker: HTTPChecker) -> None:
    async with raw_server("stream_body") as srv:  # 200 header block, then an endless body
        result = await checker.check(srv.target())
    assert (result.healthy, result.status_code) == (True, 200)
    assert result.duration < checker.timeout


# --- check: status line and header block ----------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, None),
        (b"HTTP/1.0 204 No Content\r\n\r\n", 204, None),
        (b"HTTP/1.1 200\r\n\r\n", 200, None),
        (b"HTTP/1.1 399 Custom\r\nX-A: b\r\n\r\n", 399, None),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 101, FailureReason.HTTP_STATUS),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 200, None),
        (
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n",
            204,
            None,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n", 503, FailureReason.HTTP_STATUS),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n" * 6 + b"HTTP/1.1 200 OK\r\n\r\n",
            0,
            FailureReason.PROTOCOL_ERROR,
        ),
        (b"HTTP/1.1 200 OK\n\n", 200, None),
        (b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nok", 200, None),
        (b"HTTP/1.1 500 Oops\nX-A: b\r\n\r\n", 500, FailureReason.HTTP_STATUS),
        (b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\n\n", 200, None),
        (b"HTTP/1.1 600 Beyond\r\n\r\n", 600, FailureReason.HTTP_STATUS),
        (b"HTTP/2 200\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.2 200 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"http/1.1 200 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1 20 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1 2000 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1 200OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1  200 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1 099 Low\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
        (b"HTTP/1.1 \xc8\xc8\xc8 OK\r\n\r\n", 0, FailureReason.PROTOCOL_ERROR),
    ],
)
async def test_status_line_is_parsed_strictly(
    checker: HTTPChecker, reply: bytes, status: int, reason: FailureReason | None
) -> None:
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(srv.target())
    assert (result.status_code, result.reason, result.healthy) == (status, reason, reason is None)


async def test_non_http_peer_that_sends_one_line_and_waits_fails_at_once(
    checker: HTTPChecker,
) -> None:
    async with raw_server("reply", reply=b"SSH-2.0-OpenSSH_9.6\r\n") as srv:
        result = await checker.check(srv.target())
    assert result.reason is FailureReason.PROTOCOL_ERROR
    assert result.error == "request failed: malformed status line 'SSH-2.0-OpenSSH_9.6'"
    assert result.duration < checker.timeout / 2


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"\x15\x03\x03\x00\x02\x02\x28", id="tls-alert"),
        pytest.param(b"\x16\x03\x03\x00\x2a\x02\x00\x00\x26\x03\x03", id="tls-server-hello"),
        pytest.param(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", id="http2-settings"),
        pytest.param(b"\xff\xfd\x18\xff\xfd\x20", id="telnet-greeting"),
        pytest.param(b"HTTP/2 ", id="http2-status-prefix"),
    ],
)
async def test_non_http_reply_without_a_line_end_is_a_protocol_error_at_once(
    checker: HTTPChecker, reply: bytes
) -> None:
    """The peer sends bytes that can begin no status line and then waits: failing at once,
    not after the timeout (nor as a reset when it then closes)."""
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(srv.target())
    assert (result.reason, result.status_code) == (FailureReason.PROTOCOL_ERROR, 0)
    assert result.error is not None
    assert result.error.startswith("request failed: malformed status line ")


def test_partial_status_line_that_may_still_be_valid_is_kept() -> None:
    for prefix in (b"H", b"HTTP/1.", b"HTTP/1.1 2", b"HTTP/1.1 200", b"HTTP/1.1 200 O"):
        head = ResponseHead()
        assert head.feed(prefix) is False
        assert head.error is None
        assert head.feed(prefix[len(prefix) :] + b"HTTP/1.1 200 OK\r\n\r\n"[len(prefix) :])
        assert (head.status, head.error) == (200, None)


@pytest.mark.parametrize(
    ("size", "reason"),
    [(MAX_HEADER_BYTES, None), (MAX_HEADER_BYTES + 1, FailureReason.PROTOCOL_ERROR)],
)
async def test_header_block_is_capped_at_16_kib(
    checker: HTTPChecker, size: int, reason: FailureReason | None
) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Fill: \r\n\r\n"
    reply = head.replace(b": ", b": " + b"a" * (size - len(head)))
    assert len(reply) == size
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(srv.target())
    assert (result.reason, result.status_code) == (reason, 200)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\n\r\nbody",
        b"HTTP/1.1 503 Busy\nRetry-After: 1\n\nbody",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\nbody",
        b"HTTP/1.1 103 Early\nLink: <a>\n\nHTTP/1.1 503 Busy\n\nbody",
    ],
)
def test_response_split_anywhere_across_reads_is_parsed(response: bytes) -> None:
    end = len(response) - len(b"body")  # where the final head ends
    for split in range(1, len(response)):
        head = ResponseHead()
        complete = head.feed(response[:split])
        assert complete == (split >= end)
        assert complete or head.feed(response[split:])
        assert (head.status, head.error) == (503, None)
        assert head.data[head.end :] == response[end:][: len(head.data) - head.end]
    head = ResponseHead()
    fed = [head.feed(bytes([byte])) for byte in response]
    assert fed.index(True) == end - 1  # complete at the blank line
    assert (head.status, head.error) == (503, None)


# --- check: failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason", "status", "error"),
    [
        ("reset", FailureReason.CONNECTION_RESET, 0, "request failed: connection reset by peer"),
        (
            "close",
            FailureReason.CONNECTION_RESET,
            0,
            "request failed: connection closed before the response headers were complete",
        ),
        (
            "garbage",
            FailureReason.PROTOCOL_ERROR,
            0,
            "request failed: malformed status line 'hello world'",
        ),
        (
            "huge_headers",
            FailureReason.PROTOCOL_ERROR,
            200,
            f"request failed: response header block exceeds {MAX_HEADER_BYTES} bytes",
        ),
    ],
)
async def test_misbehaving_peer_gives_its_failure_reason(
    checker: HTTPChecker,
    mode: RawMode,
    reason: FailureReason,
    status: int,
    error: str,
) -> None:
    async with raw_server(mode) as srv:
        result = await checker.check(srv.target())
    assert (result.healthy, result.reason, result.status_code, result.error) == (
        False,
        reason,
        status,
        error,
    )
    assert result.duration > 0


async def test_connection_refused(checker: HTTPChecker) -> None:
    result = await checker.check(refused_target())
    assert (result.healthy, result.reason, result.status_code) == (
        False,
        FailureReason.CONNECTION_REFUSED,
        0,
    )
    assert result.error == "request failed: connection refused"


def resolve_to_both_loopbacks(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """Make the checks' resolver answer every name with `::1` and then `127.0.0.1`."""
    del port  # the resolver puts the target's port in each address

    def getaddrinfo(_: str) -> list[Any]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOOPBACK, 0)),
        ]

    monkeypatch.setattr(resolver_module, "getaddrinfo", getaddrinfo)


@needs_ipv6
async def test_name_with_several_addresses_falls_back_to_the_next_one(
    server: TargetServer, checker: HTTPChecker, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_to_both_loopbacks(monkeypatch, server.port)  # nothing listens on ::1
    result = await checker.check(Target(id="dual", ip="dual-stack.test", port=str(server.port)))
    assert (result.healthy, result.status_code) == (True, 200)


@needs_ipv6
async def test_name_whose_every_address_refuses_is_connection_refused(
    checker: HTTPChecker, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = unused_port()
    resolve_to_both_loopbacks(monkeypatch, port)
    result = await checker.check(Target(id="dual", ip="dual-stack.test", port=str(port)))
    assert (result.reason, result.error) == (
        FailureReason.CONNECTION_REFUSED,
        "request failed: connection refused",
    )


def test_timeout_while_resolving_under_uvloop_leaves_no_unretrieved_error() -> None:
    # uvloop's create_connection leaves such an error behind (MagicStack/uvloop#437).
    async def scenario() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        checker = HTTPChecker(timeout=1e-6)  # fires before any look-up can finish
        names = [f"-{i}{LOCALLY_UNRESOLVABLE}" for i in range(8)]
        await asyncio.gather(*(checker.check(Target(id=n, ip=n, port="80")) for n in names))
        for name in names * 2:  # queued behind the abandoned look-ups, so done after them
            with contextlib.suppress(OSError):
                await loop.getaddrinfo(name, 80)
        gc.collect()
        return reported

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == []


async def test_unresolvable_name_is_a_dns_failure() -> None:
    checker = HTTPChecker(timeout=10)  # above the resolver's 5 s retry, should a query be lost
    result = await checker.check(Target(id="dns", ip="no-such-host.invalid", port="80"))
    assert (result.healthy, result.reason, result.status_code) == (False, FailureReason.DNS, 0)
    assert result.error is not None
    assert result.error.startswith("request failed: cannot resolve 'no-such-host.invalid': ")


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_name_that_cannot_be_encoded_is_a_dns_failure(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    target = Target(id="dns", ip="empty..label", port="80")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(HTTPChecker(timeout=2).check(target))
    assert (result.reason, result.error) == (
        FailureReason.DNS,
        "request failed: cannot resolve 'empty..label': invalid name",
    )


async def test_unroutable_address_is_network_unreachable(checker: HTTPChecker) -> None:
    # Linux refuses TCP to a multicast address with ENETUNREACH, without sending anything.
    result = await checker.check(Target(id="mcast", ip="224.0.0.1", port="80"))
    assert (result.reason, result.error) == (
        FailureReason.NETWORK_UNREACHABLE,
        "request failed: network is unreachable",
    )


async def test_slow_response_times_out(server: TargetServer) -> None:
    checker = HTTPChecker(timeout=0.1)
    result = await checker.check(server.target("/slow?delay=0.5"))
    assert (result.healthy, result.reason, result.status_code) == (
        False,
        FailureReason.TIMEOUT,
        0,
    )
    assert result.error == "request failed: timed out after 0.1s"
    assert 0.1 <= result.duration < 0.5


@contextlib.contextmanager
def full_accept_queue() -> Iterator[socket.socket]:
    """A listener whose accept queue is full, so the kernel drops new SYNs: a connect stays in
    progress (as to a far or firewalled host) until the client retransmits its SYN (after 1 s)."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)  # one connection fits in the queue
        filler.connect(listener.getsockname())
        yield listener


async def test_a_connect_that_stays_in_progress_times_out() -> None:
    with full_accept_queue() as listener:
        port = listener.getsockname()[1]
        result = await HTTPChecker(timeout=0.3).check(Target("syn", ip=LOOPBACK, port=str(port)))
    assert (result.reason, result.error) == (
        FailureReason.TIMEOUT,
        "request failed: timed out after 0.3s",
    )


async def test_a_connect_that_completes_late_sends_the_request_then() -> None:
    loop = asyncio.get_running_loop()
    with full_accept_queue() as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        check = asyncio.create_task(
            HTTPChecker(timeout=5).check(Target("late", "", LOOPBACK, str(port)))
        )
        await asyncio.sleep(0.2)  # the check's SYN has been dropped by now
        queued, _ = await loop.sock_accept(listener)  # the filler: room for the retransmit
        queued.close()
        client, _ = await loop.sock_accept(listener)
        with client:
            request = await loop.sock_recv(client, 4096)
            await loop.sock_sendall(client, b"HTTP/1.1 204 No Content\r\n\r\n")
            result = await check
    assert request.startswith(b"GET /health HTTP/1.1\r\n")
    assert (result.healthy, result.status_code) == (True, 204)
    assert result.duration > 0.2


async def test_hanging_server_times_out_and_the_connection_is_closed(
    server: TargetServer,
) -> None:
    result = await HTTPChecker(timeout=0.1).check(server.target("/hang"))
    assert result.reason is FailureReason.TIMEOUT
    await eventually(lambda: server.in_flight == 0)  # the server saw the client go


@pytest.mark.parametrize(
    ("ip", "port", "path", "what"),
    [
        (LOOPBACK, "", "health", "health check path"),
        (LOOPBACK, "", "/a b", "health check path"),
        (LOOPBACK, "", "/a\r\nX-Injected: 1", "health check path"),
        (LOOPBACK, "", "/caf\u00e9", "health check path"),
        (LOOPBACK, "", "/tab\there", "health check path"),
        (LOOPBACK, "", "", "health check path"),
        ("", "", "/health", "host"),
        ("evil\r\nX: y", "", "/health", "host"),
        (LOOPBACK, "0", "/health", "port"),
        (LOOPBACK, "65536", "/health", "port"),
        (LOOPBACK, "http", "/health", "port"),
    ],
)
async def test_target_that_cannot_be_sent_unaltered_is_refused_without_connecting(
    checker: HTTPChecker, ip: str, port: str, path: str, what: str
) -> None:
    async with raw_server("close") as srv:
        target = Target(id="bad", ip=ip, port=port or str(srv.port), health_check_path=path)
        result = await checker.check(target)
    assert (result.healthy, result.reason, result.status_code) == (False, FailureReason.OTHER, 0)
    assert result.error is not None
    assert result.error.startswith(f"invalid request: {what} ")
    assert srv.connections == 0


# --- check: cancellation --------------------------------------------------------------------


async def test_cancellation_propagates_and_closes_the_connection(server: TargetServer) -> None:
    task = asyncio.create_task(HTTPChecker(timeout=10).check(server.target("/hang")))
    await eventually(lambda: server.in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: server.in_flight == 0)


async def test_cancellation_before_the_check_starts_propagates(
    server: TargetServer, checker: HTTPChecker
) -> None:
    task = asyncio.create_task(checker.check(server.target("/health")))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.path_hits


# --- start: the callback engine under check ------------------------------------------------


async def test_start_calls_back_once_and_never_from_within_start(
    server: TargetServer, checker: HTTPChecker
) -> None:
    results: list[Result] = []
    for target in (refused_target(), server.target("/bad path"), server.target("/health")):
        checker.start(target, results.append)
        assert results == []  # even a refusal known at once waits for the loop
        await eventually(lambda: len(results) == 1)
        await asyncio.sleep(0.05)
        assert len(results) == 1
        assert results.pop().target == target


async def test_a_cancelled_start_never_calls_back_and_closes_its_connection(
    server: TargetServer, checker: HTTPChecker
) -> None:
    results: list[Result] = []
    checker.start(refused_target(), results.append).cancel()  # its result already on its way
    probe = checker.start(server.target("/hang"), results.append)
    await eventually(lambda: server.in_flight == 1)
    probe.cancel()
    await eventually(lambda: server.in_flight == 0)
    await asyncio.sleep(0.05)
    assert results == []


async def test_many_checks_time_out_each_at_its_own_deadline(server: TargetServer) -> None:
    """One timer serves every deadline: checks started at different times expire in turn."""
    checker = HTTPChecker(timeout=0.3)
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}
    started: dict[str, float] = {}
    for i in range(5):
        target = server.target("/hang", target_id=f"h{i}")
        started[target.id] = loop.time()
        checker.start(target, lambda r: ended.setdefault(r.target.id, loop.time()))
        await asyncio.sleep(0.1)
    await eventually(lambda: len(ended) == 5)
    for target_id, at in ended.items():  # uvloop's clock counts whole milliseconds
        assert 0.3 - 0.002 <= at - started[target_id] < 1.0, target_id


# --- check_with_retry -----------------------------------------------------------------------

FAST_RETRY = RetryConfig(max_retries=5, initial_backoff=0.01, max_backoff=0.05)


async def test_retry_stops_at_immediate_success(server: TargetServer, checker: HTTPChecker) -> None:
    retries: list[tuple[int, float]] = []
    result = await checker.check_with_retry(
        server.target("/t/a"), FAST_RETRY, lambda *args: retries.append(args)
    )
    assert result.healthy
    assert (server.hits["a"], retries) == (1, [])


async def test_retry_succeeds_after_two_failures(
    server: TargetServer, checker: HTTPChecker
) -> None:
    retries: list[tuple[int, float]] = []
    result = await checker.check_with_retry(
        server.target("/t/a?fail_first=2"), FAST_RETRY, lambda *args: retries.append(args)
    )
    assert (result.healthy, result.error) == (True, None)
    assert server.hits["a"] == 3
    assert retries == [(1, 0.01), (2, 0.02)]


async def test_retry_gives_up_after_max_retries_plus_one_attempts(
    server: TargetServer, checker: HTTPChecker
) -> None:
    config = RetryConfig(max_retries=2, initial_backoff=0.01, max_backoff=0.05)
    server.down.add("a")
    result = await checker.check_with_retry(server.target("/t/a"), config)
    assert server.hits["a"] == 3
    assert (result.healthy, result.reason, result.status_code) == (
        False,
        FailureReason.HTTP_STATUS,
        503,
    )
    assert result.error == "health check failed after 3 attempts: unhealthy status code: 503"


async def test_retry_backoff_doubles_up_to_the_cap(checker: HTTPChecker) -> None:
    config = RetryConfig(max_retries=4, initial_backoff=0.01, max_backoff=0.03)
    retries: list[tuple[int, float]] = []
    result = await checker.check_with_retry(
        refused_target(), config, lambda *args: retries.append(args)
    )
    assert retries == [(1, 0.01), (2, 0.02), (3, 0.03), (4, 0.03)]
    assert result.reason is FailureReason.CONNECTION_REFUSED
    assert (
        result.error == "health check failed after 5 attempts: request failed: connection refused"
    )


async def test_retry_defaults_to_the_seed_config_and_cancellation_propagates(
    server: TargetServer, checker: HTTPChecker
) -> None:
    retries: list[tuple[int, float]] = []
    server.down.add("a")
    task = asyncio.create_task(
        checker.check_with_retry(server.target("/t/a"), on_retry=lambda *a: retries.append(a))
    )
    await eventually(lambda: bool(retries))  # now sleeping the default 0.5 s backoff
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (retries, server.hits["a"]) == ([(1, 0.5)], 1)


# --- check_all ------------------------------------------------------------------------------


async def test_check_all_returns_one_result_per_target_in_input_order(
    server: TargetServer, checker: HTTPChecker
) -> None:
    server.down.add("2")
    targets = [server.target(f"/t/{n}", target_id=n) for n in ("1", "2", "3")]
    results = await checker.check_all(targets, max_concurrent=10)
    assert [r.target for r in results] == targets
    assert [r.healthy for r in results] == [True, False, True]
    assert server.hits == {"1": 1, "2": 1, "3": 1}


async def test_check_all_of_nothing_is_empty(checker: HTTPChecker) -> None:
    assert await checker.check_all([]) == []


@pytest.mark.parametrize(("max_concurrent", "expected_peak"), [(5, 5), (0, 10), (-3, 10)])
async def test_check_all_never_exceeds_the_concurrency_limit(
    server: TargetServer, checker: HTTPChecker, max_concurrent: int, expected_peak: int
) -> None:
    targets = [server.target("/slow?delay=0.05", target_id=str(i)) for i in range(20)]
    results = await checker.check_all(targets, max_concurrent=max_concurrent)
    assert all(r.healthy for r in results)
    assert server.path_hits["/slow"] == 20
    assert server.max_in_flight == expected_peak


async def test_check_all_cancellation_closes_every_connection(server: TargetServer) -> None:
    targets = [server.target("/hang", target_id=str(i)) for i in range(4)]
    task = asyncio.create_task(HTTPChecker(timeout=10).check_all(targets, max_concurrent=2))
    await eventually(lambda: server.in_flight == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: server.in_flight == 0)
    assert server.path_hits["/hang"] == 2


# --- out of file descriptors ----------------------------------------------------------------

OUT_OF_FDS = """
import asyncio, collections, json, resource, sys
from exporter.checks import HTTPChecker
from exporter.model import Target

async def main():
    port = sys.argv[2]
    hog = []  # every descriptor taken: not even the checker's epoll instance can be made
    try:
        while True:
            hog.append(open("/dev/null"))
    except OSError:
        pass
    starved = await HTTPChecker(timeout=0.5).check(Target("s", "", "127.0.0.1", port, "/health"))
    for f in hog:
        f.close()
    hang = [Target(f"h{i}", "", "127.0.0.1", port, "/hang") for i in range(60)]
    checker = HTTPChecker(timeout=0.5)
    results = await checker.check_all(hang, max_concurrent=60)
    after = await checker.check(Target("ok", "", "127.0.0.1", port, "/health"))
    errors = [r.error for r in results if r.reason == "local_resources"]
    print(json.dumps({
        "reasons": collections.Counter(str(r.reason) for r in results),
        "error": errors[0] if errors else None,
        "after": after.healthy,
        "starved": [str(starved.reason), starved.error],
    }))

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


OUT_OF_FDS_ERROR = "the exporter itself ran out of resources: too many open files"


async def test_out_of_file_descriptors_fails_those_checks_and_recovers(
    server: TargetServer,
) -> None:
    """With a 40-fd limit, 60 hanging checks at once: those without a socket fail at once as
    the exporter's own lack of resources (never the target's fault), the rest time out, and the
    next check works. With no fd at all, a check fails the same way rather than raising. The
    child runs the loop this test runs on."""
    loop_name = "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OUT_OF_FDS,
        loop_name,
        str(server.port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0, err.decode()
    report = json.loads(out.decode().splitlines()[-1])
    assert report["reasons"]["local_resources"] > 0 and report["reasons"]["timeout"] > 0, report
    assert sum(report["reasons"].values()) == 60
    assert report["error"] == OUT_OF_FDS_ERROR
    assert report["after"] is True
    assert report["starved"] == ["local_resources", OUT_OF_FDS_ERROR]
    assert "Traceback" not in err.decode()


async def test_a_socket_the_os_will_not_watch_fails_that_check(
    server: TargetServer, checker: HTTPChecker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """epoll_ctl can refuse (ENOSPC once fs.epoll.max_user_watches is reached): that check
    fails as the exporter's own lack of resources and closes its socket; nothing raises.
    Simulated: the limit is system-wide and not ours to lower in a test."""

    def refuse(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    baseline = open_fd_count()
    monkeypatch.setattr(checker_module._EpollReactor, "watch", refuse)
    result = await checker.check(server.target("/health"))
    assert (result.reason, result.error) == (
        FailureReason.LOCAL_RESOURCES,
        "the exporter itself ran out of resources: no space left on device"
        " (epoll watches: fs.epoll.max_user_watches)",
    )
    monkeypatch.undo()
    assert (await checker.check(server.target("/health"))).healthy
    await eventually(lambda: open_fd_count() <= baseline)


# --- every outcome, under both event loops, without leaking file descriptors -----------------


async def check_every_outcome(total: int) -> None:
    """Run `total` checks cycling through every outcome; assert each reason and no fd leak."""
    checker = HTTPChecker(timeout=1.0)
    async with contextlib.AsyncExitStack() as stack:
        srv = await stack.enter_async_context(target_server())
        raw = {
            mode: await stack.enter_async_context(raw_server(mode))
            for mode in ("reset", "close", "garbage", "huge_headers", "stream_body")
        }
        cases: list[tuple[Target, FailureReason | None]] = [
            (srv.target("/health"), None),
            (srv.target("/redirect"), None),
            (Target(id="named", ip="localhost", port=str(srv.port)), None),
            (raw["stream_body"].target(), None),
            (srv.target("/status/503"), FailureReason.HTTP_STATUS),
            (srv.target("/hang"), FailureReason.TIMEOUT),
            (refused_target(), FailureReason.CONNECTION_REFUSED),
            (raw["reset"].target(), FailureReason.CONNECTION_RESET),
            (raw["close"].target(), FailureReason.CONNECTION_RESET),
            (raw["garbage"].target(), FailureReason.PROTOCOL_ERROR),
            (raw["huge_headers"].target(), FailureReason.PROTOCOL_ERROR),
            (Target(id="dns", ip=LOCALLY_UNRESOLVABLE, port="80"), FailureReason.DNS),
            (Target(id="mcast", ip="224.0.0.1", port="80"), FailureReason.NETWORK_UNREACHABLE),
            (srv.target("/bad path"), FailureReason.OTHER),
        ]
        baseline = open_fd_count()
        rounds = -(-total // len(cases))
        targets = [target for target, _ in cases] * rounds
        results = await checker.check_all(targets, max_concurrent=len(targets))  # 1 s in all
        assert [(r.target.id, r.reason) for r in results] == [
            (target.id, reason) for target, reason in cases
        ] * rounds
        assert all(r.duration > 0 for r in results)
        for _ in range(3):
            task = asyncio.create_task(HTTPChecker(timeout=10).check(srv.target("/hang")))
            await eventually(lambda: srv.in_flight == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually(lambda: srv.in_flight == 0)
        await eventually(lambda: open_fd_count() <= baseline)


@pytest.mark.parametrize(
    "loop_factory",
    [asyncio.new_event_loop, uvloop.new_event_loop],
    ids=["asyncio", "uvloop"],
)
@pytest.mark.parametrize("reactor", ["epoll", "loop"])
def test_200_checks_of_every_outcome_leak_no_file_descriptors(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    reactor: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also with sockets watched by the loop itself, as where there is no epoll; and an idle
    checker's epoll instance is closed (the fd count falls back to the baseline)."""
    if reactor == "loop":
        monkeypatch.setattr(checker_module, "REACTOR", checker_module._Reactor)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(check_every_outcome(200))


# --- several addresses: a black hole first in line ------------------------------------------


@contextlib.contextmanager
def black_hole(host: str, port: int) -> Iterator[None]:
    """`host`:`port` where SYNs go unanswered: a listener that never accepts, its backlog
    filled, so the kernel drops further connection attempts (as a dead route would)."""
    with socket.socket() as listener:
        listener.bind((host, port))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex((host, port))
            yield
        finally:
            for filler in fillers:
                filler.close()


def resolve_to(monkeypatch: pytest.MonkeyPatch, *hosts: str) -> None:
    """Make the checks' resolver answer every name with `hosts`, in order (IPv4 only)."""

    def getaddrinfo(_: str) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, 0)) for h in hosts]

    monkeypatch.setattr(resolver_module, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("scheme", ["http", "tcp"])
async def test_a_black_hole_first_in_line_leaves_time_for_the_next_address(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """Issue 13 defect 12: the name's first address never answers; the check still reaches the
    second one within the timeout (each address gets its share of the time left)."""
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n", host="127.0.0.3") as srv:
        resolve_to(monkeypatch, "127.0.0.2", "127.0.0.3")
        options = CheckOptions(scheme=scheme)
        target = Target(id="dual", ip="dual-stack.test", port=str(srv.port), options=options)
        with black_hole("127.0.0.2", srv.port):
            result = await HTTPChecker(timeout=1.0).check(target)
    assert result.healthy, result.error


async def test_a_name_whose_every_address_is_a_black_hole_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = unused_port("127.0.0.2")
    resolve_to(monkeypatch, "127.0.0.2", "127.0.0.2")
    with black_hole("127.0.0.2", port):
        result = await HTTPChecker(timeout=0.4).check(Target("t", ip="x.test", port=str(port)))
    assert (result.reason, result.error) == (
        FailureReason.TIMEOUT,
        "request failed: timed out after 0.4s",
    )


# --- names whose resolver never answers -----------------------------------------------------


class SilentResolver:
    """Stands in for `socket.getaddrinfo`: names starting `dead-` never get an answer (until
    `release`), as with a DNS server that drops queries; any other name is 127.0.0.1.
    glibc reads its servers from /etc/resolv.conf only, so no real server can play this part
    for one test alone."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.calls: Counter[str] = Counter()

    def __call__(self, host: str, port: object, *args: object, **kwargs: object) -> list[Any]:
        self.calls[host] += 1
        if host.startswith("dead-"):
            self.released.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOOPBACK, port or 0))]


async def test_names_that_never_resolve_never_delay_another_name(server: TargetServer) -> None:
    """Issue 13 defect 1: eight names whose look-ups hang, checked round after round, never
    hold up a healthy name's check; each hung name costs one look-up, not one per round."""
    silent = SilentResolver()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", silent)
        checker = HTTPChecker(timeout=0.3)
        dead = [Target(f"dead-{i}", ip=f"dead-{i}.test", port="80") for i in range(8)]
        good = Target("good", ip="good.test", port=str(server.port))
        try:
            for _ in range(3):
                results = await asyncio.gather(*(checker.check(t) for t in [*dead, good]))
                assert [r.reason for r in results[:-1]] == [FailureReason.TIMEOUT] * 8
                assert results[-1].healthy, results[-1].error
        finally:
            silent.released.set()
    assert all(silent.calls[f"dead-{i}.test"] == 1 for i in range(8)), silent.calls


SILENT_EXIT = """
import asyncio, socket, sys, threading
from exporter.checks import HTTPChecker
from exporter.model import Target

def never(*_a, **_k):
    threading.Event().wait()

socket.getaddrinfo = never

async def main():
    checker = HTTPChecker(timeout=0.2)
    await asyncio.gather(*(checker.check(Target(str(i), ip=f"dead-{i}.test", port="80"))
                           for i in range(8)))

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
print("exited")
"""


async def test_a_hung_look_up_does_not_hold_up_the_exit() -> None:
    """The exporter's shutdown (SIGTERM ends the loop the same way) never waits for a look-up
    stuck in the C library: the process ends once its checks have."""
    loop_name = "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SILENT_EXIT, loop_name,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(child.communicate(), 20)
    except TimeoutError:
        child.kill()
        await child.wait()
        pytest.fail("the process still waited for its hung look-ups after 20 s")
    assert (child.returncode, out.decode().strip()) == (0, "exited"), err.decode()
