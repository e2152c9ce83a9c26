"""Targets to check, from `HEALTHCHECK_TARGETS` or a JSON/YAML file, and their providers.

Every field is validated before a `Target` exists. `app` and `id` end up in HAProxy config files,
so they are limited to `[A-Za-z0-9._:-]`; paths end up in HTTP request lines, so they are limited
to printable ASCII without spaces. Check options (`exporter.checks.options`) are validated the
same way and laid over `HEALTHCHECK_CHECK_DEFAULTS` (`defaults`). Errors are `ConfigError`s naming
the source, the entry and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from exporter.checks.options import (
    LABEL_KEYS,
    OPTION_KEYS,
    SCHEMES,
    OptionValues,
    build_options,
    merge_options,
    option_values,
)
from exporter.model import DEFAULT_CHECK_OPTIONS, CheckOptions, Target
from exporter.settings import (
    ConfigError,
    check_host,
    check_port_range,
    parse_port,
    quoted,
    split_host_port,
)
from exporter.settings import type_name as _type_name

DEFAULT_HEALTH_CHECK_PATH = "/health"

_NAME = re.compile(r"[A-Za-z0-9._:-]{1,253}")
_PATH_MAX_LENGTH = 1024
_PATH = re.compile(r"/[\x21-\x7e]*")
_OBJECT_KEYS = ("app", "id", "ip", "path", "port")
_DEFAULT_PORTS = {"http": "80", "https": "443"}  # when a compact entry names its scheme
_GROUP_KEYS = ("labels", "targets")
_COMPACT_SEPARATORS = re.compile(r"[\s,]+")


# --- fields --------------------------------------------------------------------------------------


def _check_name(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {_type_name(value)}")
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{key} {quoted(value)} must be 1-253 characters of letters, digits, '.', '_', ':', '-'"
        )
    return value


def _check_ip(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"ip must be a string, got {_type_name(value)}")
    return check_host(value)


def _check_port(value: object) -> str:
    """The port as a decimal string; JSON/YAML may give an int or a string of digits."""
    if isinstance(value, str):
        return str(parse_port(value))
    if isinstance(value, int) and not isinstance(value, bool):
        check_port_range(value)
        return str(value)
    raise ValueError(f"port must be a number or a string of digits, got {_type_name(value)}")


def _check_path(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"path must be a string, got {_type_name(value)}")
    if not value.startswith("/"):
        raise ValueError(f"path {quoted(value)} must start with '/'")
    if len(value) > _PATH_MAX_LENGTH:
        raise ValueError(f"path longer than {_PATH_MAX_LENGTH} characters")
    if not _PATH.fullmatch(value):
        raise ValueError(f"path {quoted(value)} may only contain printable ASCII without spaces")
    return value


def _build_target(
    app: object,
    ip: object,
    port: object,
    path: object,
    target_id: object = None,
    options: CheckOptions = DEFAULT_CHECK_OPTIONS,
) -> Target:
    """A Target from unchecked values; `target_id` None means the default `app-ip-port`."""
    app = _check_name("app", app)
    ip = _check_ip(ip)
    port = _check_port(port)
    path = _check_path(path)
    if target_id is None:
        # Its characters are valid already (app, an IP or hostname, digits); only length is left.
        target_id = f"{app}-{ip}-{port}"
        if len(target_id) > 253:
            raise ValueError(f"default id {quoted(target_id)} is over 253 characters; set 'id'")
    else:
        target_id = _check_name("id", target_id)
    return Target(
        id=target_id, app_name=app, ip=ip, port=port, health_check_path=path, options=options
    )


def _target_options(
    given: dict[str, object], defaults: OptionValues, path_given: bool
) -> CheckOptions:
    """The options a target sets in `given` (option keys only), over the defaults."""
    own = option_values(given)
    options = build_options(merge_options(defaults, own), own)
    if path_given and options.scheme == "tcp":
        raise ValueError("path: does not apply to scheme tcp (a TCP check sends nothing)")
    return options


# --- parsing -------------------------------------------------------------------------------------


@contextmanager
def _located(source: str, location: str) -> Iterator[None]:
    """Turn a ValueError raised inside into a ConfigError naming the source and the entry."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"{source}: {location}: {exc}") from None


def _unique(located: list[tuple[str, Target]], source: str) -> list[Target]:
    """The targets in order, after checking no id is used twice."""
    first_location: dict[str, str] = {}
    for location, target in located:
        if target.id in first_location:
            raise ConfigError(
                f"{source}: {location}: duplicate id {quoted(target.id)}"
                f" (also {first_location[target.id]})"
            )
        first_location[target.id] = location
    return [target for _, target in located]


def _parse_compact_entry(entry: str, defaults: OptionValues | None = None) -> Target:
    """`app=[scheme://]host:port[/path]`, the host an IPv4 address, a hostname or `[ipv6]`; with
    `http://` or `https://` the port may be left out (80, 443)."""
    app, equals, address = entry.partition("=")
    if not equals:
        raise ValueError("expected app=[scheme://]host:port[/path]")
    given: dict[str, object] = {}
    scheme, separator, rest = address.partition("://")
    if separator:
        if scheme.lower() not in SCHEMES:
            raise ValueError(f"unknown scheme {quoted(scheme)} (expected one of: http, https, tcp)")
        given["scheme"], address = scheme, rest
    host_port, slash, path = address.partition("/")
    if "scheme" in given and not _has_port(host_port):
        if scheme.lower() not in _DEFAULT_PORTS:
            raise ValueError(f"missing ':port' ({scheme}:// has no default port)")
        host_port += ":" + _DEFAULT_PORTS[scheme.lower()]
    host, port = split_host_port(host_port)
    options = _target_options(given, defaults or {}, path_given=bool(slash))
    return _build_target(
        app, host, port, slash + path if slash else DEFAULT_HEALTH_CHECK_PATH, None, options
    )


def _has_port(host_port: str) -> bool:
    if host_port.startswith("["):
        return not host_port.endswith("]")
    return ":" in host_port


def parse_targets_env(
    text: str, source: str = "HEALTHCHECK_TARGETS", *, defaults: OptionValues | None = None
) -> list[Target]:
    """Targets from the variable's text: a JSON list (if it starts with `[`) or compact entries.

    Compact: `app=[scheme://]host:port[/path]` entries separated by commas and/or whitespace,
    e.g. `web=10.0.0.5:8080/healthz, web=[fd00::2]:8080 api=https://backend.internal/ping`.
    JSON: the shapes `parse_targets_document` accepts (`[]` is an explicit "no targets").
    Text with separators only (`,`, spaces) is an error: it is a mistake, never a wish for none.
    `defaults` (from `HEALTHCHECK_CHECK_DEFAULTS`) are the options of a target that does not set
    them.
    """
    if text.strip().startswith("["):
        try:
            data = decode_json(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return parse_targets_document(data, source, defaults=defaults)
    located: list[tuple[str, Target]] = []
    entries = [entry for entry in _COMPACT_SEPARATORS.split(text) if entry]
    if not entries:
        raise ConfigError(
            f"{source}: no targets in {quoted(text)} (expected app=host:port[/path] entries;"
            " write [] for none)"
        )
    for index, entry in enumerate(entries, 1):
        location = f"entry {index} {quoted(entry)}"
        with _located(source, location):
            located.append((location, _parse_compact_entry(entry, defaults)))
    return _unique(located, source)


def _check_keys(entry: dict[object, object], allowed: tuple[str, ...]) -> None:
    for key in entry:
        if key not in allowed:
            raise ValueError(f"unknown key {quoted(key)} (expected one of: {', '.join(allowed)})")


def _check_object_keys(entry: dict[object, object]) -> None:
    for key in entry:
        if key not in _OBJECT_KEYS and key not in OPTION_KEYS:
            close = difflib.get_close_matches(
                str(key), [*_OBJECT_KEYS, *OPTION_KEYS], n=1, cutoff=0.8
            )
            hint = f"did you mean {quoted(close[0])}? " if close else ""
            raise ValueError(
                f"unknown key {quoted(key)} ({hint}expected one of: {', '.join(_OBJECT_KEYS)},"
                f" or a check option: {', '.join(OPTION_KEYS)})"
            )


def _parse_object(entry: dict[object, object], defaults: OptionValues | None = None) -> Target:
    """`{"app": ..., "ip": ..., "port": ..., "path"?: ..., "id"?: ..., option keys?}`; null
    means default (for an option too: the default's value, or the plain check's)."""
    _check_object_keys(entry)
    for key in ("app", "ip", "port"):
        if key not in entry:
            raise ValueError(f"missing required key {quoted(key)}")
    path = entry.get("path")
    target = _build_target(
        entry["app"],
        entry["ip"],
        entry["port"],
        DEFAULT_HEALTH_CHECK_PATH if path is None else path,
        entry.get("id"),
    )
    given = {
        str(key): value for key, value in entry.items() if key in OPTION_KEYS and value is not None
    }
    try:
        options = _target_options(given, defaults or {}, path_given=path is not None)
    except ValueError as exc:
        raise ValueError(f"target {quoted(target.id)}: {exc}") from None
    return dataclasses.replace(target, options=options)


def _group_fields(
    group: dict[object, object], defaults: OptionValues | None = None
) -> tuple[list[str], str, str, str | None, CheckOptions]:
    """Addresses, app, path, id and check options of a file_sd group; labels that are neither
    those nor an option (`LABEL_KEYS`) are ignored, as Prometheus' other labels."""
    _check_keys(group, _GROUP_KEYS)
    addresses = group["targets"]
    if not isinstance(addresses, list) or not all(isinstance(item, str) for item in addresses):
        raise ValueError("'targets' must be a list of 'host:port' strings")
    labels = group.get("labels")
    if not isinstance(labels, dict) or "app" not in labels:
        raise ValueError("missing label 'app' (file_sd groups need labels: {app: ...})")
    app = _check_name("app", labels["app"])
    path = labels.get("path")
    path = DEFAULT_HEALTH_CHECK_PATH if path is None else _check_path(path)
    target_id = labels.get("id")
    if target_id is not None:
        target_id = _check_name("id", target_id)
        if len(addresses) != 1:
            raise ValueError(
                f"label 'id' needs exactly one target in the group, got {len(addresses)}"
            )
    given = {  # null means not set, as in a target object
        str(key): value for key, value in labels.items() if key in LABEL_KEYS and value is not None
    }
    try:
        options = _target_options(given, defaults or {}, path_given=labels.get("path") is not None)
    except ValueError as exc:
        raise ValueError(f"label {exc}") from None
    return addresses, app, path, target_id, options


def parse_targets_document(
    data: object, source: str, *, defaults: OptionValues | None = None
) -> list[Target]:
    """Targets from decoded JSON/YAML: a list of target objects or of Prometheus file_sd groups.

    Objects: `{"app", "ip", "port", "path"?, "id"?}` and check options. file_sd groups:
    `{"targets": ["host:port", ...], "labels": {"app": ..., "path"?: ..., "id"?: ...}}` and
    option labels, `id` only in a group of one target. All entries must have the same shape;
    `[]` is no targets. `defaults` are the options of a target that does not set them.
    """
    if not isinstance(data, list):
        raise ConfigError(f"{source}: top level must be a list of targets, got {_type_name(data)}")
    located: list[tuple[str, Target]] = []
    first_shape: str | None = None
    for index, entry in enumerate(data, 1):
        location = f"entry {index}"
        with _located(source, location):
            if not isinstance(entry, dict):
                raise ValueError(f"expected an object, got {_type_name(entry)}")
            shape = "a file_sd group" if "targets" in entry else "a target object"
            first_shape = first_shape or shape
            if shape != first_shape:
                raise ValueError(f"is {shape} but entry 1 is {first_shape}; use one shape")
            if shape == "a target object":
                located.append((location, _parse_object(entry, defaults)))
                continue
            addresses, app, path, target_id, options = _group_fields(entry, defaults)
        for number, address in enumerate(addresses, 1):
            target_location = f"{location} target {number} {quoted(address)}"
            with _located(source, target_location):
                host, port = split_host_port(address)
                target = _build_target(app, host, port, path, target_id, options)
                located.append((target_location, target))
    return _unique(located, source)


def decode_json(text: str) -> object:
    """`json.loads` whose every failure is a ValueError with a one-line, user-facing message.

    Besides syntax errors, Python refuses nesting deeper than its recursion limit and integers
    of more than 4,300 digits; both are bad input, not crashes.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ValueError(f"invalid JSON: {NESTED_TOO_DEEPLY}") from None
    except ValueError:  # int() refusing a number of thousands of digits
        raise ValueError(f"invalid JSON: {NUMBER_TOO_LONG}") from None


NESTED_TOO_DEEPLY = "nested too deeply (a targets document is a flat list of objects)"
NUMBER_TOO_LONG = "a number has thousands of digits"


# --- providers -----------------------------------------------------------------------------------


class StaticTargetProvider:
    """A fixed list of targets (seed: a `TargetProvider`), e.g. from HEALTHCHECK_TARGETS."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = list(targets)

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)
