"""Target parsing (env text, JSON/YAML documents, files) and the static and file providers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.model import Target, TargetProvider
from exporter.settings import ConfigError
from exporter.targets import (
    StaticTargetProvider,
    parse_targets_document,
    parse_targets_env,
)

SAFE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,253}")
SAFE_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")
SAFE_PATH = re.compile(r"/[\x21-\x7e]{0,1023}")
POLL = 0.05


def env_error(text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        parse_targets_env(text)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def document_error(data: object, source: str = "targets.json") -> str:
    with pytest.raises(ConfigError) as excinfo:
        parse_targets_document(data, source)
    return str(excinfo.value)


def one_object(**fields: object) -> list[Target]:
    entry = {"app": "web", "ip": "10.0.0.5", "port": 8080} | fields
    return parse_targets_document([{k: v for k, v in entry.items() if v is not ...}], "test")


def one_object_error(**fields: object) -> str:
    with pytest.raises(ConfigError) as excinfo:
        one_object(**fields)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def assert_one_line(error: ConfigError) -> None:
    assert "\n" not in str(error)


def assert_safe(target: Target) -> None:
    assert SAFE_NAME.fullmatch(target.id), target
    assert SAFE_NAME.fullmatch(target.app_name), target
    assert SAFE_HOST.fullmatch(target.ip), target
    assert target.port.isdigit()
    assert not target.port.startswith("0")
    assert 1 <= int(target.port) <= 65535
    assert SAFE_PATH.fullmatch(target.health_check_path), target


# --- compact form --------------------------------------------------------------------------------


def test_compact_targets_parse_app_host_port_and_path() -> None:
    text = "web=10.0.0.5:8080/healthz, web=[fd00::2]:8080 api=backend.internal:9000/ping?full=1"
    assert parse_targets_env(text) == [
        Target("web-10.0.0.5-8080", "web", "10.0.0.5", "8080", "/healthz"),
        Target("web-fd00::2-8080", "web", "fd00::2", "8080", "/health"),
        Target("api-backend.internal-9000", "api", "backend.internal", "9000", "/ping?full=1"),
    ]


def test_compact_targets_accept_ipv6_in_brackets() -> None:
    [target] = parse_targets_env("web=[fd00::2]:8080/ready")
    assert (target.ip, target.port, target.health_check_path) == ("fd00::2", "8080", "/ready")
    assert target.address == "[fd00::2]:8080"


def test_compact_targets_default_path_is_health() -> None:
    [target] = parse_targets_env("web=10.0.0.5:8080")
    assert target.health_check_path == "/health"


@pytest.mark.parametrize(
    "text",
    ["a=h:1,b=h:2,c=h:3", "a=h:1 b=h:2 c=h:3", "a=h:1, b=h:2 ,c=h:3", "a=h:1\n\tb=h:2,,c=h:3,"],
)
def test_compact_targets_are_separated_by_commas_and_or_whitespace(text: str) -> None:
    assert [target.app_name for target in parse_targets_env(text)] == ["a", "b", "c"]


@pytest.mark.parametrize("text", ["", "   ", ",", " , \n"])
def test_targets_text_with_separators_only_is_an_error_naming_the_variable(text: str) -> None:
    assert env_error(text) == (
        f"HEALTHCHECK_TARGETS: no targets in {text!r} (expected app=host:port[/path] entries;"
        " write [] for none)"
    )


def test_empty_json_list_in_the_variable_gives_no_targets() -> None:
    assert parse_targets_env(" [] ") == []


def test_compact_entry_errors_name_source_index_and_text() -> None:
    assert env_error("web=10.0.0.5:8080 web=10.0.0.5:99999") == (
        "HEALTHCHECK_TARGETS: entry 2 'web=10.0.0.5:99999': port 99999 out of range 1-65535"
    )


def test_errors_name_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^--targets: entry 1 'web': "):
        parse_targets_env("web", source="--targets")


@pytest.mark.parametrize("entry", ["web", "10.0.0.5:8080", "web:10.0.0.5:8080"])
def test_compact_entry_without_equals_sign_is_rejected(entry: str) -> None:
    assert env_error(entry).endswith(": expected app=[scheme://]host:port[/path]")


def test_compact_entry_with_unbracketed_ipv6_is_rejected() -> None:
    assert "put IPv6 addresses in brackets" in env_error("web=fd00::2:8080")


def test_compact_entry_with_brackets_around_ipv4_is_rejected() -> None:
    assert "only IPv6 addresses go in brackets" in env_error("web=[10.0.0.5]:8080")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("web=10.0.0.5", "missing ':port'"),
        ("web=10.0.0.5:", "missing port"),
        ("web=[fd00::2]", "expected ':port' after ']'"),
        ("web=[fd00::2:80", "missing ']'"),
        ("web=:8080", "missing host"),
    ],
)
def test_compact_entry_needs_host_and_port(entry: str, reason: str) -> None:
    assert env_error(entry).endswith(reason)


# --- ports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_port_out_of_range_is_rejected(port: str) -> None:
    assert env_error(f"web=h:{port}").endswith(f"port {port} out of range 1-65535")


@pytest.mark.parametrize("port", ["1", "65535"])
def test_port_range_bounds_are_accepted(port: str) -> None:
    assert parse_targets_env(f"web=h:{port}")[0].port == port


@pytest.mark.parametrize("port", ["+80", "-1", "8o", "\uff18\uff10"])
def test_port_that_is_not_plain_digits_is_rejected(port: str) -> None:
    assert env_error(f"web=h:{port}").endswith("is not a number")


def test_port_with_leading_zero_is_rejected() -> None:
    assert env_error("web=h:080").endswith("port '080' has a leading zero")


@pytest.mark.parametrize(("port", "stored"), [(8080, "8080"), ("8080", "8080"), (1, "1")])
def test_document_port_accepts_int_or_digit_string_stored_as_string(
    port: object, stored: str
) -> None:
    assert one_object(port=port)[0].port == stored


@pytest.mark.parametrize(
    ("port", "reason"),
    [
        (True, "got a boolean"),
        (8080.0, "got a number"),
        (None, "got null"),
        ([80], "got a list"),
        ("8080.0", "is not a number"),
        (70000, "port 70000 out of range 1-65535"),
        (0, "port 0 out of range 1-65535"),
    ],
)
def test_document_port_rejects_other_types_and_values(port: object, reason: str) -> None:
    assert reason in one_object_error(port=port)


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "my-app_v1.2:blue", "A" * 253, "0"])
def test_app_name_accepts_letters_digits_and_safe_punctuation(name: str) -> None:
    assert one_object(app=name, id="x")[0].app_name == name


UNSAFE_NAMES = ["", "we b", 'we"b', "we'b", "web\n", "web\r", "#web", "{web}", "w;b", "wéb"]


@pytest.mark.parametrize("name", [*UNSAFE_NAMES, "A" * 254])
def test_app_name_rejects_unsafe_characters(name: str) -> None:
    assert "app " in one_object_error(app=name)


@pytest.mark.parametrize("name", [*UNSAFE_NAMES, "A" * 254])
def test_explicit_id_rejects_unsafe_characters(name: str) -> None:
    assert "id " in one_object_error(id=name)


@pytest.mark.parametrize("value", [5, True, None, ["web"]])
def test_app_name_must_be_a_string(value: object) -> None:
    assert "app must be a string" in one_object_error(app=value)


def test_compact_entry_with_unsafe_app_is_rejected() -> None:
    assert "app '#web'" in env_error("#web=h:80")


def test_default_id_is_app_ip_port() -> None:
    assert one_object()[0].id == "web-10.0.0.5-8080"


def test_default_id_keeps_ipv6_literal_as_is() -> None:
    assert one_object(ip="fd00::2")[0].id == "web-fd00::2-8080"


def test_explicit_id_is_used() -> None:
    assert one_object(id="primary")[0].id == "primary"


def test_default_id_longer_than_253_characters_is_rejected() -> None:
    host = ".".join(["a" * 60] * 4)
    assert "is over 253 characters; set 'id'" in one_object_error(app="b" * 200, ip=host)


def test_duplicate_ids_are_rejected_naming_both_entries() -> None:
    assert env_error("web=10.0.0.5:8080 api=h:1 web=10.0.0.5:8080/other") == (
        "HEALTHCHECK_TARGETS: entry 3 'web=10.0.0.5:8080/other': duplicate id"
        " 'web-10.0.0.5-8080' (also entry 1 'web=10.0.0.5:8080')"
    )


def test_same_backend_twice_is_allowed_with_distinct_ids() -> None:
    data = [
        {"id": "a", "app": "web", "ip": "10.0.0.5", "port": 80},
        {"id": "b", "app": "web", "ip": "10.0.0.5", "port": 80, "path": "/deep"},
    ]
    assert [target.id for target in parse_targets_document(data, "test")] == ["a", "b"]


# --- hosts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.5",
        "fd00::2",
        "::1",
        "::ffff:10.0.0.5",
        "backend",
        "backend.internal",
        "a-b.c-d.example",
        "xn--bcher-kva.example",
        "3com.example",
        "a" * 63 + ".example",
        ".".join(["a" * 63] * 3) + "." + "a" * 61,
    ],
)
def test_host_accepts_ip_literals_and_rfc1123_hostnames(host: str) -> None:
    assert one_object(ip=host, id="x")[0].ip == host


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("-a.example", "must be letters, digits and '-'"),
        ("a-.example", "must be letters, digits and '-'"),
        ("a_b.example", "must be letters, digits and '-'"),
        ("exa mple", "must be letters, digits and '-'"),
        ("host\n", "must be letters, digits and '-'"),
        ("bücher.example", "must be letters, digits and '-'"),
        ("a..b", "empty label"),
        ("example.com.", "empty label"),
        ("a" * 64 + ".example", "label longer than 63 characters"),
        (".".join(["a" * 63] * 4), "hostname longer than 253 characters"),
        ("1.2.3", "not a valid IPv4 address or hostname"),
        ("256.1.1.1", "not a valid IPv4 address or hostname"),
        ("010.0.0.1", "not a valid IPv4 address or hostname"),
        ("fe80::1%eth0", "IPv6 zone ids are not supported"),
        ("[fd00::2]", "write IPv6 addresses without brackets"),
        ("fd00::zz", "not an IPv6 address"),
        ("", "missing host"),
    ],
)
def test_host_rejects_invalid_names_and_addresses(host: str, reason: str) -> None:
    assert reason in one_object_error(ip=host)


def test_host_must_be_a_string() -> None:
    assert "ip must be a string, got a number" in one_object_error(ip=10)


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/healthz", "/ping?full=1&x=%20", "/" + "a" * 1023])
def test_path_accepts_printable_ascii_starting_with_slash(path: str) -> None:
    assert one_object(path=path)[0].health_check_path == path


@pytest.mark.parametrize("path", ["health", "", "?x=1"])
def test_path_must_start_with_slash(path: str) -> None:
    assert "must start with '/'" in one_object_error(path=path)


@pytest.mark.parametrize(
    "path", ["/a b", "/a\r\nHost: evil", "/a\tb", "/a\x7f", "/caf\u00e9", "/a\x00"]
)
def test_path_rejects_spaces_control_characters_and_non_ascii(path: str) -> None:
    assert "may only contain printable ASCII without spaces" in one_object_error(path=path)


def test_path_longer_than_1024_characters_is_rejected() -> None:
    assert "path longer than 1024 characters" in one_object_error(path="/" + "a" * 1024)


def test_null_path_and_id_mean_the_defaults() -> None:
    [target] = one_object(path=None, id=None)
    assert (target.id, target.health_check_path) == ("web-10.0.0.5-8080", "/health")


# --- JSON in the variable, list-of-objects documents ---------------------------------------------


def test_json_targets_accept_objects_with_optional_id_and_path() -> None:
    text = """ [
        {"app": "web", "ip": "10.0.0.5", "port": 8080},
        {"id": "api-1", "app": "api", "ip": "fd00::3", "port": "9000", "path": "/ping"}
    ] """
    assert parse_targets_env(text) == [
        Target("web-10.0.0.5-8080", "web", "10.0.0.5", "8080", "/health"),
        Target("api-1", "api", "fd00::3", "9000", "/ping"),
    ]


def test_json_unknown_key_is_named_with_the_allowed_keys() -> None:
    assert env_error('[{"app": "web", "adress": "10.0.0.5", "port": 80}]').startswith(
        "HEALTHCHECK_TARGETS: entry 1: unknown key 'adress'"
        " (expected one of: app, id, ip, path, port, or a check option: scheme, method,"
    )


@pytest.mark.parametrize("missing", ["app", "ip", "port"])
def test_object_without_required_key_is_rejected(missing: str) -> None:
    assert one_object_error(**{missing: ...}).endswith(f"missing required key '{missing}'")


def test_json_syntax_error_gives_line_and_column() -> None:
    assert env_error('[\n {"app": "web",}\n]') == (
        "HEALTHCHECK_TARGETS: invalid JSON at line 2 column 16:"
        " Expecting property name enclosed in double quotes"
    )


@pytest.mark.parametrize(
    ("entry", "reason"), [("web", "a string"), (["web"], "a list"), (None, "null")]
)
def test_document_entry_must_be_an_object(entry: object, reason: str) -> None:
    assert document_error([entry]) == f"targets.json: entry 1: expected an object, got {reason}"


@pytest.mark.parametrize(("data", "reason"), [({"app": "web"}, "an object"), ("x", "a string")])
def test_document_top_level_must_be_a_list(data: object, reason: str) -> None:
    assert document_error(data) == (
        f"targets.json: top level must be a list of targets, got {reason}"
    )


def test_empty_document_list_gives_no_targets() -> None:
    assert parse_targets_document([], "targets.json") == []


def test_document_targets_keep_input_order() -> None:
    data = [{"app": app, "ip": "h", "port": 80} for app in ["c", "a", "b"]]
    assert [target.app_name for target in parse_targets_document(data, "t")] == ["c", "a", "b"]


# --- Prometheus file_sd groups -------------------------------------------------------------------


def test_document_accepts_file_sd_groups_ignoring_other_labels() -> None:
    data = [
        {"targets": ["10.0.0.5:8080", "[fd00::2]:8080"], "labels": {"app": "web", "env": "prod"}},
        {"targets": ["backend:9000"], "labels": {"app": "api", "path": "/ping", "id": "api-0"}},
    ]
    assert parse_targets_document(data, "sd.json") == [
        Target("web-10.0.0.5-8080", "web", "10.0.0.5", "8080", "/health"),
        Target("web-fd00::2-8080", "web", "fd00::2", "8080", "/health"),
        Target("api-0", "api", "backend", "9000", "/ping"),
    ]


@pytest.mark.parametrize("labels", [{"env": "prod"}, None, "web"])
def test_file_sd_group_without_app_label_is_rejected(labels: object) -> None:
    group: dict[str, Any] = {"targets": ["h:80"]}
    if labels is not None:
        group["labels"] = labels
    assert "missing label 'app'" in document_error([group])


@pytest.mark.parametrize("count", [0, 2])
def test_file_sd_id_label_needs_exactly_one_target(count: int) -> None:
    group = {"targets": [f"h:{80 + n}" for n in range(count)], "labels": {"app": "w", "id": "x"}}
    assert document_error([group]) == (
        f"targets.json: entry 1: label 'id' needs exactly one target in the group, got {count}"
    )


def test_file_sd_group_with_no_targets_gives_none() -> None:
    assert parse_targets_document([{"targets": [], "labels": {"app": "web"}}], "t") == []


def test_file_sd_unsafe_labels_are_rejected() -> None:
    group = {"targets": ["h:80"], "labels": {"app": "web app"}}
    assert "app 'web app'" in document_error([group])
    group = {"targets": ["h:80"], "labels": {"app": "web", "path": "/a b"}}
    assert "may only contain printable ASCII" in document_error([group])


def test_file_sd_unknown_group_key_is_rejected() -> None:
    group = {"targets": ["h:80"], "labels": {"app": "web"}, "label": {}}
    assert document_error([group]) == (
        "targets.json: entry 1: unknown key 'label' (expected one of: labels, targets)"
    )


@pytest.mark.parametrize("addresses", ["h:80", [80], [["h:80"]]])
def test_file_sd_targets_must_be_a_list_of_strings(addresses: object) -> None:
    group = {"targets": addresses, "labels": {"app": "web"}}
    assert "'targets' must be a list of 'host:port' strings" in document_error([group])


def test_file_sd_target_errors_name_entry_and_target() -> None:
    group = {"targets": ["h:80", "h:99999"], "labels": {"app": "web"}}
    assert document_error([group]) == (
        "targets.json: entry 1 target 2 'h:99999': port 99999 out of range 1-65535"
    )


def test_duplicate_ids_across_file_sd_groups_are_rejected() -> None:
    data = [
        {"targets": ["h:80"], "labels": {"app": "web"}},
        {"targets": ["h:80"], "labels": {"app": "web", "path": "/x"}},
    ]
    assert document_error(data) == (
        "targets.json: entry 2 target 1 'h:80': duplicate id 'web-h-80'"
        " (also entry 1 target 1 'h:80')"
    )


def test_mixed_shapes_in_one_document_are_rejected() -> None:
    data = [
        {"targets": ["h:80"], "labels": {"app": "web"}},
        {"app": "api", "ip": "h", "port": 81},
    ]
    assert document_error(data) == (
        "targets.json: entry 2: is a target object but entry 1 is a file_sd group; use one shape"
    )


def test_file_sd_groups_are_accepted_in_the_variable_too() -> None:
    text = '[{"targets": ["h:80"], "labels": {"app": "web"}}]'
    assert parse_targets_env(text) == [Target("web-h-80", "web", "h", "80", "/health")]


# --- properties ----------------------------------------------------------------------------------

_UNSAFE_ALPHABET = st.sampled_from(list("web=:[]/.,-_ \n\t\r#{}\"'%;\\é0123456789afAF\x00\x7f"))


@given(st.text(alphabet=_UNSAFE_ALPHABET, max_size=60))
def test_random_compact_text_never_yields_unsafe_targets(text: str) -> None:
    try:
        parsed = parse_targets_env(text)
    except ConfigError as exc:
        assert_one_line(exc)
        return
    for target in parsed:
        assert_safe(target)


@given(
    app=st.text(max_size=20),
    host=st.text(max_size=20) | st.ip_addresses().map(str),
    port=st.integers(-5, 70000) | st.text(max_size=6),
    path=st.text(max_size=20).map(lambda text: "/" + text),
    target_id=st.none() | st.text(max_size=20),
)
def test_random_objects_never_yield_unsafe_targets(
    app: str, host: str, port: object, path: str, target_id: str | None
) -> None:
    entry = {"app": app, "ip": host, "port": port, "path": path, "id": target_id}
    try:
        parsed = parse_targets_document([entry], "test")
    except ConfigError as exc:
        assert_one_line(exc)
        return
    assert_safe(parsed[0])


# --- providers -----------------------------------------------------------------------------------


WEB = Target("web-10.0.0.5-8080", "web", "10.0.0.5", "8080", "/health")
API = Target("api-10.0.0.6-9000", "api", "10.0.0.6", "9000", "/ping")


def test_static_provider_returns_its_targets_in_order() -> None:
    provider = StaticTargetProvider([WEB, API])
    assert provider.get_health_check_targets() == [WEB, API]
    assert isinstance(provider, TargetProvider)


def test_static_provider_is_not_changed_through_the_returned_list() -> None:
    provider = StaticTargetProvider([WEB])
    provider.get_health_check_targets().append(API)
    assert provider.get_health_check_targets() == [WEB]
