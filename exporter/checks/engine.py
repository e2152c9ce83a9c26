"""Active HTTP health checks: one GET per check, judged on the status line (seed: `checker.go`).

The seed uses Go's `http.Client` with keep-alives off and redirects not followed. This port speaks
just enough HTTP/1.1 itself to reach thousands of checks per second on one core: each check is a
non-blocking socket driven by event-loop callbacks (no task, no transport, no timeout context), that
sends one request, reads up to the end of the response's header block and closes the connection
without reading the body, as Go does when it closes an unread body.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

from exporter import __version__
from exporter.checks.http import (
    MAX_HEADER_BYTES,
    InvalidRequest,
    ResponseBody,
    ResponseError,
    ResponseHead,
    body_pattern,
    build_request,
    invalid_request,
    plain_request,
    request_tail,
    status_error,
    status_expected,
)
from exporter.checks.resolver import RESOLVER
from exporter.model import (
    DEFAULT_CHECK_OPTIONS,
    FailureReason,
    Result,
    RetryConfig,
    Target,
    default_retry_config,
)

DEFAULT_MAX_CONCURRENT = 10
"""`check_all`'s limit when given one <= 0 (the seed's fallback)."""

_ERRNO_REASONS = {
    errno.ECONNREFUSED: FailureReason.CONNECTION_REFUSED,
    errno.ECONNRESET: FailureReason.CONNECTION_RESET,
    errno.EPIPE: FailureReason.CONNECTION_RESET,
    errno.ECONNABORTED: FailureReason.CONNECTION_RESET,
    errno.ENETUNREACH: FailureReason.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: FailureReason.NETWORK_UNREACHABLE,
    errno.EADDRNOTAVAIL: FailureReason.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: FailureReason.TIMEOUT,
}
# The exporter's own shortages (descriptors, buffers, memory): they say nothing of the target.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_CONNECTING = (0, errno.EINPROGRESS)  # connect_ex's answers that mean "go on"
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE as an error, never a signal

IDLE_GRACE = 1.0
"""Seconds without a check after which a checker lets go of its epoll instance."""

OnResult = Callable[[Result], object]


def _literal_family(host: str) -> int:
    """AF_INET or AF_INET6 when `host` is an IP address connect() takes as is, else 0 (a name,
    or an IPv6 address with a zone, which getaddrinfo must translate)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return 0


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _WatchRefused(OSError):
    """The OS would not watch one more socket (epoll's ENOSPC: fs.epoll.max_user_watches)."""


def describe_failure(exc: Exception, target: Target, timeout: float) -> tuple[FailureReason, str]:
    """The reason and the human message (prefixed as in the seed) for a failed request."""
    if isinstance(exc, ResponseError):
        return exc.reason, f"request failed: {exc}"
    if isinstance(exc, InvalidRequest):  # no request was made: no "request failed" prefix
        return FailureReason.OTHER, str(exc)
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        return FailureReason.TIMEOUT, f"request failed: timed out after {timeout:g}s"
    if isinstance(exc, socket.gaierror):
        return FailureReason.DNS, f"request failed: cannot resolve {target.ip!r}: {exc.strerror}"
    if isinstance(exc, UnicodeError):  # a name that IDNA cannot encode, e.g. with an empty label
        return FailureReason.DNS, f"request failed: cannot resolve {target.ip!r}: invalid name"
    if isinstance(exc, OSError):
        code = exc.errno
        if code in _LOCAL_ERRNOS or isinstance(exc, _WatchRefused):
            why = os.strerror(code or errno.ENOSPC).lower()
            if isinstance(exc, _WatchRefused):
                why += " (epoll watches: fs.epoll.max_user_watches)"
            return FailureReason.LOCAL_RESOURCES, f"the exporter itself ran out of resources: {why}"
        if code in _ERRNO_REASONS:  # a fixed wording, whoever raised it
            return _ERRNO_REASONS[code], f"request failed: {os.strerror(code).lower()}"
        return FailureReason.OTHER, f"request failed: {exc}"
    return FailureReason.OTHER, f"request failed: {type(exc).__name__}: {exc}"


class _Reactor:
    """Watches the sockets and deadlines of one checker's checks on one event loop.

    This base class has the loop watch each socket itself (`add_reader`/`add_writer`); it serves
    where `select.epoll` does not exist. Checks with the checker's timeout expire in start order:
    one deque and one timer serve them all, instead of a timer per check. Targets with a timeout
    of their own get one more deque per distinct timeout (each in start order again), under the
    same timer, so that they cost the common case nothing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._active = 0  # checks started and not ended
        self._deadlines: deque[tuple[float, Probe]] = deque()
        self._others: dict[float, deque[tuple[float, Probe]]] = {}  # timeout -> its deadlines
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # the deadline the timer was armed for

    # -- the checks in flight ------------------------------------------------------------------

    def started(self, probe: Probe, deadline: float) -> None:
        """`probe` began; it times out at `deadline`, a `time.perf_counter()` value. Raises
        OSError, having counted nothing, when the reactor cannot wake (no fd left)."""
        if self._active == 0:
            self._awake()
        self._active += 1
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].finished:  # keep only from the oldest one running
            deadlines.popleft()
        deadlines.append((deadline, probe))
        if self._timer is None:
            self._arm(deadlines[0][0])
        elif deadline < self._timer_at:  # armed for a longer timeout of a target's own
            self._rearm()

    def started_with_timeout(self, probe: Probe, deadline: float, timeout: float) -> None:
        """`started` for a check whose timeout is not the checker's."""
        if self._active == 0:
            self._awake()
        self._active += 1
        deadlines = self._others.get(timeout)
        if deadlines is None:
            deadlines = self._others[timeout] = deque()
        while deadlines and deadlines[0][1].finished:
            deadlines.popleft()
        deadlines.append((deadline, probe))
        if self._timer is None or deadline < self._timer_at:
            self._rearm()

    def _arm(self, deadline: float) -> None:
        # Deadlines are kept on the precise clock: uvloop's loop.time() counts whole
        # milliseconds from the start of the loop's iteration, so a check could end early. A
        # timer that fires a little early is armed again, for at least a millisecond.
        delay = max(deadline - time.perf_counter(), 0.001)
        self._timer = self.loop.call_later(delay, self._expire)
        self._timer_at = deadline

    def _rearm(self) -> None:
        """Arm the timer for the earliest deadline of every deque, if it is not already."""
        heads = [deadlines[0][0] for deadlines in self._others.values() if deadlines]
        if self._deadlines:
            heads.append(self._deadlines[0][0])
        earliest = min(heads, default=math.inf)
        if self._timer is not None and self._timer_at <= earliest:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if earliest < math.inf:
            self._arm(earliest)

    def ended(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._deadlines.clear()
            self._others.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._idle()

    def _expire(self) -> None:
        self._timer = None
        now, deadlines = time.perf_counter(), self._deadlines
        while deadlines and (deadlines[0][1].finished or deadlines[0][0] <= now):
            _, probe = deadlines.popleft()
            if not probe.finished:
                probe.time_out()  # may start other checks, which append to the deque
        if self._others:
            self._expire_others(now)
        elif deadlines and self._timer is None:
            self._arm(deadlines[0][0])

    def _expire_others(self, now: float) -> None:
        for timeout, deadlines in list(self._others.items()):
            while deadlines and (deadlines[0][1].finished or deadlines[0][0] <= now):
                _, probe = deadlines.popleft()
                if not probe.finished:
                    probe.time_out()
            if not deadlines and self._others.get(timeout) is deadlines:
                del self._others[timeout]
        self._rearm()

    # -- the sockets ---------------------------------------------------------------------------

    def watch(self, fd: int, probe: Probe, reading: bool) -> None:
        """Call `probe.ready()` when `fd` is readable (`reading`) or writable."""
        if reading:
            self.loop.add_reader(fd, probe.ready)
        else:
            self.loop.add_writer(fd, probe.ready)

    def rewatch(self, fd: int, probe: Probe, reading: bool) -> None:
        self.forget(fd, not reading)
        self.watch(fd, probe, reading)

    def forget(self, fd: int, reading: bool) -> None:
        """Stop watching `fd`, which the caller closes next."""
        if reading:
            self.loop.remove_reader(fd)
        else:
            self.loop.remove_writer(fd)

    def _awake(self) -> None:
        """The first check in flight: be ready to watch sockets."""

    def _idle(self) -> None:
        """No check in flight any more."""


class _EpollReactor(_Reactor):
    """Registers every socket in one private epoll instance, which the loop watches as one fd.

    Registering costs one `epoll_ctl`, and closing the socket unregisters it at no cost; uvloop's
    `add_reader` and `remove_reader` cost six `epoll_ctl` and an `ioctl` per socket, which made
    them a third of a check's CPU. Events are level-triggered, and a spurious one is harmless: a
    probe only ever tries a non-blocking send or recv. The epoll instance is closed after
    `IDLE_GRACE` seconds without a check, so that an idle checker holds no file descriptor.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._epoll: select.epoll | None = None
        self._probes: dict[int, Probe] = {}
        self._sleeper: asyncio.TimerHandle | None = None

    def watch(self, fd: int, probe: Probe, reading: bool) -> None:
        assert self._epoll is not None
        self._epoll.register(fd, select.EPOLLIN if reading else select.EPOLLOUT)
        self._probes[fd] = probe

    def rewatch(self, fd: int, probe: Probe, reading: bool) -> None:
        assert self._epoll is not None
        self._epoll.modify(fd, select.EPOLLIN if reading else select.EPOLLOUT)

    def forget(self, fd: int, reading: bool) -> None:
        # No EPOLL_CTL_DEL: the close that follows removes the socket from the epoll set.
        self._probes.pop(fd, None)

    def _dispatch(self) -> None:
        if self._epoll is None:
            return
        probes = self._probes
        for fd, _ in self._epoll.poll(0):
            probe = probes.get(fd)
            if probe is not None:
                probe.ready()

    def _awake(self) -> None:
        if self._epoll is None:
            epoll = select.epoll()
            try:
                self.loop.add_reader(epoll.fileno(), self._dispatch)
            except BaseException:
                epoll.close()
                raise
            self._epoll = epoll

    def _idle(self) -> None:
        if self._sleeper is None and self._epoll is not None:
            self._sleeper = self.loop.call_later(IDLE_GRACE, self._sleep_if_idle)

    def _sleep_if_idle(self) -> None:
        self._sleeper = None
        if self._active == 0 and self._epoll is not None:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


REACTOR: type[_Reactor] = _EpollReactor if hasattr(select, "epoll") else _Reactor
"""How checks watch their sockets: a private epoll instance where the OS has one."""


class Probe:
    """One check in flight: a non-blocking socket driven by event-loop callbacks.

    Made by `HTTPChecker.start`. It calls `on_done` exactly once with the `Result`, unless
    `cancel()` comes first; never from within `start` itself (a result known at once, such as a
    refused connection on loopback, is delivered by `call_soon`), so callers may start the next
    check from `on_done` without recursing.
    """

    __slots__ = (
        "_addresses",
        "_checker",
        "_connected",
        "_delivery",
        "_failure",
        "_fd",
        "_first_failure",
        "_head",
        "_on_done",
        "_pending",
        "_reactor",
        "_resolver",
        "_sock",
        "_started",
        "_starting",
        "_target",
        "_watching",
        "finished",
    )

    def __init__(
        self,
        checker: HTTPChecker,
        reactor: _Reactor,
        target: Target,
        on_done: OnResult,
        timeout: float | None = None,
    ) -> None:
        """`timeout`: the target's own, when it is not the checker's."""
        self._checker = checker
        self._reactor = reactor
        self._target = target
        self._on_done = on_done
        self._started = time.perf_counter()
        self._head = ResponseHead()
        self._pending = b""  # request bytes not sent yet
        self._sock: socket.SocketType | None = None
        self._fd = -1
        self._watching: bool | None = None  # True: for reading, False: for writing
        self._connected = False  # a first byte of the request went out
        self._addresses: list[tuple[int, tuple[object, ...]]] = []  # resolved, not tried yet
        self._first_failure: Exception | None = None
        self._failure: Exception | None = None
        # The name's look-up, then the timer of an address attempt that leaves others to try.
        self._resolver: asyncio.Task[None] | asyncio.TimerHandle | None = None
        self._delivery: asyncio.Handle | None = None
        self._starting = True
        self.finished = False
        try:
            if timeout is None:
                reactor.started(self, self._started + checker.timeout)
            else:
                reactor.started_with_timeout(self, self._started + timeout, timeout)
        except OSError as exc:  # no file descriptor left for the reactor's epoll instance
            self.finished = True
            self._failure = exc
            self._deliver(self._result())
            return
        self._begin()

    def cancel(self) -> None:
        """Stop at once and close the connection; `on_done` is never called after this."""
        if self._delivery is not None:
            self._delivery.cancel()
        if not self.finished:
            self._end()

    def ready(self) -> None:
        """The reactor saw the socket become readable or writable (or fail)."""
        if self._watching:
            self._receive()
        elif self._watching is not None:
            self._send()

    def time_out(self) -> None:
        self._fail(TimeoutError())

    # -- connecting ----------------------------------------------------------------------------

    def _begin(self) -> None:
        target = self._target
        try:
            self._pending = self._request()
        except InvalidRequest as exc:
            self._fail(exc)
        else:
            port = int(target.port)
            family = _literal_family(target.ip)
            if family:
                self._connect(family, (target.ip, port))
            else:
                self._resolver = self._reactor.loop.create_task(self._resolve(target.ip, port))
        self._starting = False

    def _request(self) -> bytes:
        """The request to send; raises InvalidRequest, before connecting, for a target that
        cannot be put in a request unaltered."""
        target = self._target
        invalid = invalid_request(target)
        if invalid is not None:
            raise InvalidRequest(invalid)
        return plain_request(target, self._checker._request_tail)

    async def _resolve(self, host: str, port: int) -> None:
        """Resolve a name afresh for each check, as Go's dialer does, then try its addresses.
        The look-up shares no thread pool with other names (see `exporter.checks.resolver`)."""
        try:
            addresses = await RESOLVER.resolve(host, port)
        except Exception as exc:  # gaierror, or UnicodeError for a name IDNA cannot encode
            self._resolver = None
            self._fail(exc)
            return
        self._resolver = None
        self._addresses = addresses
        self._connect_next()

    def _connect_next(self) -> None:
        if not self._addresses:  # all failed: report the first failure, as Go does
            self._fail(self._first_failure or os_error(errno.EHOSTUNREACH))
            return
        family, address = self._addresses.pop(0)
        if self._addresses:
            # Other addresses remain: this one gets its share of the time left, so that a black
            # hole first in line (a dead IPv6 route, say) leaves time for the next address.
            remaining = self._deadline() - time.perf_counter()
            share = max(remaining / (len(self._addresses) + 1), 0.001)
            self._resolver = self._reactor.loop.call_later(share, self._attempt_expired)
        self._connect(family, address)

    def _attempt_expired(self) -> None:
        self._resolver = None
        if not self._connected and not self.finished:
            self._connect_failed(TimeoutError())

    def _deadline(self) -> float:
        """When the check times out, on the `time.perf_counter()` clock."""
        return self._started + self._checker.timeout

    def _connect(self, family: int, address: tuple[object, ...]) -> None:
        try:
            # The C socket type: socket.socket's Python layer (makefile accounting) only costs.
            sock = socket.SocketType(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self._fail(exc)  # out of file descriptors: no other address would do better
            return
        self._sock, self._fd = sock, sock.fileno()
        try:
            code = sock.connect_ex(address)
        except OSError as exc:
            code = exc.errno or errno.EINVAL
        if code in _CONNECTING:
            self._send()  # on loopback the handshake is already over: no wait for writability
        else:
            self._connect_failed(os_error(code))

    def _connect_failed(self, exc: Exception) -> None:
        """This address failed before the request went out: try the name's next address."""
        if self._first_failure is None:
            self._first_failure = exc
        self._release()
        self._connect_next()

    # -- the exchange --------------------------------------------------------------------------

    def _send(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sent = sock.send(self._pending, _SEND_FLAGS)
        except BlockingIOError:  # still connecting, or the send buffer is full
            self._watch(reading=False)
            return
        except OSError as exc:
            if self._connected:
                self._fail(exc)
            else:  # the connection itself failed (refused, unreachable, reset in the handshake)
                self._connect_failed(exc)
            return
        self._connected = True
        self._pending = self._pending[sent:]
        self._watch(reading=not self._pending)

    def _receive(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(MAX_HEADER_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        if not data:
            message = "connection closed before the response headers were complete"
            self._fail(ResponseError(FailureReason.CONNECTION_RESET, message))
        elif self._head.feed(data):
            self._finish()

    def _watch(self, *, reading: bool) -> None:
        """Be called back when the socket is readable (the response) or writable (the request)."""
        if self._watching is reading:
            return
        try:
            if self._watching is None:
                self._reactor.watch(self._fd, self, reading)
            else:
                self._reactor.rewatch(self._fd, self, reading)
        except OSError as exc:  # e.g. ENOSPC: fs.epoll.max_user_watches reached
            self._fail(_WatchRefused(exc.errno, exc.strerror) if exc.errno == errno.ENOSPC else exc)
            return
        self._watching = reading

    # -- the end -------------------------------------------------------------------------------

    def _release(self) -> None:
        """Stop watching and close the socket (with unread data, the kernel resets it)."""
        if self._watching is not None:
            self._reactor.forget(self._fd, self._watching)
            self._watching = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._resolver is not None:
            self._resolver.cancel()
            self._resolver = None

    def _end(self) -> None:
        self.finished = True
        self._release()
        self._reactor.ended()

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self._end()
        self._deliver(self._result())

    def _result(self) -> Result:
        duration = time.perf_counter() - self._started
        target, status = self._target, self._head.status
        failure = self._failure or self._head.error
        if failure is not None:
            reason, error = describe_failure(failure, target, self._checker.timeout)
        elif 200 <= status < 400:
            reason, error = None, None
        else:
            reason, error = FailureReason.HTTP_STATUS, f"unhealthy status code: {status}"
        return Result(
            target=target,
            healthy=reason is None,
            status_code=status,
            error=error,
            duration=duration,
            reason=reason,
            checked_at=time.time(),
        )

    def _deliver(self, result: Result) -> None:
        if self._starting:  # never call back from within start()
            self._delivery = self._reactor.loop.call_soon(self._on_done, result)
        else:
            self._on_done(result)


class OptionsProbe(Probe):
    """A check of a target with options of its own (`target.options`): method, Host, headers,
    body, expected statuses, the body matched against `expect_body`, a timeout of its own.

    The plain `Probe` serves targets without options, so that they pay nothing for these.
    """

    # No __slots__: per-check fields start as these class-level defaults, with no __init__ of
    # its own (the plain Probe keeps its slots).
    _body: ResponseBody | None = None  # the body being read, when expect_body is set

    @property
    def _timeout(self) -> float:
        return self._target.options.timeout or self._checker.timeout

    def _deadline(self) -> float:
        return self._started + self._timeout

    def _request(self) -> bytes:
        target = self._target
        invalid = invalid_request(target)
        if invalid is not None:
            raise InvalidRequest(invalid)
        return build_request(target, target.options, __version__)

    def _receive(self) -> None:
        while (data := self._read()) is not None:
            self._take(data)
            if self.finished or not self._more_buffered():
                return

    def _take(self, data: bytes) -> None:
        """Feed what the peer sent (b"": its end) to the head, then to the body reader."""
        body = self._body
        if body is not None:
            if body.feed(data) if data else body.close():
                self._finish()
        elif not data:
            message = "connection closed before the response headers were complete"
            self._fail(ResponseError(FailureReason.CONNECTION_RESET, message))
        elif self._head.feed(data):
            body = self._body = self._body_reader()
            if body is None or body.feed(self._head.data[self._head.end :]):
                self._finish()

    def _more_buffered(self) -> bool:
        """Whether `_read` has more without the socket becoming readable again (a TLS layer
        that saw the peer's close_notify); a plain socket is simply watched again."""
        return False

    def _read(self) -> bytes | None:
        """What the peer sent next (b"" at its end), or None: nothing yet, or failed."""
        sock = self._sock
        assert sock is not None
        try:
            return sock.recv(MAX_HEADER_BYTES)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._read_failed(exc)
            return None

    def _read_failed(self, exc: OSError) -> None:
        self._fail(exc)

    def _body_reader(self) -> ResponseBody | None:
        """A reader for the body, when `expect_body` must be matched against it."""
        options = self._target.options
        head = self._head
        if options.expect_body is None or head.error is not None:
            return None
        if not status_expected(head.status, options.expect_status):
            return None
        return ResponseBody(head, options.method)

    def _result(self) -> Result:
        reason, error = self._verdict()
        return result_of(self, self._head.status, reason, error)

    def _verdict(self) -> tuple[FailureReason | None, str | None]:
        """Why the check failed and how to say it, or (None, None) when it passed."""
        options = self._target.options
        status = self._head.status
        failure = self._failure or self._head.error
        if failure is None and self._body is not None:
            failure = self._body.error
        if failure is not None:
            return describe_failure(failure, self._target, self._timeout)
        if not status_expected(status, options.expect_status):
            return FailureReason.HTTP_STATUS, status_error(status, options.expect_status)
        if self._body is not None and not self._body_matches(self._body):
            error = f"response body does not match expect_body {options.expect_body!r}"
            return FailureReason.BODY_MISMATCH, error
        return None, None

    def _body_matches(self, body: ResponseBody) -> bool:
        expression = self._target.options.expect_body
        return expression is not None and body_pattern(expression).search(body.text) is not None


def result_of(
    probe: OptionsProbe,
    status: int,
    reason: FailureReason | None,
    error: str | None,
    tls_not_after: float | None = None,
    tls_resumed: bool | None = None,
) -> Result:
    """The Result of a probe with options that ends now."""
    duration = time.perf_counter() - probe._started
    target = probe._target
    return Result(
        target,
        reason is None,
        status,
        error,
        duration,
        reason,
        time.time(),
        tls_not_after,
        tls_resumed,
    )


PROBE_KINDS: dict[str, type[OptionsProbe]] = {"http": OptionsProbe}
"""The probe for each scheme of a target with options (`tcp` and `https` add theirs)."""


def _settle(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


class HTTPChecker:
    """Checks targets with `GET http://{ip}:{port}{path}` (seed: `HTTPChecker`).

    Follows the seed: keep-alives off (`Connection: close`), redirects never followed, healthy
    iff the status is 2xx or 3xx, the timeout bounding the whole check (name resolution, connect,
    request and response headers), errors prefixed `request failed:` and `unhealthy status code:`.

    Like Go, it judges the status line as soon as it arrives and never reads the body. Differs
    from the seed: only an `HTTP/1.0` or `HTTP/1.1` status line with a code from 100 up is
    accepted, anything else being a protocol error; the header block is capped at
    `MAX_HEADER_BYTES` (Go: 10 MiB); interim 1xx responses are skipped as in Go, at most
    `MAX_INTERIM_RESPONSES` of them, and bare-LF line ends accepted as Go and curl do;
    cancellation raises `asyncio.CancelledError` instead of returning a result; every failure also
    carries a `FailureReason`; a path, host or port that cannot be sent unaltered is refused
    without connecting (Go would percent-encode some of these).

    A checker keeps the sockets of its checks in flight in one epoll instance for the event loop
    it runs on: use it from one loop at a time (one after another is fine).
    """

    __slots__ = ("_reactor", "_request_tail", "_timeout", "tls_handshakes")

    def __init__(self, timeout: float) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"HTTPChecker timeout must be finite seconds > 0, got {timeout!r}")
        self._timeout = float(timeout)
        self._request_tail = request_tail(__version__)
        self._reactor: _Reactor | None = None  # for the loop it last ran on
        # Completed TLS handshakes by whether they resumed a session (HTTPS checks count them).
        self.tls_handshakes = {False: 0, True: 0}

    @property
    def timeout(self) -> float:
        """Seconds one check may take in all."""
        return self._timeout

    def request_for(self, target: Target) -> bytes:
        """The request sent to a valid `target` (nothing for a TCP check)."""
        options = target.options
        if options is DEFAULT_CHECK_OPTIONS:
            return plain_request(target, self._request_tail)
        if options.scheme == "tcp":
            return b""
        return build_request(target, options, __version__)

    def start(
        self, target: Target, on_done: OnResult, loop: asyncio.AbstractEventLoop | None = None
    ) -> Probe:
        """Begin checking `target` on `loop` (the running one by default) and return at once.

        `on_done(result)` is called from the loop when the check ends, as `check` would return
        it. This is the engine under `check`, for callers that run thousands of checks a second
        and would rather not pay for a task each; `Probe.cancel()` abandons the check.
        """
        loop = loop or asyncio.get_running_loop()
        reactor = self._reactor
        if reactor is None or reactor.loop is not loop:
            reactor = self._reactor = REACTOR(loop)
        if target.options is DEFAULT_CHECK_OPTIONS:
            return Probe(self, reactor, target, on_done)
        return self._start_with_options(target, reactor, on_done)

    def _start_with_options(self, target: Target, reactor: _Reactor, on_done: OnResult) -> Probe:
        options = target.options
        timeout = options.timeout
        if timeout == self._timeout:
            timeout = None  # the checker's own: the common deadline queue serves
        return PROBE_KINDS[options.scheme](self, reactor, target, on_done, timeout)

    async def check(self, target: Target) -> Result:
        """Check `target` once. Never raises, except `asyncio.CancelledError` when cancelled.

        The hostname in `target.ip`, if any, is resolved afresh for each check. The connection is
        closed before this returns or raises, whatever happened.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Result] = loop.create_future()
        probe = self.start(target, lambda result: _settle(done, result), loop)
        try:
            return await done
        finally:
            probe.cancel()  # a no-op once finished; closes the connection when cancelled

    async def check_all(self, targets: Sequence[Target], max_concurrent: int = 10) -> list[Result]:
        """Check every target, at most `max_concurrent` at once; results in input order.

        Follows the seed's `CheckAll`, including the fallback to 10 for `max_concurrent <= 0`,
        except that an empty input gives `[]` and cancellation raises `asyncio.CancelledError`
        (after closing every connection) instead of filling the remaining results with errors.
        """
        limit = max_concurrent if max_concurrent > 0 else DEFAULT_MAX_CONCURRENT
        results: list[Result | None] = [None] * len(targets)
        indices = iter(range(len(targets)))  # shared by the workers: each index is taken once

        async def worker() -> None:
            for index in indices:
                results[index] = await self.check(targets[index])

        async with asyncio.TaskGroup() as workers:
            for _ in range(min(limit, len(targets))):
                workers.create_task(worker())
        return cast("list[Result]", results)

    async def check_with_retry(
        self,
        target: Target,
        retry_config: RetryConfig | None = None,
        on_retry: Callable[[int, float], None] | None = None,
    ) -> Result:
        """Check until healthy, retrying with exponential backoff (seed: `CheckWithRetry`).

        Attempt 0 runs at once; before each of up to `max_retries` retries, `on_retry(attempt,
        backoff)` is called and `backoff` seconds slept. The backoff starts at `initial_backoff`
        and doubles after each retry, capped at `max_backoff`. Returns the first healthy result,
        or else the last one with its error prefixed `health check failed after N attempts: `.
        `retry_config` defaults to `default_retry_config()`; a negative `max_retries` counts as 0.

        Differs from the seed: cancellation (the seed's cancelled context) raises
        `asyncio.CancelledError` instead of returning a result carrying the context's error.
        """
        config = default_retry_config() if retry_config is None else retry_config
        attempts = max(config.max_retries, 0) + 1
        backoff = config.initial_backoff
        for attempt in range(attempts):
            if attempt:
                if on_retry is not None:
                    on_retry(attempt, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, config.max_backoff)
            result = await self.check(target)
            if result.healthy:
                return result
        error = f"health check failed after {attempts} attempts: {result.error}"
        return replace(result, error=error)
