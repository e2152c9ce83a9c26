"""Offering a saved TLS session to a new connection without Python 3.11's copy of it.

`SSLObject.session = s` (and `wrap_bio(session=s)`) does not hand `s` to OpenSSL: CPython 3.11
and 3.12 first copy it through i2d/d2i (a workaround for an OpenSSL 1.1.0 bug), which decodes the
peer's certificate again and costs ~0.1 ms with OpenSSL 3.0, a quarter of a resumed HTTPS check.
OpenSSL itself lets one session be set on any number of connections (`SSL_set_session` takes a
reference), so this calls it directly, through the `_ssl` module's own OpenSSL.

That needs the C pointers inside `_ssl` objects, which no API exposes: they are read at the
offsets CPython 3.11 and 3.12 put them at, and only after OpenSSL itself has confirmed them on
this very connection (the connection's context is the context's, the session's time and lifetime
are the ones Python reports). Anywhere else, or if any of that disagrees, the public setter is
used, copy and all; `offer` behaves the same either way.
"""

from __future__ import annotations

import ctypes
import ssl
import sys

_SSL_SENT_SHUTDOWN = 1  # OpenSSL's SSL_SENT_SHUTDOWN

_POINTER_AT = 2 * ctypes.sizeof(ctypes.c_void_p)  # after the object header (refcount, type)
_SSL_AT = _POINTER_AT + ctypes.sizeof(ctypes.c_void_p)  # _SSLSocket: header, Socket, then ssl


class _OpenSSL:
    """The few OpenSSL calls needed, resolved in the library `_ssl` is linked against."""

    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        pointer, c_long = ctypes.c_void_p, ctypes.c_long
        self.set_session = lib.SSL_set_session
        self.set_session.argtypes, self.set_session.restype = [pointer, pointer], ctypes.c_int
        self.get0_session = lib.SSL_get_session  # borrowed, despite the name
        self.get0_session.argtypes, self.get0_session.restype = [pointer], pointer
        self.ssl_ctx = lib.SSL_get_SSL_CTX
        self.ssl_ctx.argtypes, self.ssl_ctx.restype = [pointer], pointer
        self.session_time = lib.SSL_SESSION_get_time
        self.session_time.argtypes, self.session_time.restype = [pointer], c_long
        self.session_timeout = lib.SSL_SESSION_get_timeout
        self.session_timeout.argtypes, self.session_timeout.restype = [pointer], c_long
        self.set_shutdown = lib.SSL_set_shutdown
        self.set_shutdown.argtypes, self.set_shutdown.restype = [pointer, ctypes.c_int], None


def _pointer_in(obj: object, offset: int) -> int | None:
    return ctypes.c_void_p.from_address(id(obj) + offset).value


class _Offerer:
    """`offer` and `ended` by OpenSSL's own calls where the pointers have proven right, by
    Python's public setter (and nothing) otherwise."""

    def __init__(self) -> None:
        self._openssl: _OpenSSL | None = None
        # Whether the pointers read from connections and from sessions are right: None until
        # the first of each is confirmed by OpenSSL.
        self._connections_ok: bool | None = None
        self._sessions_ok: bool | None = None
        if sys.implementation.name != "cpython" or sys.version_info[:2] not in {(3, 11), (3, 12)}:
            self._connections_ok = self._sessions_ok = False

    def _library(self) -> _OpenSSL | None:
        if self._openssl is None:
            try:
                self._openssl = _OpenSSL()
            except (OSError, AttributeError):  # no such library or symbol
                self._connections_ok = self._sessions_ok = False
        return self._openssl

    def _connection(self, tls: ssl.SSLObject) -> int | None:
        """The `SSL *` of `tls`, or None where it cannot be had safely."""
        if self._connections_ok is False:
            return None
        sslobj = tls._sslobj  # type: ignore[attr-defined]
        if self._connections_ok is None:
            openssl = self._library()
            if openssl is None or type(sslobj).__name__ != "_SSLSocket":
                self._connections_ok = False
                return None
            connection = _pointer_in(sslobj, _SSL_AT)
            context = _pointer_in(tls.context, _POINTER_AT)
            self._connections_ok = bool(connection and openssl.ssl_ctx(connection) == context)
            return connection if self._connections_ok else None
        return _pointer_in(sslobj, _SSL_AT)

    def _session(self, session: ssl.SSLSession) -> int | None:
        """The `SSL_SESSION *` of `session`, or None where it cannot be had safely."""
        if self._sessions_ok is False:
            return None
        pointer = _pointer_in(session, _POINTER_AT)
        if self._sessions_ok is None:
            openssl = self._library()
            if openssl is None or type(session).__name__ != "SSLSession" or not pointer:
                self._sessions_ok = False
                return None
            seen = (openssl.session_time(pointer), openssl.session_timeout(pointer))
            self._sessions_ok = seen == (session.time, session.timeout)
            return pointer if self._sessions_ok else None
        return pointer

    def offer(self, tls: ssl.SSLObject, session: ssl.SSLSession) -> None:
        """Offer `session` to the unstarted `tls`. The session must come from a connection of
        the same context: the direct path does not check that (Python's setter does)."""
        connection = self._connection(tls)
        pointer = None if connection is None else self._session(session)
        if connection and pointer:
            openssl = self._openssl
            assert openssl is not None
            if openssl.set_session(connection, pointer) == 1:
                if openssl.get0_session(connection) == pointer:
                    return
                self._sessions_ok = False  # not what was set: never again
        tls.session = session

    def ended(self, tls: ssl.SSLObject) -> None:
        """`tls` is done with, after a complete handshake: see `ended` below."""
        connection = self._connection(tls)
        if connection and self._openssl is not None:
            self._openssl.set_shutdown(connection, _SSL_SENT_SHUTDOWN)

    def direct(self) -> bool:
        return bool(self._connections_ok and self._sessions_ok)


_OFFERER = _Offerer()


def offer(tls: ssl.SSLObject, session: ssl.SSLSession) -> None:
    """Offer `session` to `tls` before its handshake, as `tls.session = session` does, without
    copying it where that is possible (see the module's docstring)."""
    _OFFERER.offer(tls, session)


def direct() -> bool:
    """Whether sessions are offered without a copy (for tests and benchmarks)."""
    return _OFFERER.direct()


def ended(tls: ssl.SSLObject) -> None:
    """Say that `tls`, whose handshake completed, ended well, though no close_notify was sent.

    OpenSSL marks the session of a connection freed without one as not resumable (it could have
    been cut off by an attacker); Python's copy on `offer` drops that mark, the direct path does
    not. A check closes its connection once the response is read, as HTTP/1.1 allows.
    """
    _OFFERER.ended(tls)
