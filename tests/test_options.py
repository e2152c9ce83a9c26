"""Per-target check options: every key of issue 12's table in every form that carries it.

The forms: a target object (`HEALTHCHECK_TARGETS` as JSON, a targets file), the compact form's
scheme prefix, file_sd labels, `HEALTHCHECK_CHECK_DEFAULTS`, and string labels
(`options_from_labels`, for Docker). Bad values end as one ConfigError line naming the entry, the
target and the key.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.checks.options import (
    LABEL_KEYS,
    OPTION_KEYS,
    describe_options,
    options_from_labels,
    parse_check_defaults,
    parse_expect_status,
)
from exporter.model import DEFAULT_CHECK_OPTIONS, CheckOptions, Target
from exporter.settings import ConfigError, load_settings
from exporter.sources.file import FileTargetProvider, load_targets_file
from exporter.targets import parse_targets_document, parse_targets_env

BASE = {"app": "web", "ip": "10.0.0.5", "port": 8443}


def options_of(defaults: dict[str, Any] | None = None, **given: object) -> CheckOptions:
    [target] = parse_targets_document([{**BASE, **given}], "t.json", defaults=_defaults(defaults))
    return target.options


def _defaults(defaults: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if defaults is None else parse_check_defaults(json.dumps(defaults))


def option_error(**given: object) -> str:
    with pytest.raises(ConfigError) as excinfo:
        parse_targets_document([{**BASE, **given}], "t.json")
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def pem(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


# --- every key, good values ----------------------------------------------------------------------


def test_a_target_without_options_has_the_plain_check() -> None:
    assert options_of() == DEFAULT_CHECK_OPTIONS
    assert options_of() is DEFAULT_CHECK_OPTIONS  # the engine's plain path tests identity


PEM = "<pem>"  # replaced by the `pem` fixture's file
EVERY_KEY: list[tuple[str, object, object]] = [  # key, as given, as stored
    ("scheme", "HTTPS", "https"),
    ("method", "POST", "POST"),
    ("host", "shop.example.com:8443", "shop.example.com:8443"),
    (
        "headers",
        {"X-Env": "prod", "Authorization": "Bearer t0ken"},
        (("X-Env", "prod"), ("Authorization", "Bearer t0ken")),
    ),
    ("body", '{"deep": true}', '{"deep": true}'),
    ("expect_status", "204, 200,300-308", ((200, 200), (204, 204), (300, 308))),
    ("expect_body", "ok|ready", "ok|ready"),
    ("tls_server_name", "shop.example.com", "shop.example.com"),
    ("tls_insecure_skip_verify", True, True),
    ("tls_ca_file", PEM, PEM),
    ("tls_cert_file", PEM, PEM),
    ("tls_key_file", PEM, PEM),
    ("tls_min_version", "tls13", "TLS13"),
    ("interval", "1m30s", 90.0),
    ("timeout", 2, 2.0),
    ("fall", 5, 5),
    ("rise", "4", 4),
    ("fastinter", "500ms", 0.5),
    ("downinter", "1m", 60.0),
]


def test_every_option_key_is_parsed_into_its_field(pem: str) -> None:
    def real(value: object) -> object:
        return pem if value == PEM else value

    given = {key: real(value) for key, value, _ in EVERY_KEY}
    stored = {key: real(value) for key, _, value in EVERY_KEY}
    assert options_of(**given) == CheckOptions(**stored)  # type: ignore[arg-type]
    assert [key for key, _, _ in EVERY_KEY] == list(OPTION_KEYS)


def test_every_field_of_check_options_is_an_option_key() -> None:
    assert set(OPTION_KEYS) == set(CheckOptions.__dataclass_fields__)
    assert set(OPTION_KEYS) - {"headers"} == LABEL_KEYS


def test_null_option_means_not_set() -> None:
    assert options_of(scheme=None, expect_status=None) == DEFAULT_CHECK_OPTIONS


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("200", ((200, 200),)),
        ("200,204,300-308", ((200, 200), (204, 204), (300, 308))),
        (" 300-308 , 200 ", ((200, 200), (300, 308))),
        ("200-299,250-399", ((200, 399),)),
        ("200-299,300", ((200, 300),)),
        ("100-599", ((100, 599),)),
    ],
)
def test_expect_status_gives_sorted_merged_ranges(text: str, ranges: object) -> None:
    assert parse_expect_status(text) == ranges


def test_expect_status_may_be_a_number() -> None:
    assert options_of(expect_status=204).expect_status == ((204, 204),)


def test_expect_status_equal_to_the_default_is_the_default() -> None:
    assert options_of(expect_status="200-399") == DEFAULT_CHECK_OPTIONS


# --- bad values name the entry, the target and the key -------------------------------------------


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"scheme": "ftp"}, "scheme: 'ftp' is not one of http, https, tcp"),
        ({"scheme": 1}, "scheme: must be a string, got a number"),
        ({"method": "GE T"}, "method: 'GE T' is not an HTTP method"),
        ({"method": "GET\r\nX: y"}, "method: "),
        ({"method": ""}, "method: '' is not an HTTP method"),
        ({"host": "a b"}, "host: 'a b' must be 1-255 printable ASCII"),
        ({"host": "a\r\nb"}, "host: "),
        ({"host": ""}, "host: "),
        ({"headers": ["X-A: 1"]}, "headers: must be an object"),
        ({"headers": {"X-A:": "1"}}, "headers: name 'X-A:' is not a header name"),
        ({"headers": {"X A": "1"}}, "headers: name 'X A' is not a header name"),
        ({"headers": {"X-A\r\n": "1"}}, "headers: name 'X-A\\r\\n'"),
        ({"headers": {"X-A": "1\r\nX-B: 2"}}, "headers: 'X-A': value must not contain CR, LF"),
        ({"headers": {"X-A": "1\n"}}, "headers: 'X-A': value must not contain CR, LF"),
        ({"headers": {"X-A": 1}}, "headers: 'X-A': value must be a string, got a number"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, "headers: 'x-a' given twice"),
        ({"headers": {"Host": "x"}}, "headers: 'Host' cannot be set here: use the 'host' option"),
        ({"headers": {"Content-Length": "0"}}, "headers: 'Content-Length' cannot be set here"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "headers: 'Transfer-Encoding'"),
        ({"body": 5}, "body: must be a string, got a number"),
        ({"body": "x" * 65537}, "body: longer than 65536 bytes"),
        ({"expect_status": "200,"}, "expect_status: '' is not a status code or a range"),
        ({"expect_status": "2xx"}, "expect_status: '2xx' is not a status code"),
        ({"expect_status": "99"}, "expect_status: status 99 is outside 100-599"),
        ({"expect_status": "200-600"}, "expect_status: status 600 is outside 100-599"),
        ({"expect_status": "308-300"}, "expect_status: range 308-300 is backwards"),
        ({"expect_status": True}, "expect_status: must be a string of codes and ranges"),
        ({"expect_body": "("}, "expect_body: '(' is not a valid regular expression"),
        ({"expect_body": ""}, "expect_body: is empty"),
        ({"scheme": "https", "tls_server_name": "a b"}, "tls_server_name: invalid host 'a b'"),
        ({"scheme": "https", "tls_insecure_skip_verify": "maybe"}, "must be true or false"),
        ({"scheme": "https", "tls_ca_file": "/no/such/ca.pem"}, "tls_ca_file: cannot read"),
        ({"scheme": "https", "tls_min_version": "TLS11"}, "'TLS11' is not one of TLS12, TLS13"),
        ({"interval": "0s"}, "interval: invalid duration '0s': must be greater than zero"),
        ({"interval": "15"}, None),
        ({"interval": "fast"}, "interval: invalid duration 'fast'"),
        ({"interval": -1}, "interval: must be at least 10ms (got -1)"),
        ({"fastinter": "5ms"}, "fastinter: must be at least 10ms"),
        ({"interval": True}, "interval: must be a duration or a number, got a boolean"),
        ({"timeout": "1x"}, "timeout: invalid duration '1x': unknown unit 'x'"),
        ({"fall": 0}, "fall: must be at least 1"),
        ({"rise": "two"}, "rise: must be a whole number"),
        ({"rise": 1.5}, "rise: must be a whole number"),
        ({"fastinter": "0"}, "fastinter: invalid duration '0'"),
        ({"downinter": []}, "downinter: must be a duration or a number, got a list"),
    ],
)
def test_bad_option_value_is_one_error_naming_entry_target_and_key(
    given: dict[str, object], words: str | None
) -> None:
    if words is None:
        parse_targets_document([{**BASE, **given}], "t.json")
        return
    message = option_error(**given)
    assert message.startswith("t.json: entry 1: target 'web-10.0.0.5-8443': "), message
    assert words in message, message


def test_unknown_key_is_named_with_a_suggestion() -> None:
    message = option_error(expect_stauts="200")
    assert message.startswith(
        "t.json: entry 1: unknown key 'expect_stauts' (did you mean 'expect_status'?"
    )


def test_tls_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    message = option_error(scheme="https", tls_ca_file=str(tmp_path))
    assert f"tls_ca_file: {tmp_path} is not a regular file" in message


@pytest.mark.timeout(10)
def test_tls_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    assert f"tls_ca_file: {fifo} is not a regular file" in option_error(
        scheme="https", tls_ca_file=str(fifo)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=40)
    | st.from_regex(
        r"\{(\"[a-z_]{1,24}\": *(\"[^\"]{0,10}\"|[0-9]{1,4}|true|\{\}), *){0,3}\}", fullmatch=True
    )
)
def test_any_check_defaults_text_is_accepted_or_one_error(text: str) -> None:
    try:
        parse_check_defaults(text)
    except ValueError as exc:
        message = str(exc)
    else:
        return
    assert message and "\n" not in message


def test_unreadable_tls_file_is_refused(tmp_path: Path) -> None:
    # A dangling symlink cannot be opened by anyone.
    link = tmp_path / "key.pem"
    link.symlink_to(tmp_path / "gone.pem")
    message = option_error(scheme="https", tls_cert_file=str(link))
    assert f"tls_cert_file: cannot read {link}: No such file or directory" in message


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"scheme": "tcp", "expect_status": "200"}, "expect_status: does not apply to scheme tcp"),
        ({"scheme": "tcp", "method": "HEAD"}, "method: does not apply to scheme tcp"),
        ({"scheme": "tcp", "path": "/x"}, "path: does not apply to scheme tcp"),
        ({"tls_ca_file": "/etc/hostname"}, "tls_ca_file: applies only to scheme https"),
        ({"tls_insecure_skip_verify": True}, "applies only to scheme https"),
        ({"method": "HEAD", "expect_body": "ok"}, "expect_body: a HEAD response has no body"),
    ],
)
def test_options_that_cannot_apply_to_the_target_are_refused(
    given: dict[str, object], words: str
) -> None:
    assert words in option_error(**given)


def test_tls_key_without_certificate_is_refused(pem: str) -> None:
    assert "tls_key_file: needs tls_cert_file" in option_error(scheme="https", tls_key_file=pem)


def test_tcp_target_keeps_no_http_or_tls_options_from_the_defaults() -> None:
    options = options_of({"expect_status": "200", "tls_min_version": "TLS13"}, scheme="tcp")
    assert options == CheckOptions(scheme="tcp")


# --- HEALTHCHECK_CHECK_DEFAULTS ------------------------------------------------------------------


def test_defaults_apply_to_targets_that_do_not_set_the_key() -> None:
    defaults = {"scheme": "https", "expect_status": "200", "fall": 5}
    assert options_of(defaults) == CheckOptions(scheme="https", expect_status=((200, 200),), fall=5)
    assert options_of(defaults, scheme="http", fall=2) == CheckOptions(
        expect_status=((200, 200),), fall=2
    )


def test_target_headers_are_merged_over_the_defaults_by_name() -> None:
    defaults = {"headers": {"X-Env": "prod", "User-Agent": "hc", "X-Team": "a"}}
    options = options_of(defaults, headers={"user-agent": "mine", "X-Extra": "1"})
    assert options.headers == (
        ("X-Env", "prod"),
        ("X-Team", "a"),
        ("user-agent", "mine"),
        ("X-Extra", "1"),
    )
    assert options_of(defaults).headers == (
        ("X-Env", "prod"),
        ("User-Agent", "hc"),
        ("X-Team", "a"),
    )


def test_defaults_apply_to_compact_entries_and_file_sd_groups() -> None:
    defaults = _defaults({"method": "HEAD", "expect_status": "200-299"})
    [compact] = parse_targets_env("web=10.0.0.5:80", defaults=defaults)
    [grouped] = parse_targets_document(
        [{"targets": ["10.0.0.5:80"], "labels": {"app": "web", "method": "OPTIONS"}}],
        "sd.json",
        defaults=defaults,
    )
    assert compact.options == CheckOptions(method="HEAD", expect_status=((200, 299),))
    assert grouped.options == CheckOptions(method="OPTIONS", expect_status=((200, 299),))


def test_defaults_apply_to_a_targets_file(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- {app: web, ip: 10.0.0.5, port: 80}\n")
    [target] = load_targets_file(path, defaults=_defaults({"interval": "5s"}))
    assert target.options == CheckOptions(interval=5.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "invalid JSON at line 1 column 2"),
        ("[]", "must be a JSON object of check options, got a list"),
        ('{"schema": "https"}', "unknown option 'schema'"),
        ('{"expect_status": "600"}', "expect_status: status 600 is outside 100-599"),
        ('{"fall": 0}', "fall: must be at least 1"),
        ('{"scheme": "https", "tls_key_file": "/etc/hostname"}', "needs tls_cert_file"),
    ],
)
def test_bad_check_defaults_variable_names_the_variable_and_key(text: str, words: str) -> None:
    environ = {"HEALTHCHECK_TARGETS": "web=10.0.0.5:80", "HEALTHCHECK_CHECK_DEFAULTS": text}
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ)
    message = str(excinfo.value)
    assert message.startswith("HEALTHCHECK_CHECK_DEFAULTS: "), message
    assert words in message, message


def test_fastinter_and_downinter_settings_default_to_unset() -> None:
    config = load_settings({"HEALTHCHECK_TARGETS": "web=10.0.0.5:80"}).monitor_config()
    assert (config.fastinter, config.downinter) == (None, None)
    environ = {
        "HEALTHCHECK_TARGETS": "web=10.0.0.5:80",
        "HEALTHCHECK_FASTINTER": "1s",
        "HEALTHCHECK_DOWNINTER": "1m",
    }
    config = load_settings(environ).monitor_config()
    assert (config.fastinter, config.downinter) == (1.0, 60.0)


@pytest.mark.parametrize("variable", ["HEALTHCHECK_FASTINTER", "HEALTHCHECK_DOWNINTER"])
def test_bad_fastinter_or_downinter_names_the_variable(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: invalid duration '0s'"):
        load_settings({"HEALTHCHECK_TARGETS": "web=10.0.0.5:80", variable: "0s"})


# --- the compact form's scheme prefix ------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "target"),
    [
        (
            "web=https://10.0.0.5:8443/healthz",
            Target(
                "web-10.0.0.5-8443", "web", "10.0.0.5", "8443", "/healthz", CheckOptions("https")
            ),
        ),
        (
            "web=https://shop.example.com/",
            Target(
                "web-shop.example.com-443",
                "web",
                "shop.example.com",
                "443",
                "/",
                CheckOptions("https"),
            ),
        ),
        ("web=HTTP://[fd00::2]", Target("web-fd00::2-80", "web", "fd00::2", "80", "/health")),
        (
            "db=tcp://10.0.0.9:5432",
            Target("db-10.0.0.9-5432", "db", "10.0.0.9", "5432", "/health", CheckOptions("tcp")),
        ),
    ],
)
def test_compact_entry_takes_a_scheme_prefix(entry: str, target: Target) -> None:
    assert parse_targets_env(entry) == [target]


def test_compact_scheme_prefix_sets_the_url() -> None:
    web, db = parse_targets_env("web=https://10.0.0.5:8443/healthz db=tcp://10.0.0.9:5432")
    assert (web.url, db.url) == ("https://10.0.0.5:8443/healthz", "tcp://10.0.0.9:5432")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("db=tcp://10.0.0.9", "missing ':port' (tcp:// has no default port)"),
        ("db=tcp://10.0.0.9:5432/x", "path: does not apply to scheme tcp"),
        ("web=ftp://10.0.0.9:21", "unknown scheme 'ftp' (expected one of: http, https, tcp)"),
        ("web=https://10.0.0.9:0", "port 0 out of range"),
        ("web=://10.0.0.9:80", "unknown scheme ''"),
    ],
)
def test_bad_compact_scheme_entry_is_named(entry: str, words: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_targets_env(entry)
    assert str(excinfo.value).startswith(f"HEALTHCHECK_TARGETS: entry 1 {entry!r}: ")
    assert words in str(excinfo.value)


def test_compact_default_scheme_comes_from_the_defaults() -> None:
    [target] = parse_targets_env("web=10.0.0.5:8443", defaults=_defaults({"scheme": "https"}))
    assert target.url == "https://10.0.0.5:8443/health"


# --- file_sd labels ------------------------------------------------------------------------------


def test_file_sd_labels_carry_the_scalar_options() -> None:
    labels = {
        "app": "web",
        "scheme": "https",
        "method": "HEAD",
        "host": "shop.example.com",
        "expect_status": "200,204",
        "expect_body": None,
        "tls_server_name": "shop.example.com",
        "tls_insecure_skip_verify": "true",
        "env": "prod",  # other labels stay ignored
    }
    del labels["expect_body"]
    [a, b] = parse_targets_document(
        [{"targets": ["10.0.0.5:8443", "10.0.0.6:8443"], "labels": labels}], "sd.yml"
    )
    assert (
        a.options
        == b.options
        == CheckOptions(
            scheme="https",
            method="HEAD",
            host="shop.example.com",
            expect_status=((200, 200), (204, 204)),
            tls_server_name="shop.example.com",
            tls_insecure_skip_verify=True,
        )
    )


def test_file_sd_label_with_a_bad_value_names_the_group_and_label() -> None:
    group = {"targets": ["10.0.0.5:80"], "labels": {"app": "web", "expect_status": "2xx"}}
    with pytest.raises(ConfigError) as excinfo:
        parse_targets_document([group], "sd.json")
    assert str(excinfo.value) == (
        "sd.json: entry 1: label expect_status: '2xx' is not a status code or a range"
        " (e.g. 200,204,300-308)"
    )


def test_file_sd_yaml_native_values_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "sd.yml"
    path.write_text(
        "- targets: ['10.0.0.5:443']\n"
        "  labels: {app: web, scheme: https, expect_status: 200, tls_insecure_skip_verify: yes,"
        " fall: 1}\n"
    )
    [target] = load_targets_file(path)
    assert target.options == CheckOptions(
        scheme="https", expect_status=((200, 200),), tls_insecure_skip_verify=True, fall=1
    )


# --- string labels (Docker) ----------------------------------------------------------------------


def test_options_from_labels_parses_string_values() -> None:
    labels = {"scheme": "https", "interval": "5s", "fall": "2", "tls_insecure_skip_verify": "1"}
    assert options_from_labels(labels, "container web-1") == CheckOptions(
        scheme="https", interval=5.0, fall=2, tls_insecure_skip_verify=True
    )


def test_options_from_labels_applies_defaults() -> None:
    defaults = _defaults({"expect_status": "200", "headers": {"X-A": "1"}})
    assert options_from_labels({}, "c", defaults) == CheckOptions(
        expect_status=((200, 200),), headers=(("X-A", "1"),)
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"fall": "0"}, "container web-1: fall: must be at least 1 (got '0')"),
        ({"headers": "X-A: 1"}, "container web-1: unknown option label 'headers'"),
        ({"shceme": "https"}, "container web-1: unknown option label 'shceme'"),
    ],
)
def test_options_from_labels_errors_name_where_and_label(
    labels: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        options_from_labels(labels, "container web-1")
    assert str(excinfo.value).startswith(message)


# --- description for validate and check ----------------------------------------------------------


def test_description_lists_only_what_differs_and_hides_secrets() -> None:
    options = CheckOptions(
        scheme="https",
        method="POST",
        host="shop.example.com",
        headers=(("Authorization", "Bearer secret"),),
        body="password=hunter2",
        expect_status=((200, 200), (300, 308)),
        expect_body="ok now",
        interval=90.0,
        fall=5,
    )
    text = describe_options(options)
    assert text == (
        "method=POST host=shop.example.com headers=Authorization body=(16 bytes)"
        " expect_status=200,300-308 expect_body='ok now' interval=1m30s fall=5"
    )
    assert "secret" not in text and "hunter2" not in text
    assert describe_options(DEFAULT_CHECK_OPTIONS) == ""
    assert describe_options(CheckOptions(scheme="tcp")) == ""


# --- properties ----------------------------------------------------------------------------------

_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.text(alphabet="0123456789-, smhxTLS\r\n:", max_size=12)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=3)
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(OPTION_KEYS), _VALUES, st.sampled_from(["http", "https", "tcp"]))
def test_any_option_value_is_accepted_or_one_clear_error(
    key: str, value: object, scheme: str
) -> None:
    entry = {**BASE, "scheme": scheme, key: value} if key != "scheme" else {**BASE, key: value}
    try:
        [target] = parse_targets_document([entry], "t.json")
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message
        assert message.startswith("t.json: entry 1: target 'web-10.0.0.5-8443': ")
        assert key in message or "scheme" in message
        return
    assert isinstance(target.options, CheckOptions)
    assert "\r" not in target.options.method + (target.options.host or "")
    for name, text in target.options.headers:
        assert not set(name) & set(":\r\n ") and not set(text) & set("\r\n")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(LABEL_KEYS)), st.text(max_size=20), max_size=4))
def test_any_string_labels_are_accepted_or_one_clear_error(labels: dict[str, str]) -> None:
    try:
        options_from_labels(labels, "container c")
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("container c: ") and "\n" not in message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-, ", max_size=20))
def test_expect_status_text_is_ranges_or_one_error(text: str) -> None:
    try:
        ranges = parse_expect_status(text)
    except ValueError as exc:
        message = str(exc)
    else:
        assert all(100 <= low <= high <= 599 for low, high in ranges)
        assert list(ranges) == sorted(ranges)
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))
        return
    assert "\n" not in message and message


def test_a_targets_file_version_with_a_bad_option_is_rejected_whole(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- {app: web, ip: 10.0.0.5, port: 80, expect_status: 204}\n")
    provider = FileTargetProvider(path, logging.getLogger("test"))
    provider.load_initial()
    before = provider.get_health_check_targets()
    path.write_text(
        "- {app: web, ip: 10.0.0.5, port: 80}\n- {app: api, ip: 10.0.0.6, port: 80, fall: -1}\n"
    )
    assert provider.reload() is False
    assert provider.get_health_check_targets() == before
    assert provider.last_error is not None
    assert "entry 2: target 'api-10.0.0.6-80': fall: must be at least 1" in provider.last_error
