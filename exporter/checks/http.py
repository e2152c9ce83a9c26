"""HTTP/1.1 as the checks speak it: the request they send and the response head they read.

Pure logic without I/O, driven by `exporter.checks.engine`. Follows Go's `net/http` client where
the seed relied on it (see `HTTPChecker` for where it differs).
"""

from __future__ import annotations

import functools
import re

from exporter.model import DEFAULT_EXPECT_STATUS, CheckOptions, FailureReason, Target

MAX_HEADER_BYTES = 16 * 1024
"""Largest response header block accepted (status line and headers, with the blank line)."""


class ResponseError(Exception):
    """A failure found in what the peer sent (or did not send), with its reason."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidRequest(Exception):
    """A target that cannot be put in a request unaltered: refused before connecting."""


def parse_status_line(line: bytes) -> int:
    """The status code of `HTTP/1.x NNN[ reason]`, or 0 when the line is not of that form."""
    if (
        len(line) >= 12
        and line[:7] == b"HTTP/1."
        and line[7] in b"01"
        and line[8] == 0x20
        and line[9] in b"123456789"
        and line[10:12].isdigit()
        and (len(line) == 12 or line[12] == 0x20)
    ):
        return int(line[9:12])
    return 0


MAX_INTERIM_RESPONSES = 5
"""Interim (1xx) responses skipped before the final one, at most (Go's `max1xxResponses`)."""

# What each of the first bytes of a status line may be: a peer whose first bytes fit no status
# line (a TLS alert, HTTP/2 frames, a binary greeting) has failed before any line ends.
_DIGITS = b"0123456789"
_STATUS_LINE_SHAPE = (
    *(bytes([byte]) for byte in b"HTTP/1."),
    b"01",
    b" ",
    b"123456789",
    _DIGITS,
    _DIGITS,
    b" \r",
)


def could_begin_status_line(data: bytes) -> bool:
    """Whether `data`, a response's first bytes without a line end, may still become one."""
    return all(byte in allowed for byte, allowed in zip(data, _STATUS_LINE_SHAPE, strict=False))


def head_end(head: bytes, start: int) -> int:
    """The index just past the blank line ending the header block, or -1; LF or CRLF line ends
    alike (Go's textproto and curl accept bare LF), the terminator within `MAX_HEADER_BYTES`."""
    crlf = head.find(b"\n\r\n", start, MAX_HEADER_BYTES)
    lf = head.find(b"\n\n", start, MAX_HEADER_BYTES if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class ResponseHead:
    """Reads a response up to the end of its header block, from pieces split anywhere (no I/O).

    `feed` returns True once the final head is complete (`status` is set, `end` the index in
    `data` where the body begins) or `error` is set. Interim 1xx responses other than 101 are
    skipped, as Go and curl do.
    """

    __slots__ = ("_head", "_interim", "end", "error", "status")

    def __init__(self) -> None:
        self._head = b""
        self._interim = 0
        self.status = 0
        self.end = 0
        self.error: ResponseError | None = None

    @property
    def data(self) -> bytes:
        """What was received of the final response: its head, then the first body bytes."""
        return self._head

    def feed(self, data: bytes) -> bool:
        scanned = len(self._head)
        head = self._head + data if scanned else data
        while True:
            if not self.status:
                # Judge the status line as soon as it is complete, as Go does, so that a
                # non-HTTP peer that sends a line and waits fails at once rather than by timeout.
                line_end = head.find(b"\n", 0, MAX_HEADER_BYTES)
                if line_end < 0:
                    if not could_begin_status_line(head):
                        return self._malformed(head)
                    return self._keep_or_fail(head)
                line = head[:line_end]
                self.status = parse_status_line(line[:-1] if line.endswith(b"\r") else line)
                if not self.status:
                    return self._malformed(head[:line_end])
            end = head_end(head, max(scanned - 2, 0))
            if end < 0:
                return self._keep_or_fail(head)
            if self.status >= 200 or self.status == 101:
                self._head, self.end = head, end
                return True
            self._interim += 1  # an interim response (100 Continue, 103 Early Hints): skip it
            head, scanned, self.status = head[end:], 0, 0
            if self._interim > MAX_INTERIM_RESPONSES:
                return self._fail(f"more than {MAX_INTERIM_RESPONSES} interim 1xx responses")
            if not head:
                self._head = head
                return False

    def _malformed(self, line: bytes) -> bool:
        text = line[:80].rstrip(b"\r").decode("ascii", "backslashreplace")
        return self._fail(f"malformed status line {text!r}")

    def _keep_or_fail(self, head: bytes) -> bool:
        """Keep an incomplete header block, or fail if it can no longer end within the cap."""
        if len(head) >= MAX_HEADER_BYTES:
            return self._fail(f"response header block exceeds {MAX_HEADER_BYTES} bytes")
        self._head = head
        return False

    def _fail(self, message: str) -> bool:
        self.error = ResponseError(FailureReason.PROTOCOL_ERROR, message)
        return True


def invalid_request(target: Target, *, with_path: bool = True) -> str | None:
    """Why `target` cannot be put in a request line and Host header unaltered, or None;
    `with_path=False` for a check that sends no request (TCP), where only the address counts."""
    path = target.health_check_path
    if with_path and not (
        path.startswith("/") and path.isascii() and path.isprintable() and " " not in path
    ):
        return (
            f"invalid request: health check path {path!r} must start with '/'"
            " and be printable ASCII without spaces"
        )
    host = target.ip
    if not (host and host.isascii() and host.isprintable() and " " not in host):
        return f"invalid request: host {host!r} must be a printable ASCII name or address"
    port = target.port
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return f"invalid request: port {port!r} must be a number from 1 to 65535"
    return None


def request_tail(version: str) -> str:
    """What follows the Host header's value in every plain request."""
    return (
        f"\r\nUser-Agent: healthcheck-exporter/{version}"
        "\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )


def plain_request(target: Target, tail: str) -> bytes:
    """The request sent to a valid `target` without options: `GET path` with its Host."""
    request = f"GET {target.health_check_path} HTTP/1.1\r\nHost: {target.address}"
    return (request + tail).encode("ascii")


def _is_token(text: str) -> bool:
    return (
        bool(text)
        and text.isascii()
        and text.isprintable()
        and not any(c in text for c in ' :"(),/;<=>?@[\\]{}')
    )


def _is_field_value(text: str) -> bool:
    return "\r" not in text and "\n" not in text and "\0" not in text


def build_request(target: Target, options: CheckOptions, version: str) -> bytes:
    """The request for a valid `target` with options: its method, Host, extra headers (which
    replace the default User-Agent and Accept of the same name) and body with Content-Length.
    Keep-alive stays off whatever the headers say. Raises InvalidRequest for a method, Host or
    header that could split the request (the option parsers refuse these already)."""
    host = options.host if options.host is not None else target.address
    fields = {
        "host": ("Host", host),
        "user-agent": ("User-Agent", f"healthcheck-exporter/{version}"),
    }
    fields["accept"] = ("Accept", "*/*")
    for name, value in options.headers:
        if not _is_token(name) or not _is_field_value(value):
            raise InvalidRequest(f"invalid request: header {name!r} could split the request")
        if name.lower() not in ("connection", "content-length", "transfer-encoding"):
            fields[name.lower()] = (name, value)
    if not _is_token(options.method):
        raise InvalidRequest(f"invalid request: method {options.method!r} is not an HTTP token")
    if not (host and _is_field_value(host) and host.isprintable()):
        raise InvalidRequest(f"invalid request: host {host!r} could split the request")
    body = b"" if options.body is None else options.body.encode()
    if options.body is not None:
        fields["content-length"] = ("Content-Length", str(len(body)))
    fields["connection"] = ("Connection", "close")
    lines = [f"{options.method} {target.health_check_path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.values()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_expected(status: int, expected: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= status <= high for low, high in expected)


def status_error(status: int, expected: tuple[tuple[int, int], ...]) -> str:
    """The seed's wording, naming the expected codes when they are not the default."""
    if expected == DEFAULT_EXPECT_STATUS:
        return f"unhealthy status code: {status}"
    spec = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in expected)
    return f"unhealthy status code: {status} (expected {spec})"


@functools.lru_cache(maxsize=1024)
def body_pattern(expression: str) -> re.Pattern[str]:
    """`expect_body` compiled once (the option parsers have checked it compiles)."""
    return re.compile(expression)


MAX_BODY_BYTES = 16 * 1024
"""Most response body bytes read (after de-chunking) to match `expect_body` against."""

_MAX_CHUNK_LINE = 1024  # a chunk-size line longer than this is not HTTP


def _framing(head: bytes) -> tuple[bool, int]:
    """(chunked, Content-Length or -1) from a response head's header fields."""
    chunked, length = False, -1
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == b"transfer-encoding":
            chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    return chunked, -1 if chunked else length


class ResponseBody:
    """Reads the start of a response body, de-chunked, up to `MAX_BODY_BYTES` (no I/O).

    `feed` (and `close`, at the end of the connection) return True once the body is complete,
    `MAX_BODY_BYTES` of it are read, or `error` is set; `text` is what was read.
    """

    __slots__ = ("_buffer", "_chunk_left", "_chunked", "_left", "_parts", "_size", "error")

    def __init__(self, head: ResponseHead, method: str) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._buffer = b""  # chunked framing not parsed yet
        self._chunk_left = 0  # bytes of the current chunk's data not read yet (-1: its CRLF)
        self.error: ResponseError | None = None
        if method == "HEAD" or head.status in (204, 304):
            self._chunked, self._left = False, 0
        else:
            self._chunked, self._left = _framing(head.data[: head.end])

    @property
    def text(self) -> str:
        return b"".join(self._parts)[:MAX_BODY_BYTES].decode("utf-8", "replace")

    def feed(self, data: bytes) -> bool:
        if self._chunked:
            return self._feed_chunked(data)
        if self._left >= 0:
            data = data[: self._left]
            self._left -= len(data)
        return self._take(data) or self._left == 0

    def close(self) -> bool:
        """The connection ended: complete when the body runs to the end of the connection."""
        if self._chunked or self._left > 0:
            self.error = ResponseError(
                FailureReason.CONNECTION_RESET,
                "connection closed before the response body was complete",
            )
        return True

    def _take(self, data: bytes) -> bool:
        if data:
            self._parts.append(data)
            self._size += len(data)
        return self._size >= MAX_BODY_BYTES

    def _feed_chunked(self, data: bytes) -> bool:
        buffer = self._buffer + data
        while buffer:
            if self._chunk_left > 0:
                piece, buffer = buffer[: self._chunk_left], buffer[self._chunk_left :]
                self._chunk_left -= len(piece)
                if self._take(piece):
                    return True
                if self._chunk_left == 0:
                    self._chunk_left = -1
                continue
            line_end = buffer.find(b"\n", 0, _MAX_CHUNK_LINE)
            if line_end < 0:
                if len(buffer) >= _MAX_CHUNK_LINE:
                    return self._malformed()
                break
            line, buffer = buffer[:line_end].strip(), buffer[line_end + 1 :]
            if self._chunk_left < 0:  # the line end after a chunk's data
                if line:
                    return self._malformed()
                self._chunk_left = 0
                continue
            size = line.split(b";", 1)[0].strip()
            if not size or size.strip(b"0123456789abcdefABCDEF"):
                return self._malformed()
            self._chunk_left = int(size, 16)
            if self._chunk_left == 0:  # the last chunk: the trailer fields are not needed
                return True
        self._buffer = buffer
        return False

    def _malformed(self) -> bool:
        self.error = ResponseError(FailureReason.PROTOCOL_ERROR, "malformed chunked body")
        return True
