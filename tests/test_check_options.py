"""Per-target check options (issue 12): each option changes what a real server sees or how its
answer is judged; a target without options takes the plain path."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from exporter import __version__
from exporter.checks import HTTPChecker, Probe
from exporter.checks.engine import OptionsProbe
from exporter.checks.http import MAX_BODY_BYTES, ResponseBody, ResponseHead
from exporter.checks.tcp import TcpProbe
from exporter.model import DEFAULT_CHECK_OPTIONS, CheckOptions, FailureReason, Result, Target
from tests.servers import LOOPBACK, raw_server, target_server, unused_port


def with_options(target: Target, **options: object) -> Target:
    return replace(target, options=CheckOptions(**options))  # type: ignore[arg-type]


@pytest.fixture
def checker() -> HTTPChecker:
    return HTTPChecker(timeout=2.0)


def ok(body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --- the plain path stays the plain path ---------------------------------------------------


async def test_a_target_without_options_takes_the_plain_probe(checker: HTTPChecker) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n") as srv:
        results: list[Result] = []
        plain = srv.target()
        assert plain.options is DEFAULT_CHECK_OPTIONS
        assert type(checker.start(plain, results.append)) is Probe
        assert type(checker.start(with_options(plain, method="HEAD"), results.append)) is (
            OptionsProbe
        )
        assert type(checker.start(with_options(plain, scheme="tcp"), results.append)) is TcpProbe
        async with asyncio.timeout(5):
            while len(results) < 3:  # noqa: ASYNC110 -- callbacks offer no event
                await asyncio.sleep(0.01)
    assert all(r.healthy for r in results)


# --- what the server sees ------------------------------------------------------------------


async def test_method_host_headers_and_body_are_sent(checker: HTTPChecker) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 204 No Content\r\n\r\n") as srv:
        target = with_options(
            srv.target("/api/health?deep=1"),
            method="POST",
            host="app.example.com",
            headers=(("X-Token", "s3cret"), ("Content-Type", "application/json")),
            body='{"ping": "é"}',
        )
        result = await checker.check(target)
    assert (result.healthy, result.status_code) == (True, 204)
    body = '{"ping": "é"}'.encode()
    assert srv.requests == [
        b"POST /api/health?deep=1 HTTP/1.1\r\n"
        b"Host: app.example.com\r\n"
        b"User-Agent: healthcheck-exporter/%s\r\n"
        b"Accept: */*\r\n"
        b"X-Token: s3cret\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (__version__.encode(), len(body), body)
    ]


async def test_headers_replace_the_defaults_but_never_keep_alive(checker: HTTPChecker) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n") as srv:
        headers = (("user-agent", "probe/1"), ("Connection", "keep-alive"), ("Accept", "text/*"))
        result = await checker.check(with_options(srv.target(), headers=headers))
    assert result.healthy
    request = srv.requests[0]
    assert b"\r\nuser-agent: probe/1\r\n" in request
    assert b"healthcheck-exporter" not in request
    assert b"\r\nAccept: text/*\r\n" in request
    assert b"keep-alive" not in request
    assert request.endswith(b"\r\nConnection: close\r\n\r\n")


async def test_host_option_changes_the_header_but_not_where_the_check_connects(
    checker: HTTPChecker,
) -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n") as srv:
        target = with_options(srv.target(), host="no-such-host.invalid:8443")
        result = await checker.check(target)
    assert result.healthy
    assert b"\r\nHost: no-such-host.invalid:8443\r\n" in srv.requests[0]


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ((("X-A", "1\r\nX-Injected: 2"),), "header 'X-A'"),
        ((("X:A", "1"),), "header 'X:A'"),
        ((("", "1"),), "header ''"),
    ],
)
async def test_a_header_that_could_split_the_request_is_refused_without_connecting(
    checker: HTTPChecker, headers: tuple[tuple[str, str], ...], what: str
) -> None:
    async with raw_server("close") as srv:
        result = await checker.check(with_options(srv.target(), headers=headers))
    assert (result.reason, srv.connections) == (FailureReason.OTHER, 0)
    assert result.error == f"invalid request: {what} could split the request"


# --- expect_status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expect", "healthy"),
    [
        (204, ((200, 200), (204, 204)), True),
        (200, ((204, 204),), False),
        (503, ((500, 599),), True),
        (302, ((200, 299),), False),
        (404, ((200, 399), (404, 404)), True),
    ],
)
async def test_expect_status_decides_health(
    checker: HTTPChecker, code: int, expect: tuple[tuple[int, int], ...], healthy: bool
) -> None:
    async with target_server() as srv:
        target = with_options(srv.target(f"/status/{code}"), expect_status=expect)
        result = await checker.check(target)
    assert (result.healthy, result.status_code) == (healthy, code)
    if not healthy:
        assert result.reason is FailureReason.HTTP_STATUS
        assert result.error is not None
        assert re.fullmatch(rf"unhealthy status code: {code} \(expected [0-9,-]+\)", result.error)


# --- expect_body ---------------------------------------------------------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'6\r\n{"stat\r\n8;ext=1\r\nus": "UP\r\n2\r\n"}\r\n0\r\n\r\n'
)


@pytest.mark.parametrize(
    ("reply", "pattern", "healthy"),
    [
        (ok(b'{"status": "UP"}'), r'"status": "UP"', True),
        (ok(b'{"status": "DOWN"}'), r'"status": "UP"', False),
        (CHUNKED, r'"status": "UP"', True),  # matched after de-chunking only
        (CHUNKED, r"6\r\n", False),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", r"^ok$", True),
        (ok(b"x" * MAX_BODY_BYTES + b"MARK"), r"MARK", False),  # past the 16 KiB read
        (ok(b"x" * (MAX_BODY_BYTES - 4) + b"MARK"), r"MARK", True),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nUP!!",
            r"UP",
            True,
        ),
    ],
)
async def test_expect_body_is_searched_in_the_start_of_the_body(
    checker: HTTPChecker, reply: bytes, pattern: str, healthy: bool
) -> None:
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(with_options(srv.target(), expect_body=pattern))
    assert (result.healthy, result.status_code) == (healthy, 200)
    if not healthy:
        assert (result.reason, result.error) == (
            FailureReason.BODY_MISMATCH,
            f"response body does not match expect_body {pattern!r}",
        )


def test_a_body_without_length_ends_with_the_connection() -> None:
    head = ResponseHead()
    assert head.feed(b"HTTP/1.0 200 OK\r\n\r\nready ")
    body = ResponseBody(head, "GET")
    assert body.feed(head.data[head.end :]) is False
    assert body.feed(b"until close") is False
    assert body.close() is True
    assert (body.text, body.error) == ("ready until close", None)


async def test_expect_body_on_an_endless_body_stops_at_16_kib(checker: HTTPChecker) -> None:
    async with raw_server("stream_body") as srv:
        matching = await checker.check(with_options(srv.target(), expect_body="^x+$"))
        missing = await checker.check(with_options(srv.target(), expect_body="y"))
    assert matching.healthy
    assert missing.reason is FailureReason.BODY_MISMATCH


async def test_a_body_that_stops_short_of_its_length_times_out() -> None:
    checker = HTTPChecker(timeout=0.3)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(with_options(srv.target(), expect_body="never"))
    assert (result.reason, result.status_code) == (FailureReason.TIMEOUT, 200)


async def test_a_body_cut_by_the_server_is_a_connection_reset(checker: HTTPChecker) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nUP"
    async with raw_server("reply", reply=reply) as srv:
        target = with_options(srv.target(), expect_body="UP")
        task = asyncio.create_task(checker.check(target))
        async with asyncio.timeout(5):
            while not srv.requests:  # noqa: ASYNC110 -- the server offers no event
                await asyncio.sleep(0.01)
    result = await task  # the server closed every connection on leaving its block
    assert (result.reason, result.error) == (
        FailureReason.CONNECTION_RESET,
        "request failed: connection closed before the response body was complete",
    )


async def test_expect_body_is_not_read_for_an_unexpected_status(checker: HTTPChecker) -> None:
    reply = b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\n"  # the body never comes
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(with_options(srv.target(), expect_body="UP"))
    assert (result.reason, result.status_code) == (FailureReason.HTTP_STATUS, 503)


async def test_head_request_reads_no_body(checker: HTTPChecker) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"  # HEAD: no body follows
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(with_options(srv.target(), method="HEAD", expect_body="^$"))
    assert result.healthy
    assert srv.requests[0].startswith(b"HEAD /health HTTP/1.1\r\n")


async def test_malformed_chunked_body_is_a_protocol_error(checker: HTTPChecker) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    async with raw_server("reply", reply=reply) as srv:
        result = await checker.check(with_options(srv.target(), expect_body="UP"))
    assert (result.reason, result.error) == (
        FailureReason.PROTOCOL_ERROR,
        "request failed: malformed chunked body",
    )


# --- tcp -----------------------------------------------------------------------------------


async def test_tcp_check_is_healthy_once_connected_and_sends_nothing(
    checker: HTTPChecker,
) -> None:
    async with raw_server("close") as srv:  # would record any request it received
        result = await checker.check(with_options(srv.target("not a path"), scheme="tcp"))
        async with asyncio.timeout(5):
            while not srv.connections:  # noqa: ASYNC110 -- the server offers no event
                await asyncio.sleep(0.01)
    assert (result.healthy, result.status_code, result.error) == (True, 0, None)
    assert srv.requests == []


async def test_tcp_check_of_a_closed_port_is_refused(checker: HTTPChecker) -> None:
    target = Target("t", "", LOOPBACK, str(unused_port()), options=CheckOptions(scheme="tcp"))
    result = await checker.check(target)
    assert (result.healthy, result.reason) == (False, FailureReason.CONNECTION_REFUSED)


async def test_tcp_check_of_a_name_connects_to_its_address(checker: HTTPChecker) -> None:
    async with raw_server("close") as srv:
        target = Target("t", "", "localhost", str(srv.port), options=CheckOptions(scheme="tcp"))
        result = await checker.check(target)
    assert result.healthy


async def test_tcp_check_of_an_invalid_port_is_refused_without_connecting(
    checker: HTTPChecker,
) -> None:
    target = Target("t", "", LOOPBACK, "0", options=CheckOptions(scheme="tcp"))
    result = await checker.check(target)
    assert (result.reason, result.error) == (
        FailureReason.OTHER,
        "invalid request: port '0' must be a number from 1 to 65535",
    )


# --- timeout -------------------------------------------------------------------------------


async def test_a_target_timeout_of_its_own_is_kept_among_others() -> None:
    """Checks with the checker's timeout (1 s) and with their own (0.2 s, 0.5 s, 3 s), started
    together and in between: each times out at its own deadline, never at another's."""
    checker = HTTPChecker(timeout=1.0)
    loop = asyncio.get_running_loop()
    ended: dict[str, tuple[float, Result]] = {}
    async with target_server() as srv:

        def start(name: str, timeout: float | None) -> None:
            target = srv.target("/hang", target_id=name)
            if timeout is not None:
                target = with_options(target, timeout=timeout)
            started = loop.time()
            checker.start(
                target, lambda r: ended.setdefault(r.target.id, (loop.time() - started, r))
            )

        start("long", 3.0)
        start("default", None)
        start("short", 0.2)
        start("middle", 0.5)
        await asyncio.sleep(0.05)
        start("default-later", None)
        async with asyncio.timeout(10):
            while len(ended) < 5:  # noqa: ASYNC110 -- callbacks offer no event
                await asyncio.sleep(0.01)
    expected = {"short": 0.2, "middle": 0.5, "default": 1.0, "default-later": 1.0, "long": 3.0}
    assert list(ended) == ["short", "middle", "default", "default-later", "long"]
    for name, (took, result) in ended.items():
        assert result.reason is FailureReason.TIMEOUT
        assert result.error == f"request failed: timed out after {expected[name]:g}s"
        assert took >= expected[name] - 0.002, name  # uvloop's clock counts whole ms


async def test_a_target_timeout_equal_to_the_checkers_takes_the_common_queue() -> None:
    checker = HTTPChecker(timeout=0.2)
    async with target_server() as srv:
        result = await checker.check(with_options(srv.target("/hang"), timeout=0.2))
    assert result.error == "request failed: timed out after 0.2s"
