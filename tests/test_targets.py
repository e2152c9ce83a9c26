"""Target parsing (env text, JSON/YAML documents, files) and the static and file providers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import targets as targets_module
from exporter.model import Target, TargetProvider
from exporter.settings import ConfigError
from exporter.targets import (
    FileTargetProvider,
    StaticTargetProvider,
    load_targets_file,
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


@pytest.mark.parametrize("text", ["", "   ", " , \n"])
def test_empty_targets_text_gives_no_targets(text: str) -> None:
    assert parse_targets_env(text) == []


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


# --- files ---------------------------------------------------------------------------------------

WEB_JSON = '[{"app": "web", "ip": "10.0.0.5", "port": 8080}]'
WEB = Target("web-10.0.0.5-8080", "web", "10.0.0.5", "8080", "/health")
API = Target("api-10.0.0.6-9000", "api", "10.0.0.6", "9000", "/ping")
WEB_AND_API_JSON = json.dumps(
    [
        {"app": "web", "ip": "10.0.0.5", "port": 8080},
        {"app": "api", "ip": "10.0.0.6", "port": 9000, "path": "/ping"},
    ]
)


def file_error(path: Path) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_targets_file(path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_json_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(WEB_AND_API_JSON)
    assert load_targets_file(path) == [WEB, API]


@pytest.mark.parametrize("name", ["targets.yml", "targets.yaml", "targets.YML"])
def test_yaml_file_is_loaded(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(
        "# backends\n- app: web\n  ip: 10.0.0.5\n  port: 8080\n"
        "- {app: api, ip: 10.0.0.6, port: '9000', path: /ping}\n"
    )
    assert load_targets_file(path) == [WEB, API]


def test_yaml_file_accepts_file_sd_groups(tmp_path: Path) -> None:
    path = tmp_path / "sd.yml"
    path.write_text("- targets: ['10.0.0.5:8080']\n  labels: {app: web, team: core}\n")
    assert load_targets_file(path) == [WEB]


@pytest.mark.parametrize(
    ("name", "text"),
    [("targets", WEB_JSON), ("targets.txt", "- {app: web, ip: 10.0.0.5, port: 8080}")],
)
def test_file_with_other_extension_is_read_as_json_or_yaml(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_targets_file(path) == [WEB]


def test_file_with_byte_order_mark_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_bytes(b"\xef\xbb\xbf" + WEB_JSON.encode())
    assert load_targets_file(path) == [WEB]


def test_file_with_empty_list_gives_no_targets(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("[]\n")
    assert load_targets_file(path) == []


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "targets.json"
    path.write_text(content)
    assert file_error(path) == "file is empty"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    assert file_error(tmp_path / "nope.json") == "cannot read: No such file or directory"


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_bytes(b'[{"app": "w\xff"}]')
    assert file_error(path) == "not UTF-8 text (bad byte at offset 11)"


def test_json_file_syntax_error_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text('[\n  {"app": "web"},\n  {"app": }\n]')
    assert file_error(path) == "invalid JSON at line 3 column 11: Expecting value"


def test_yaml_file_syntax_error_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- app: web\n  ip: 10.0.0.5\n  port: [8080\n")
    assert file_error(path).startswith("invalid YAML at line 4 column 1: ")


def test_yaml_file_with_python_tags_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- !!python/object/apply:os.system ['true']\n")
    assert file_error(path).startswith("invalid YAML at line 1 column 3: could not determine")


@pytest.mark.parametrize(
    ("text", "reason"), [("app: web\n", "an object"), ("# only a comment\n", "null")]
)
def test_file_top_level_must_be_a_list(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "targets.yml"
    path.write_text(text)
    assert file_error(path) == f"top level must be a list of targets, got {reason}"


def test_file_entry_errors_name_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text(
        "- {app: a, ip: h, port: 1}\n- {app: b, ip: h, port: 2}\n- {app: c, adress: h, port: 3}\n"
    )
    assert file_error(path).startswith(
        "entry 3: unknown key 'adress' (expected one of: app, id, ip, path, port, or a check"
    )


def test_yaml_boolean_app_name_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- {app: yes, ip: h, port: 1}\n")
    assert file_error(path) == "entry 1: app must be a string, got a boolean"


# --- providers -----------------------------------------------------------------------------------


def test_static_provider_returns_its_targets_in_order() -> None:
    provider = StaticTargetProvider([WEB, API])
    assert provider.get_health_check_targets() == [WEB, API]
    assert isinstance(provider, TargetProvider)


def test_static_provider_is_not_changed_through_the_returned_list() -> None:
    provider = StaticTargetProvider([WEB])
    provider.get_health_check_targets().append(API)
    assert provider.get_health_check_targets() == [WEB]


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("tests.targets")


@pytest.fixture
def targets_file(tmp_path: Path) -> Path:
    path = tmp_path / "targets.json"
    path.write_text(WEB_JSON)
    return path


@pytest.fixture
def provider(targets_file: Path, logger: logging.Logger) -> FileTargetProvider:
    provider = FileTargetProvider(targets_file, logger)
    provider.load_initial()
    return provider


def test_file_provider_load_initial_reads_the_file(provider: FileTargetProvider) -> None:
    assert provider.get_health_check_targets() == [WEB]
    assert isinstance(provider, TargetProvider)
    assert provider.reload_successes == 1
    assert provider.reload_failures == 0
    assert provider.last_reload_success_time == pytest.approx(time.time(), abs=5)
    assert provider.last_error is None


@pytest.mark.parametrize("content", [None, "", "[{]"])
def test_file_provider_load_initial_raises_on_a_bad_file(
    tmp_path: Path, logger: logging.Logger, content: str | None
) -> None:
    path = tmp_path / "targets.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: "):
        FileTargetProvider(path, logger).load_initial()


def test_file_provider_get_targets_does_no_io(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    targets_file.unlink()
    assert provider.get_health_check_targets() == [WEB]


def test_file_provider_reload_reports_whether_targets_changed(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    assert provider.reload() is False
    targets_file.write_text(WEB_AND_API_JSON)
    assert provider.reload() is True
    assert provider.get_health_check_targets() == [WEB, API]
    assert provider.reload_successes == 3


def test_file_provider_reload_keeps_previous_targets_on_error(
    provider: FileTargetProvider, targets_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    targets_file.write_text('[{"app": "web"}]')
    with caplog.at_level(logging.ERROR, logger="tests.targets"):
        assert provider.reload() is False
    assert provider.get_health_check_targets() == [WEB]
    assert provider.reload_failures == 1
    assert provider.last_error == f"{targets_file}: entry 1: missing required key 'ip'"
    [record] = caplog.records
    assert record.getMessage() == "targets file invalid, keeping previous targets"
    assert record.__dict__["file"] == str(targets_file)
    assert record.__dict__["error"] == provider.last_error


def test_file_provider_success_after_failure_clears_last_error(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    targets_file.write_text("")
    provider.reload()
    targets_file.write_text(WEB_AND_API_JSON)
    assert provider.reload() is True
    assert provider.last_error is None
    assert (provider.reload_successes, provider.reload_failures) == (2, 1)


# --- watching ------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached before the deadline")
        await asyncio.sleep(0.01)


class ChangeCounter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class StatCounter:
    """Counts the watcher's stats of the file, optionally running an action before each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.before_stat: Callable[[], None] | None = None
        real = targets_module._file_signature

        def counting(path: Path) -> tuple[int, int, int] | None:
            if self.before_stat is not None:
                self.before_stat()
            self.calls += 1
            return real(path)

        monkeypatch.setattr(targets_module, "_file_signature", counting)

    async def wait_for_polls(self, count: int) -> None:
        target = self.calls + count
        await wait_until(lambda: self.calls >= target)


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> StatCounter:
    return StatCounter(monkeypatch)


@pytest.fixture
async def watch(
    provider: FileTargetProvider,
) -> AsyncIterator[tuple[ChangeCounter, asyncio.Task[None]]]:
    on_change = ChangeCounter()
    task = asyncio.create_task(provider.watch(on_change, poll_interval=POLL))
    yield on_change, task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# What another process does to the file while the exporter watches it (tiny, synchronous).


def write_in_place(path: Path, text: str) -> None:
    path.write_text(text)


def replace_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def delete(path: Path) -> None:
    path.unlink()


def inode(path: Path) -> int:
    return path.stat().st_ino


async def test_file_provider_picks_up_in_place_edit(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_picks_up_atomic_rename(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    old_inode = inode(targets_file)
    replace_atomically(targets_file, WEB_AND_API_JSON)
    assert inode(targets_file) != old_inode
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_keeps_previous_targets_when_file_becomes_empty(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    write_in_place(targets_file, "")
    await wait_until(lambda: provider.reload_failures == 1)
    assert provider.get_health_check_targets() == [WEB]
    assert provider.last_error == f"{targets_file}: file is empty"
    replace_atomically(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]
    assert provider.last_error is None


async def test_file_provider_keeps_previous_targets_when_file_is_deleted_and_logs_once(
    provider: FileTargetProvider,
    targets_file: Path,
    stats: StatCounter,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_change, _ = watch
    with caplog.at_level(logging.ERROR, logger="tests.targets"):
        delete(targets_file)
        await wait_until(lambda: provider.reload_failures == 1)
        await stats.wait_for_polls(5)
    assert provider.reload_failures == 1
    assert len(caplog.records) == 1
    assert "No such file or directory" in caplog.records[0].__dict__["error"]
    assert provider.get_health_check_targets() == [WEB]
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_does_not_read_an_unchanged_file(
    provider: FileTargetProvider,
    stats: StatCounter,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    await stats.wait_for_polls(5)
    assert provider.reload_successes == 1  # the initial load only
    assert on_change.calls == 0


async def test_file_provider_does_not_report_a_change_when_targets_are_equal(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    write_in_place(targets_file, WEB_JSON.replace(", ", ",\n  ") + "\n")
    await wait_until(lambda: provider.reload_successes == 2)
    assert on_change.calls == 0


async def test_file_provider_waits_until_the_file_has_settled(
    provider: FileTargetProvider,
    targets_file: Path,
    stats: StatCounter,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    pieces = [WEB_AND_API_JSON[i : i + 20] for i in range(0, len(WEB_AND_API_JSON), 20)]
    written: list[str] = []

    def write_next_piece() -> None:  # the writer gets ahead of every stat until it is done
        if len(written) < len(pieces):
            written.append(pieces[len(written)])
            write_in_place(targets_file, "".join(written))

    stats.before_stat = write_next_piece
    await wait_until(lambda: on_change.calls == 1)
    assert len(written) == len(pieces) > 3
    assert provider.reload_failures == 0
    assert provider.reload_successes == 2
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_watch_survives_a_failing_on_change(
    provider: FileTargetProvider, targets_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def failing_on_change() -> None:
        calls.append(len(calls))
        raise RuntimeError("callback broke")

    task = asyncio.create_task(provider.watch(failing_on_change, poll_interval=POLL))
    try:
        with caplog.at_level(logging.ERROR, logger="tests.targets"):
            write_in_place(targets_file, WEB_AND_API_JSON)
            await wait_until(lambda: len(calls) == 1)
            replace_atomically(targets_file, "[]")
            await wait_until(lambda: len(calls) == 2)
        assert not task.done()
        assert any(record.exc_info for record in caplog.records)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_file_provider_watch_survives_an_unexpected_error(
    provider: FileTargetProvider,
    targets_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, task = watch
    attempts: list[Path] = []

    def broken_loader(path: Path, **_: object) -> list[Target]:
        attempts.append(path)
        raise RuntimeError("unexpected")

    monkeypatch.setattr(targets_module, "load_targets_file", broken_loader)
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: len(attempts) == 1)
    monkeypatch.undo()
    replace_atomically(targets_file, "[]")
    await wait_until(lambda: on_change.calls == 1)
    assert not task.done()
    assert provider.get_health_check_targets() == []


async def test_file_provider_watch_stops_when_cancelled(
    provider: FileTargetProvider,
) -> None:
    task = asyncio.create_task(provider.watch(ChangeCounter(), poll_interval=POLL))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
