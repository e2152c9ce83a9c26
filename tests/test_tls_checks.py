"""HTTPS checks against real TLS servers on loopback, with certificates the tests make."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.checks import HTTPChecker, session_offer
from exporter.checks.tls import (
    ONE_SHOT_SECONDS,
    _Kept,
    forget_sessions,
    next_one_shot_until,
    not_after,
    server_name,
    tls_context_for,
)
from exporter.exposition import LabelCache, render_targets
from exporter.metrics import ScrapeRegistry, build_labels, take_snapshot
from exporter.model import CheckOptions, Config, FailureReason, Target
from exporter.monitor import HealthMonitor
from exporter.state import StateTracker
from tests.servers import raw_server
from tests.tls_servers import (
    LOOPBACK,
    Certificates,
    blocking_tls_server,
    greeting_server,
    tls_server,
)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def no_kept_sessions() -> Iterator[None]:
    forget_sessions()
    yield
    forget_sessions()


@pytest.fixture
def checker() -> HTTPChecker:
    return HTTPChecker(timeout=10.0)  # no test waits for it: a margin for a loaded machine


def trusting(certs: Certificates, **options: object) -> dict[str, object]:
    return {"tls_ca_file": certs.path("ca.pem"), **options}


# --- verified, with the names right ----------------------------------------------------------


async def test_https_check_verifies_against_the_ca_file_and_exports_the_expiry(
    certs: Certificates, checker: HTTPChecker
) -> None:
    async with tls_server(certs.server_context("good")) as srv:
        result = await checker.check(srv.target(**trusting(certs, host="localhost")))
    assert (result.healthy, result.status_code, result.reason) == (True, 200, None), result
    assert result.tls_not_after == certs.not_after("good")
    assert result.tls_resumed is False
    assert srv.requests[0].startswith(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
    assert srv.server_names == ["localhost"]


async def test_ip_literal_target_sends_no_sni_and_verifies_the_ip(
    certs: Certificates, checker: HTTPChecker
) -> None:
    async with tls_server(certs.server_context("good")) as srv:
        result = await checker.check(srv.target(**trusting(certs)))
    assert result.healthy
    assert srv.server_names == [None]
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % srv.port in srv.requests[0]


async def test_sni_host_and_verified_name_are_separate(
    certs: Certificates, checker: HTTPChecker
) -> None:
    """Host says one thing, tls_server_name another: the server sees each where it belongs,
    and the certificate is verified against tls_server_name."""
    async with tls_server(certs.server_context("wrong-name")) as srv:
        options = trusting(certs, host="app.internal:8443", tls_server_name="other.example")
        result = await checker.check(srv.target(**options))
        mismatch = await checker.check(srv.target(**trusting(certs, host="localhost")))
    assert result.healthy
    assert srv.server_names[0] == "other.example"
    assert b"\r\nHost: app.internal:8443\r\n" in srv.requests[0]
    assert (mismatch.reason, mismatch.tls_not_after) == (
        FailureReason.TLS,
        certs.not_after("wrong-name"),
    )
    assert mismatch.error is not None
    assert mismatch.error.startswith("request failed: tls: name mismatch (")


def test_server_name_defaults() -> None:
    def target(ip: str, **options: object) -> Target:
        return Target("t", ip=ip, port="443", options=CheckOptions(**options))  # type: ignore[arg-type]

    assert server_name(target("10.0.0.1")) == "10.0.0.1"
    assert server_name(target("db.example")) == "db.example"
    assert server_name(target("10.0.0.1", host="web.example:8443")) == "web.example"
    assert server_name(target("10.0.0.1", host="[::1]:8443")) == "::1"
    assert server_name(target("10.0.0.1", host="web", tls_server_name="sni.example")) == (
        "sni.example"
    )


# --- failed verification: tls, with the expiry still known -----------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "why"),
    [
        ("expired", {"ca": True}, "certificate expired"),
        ("self-signed", {"ca": True}, "self-signed certificate"),
        ("good", {"ca": False}, "unknown CA"),  # the system's CAs do not know the test CA
    ],
)
async def test_unverifiable_server_fails_as_tls_and_still_exports_its_expiry(
    certs: Certificates, checker: HTTPChecker, kind: str, options: dict[str, bool], why: str
) -> None:
    async with tls_server(certs.server_context(kind)) as srv:
        extra = trusting(certs, host="localhost") if options["ca"] else {"host": "localhost"}
        result = await checker.check(srv.target(**extra))
    assert (result.healthy, result.reason, result.status_code) == (False, FailureReason.TLS, 0)
    assert result.error is not None
    assert result.error.startswith(f"request failed: tls: {why} ("), result.error
    assert result.tls_not_after == certs.not_after(kind)


async def test_insecure_skip_verify_accepts_any_certificate_and_exports_its_expiry(
    certs: Certificates, checker: HTTPChecker
) -> None:
    async with tls_server(certs.server_context("expired")) as srv:
        result = await checker.check(srv.target(tls_insecure_skip_verify=True))
    assert result.healthy
    assert result.tls_not_after == certs.not_after("expired")
    assert result.tls_not_after < time.time()


# --- client certificates, versions --------------------------------------------------------


async def test_mtls_succeeds_only_with_the_client_certificate(
    certs: Certificates, checker: HTTPChecker
) -> None:
    async with tls_server(certs.server_context("good", require_client_cert=True)) as srv:
        without = await checker.check(srv.target(**trusting(certs)))
        client = {
            "tls_cert_file": certs.path("client.pem"),
            "tls_key_file": certs.path("client.key"),
        }
        with_cert = await checker.check(srv.target(**trusting(certs, **client)))
    assert without.reason is FailureReason.TLS
    assert with_cert.healthy
    assert srv.peer_certs[-1] is True


async def test_min_version_tls13_refuses_a_tls12_server(
    certs: Certificates, checker: HTTPChecker
) -> None:
    tls12 = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    with blocking_tls_server(certs.server_context("good", versions=tls12)) as port:
        options = CheckOptions(scheme="https", tls_ca_file=certs.path("ca.pem"))
        target = Target("t", ip=LOOPBACK, port=str(port), options=options)
        accepted = await checker.check(target)
        refused = await checker.check(
            replace(target, options=replace(options, tls_min_version="TLS13"))
        )
    assert accepted.healthy
    assert refused.reason is FailureReason.TLS
    assert refused.error is not None
    assert refused.error.startswith("request failed: tls: protocol version ("), refused.error


async def test_a_body_ended_by_close_notify_on_an_open_connection_is_complete(
    certs: Certificates,
) -> None:
    """The server ends a body without a length by its close_notify and keeps the TCP
    connection open (for 5 s): the body is complete then, not when the timeout strikes."""
    checker = HTTPChecker(timeout=3.0)
    context = certs.server_context("good")
    with blocking_tls_server(context, b"HTTP/1.0 200 OK\r\n\r\nready until close") as port:
        options = CheckOptions(
            scheme="https", tls_ca_file=certs.path("ca.pem"), expect_body="close$"
        )
        result = await checker.check(Target("t", ip=LOOPBACK, port=str(port), options=options))
    assert result.healthy, result.error


# --- resumption ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_later_checks_resume_the_session(
    certs: Certificates, checker: HTTPChecker, version: ssl.TLSVersion
) -> None:
    async with tls_server(certs.server_context("good", versions=(version, version))) as srv:
        results = [await checker.check(srv.target(**trusting(certs))) for _ in range(4)]
    assert [r.healthy for r in results] == [True] * 4
    assert [r.tls_resumed for r in results] == [False, True, True, True]
    assert srv.resumed == [False, True, True, True]
    assert all(r.tls_not_after == certs.not_after("good") for r in results)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_session_serves_several_checks_at_once(
    certs: Certificates, checker: HTTPChecker, version: ssl.TLSVersion
) -> None:
    """A session the server resumed is offered again as it is (TLS 1.3 tickets too: OpenSSL's
    stateless tickets serve any number of connections), so concurrent checks all resume."""
    async with tls_server(certs.server_context("good", versions=(version, version))) as srv:
        target = srv.target(**trusting(certs))
        assert (await checker.check(target)).tls_resumed is False
        results = await asyncio.gather(*(checker.check(target) for _ in range(3)))
    assert all(r.healthy for r in results)
    assert [r.tls_resumed for r in results] == [True] * 3
    assert srv.resumed == [False, True, True, True]
    assert all(r.tls_not_after == certs.not_after("good") for r in results)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_server_closing_without_close_notify_still_resumes(
    certs: Certificates, checker: HTTPChecker, version: ssl.TLSVersion
) -> None:
    """The body runs to the end of the connection, which the server closes without a
    close_notify: OpenSSL would mark the shared session unusable (OP_IGNORE_UNEXPECTED_EOF)."""
    context = certs.server_context("good", versions=(version, version))
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall good"
    with blocking_tls_server(context, reply, close_notify=False) as port:
        target = Target(
            "t",
            ip=LOOPBACK,
            port=str(port),
            options=CheckOptions(scheme="https", expect_body="all good", **trusting(certs)),  # type: ignore[arg-type]
        )
        results = [await checker.check(target) for _ in range(3)]
    assert [r.healthy for r in results] == [True] * 3, results
    assert [r.tls_resumed for r in results] == [False, True, True]


def test_which_session_is_kept_after_a_check() -> None:
    """The offered session stays while the server resumes it; a TLS 1.3 ticket refused on a
    second offer switches the target to one fresh ticket per check for ONE_SHOT_SECONDS.
    (No real server here: no OpenSSL server this suite can start takes a TLS 1.3 ticket once.)"""
    now = 1_000_000.0
    session = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # any object: the session is not read

    def kept(offers: int, *, replace_at: float = now + 100, one_shot_until: float = 0.0) -> Any:
        return _Kept(session, None, replace_at, one_shot_until, offers)  # type: ignore[arg-type]

    assert next_one_shot_until(None, False, False, now) == 0.0  # first check: take its session
    assert next_one_shot_until(kept(1), True, False, now) is None  # resumed: keep it
    assert next_one_shot_until(kept(5), True, True, now) is None
    assert next_one_shot_until(kept(5, replace_at=now - 1), True, True, now) == 0.0  # half-life
    assert next_one_shot_until(kept(1), False, False, now) == 0.0  # first offer refused: expired
    assert next_one_shot_until(kept(2), False, True, now) == 0.0  # TLS 1.2: a session id expired
    assert next_one_shot_until(kept(2), False, False, now) == now + ONE_SHOT_SECONDS
    one_shot = kept(1, one_shot_until=now + 10)
    assert next_one_shot_until(one_shot, True, False, now) == now + 10  # fresh ticket each time
    assert next_one_shot_until(kept(1, one_shot_until=now - 1), True, False, now) is None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_sessions_are_offered_without_a_copy(
    certs: Certificates, checker: HTTPChecker, version: ssl.TLSVersion
) -> None:
    """On CPython 3.11 the session reaches OpenSSL as it is (not through Python's copying
    setter): the same SSL_SESSION serves every resumed check."""
    async with tls_server(certs.server_context("good", versions=(version, version))) as srv:
        target = srv.target(**trusting(certs))
        for _ in range(3):
            assert (await checker.check(target)).healthy
    assert srv.resumed == [False, True, True]
    assert session_offer.direct()


async def test_sessions_resume_through_pythons_setter_where_the_direct_path_is_off(
    certs: Certificates, checker: HTTPChecker, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = session_offer._Offerer()
    public._connections_ok = public._sessions_ok = False
    monkeypatch.setattr(session_offer, "_OFFERER", public)
    async with tls_server(certs.server_context("good")) as srv:
        results = [await checker.check(srv.target(**trusting(certs))) for _ in range(3)]
    assert [(r.healthy, r.tls_resumed) for r in results] == [
        (True, False),
        (True, True),
        (True, True),
    ]
    assert srv.resumed == [False, True, True]
    assert not session_offer.direct()


async def test_a_server_refusing_resumption_still_works(
    certs: Certificates, checker: HTTPChecker
) -> None:
    async with tls_server(certs.server_context("good", tickets=False)) as srv:
        results = [await checker.check(srv.target(**trusting(certs))) for _ in range(3)]
    assert [(r.healthy, r.tls_resumed) for r in results] == [(True, False)] * 3
    assert srv.resumed == [False] * 3


# --- expectations over TLS ------------------------------------------------------------------


async def test_expect_status_and_body_work_over_tls(
    certs: Certificates, checker: HTTPChecker
) -> None:
    reply = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nDOWN\r\n0\r\n\r\n"
    async with tls_server(certs.server_context("good"), reply=reply) as srv:
        down = await checker.check(srv.target(**trusting(certs)))
        body = await checker.check(
            srv.target(**trusting(certs, expect_status=((503, 503),), expect_body="UP"))
        )
        up = await checker.check(
            srv.target(**trusting(certs, expect_status=((503, 503),), expect_body="DOWN"))
        )
    assert (down.reason, down.status_code) == (FailureReason.HTTP_STATUS, 503)
    assert body.reason is FailureReason.BODY_MISMATCH
    assert up.healthy


# --- hostile servers ------------------------------------------------------------------------


async def test_a_handshake_that_never_completes_times_out() -> None:
    checker = HTTPChecker(timeout=0.3)
    async with raw_server("close") as srv:  # reads the ClientHello, waiting for more
        result = await checker.check(
            Target("t", ip=LOOPBACK, port=str(srv.port), options=CheckOptions(scheme="https"))
        )
    assert result.reason is FailureReason.TIMEOUT


@pytest.mark.parametrize(
    "greeting",
    [
        pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", id="plain-http"),
        pytest.param(b"\x16\x03\x03\xff\xff" + b"\x00" * 64, id="oversized-record"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh"),
    ],
)
async def test_garbage_instead_of_a_server_hello_is_a_tls_failure(
    checker: HTTPChecker, greeting: bytes
) -> None:
    async with greeting_server(greeting) as port:
        target = Target("t", ip=LOOPBACK, port=str(port), options=CheckOptions(scheme="https"))
        result = await checker.check(target)
    assert result.reason is FailureReason.TLS, result.error


async def test_a_1_mb_certificate_chain_is_a_tls_failure(
    certs: Certificates, checker: HTTPChecker
) -> None:
    async with tls_server(certs.server_context("huge")) as srv:
        result = await checker.check(srv.target(**trusting(certs)))
    assert (result.reason, result.error) == (
        FailureReason.TLS,
        "request failed: tls: handshake message too large (excessive message size)",
    )


async def test_an_endless_body_with_expect_body_ends_at_16_kib(
    certs: Certificates, checker: HTTPChecker
) -> None:
    reply = b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (64 * 1024)  # read until close: 64 KiB
    async with tls_server(certs.server_context("good"), reply=reply) as srv:
        result = await checker.check(srv.target(**trusting(certs, expect_body="y")))
    assert result.reason is FailureReason.BODY_MISMATCH


# --- contexts -----------------------------------------------------------------------------


def test_one_context_per_tls_profile(certs: Certificates) -> None:
    a = tls_context_for(CheckOptions(scheme="https", tls_ca_file=certs.path("ca.pem")))
    b = tls_context_for(CheckOptions(scheme="https", host="x", tls_ca_file=certs.path("ca.pem")))
    c = tls_context_for(CheckOptions(scheme="https", tls_insecure_skip_verify=True))
    assert a is b
    assert a is not c
    assert c.verify_mode is ssl.CERT_NONE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file: /nonexistent/ca.pem: no such file"),
        (
            {"tls_cert_file": "/nonexistent/c.pem", "tls_key_file": "/nonexistent/k.pem"},
            "tls_cert_file: /nonexistent/c.pem: no such file",
        ),
        ({"tls_cert_file": "CERT"}, "tls_key_file: needed with tls_cert_file"),
        ({"tls_min_version": "TLS10"}, "tls_min_version: 'TLS10' is not TLS12 or TLS13"),
    ],
)
def test_a_bad_tls_option_is_an_error_naming_the_key(
    certs: Certificates, options: dict[str, str], message: str
) -> None:
    options = {k: certs.path("good.pem") if v == "CERT" else v for k, v in options.items()}
    with pytest.raises(ValueError, match=f"^{message}"):
        tls_context_for(CheckOptions(scheme="https", **options))  # type: ignore[arg-type]


def test_not_a_ca_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"^tls_ca_file: {bogus}: no PEM certificate in it$"):
        tls_context_for(CheckOptions(scheme="https", tls_ca_file=str(bogus)))


def test_not_after_reads_the_der_of_every_test_certificate(certs: Certificates) -> None:
    for kind in ("good", "expired", "self-signed", "wrong-name"):
        der = ssl.PEM_cert_to_DER_cert((certs.directory / f"{kind}.pem").read_text())
        assert not_after(der) == certs.not_after(kind), kind
    with pytest.raises(ValueError, match="truncated DER"):
        not_after(b"\x30\x82\x01")


async def test_a_missing_ca_file_fails_the_check_naming_the_key(checker: HTTPChecker) -> None:
    target = Target(
        "t", ip=LOOPBACK, port="1", options=CheckOptions(scheme="https", tls_ca_file="/no/ca.pem")
    )
    result = await checker.check(target)
    assert (result.reason, result.error) == (
        FailureReason.OTHER,
        "invalid request: tls_ca_file: /no/ca.pem: no such file or directory",
    )


# --- metrics ------------------------------------------------------------------------------


class _Targets:
    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets

    def get_health_check_targets(self) -> list[Target]:
        return self.targets


class _NoUpdates:
    def on_health_change(self, healthy_targets: object) -> None:
        del healthy_targets


async def test_metrics_show_the_expiry_and_the_resumed_handshakes(certs: Certificates) -> None:
    async with tls_server(certs.server_context("expired")) as srv:
        target = srv.target(tls_insecure_skip_verify=True)
        monitor = HealthMonitor(
            Config(interval=0.05, timeout=5.0), _Targets([target]), _NoUpdates()
        )
        monitor.start()
        try:
            checker = monitor.checker
            assert isinstance(checker, HTTPChecker)
            async with asyncio.timeout(10):
                while checker.tls_handshakes[True] < 2:  # noqa: ASYNC110 -- no event to wait on
                    await asyncio.sleep(0.01)
            snapshot = take_snapshot(monitor, build_labels("asyncio"))
            per_target = await render_targets(monitor.tracker.entries(), LabelCache())
        finally:
            await monitor.stop()
    exporter_wide = generate_latest(ScrapeRegistry(snapshot, base=CollectorRegistry())).decode()
    assert 'healthcheck_tls_handshakes_total{resumed="false"} 1.0' in exporter_wide
    assert re.search(r'healthcheck_tls_handshakes_total\{resumed="true"\} [2-9]', exporter_wide)
    expiry = (
        "healthcheck_target_tls_certificate_expiry_timestamp_seconds"
        f'{{app="",target="{target.id}",address="{target.address}"}} '
        f"{float(certs.not_after('expired'))!r}\n"
    )
    assert expiry in per_target


async def test_a_plain_target_has_no_expiry_series() -> None:
    async with raw_server("reply", reply=b"HTTP/1.1 200 OK\r\n\r\n") as srv:
        tracker = StateTracker(1, 1)
        tracker.sync_targets([srv.target()])
        tracker.record_result(await HTTPChecker(5).check(srv.target()))
    text = await render_targets(tracker.entries(), LabelCache())
    assert "healthcheck_target_up{" in text
    assert "healthcheck_target_tls_certificate_expiry_timestamp_seconds{" not in text
