"""HTTPS checks (`scheme: https`): TLS in the same socket engine, with resumed sessions.

The TLS layer is an `ssl.SSLObject` over two memory BIOs, so the engine keeps its own non-blocking
socket and epoll registration and only pumps bytes. Facts this relies on (REFERENCE.md, "TLS
checks"): a context costs ~15 ms to build, so there is one per TLS profile; a session belongs to
its context, so sessions are kept per (context, SNI, address); a TLS 1.3 ticket arrives after the
handshake; OpenSSL resumes
TLS 1.3 with a fresh key exchange unless `SSL_OP_ALLOW_NO_DHE_KEX` is set (on both sides: an
OpenSSL 3.0 server still picks the exchange); a failed verification aborts the handshake before
the certificate can be read, so the leaf of an unverifiable server is read over a second,
unverified handshake (its expiry is what users want most then).

Python 3.11 copies a session both when it is read from a connection and when it is given to one
(an i2d/d2i round trip that decodes the peer's certificate again: ~0.1 ms each with OpenSSL 3.0,
two fifths of a resumed check's CPU). So a session the server resumed is kept and offered again
as it is, without reading the connection's: a TLS 1.2 session serves any number of connections,
and so does a TLS 1.3 ticket of most servers (OpenSSL's stateless tickets, HAProxy's). A server
that takes each ticket once (stateful TLS 1.3 tickets) refuses the second offer: that target then
gets a fresh ticket from every connection for `ONE_SHOT_SECONDS`. A kept session is replaced by
the connection's own once half its lifetime has passed.
"""

from __future__ import annotations

import calendar
import contextlib
import ssl
import time
from dataclasses import dataclass

from exporter import __version__
from exporter.checks.engine import PROBE_KINDS, OptionsProbe, result_of
from exporter.checks.http import InvalidRequest, ResponseError, build_request, invalid_request
from exporter.checks.session_offer import ended, offer
from exporter.model import CheckOptions, FailureReason, Result, Target

SSL_OP_ALLOW_NO_DHE_KEX = 0x400
"""OpenSSL's `SSL_OP_ALLOW_NO_DHE_KEX` (1 << 10 in OpenSSL 1.1.1 and 3.x; the `ssl` module of
Python 3.11 does not name it): lets a TLS 1.3 resumption skip the key exchange (psk_ke)."""

MAX_SESSIONS = 100_000
"""Sessions kept at most (one per target and address): the oldest go first."""

ONE_SHOT_SECONDS = 3600.0
"""How long a target whose server refused a ticket offered a second time gets a fresh ticket for
every check, before offering one ticket twice again."""

_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

_Profile = tuple[bool, str | None, str | None, str | None, str]
_contexts: dict[_Profile, ssl.SSLContext] = {}
_SessionKey = tuple[int, str | None, tuple[object, ...]]


@dataclass(slots=True)
class _Kept:
    """A session kept for the next checks of one target, and what it already told us."""

    session: ssl.SSLSession
    not_after: float | None  # the leaf's NotAfter: a resumed handshake shows the same leaf
    replace_at: float  # Unix time after which the next connection's own session replaces it
    one_shot_until: float = 0.0  # until then, a ticket serves one connection only (Unix time)
    offers: int = 0  # connections it was offered to

    def one_shot_at(self, now: float) -> bool:
        """Whether the ticket serves one connection only (its server takes each ticket once)."""
        return now < self.one_shot_until


_sessions: dict[_SessionKey, _Kept] = {}


def _profile(options: CheckOptions) -> _Profile:
    return (
        options.tls_insecure_skip_verify,
        options.tls_ca_file,
        options.tls_cert_file,
        options.tls_key_file,
        options.tls_min_version,
    )


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{key}: {path}: {(exc.strerror or str(exc)).lower()}") from None


def _build_context(options: CheckOptions) -> ssl.SSLContext:
    if options.tls_min_version not in _VERSIONS:
        raise ValueError(f"tls_min_version: {options.tls_min_version!r} is not TLS12 or TLS13")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[options.tls_min_version]
    context.options |= SSL_OP_ALLOW_NO_DHE_KEX | ssl.OP_IGNORE_UNEXPECTED_EOF
    if options.tls_insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif options.tls_ca_file is not None:
        _readable("tls_ca_file", options.tls_ca_file)
        try:
            context.load_verify_locations(cafile=options.tls_ca_file)
        except ssl.SSLError:
            raise ValueError(
                f"tls_ca_file: {options.tls_ca_file}: no PEM certificate in it"
            ) from None
    else:
        context.load_default_certs()
    cert, key = options.tls_cert_file, options.tls_key_file
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise ValueError(
            f"{missing}: needed with {'tls_cert_file' if key is None else 'tls_key_file'}"
        )
    if cert is not None and key is not None:
        _readable("tls_cert_file", cert)
        _readable("tls_key_file", key)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ValueError(
                f"tls_cert_file: {cert} with tls_key_file {key}: {exc.reason or exc}"
            ) from None
    return context


def tls_context_for(options: CheckOptions) -> ssl.SSLContext:
    """The shared context of `options`' TLS profile, built on first use.

    Raises ValueError naming the option at fault (`tls_ca_file: /x: no such file or directory`),
    so that configuration checks can fail early.
    """
    profile = _profile(options)
    context = _contexts.get(profile)
    if context is None:
        context = _contexts[profile] = _build_context(options)
    return context


def _insecure_twin(options: CheckOptions) -> ssl.SSLContext:
    """A context with `options`' client certificate and versions that verifies nothing: for
    reading the leaf certificate of a server that failed verification."""
    profile = (True, None, options.tls_cert_file, options.tls_key_file, options.tls_min_version)
    context = _contexts.get(profile)
    if context is None:
        twin = CheckOptions(
            tls_insecure_skip_verify=True,
            tls_cert_file=options.tls_cert_file,
            tls_key_file=options.tls_key_file,
            tls_min_version=options.tls_min_version,
        )
        context = _contexts[profile] = _build_context(twin)
    return context


def server_name(target: Target) -> str:
    """SNI and the name verified: `tls_server_name`, else the host part of `host`, else the
    target's address (an IP literal is verified as such, and no SNI is sent for it)."""
    options = target.options
    if options.tls_server_name is not None:
        return options.tls_server_name
    if options.host is not None:
        host = options.host
        if host.startswith("["):
            return host[1 : host.find("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return target.ip


# -- reading the leaf certificate's NotAfter (DER, without a certificate library) ---------------


def _der_element(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `at`."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, at, at + length


def not_after(der: bytes) -> float:
    """The NotAfter of a DER certificate, as Unix seconds. Raises ValueError if malformed."""
    try:
        _, cert, _ = _der_element(der, 0)  # Certificate
        _, tbs, _ = _der_element(der, cert)  # TBSCertificate
        at = tbs
        tag, _, end = _der_element(der, at)
        if tag == 0xA0:  # [0] version
            at = end
        for _ in range(3):  # serialNumber, signature, issuer
            at = _der_element(der, at)[2]
        _, validity, _ = _der_element(der, at)
        _, _, at = _der_element(der, validity)  # notBefore
        tag, start, end = _der_element(der, at)
        text = der[start:end].decode("ascii")
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError("malformed certificate") from exc
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 mean 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("malformed certificate validity")
    if len(text) != 15 or not text[:14].isdigit() or text[14] != "Z":
        raise ValueError("malformed certificate validity")
    year, month, day, hour, minute, second = (
        int(text[at : at + size]) for at, size in ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2))
    )
    # calendar.timegm, not strptime: this runs once per HTTPS check and strptime costs ~30 µs.
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


# -- why a handshake failed -----------------------------------------------------------------

_VERIFY_KINDS = {
    10: "certificate expired",
    9: "certificate not yet valid",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain (unknown CA)",
    20: "unknown CA",
    21: "unknown CA",
    2: "unknown CA",
    62: "name mismatch",
    64: "name mismatch",
}
_ALERT_KINDS = {
    "WRONG_VERSION_NUMBER": "not a TLS server (wrong version number)",
    "UNSUPPORTED_PROTOCOL": "protocol version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol version",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake failure",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "EXCESSIVE_MESSAGE_SIZE": "handshake message too large",
    "PACKET_LENGTH_TOO_LONG": "not a TLS server (record too long)",
    "RECORD_LAYER_FAILURE": "not a TLS server (record layer failure)",
}


# TLS 1.3 servers check a client certificate after the client's handshake is over: a refusal
# that arrives as a bare close or reset (no alert) is still a TLS failure, not the target's HTTP.
_CLOSED_AFTER_HANDSHAKE = ResponseError(
    FailureReason.TLS,
    "tls: connection closed after the handshake, before any response"
    " (a client certificate refused?)",
)


def tls_error(exc: ssl.SSLError) -> ResponseError:
    """A failed handshake as a `tls` failure whose message says why."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        kind = _VERIFY_KINDS.get(exc.verify_code, "certificate verify failed")
        return ResponseError(FailureReason.TLS, f"tls: {kind} ({exc.verify_message})")
    if isinstance(exc, ssl.SSLEOFError):
        return ResponseError(FailureReason.TLS, "tls: connection closed during the handshake")
    reason = exc.reason or ""
    kind = _ALERT_KINDS.get(reason, "handshake failure")
    detail = reason.lower().replace("_", " ") if reason else str(exc)
    return ResponseError(FailureReason.TLS, f"tls: {kind} ({detail})")


# -- which session to keep --------------------------------------------------------------------


def next_one_shot_until(
    offered: _Kept | None, resumed: bool, tls12: bool, now: float
) -> float | None:
    """After a check that offered `offered` (or nothing): None when the offered session stays
    kept, else the `one_shot_until` of the session the connection brought, which replaces it.

    A resumed session stays until half its lifetime has passed, unless its server takes each
    ticket once. A TLS 1.3 ticket refused on its second offer or later shows such a server
    (a refused first offer is an expired ticket or a restarted server).
    """
    if offered is None:
        return 0.0
    if resumed and not offered.one_shot_at(now) and now < offered.replace_at:
        return None
    if not resumed and not tls12 and offered.offers > 1:
        return now + ONE_SHOT_SECONDS
    return offered.one_shot_until


# -- the probe ------------------------------------------------------------------------------


class TlsProbe(OptionsProbe):
    """An HTTP check over TLS: handshake, request, response, all through one SSLObject.

    Keep-alive stays off: every check opens a new connection (resuming the TLS session where
    the server allows it), so that a check proves a new client can connect.
    """

    _tls: ssl.SSLObject | None = None
    _incoming: ssl.MemoryBIO
    _outgoing: ssl.MemoryBIO
    _plaintext = b""  # the HTTP request, sent once the handshake is over
    _handshaken = False
    _address: tuple[int, tuple[object, ...]] | None = None
    _session_key: _SessionKey | None = None
    _kept: _Kept | None = None  # the session this connection offered
    _verify_failure: ResponseError | None = None  # while reading an unverifiable leaf
    _not_after: float | None = None
    _resumed: bool | None = None
    _eof = False
    _answered = False  # some response bytes came through the TLS layer
    _eof_due = False  # the peer's close_notify came with the last data: its end is next

    def _request(self) -> bytes:
        target = self._target
        invalid = invalid_request(target)
        if invalid is not None:
            raise InvalidRequest(invalid)
        try:
            tls_context_for(target.options)
        except ValueError as exc:
            raise InvalidRequest(f"invalid request: {exc}") from None
        self._plaintext = build_request(target, target.options, __version__)
        return b""  # the ClientHello is made once the address is known

    def _connect(self, family: int, address: tuple[object, ...]) -> None:
        options = self._target.options
        if self._verify_failure is None:
            context = tls_context_for(options)
        else:
            context = _insecure_twin(options)
        name = server_name(self._target)
        key = (id(context), name, address)
        kept = self._kept = _sessions.get(key)
        if kept is not None:
            kept.offers += 1
            if kept.one_shot_at(time.time()):
                del _sessions[key]  # this server takes each ticket once
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=name)
        if kept is not None:
            offer(self._tls, kept.session)
        self._session_key, self._address = key, (family, address)
        self._handshaken = self._eof = False
        self._pending = b""
        if self._step_handshake():
            super()._connect(family, address)

    def _step_handshake(self) -> bool:
        """Advance the handshake; False when the probe has failed."""
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._pending += self._outgoing.read()
            return True
        except ssl.SSLError as exc:
            self._handshake_failed(exc)
            return False
        self._handshaken = True
        self._resumed = tls.session_reused
        self._checker.tls_handshakes[self._resumed] += 1
        if self._resumed and self._kept is not None and self._kept.not_after is not None:
            self._not_after = self._kept.not_after  # the same leaf: no need to parse it again
        elif (der := tls.getpeercert(binary_form=True)) is not None:
            # The check's outcome does not depend on reading the expiry.
            with contextlib.suppress(ValueError):
                self._not_after = not_after(der)
        if self._verify_failure is not None:  # the unverifiable leaf is read: done
            self._fail(self._verify_failure)
            return False
        tls.write(self._plaintext)
        self._pending += self._outgoing.read()
        return True

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        failure = tls_error(exc)
        if (
            isinstance(exc, ssl.SSLCertVerificationError)
            and self._verify_failure is None
            and self._address is not None
        ):
            # Read the leaf over an unverified handshake for its expiry, then fail as found.
            self._verify_failure = failure
            family, address = self._address
            self._release()
            self._connected = False
            self._connect(family, address)
            return
        self._fail(self._verify_failure or failure)

    def _connect_failed(self, exc: Exception) -> None:
        if self._verify_failure is not None:  # the second look at the leaf failed: never mind
            self._fail(self._verify_failure)
            return
        super()._connect_failed(exc)

    def _more_buffered(self) -> bool:
        return self._eof_due

    def _read(self) -> bytes | None:
        if self._eof_due:  # the end of the data, already seen by the TLS layer
            self._eof_due = False
            return b""
        raw = super()._read()
        if raw is None or self.finished:
            return None
        if raw:
            self._incoming.write(raw)
        elif not self._eof:
            self._eof = True
            self._incoming.write_eof()
        if not self._handshaken:
            if not self._step_handshake():
                return None
            if self._pending:
                self._send()
                if self.finished:
                    return None
            if not self._handshaken:
                return None
        return self._decrypted()

    def _decrypted(self) -> bytes | None:
        tls = self._tls
        assert tls is not None
        incoming = self._incoming
        chunks = []
        try:
            # Read while the TLS layer has something to work on: records not yet read, or bytes
            # it decrypted but did not return. Otherwise a read could only raise
            # SSLWantReadError (a few microseconds per check for nothing); the end of the
            # stream needs no read either: `_eof`, set when it came, ends the probe below.
            while incoming.pending or tls.pending():
                chunk = tls.read(65536)
                if not chunk:  # the peer's close_notify (a bare end raises SSLEOFError)
                    self._eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._eof = True
        except ssl.SSLError as exc:
            if not chunks and not isinstance(exc, ssl.SSLEOFError):
                self._fail(tls_error(exc))
                return None
            self._eof = True  # a close without close_notify ends the data, as for HTTP/1.0
        outgoing = self._outgoing.read()  # e.g. a key update; sent along
        if outgoing:
            self._pending += outgoing
            self._send()
        if chunks:
            self._answered = True
            # The peer may keep the connection open after its close_notify: nothing would wake
            # the probe again, so the end is delivered right after these bytes.
            self._eof_due = self._eof
            return b"".join(chunks)
        if self._eof and not self._answered:
            self._fail(_CLOSED_AFTER_HANDSHAKE)
            return None
        return b"" if self._eof else None

    def _read_failed(self, exc: OSError) -> None:
        closed_at_once = self._handshaken and not self._answered and not self._verify_failure
        self._fail(_CLOSED_AFTER_HANDSHAKE if closed_at_once else exc)

    def _finish(self) -> None:
        if self._tls is not None and self._handshaken:
            ended(self._tls)
        self._keep_session()
        super()._finish()

    def _keep_session(self) -> None:
        """Keep a session for the next check of this target: the one offered, if the server
        resumed it, else this connection's (a TLS 1.2 session, or a TLS 1.3 one that carries a
        ticket, which arrives after the handshake, so is read only now)."""
        tls, key, offered = self._tls, self._session_key, self._kept
        if tls is None or key is None or not self._handshaken or self._verify_failure:
            return
        now = time.time()
        tls12 = tls.version() == "TLSv1.2"
        one_shot_until = next_one_shot_until(offered, bool(self._resumed), tls12, now)
        if one_shot_until is None:
            return  # the offered session stays: reading this connection's would copy it
        session = tls.session
        if session is None or not (session.has_ticket or tls12):
            return
        if len(_sessions) >= MAX_SESSIONS and key not in _sessions:
            del _sessions[next(iter(_sessions))]
        replace_at = now + session.timeout / 2
        _sessions[key] = _Kept(session, self._not_after, replace_at, one_shot_until)

    def _result(self) -> Result:
        reason, error = self._verdict()
        return result_of(self, self._head.status, reason, error, self._not_after, self._resumed)


def forget_sessions() -> None:
    """Drop every kept session (for tests and benchmarks that measure full handshakes)."""
    _sessions.clear()


PROBE_KINDS["https"] = TlsProbe
