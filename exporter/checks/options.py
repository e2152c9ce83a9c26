"""Per-target check options (issue 12's table): parsing and validation into `CheckOptions`.

A target object, a file_sd group's labels, a Docker container's labels and
`HEALTHCHECK_CHECK_DEFAULTS` all give the same keys. Each key has one parser that accepts the
JSON/YAML value or a label's text (`"true"`, `"3"`, `"15s"`), so every source validates alike.
Parsing happens in three steps, each a pure function: `option_values` checks the keys given and
returns their values, `merge_options` lays a target's values over the defaults (headers merged
by name), `build_options` checks the combination and makes the immutable `CheckOptions`.
Timing keys are validated exactly as the exporter-wide settings of the same name.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from exporter.model import DEFAULT_CHECK_OPTIONS, CheckOptions
from exporter.settings import (
    ConfigError,
    Settings,
    check_host,
    describe_validation_error,
    format_duration,
    is_duration_field,
    quoted,
    type_name,
)

OptionValues = dict[str, Any]
"""Validated values of the options given, by `CheckOptions` field name; absent: not given."""

SCHEMES = ("http", "https", "tcp")
TLS_VERSIONS = ("TLS12", "TLS13")
HEADERS_MAX = 64
HEADER_VALUE_MAX_LENGTH = 4096
BODY_MAX_BYTES = 65536
EXPECT_BODY_MAX_LENGTH = 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # RFC 9110 token: no ':', no space
_HOST_HEADER = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no space, no CR/LF
_STATUS_ITEM = re.compile(r"\s*([0-9]{1,6})\s*(?:-\s*([0-9]{1,6})\s*)?")
# The engine frames the request itself: these headers would contradict it (or smuggle a
# second request past a proxy), and the Host header has its own option.
_RESERVED_HEADERS = {
    "host": "use the 'host' option",
    "content-length": "the engine sets it from 'body'",
    "transfer-encoding": "the engine sends 'body' with Content-Length",
    "connection": "every check opens a new connection and closes it",
}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    return value


# --- one parser per key --------------------------------------------------------------------------


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    """A parser of one of `choices`, any case (`https`, `TLS13`)."""

    def parse(value: object) -> str:
        for choice in choices:
            if _text(value).strip().lower() == choice.lower():
                return choice
        raise ValueError(f"{quoted(value)} is not one of {', '.join(choices)}")

    return parse


def _method(value: object) -> str:
    method = _text(value)
    if not _TOKEN.fullmatch(method):
        raise ValueError(
            f"{quoted(value)} is not an HTTP method (1-64 letters, digits or !#$%&'*+.^_`|~-)"
        )
    return method


def _host(value: object) -> str:
    host = _text(value)
    if not _HOST_HEADER.fullmatch(host):
        raise ValueError(f"{quoted(value)} must be 1-255 printable ASCII characters without spaces")
    return host


def _header(name: object, value: object) -> tuple[str, str]:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(
            f"name {quoted(name)} is not a header name (1-64 letters, digits or"
            " !#$%&'*+.^_`|~-; no ':' or whitespace)"
        )
    reserved = _RESERVED_HEADERS.get(name.lower())
    if reserved:
        raise ValueError(f"{quoted(name)} cannot be set here: {reserved}")
    if not isinstance(value, str):
        raise ValueError(f"{quoted(name)}: value must be a string, got {type_name(value)}")
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"{quoted(name)}: value must not contain CR, LF or NUL")
    if len(value) > HEADER_VALUE_MAX_LENGTH:
        raise ValueError(f"{quoted(name)}: value longer than {HEADER_VALUE_MAX_LENGTH} characters")
    return name, value.strip(" \t")


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object of header names to values, got {type_name(value)}")
    if len(value) > HEADERS_MAX:
        raise ValueError(f"more than {HEADERS_MAX} headers")
    headers = [_header(name, text) for name, text in value.items()]
    _check_unique_names(headers)
    return tuple(headers)


def _check_unique_names(headers: Iterable[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for name, _ in headers:
        if name.lower() in seen:
            raise ValueError(f"{quoted(name)} given twice (also as {quoted(seen[name.lower()])})")
        seen[name.lower()] = name


def _body(value: object) -> str:
    body = _text(value)
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (a lone surrogate)") from None
    if size > BODY_MAX_BYTES:
        raise ValueError(f"longer than {BODY_MAX_BYTES} bytes")
    return body


def parse_expect_status(text: str) -> tuple[tuple[int, int], ...]:
    """`200,204,300-308` as sorted, merged inclusive ranges; codes must be 100-599."""
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        match = _STATUS_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(
                f"{quoted(item.strip())} is not a status code or a range (e.g. 200,204,300-308)"
            )
        low = int(match[1])
        high = int(match[2] or match[1])
        for code in (low, high):
            if not 100 <= code <= 599:
                raise ValueError(f"status {code} is outside 100-599")
        if low > high:
            raise ValueError(f"range {low}-{high} is backwards")
        ranges.append((low, high))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def format_expect_status(ranges: Iterable[tuple[int, int]]) -> str:
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def _expect_status(value: object) -> tuple[tuple[int, int], ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(
            f"must be a string of codes and ranges (e.g. '200,204,300-308') or a number,"
            f" got {type_name(value)}"
        )
    return parse_expect_status(value)


def _expect_body(value: object) -> str:
    pattern = _text(value)
    if not pattern:
        raise ValueError("is empty (it would match any body)")
    if len(pattern) > EXPECT_BODY_MAX_LENGTH:
        raise ValueError(f"longer than {EXPECT_BODY_MAX_LENGTH} characters")
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"{quoted(pattern)} is not a valid regular expression: {exc}") from None
    return pattern


def _server_name(value: object) -> str:
    return check_host(_text(value))  # the same rules as a target's `ip`


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, got {quoted(value)}")


def _readable_file(value: object) -> str:
    path = _text(value)
    if not path or "\0" in path:
        raise ValueError(f"{quoted(path)} is not a file name")
    try:
        # A regular file only: opening a FIFO (or a device) could block the parser for ever.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"{path} is not a regular file")
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _setting_parser(setting: str) -> Callable[[object], object]:
    """A parser that validates like the exporter-wide setting (same syntax, same bounds)."""
    field = Settings.model_fields[setting]
    form: Any = Annotated[field.annotation, *field.metadata]
    adapter: TypeAdapter[Any] = TypeAdapter(form)

    def parse(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"must be a duration or a number, got {type_name(value)}")
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, is_duration_field(setting))) from None

    return parse


_PARSERS: dict[str, Callable[[object], object]] = {
    "scheme": _one_of(SCHEMES),
    "method": _method,
    "host": _host,
    "headers": _headers,
    "body": _body,
    "expect_status": _expect_status,
    "expect_body": _expect_body,
    "tls_server_name": _server_name,
    "tls_insecure_skip_verify": _flag,
    "tls_ca_file": _readable_file,
    "tls_cert_file": _readable_file,
    "tls_key_file": _readable_file,
    "tls_min_version": _one_of(TLS_VERSIONS),
    "interval": _setting_parser("interval"),
    "timeout": _setting_parser("timeout"),
    "fall": _setting_parser("fall"),
    "rise": _setting_parser("rise"),
    "fastinter": _setting_parser("interval"),
    "downinter": _setting_parser("interval"),
}
assert set(_PARSERS) == {f.name for f in fields(CheckOptions)}, "a field lacks its parser"

OPTION_KEYS: tuple[str, ...] = tuple(_PARSERS)
"""Every option key, in the order of the README's table."""
LABEL_KEYS: frozenset[str] = frozenset(OPTION_KEYS) - {"headers"}
"""The options a label can carry: every option whose value is one string."""

_HTTP_KEYS = frozenset({"method", "host", "headers", "body", "expect_status", "expect_body"})
_TLS_KEYS = frozenset(key for key in OPTION_KEYS if key.startswith("tls_"))


# --- the three steps -----------------------------------------------------------------------------


def option_values(given: Mapping[str, object]) -> OptionValues:
    """Validate the options `given` (all of them must be option keys); ValueError names the key."""
    values: OptionValues = {}
    for key, value in given.items():
        parser = _PARSERS.get(key)
        if parser is None:
            raise ValueError(f"unknown option {quoted(key)} (options: {', '.join(OPTION_KEYS)})")
        try:
            values[key] = parser(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return values


def merge_options(defaults: OptionValues, own: OptionValues) -> OptionValues:
    """The target's own values over the defaults; headers are merged by case-insensitive name,
    the target's winning."""
    merged = {**defaults, **own}
    if "headers" in defaults and "headers" in own:
        names = {name.lower() for name, _ in own["headers"]}
        kept = tuple(header for header in defaults["headers"] if header[0].lower() not in names)
        merged["headers"] = kept + own["headers"]
    return merged


def build_options(values: OptionValues, own_keys: Iterable[str] = ()) -> CheckOptions:
    """The CheckOptions for merged `values`, after checking they fit together.

    `own_keys` are the keys the target set itself: those must apply to its scheme (a default
    that does not apply, e.g. `expect_status` for a tcp target, is ignored).
    """
    scheme = values.get("scheme", "http")
    for key in own_keys:
        if scheme == "tcp" and key in _HTTP_KEYS | _TLS_KEYS:
            raise ValueError(f"{key}: does not apply to scheme tcp (a TCP check sends nothing)")
        if scheme == "http" and key in _TLS_KEYS:
            raise ValueError(f"{key}: applies only to scheme https")
    if scheme == "https" and values.get("tls_key_file") and not values.get("tls_cert_file"):
        raise ValueError("tls_key_file: needs tls_cert_file (the client certificate)")
    if scheme != "tcp" and values.get("method") == "HEAD" and values.get("expect_body"):
        raise ValueError("expect_body: a HEAD response has no body to match")
    if scheme != "https":
        values = {key: value for key, value in values.items() if key not in _TLS_KEYS}
    if scheme == "tcp":
        values = {key: value for key, value in values.items() if key not in _HTTP_KEYS}
    options = replace(DEFAULT_CHECK_OPTIONS, **values)
    # One shared object for the plain check: the engine's fast path can test identity.
    return DEFAULT_CHECK_OPTIONS if options == DEFAULT_CHECK_OPTIONS else options


# --- entry points for the sources ----------------------------------------------------------------


def parse_check_defaults(text: str) -> OptionValues:
    """`HEALTHCHECK_CHECK_DEFAULTS`: a JSON object of option keys; ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"must be a JSON object of check options, got {type_name(data)}")
    values = option_values(data)
    build_options(values)  # the combination must hold on its own (e.g. a key needs a cert)
    return values


def options_from_labels(
    labels: Mapping[str, str], where: str, defaults: OptionValues | None = None
) -> CheckOptions:
    """CheckOptions from string labels (file_sd labels, Docker `healthcheck.<option>` labels
    with the prefix removed), over `defaults`. Every label must be one of `LABEL_KEYS`; pass
    only the option labels. Raises ConfigError naming `where` and the label."""
    try:
        for key in labels:
            if key not in LABEL_KEYS:
                raise ValueError(
                    f"unknown option label {quoted(key)} (labels: {', '.join(sorted(LABEL_KEYS))})"
                )
        own = option_values(labels)
        return build_options(merge_options(defaults or {}, own), own)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def describe_options(options: CheckOptions) -> str:
    """The options that differ from the plain check, as `key=value` words (scheme left out: the
    URL shows it; header values and the body left out: they may hold secrets)."""
    words = []
    for field in fields(CheckOptions):
        value = getattr(options, field.name)
        if field.name == "scheme" or value == getattr(DEFAULT_CHECK_OPTIONS, field.name):
            continue
        words.append(f"{field.name}={_describe_value(field.name, value)}")
    return " ".join(words)


def _describe_value(key: str, value: Any) -> str:
    match key:
        case "headers":
            return ",".join(name for name, _ in value)
        case "body":
            return f"({len(value.encode('utf-8'))} bytes)"
        case "expect_status":
            return format_expect_status(value)
        case "interval" | "timeout" | "fastinter" | "downinter":
            return format_duration(value)
        case "tls_insecure_skip_verify":
            return "true" if value else "false"
    return quoted(value) if isinstance(value, str) and not _TOKEN.fullmatch(value) else str(value)
