"""HTTP/1.1 as the checks speak it: the request they send and the response head they read.

Pure logic without I/O, driven by `exporter.checks.engine`. Follows Go's `net/http` client where
the seed relied on it (see `HTTPChecker` for where it differs).
"""

from __future__ import annotations

from exporter.model import FailureReason, Target

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


def invalid_request(target: Target) -> str | None:
    """Why `target` cannot be put in a request line and Host header unaltered, or None."""
    path = target.health_check_path
    if not (path.startswith("/") and path.isascii() and path.isprintable() and " " not in path):
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
