"""HEALTHCHECK_WEB_CONFIG_FILE: the web configuration file of Prometheus's exporter-toolkit
(github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md), parsed as
strictly as the toolkit parses it, so the file node_exporter reads works here unchanged.

Pure parsing and validation: certificates are only checked for existence here; `tls.py` loads
them. Every error names the file and the key (`tls_server_config.cert_file`).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from exporter.haproxy.files import read_regular
from exporter.settings import ConfigError

VARIABLE = "HEALTHCHECK_WEB_CONFIG_FILE"

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's tls.ClientAuthType names. Python's ssl cannot ask for a certificate without verifying it,
# so the two "any certificate" kinds have no equivalent: refused rather than silently stricter.
SUPPORTED_CLIENT_AUTH = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# The only headers the toolkit lets http_server_config.headers set.
ALLOWED_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
)
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
    "cipher_suites",
    "curve_preferences",
)
# Go cipher-suite and curve names do not map onto OpenSSL's one to one: refused, not guessed.
UNSUPPORTED_TLS_KEYS = ("cipher_suites", "curve_preferences")
HTTP_KEYS = ("http2", "headers")
BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    @property
    def files(self) -> tuple[Path, ...]:
        extra = () if self.client_ca_file is None else (self.client_ca_file,)
        return (self.cert_file, self.key_file, *extra)

    @property
    def requires_client_cert(self) -> bool:
        return self.client_auth_type == "RequireAndVerifyClientCert"


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TLSConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def bcrypt_cost(self) -> int:
        """The highest cost among the users' hashes: a dummy hash for unknown users uses it."""
        return max((int(h.split(b"$")[2]) for h in self.users.values()), default=10)


class _Problem(Exception):
    """One bad key: `where` names it (`tls_server_config.cert_file`)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


MAX_CONFIG_BYTES = 1 << 20


def load_web_config(path: Path) -> WebConfig:
    """Read and validate the file; raises ConfigError naming the file and the key."""
    try:
        # Never blocks on a FIFO; a web config is a few KiB, so a huge file is a mistake.
        data = read_regular(path, MAX_CONFIG_BYTES)
        if len(data) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB")
        text = data.decode("utf-8")
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{VARIABLE}: {path}: cannot read: {err}") from None
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{VARIABLE}: {path}: invalid YAML: {_one_line(err)}") from None
    try:
        return _parse(path, {} if document is None else document)
    except _Problem as problem:
        raise ConfigError(f"{VARIABLE}: {path}: {problem.where}: {problem.message}") from None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _mapping(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Problem(where, f"must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise _Problem(where, f"key {key!r} is not a string")
    return value


def _known_keys(mapping: Mapping[str, object], allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise _Problem(f"{where}{key}", f"unknown key (known: {', '.join(allowed)})")


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Problem(where, "must be a non-empty string")
    return value


def _parse(path: Path, document: object) -> WebConfig:
    top = _mapping(document, "(top level)")
    _known_keys(top, TOP_KEYS, "")
    base = path.parent
    tls = None
    if top.get("tls_server_config") is not None:
        tls = _parse_tls(_mapping(top["tls_server_config"], "tls_server_config"), base)
    headers: dict[str, str] = {}
    if top.get("http_server_config") is not None:
        headers = _parse_http(_mapping(top["http_server_config"], "http_server_config"))
    users: dict[str, bytes] = {}
    if top.get("basic_auth_users") is not None:
        users = _parse_users(_mapping(top["basic_auth_users"], "basic_auth_users"))
    return WebConfig(path, tls, headers, users)


def _parse_tls(section: Mapping[str, object], base: Path) -> TLSConfig | None:
    where = "tls_server_config."
    _known_keys(section, TLS_KEYS, where)
    for key in UNSUPPORTED_TLS_KEYS:
        if section.get(key) is not None:
            raise _Problem(where + key, "not supported by this exporter (OpenSSL's defaults apply)")
    files: dict[str, Path] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        if section.get(key) is not None:
            files[key] = _existing_file(base, _string(section[key], where + key), where + key)
    if not files:
        return None  # an empty tls_server_config: plain HTTP, as the toolkit
    if "cert_file" not in files:
        raise _Problem(where + "cert_file", "missing (key_file is set)")
    if "key_file" not in files:
        raise _Problem(where + "key_file", "missing (cert_file is set)")
    auth = section.get("client_auth_type") or "NoClientCert"
    if auth in UNSUPPORTED_CLIENT_AUTH:
        raise _Problem(
            where + "client_auth_type",
            f"{auth} is not supported (a certificate requested but not verified); use one of "
            + ", ".join(SUPPORTED_CLIENT_AUTH),
        )
    if auth not in SUPPORTED_CLIENT_AUTH:
        raise _Problem(
            where + "client_auth_type",
            f"invalid value {auth!r} (one of {', '.join(SUPPORTED_CLIENT_AUTH)})",
        )
    ca_file = files.get("client_ca_file")
    if ca_file is not None and auth == "NoClientCert":
        raise _Problem(
            where + "client_auth_type", "client_ca_file is set without a client auth type"
        )
    if ca_file is None and auth != "NoClientCert":
        raise _Problem(where + "client_ca_file", f"missing (needed by {auth})")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = section.get(key) or default
        if version not in TLS_VERSIONS:
            raise _Problem(
                where + key, f"invalid value {version!r} (one of {', '.join(TLS_VERSIONS)})"
            )
        versions[key] = str(version)
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise _Problem(where + "min_version", "is above max_version")
    prefer = section.get("prefer_server_cipher_suites")
    if prefer is not None and not isinstance(prefer, bool):
        raise _Problem(where + "prefer_server_cipher_suites", "must be true or false")
    return TLSConfig(files["cert_file"], files["key_file"], ca_file, str(auth), **versions)


def _existing_file(base: Path, text: str, where: str) -> Path:
    path = base / text  # relative to the web config file's directory, as the toolkit
    if not path.is_file():
        raise _Problem(where, f"{path} is not a readable file")
    return path


def _parse_http(section: Mapping[str, object]) -> dict[str, str]:
    where = "http_server_config."
    _known_keys(section, HTTP_KEYS, where)
    if section.get("http2") is not None and not isinstance(section["http2"], bool):
        raise _Problem(where + "http2", "must be true or false")  # HTTP/1.1 is served either way
    if section.get("headers") is None:
        return {}
    headers = _mapping(section["headers"], where + "headers")
    allowed = {name.lower(): name for name in ALLOWED_HEADERS}
    out = {}
    for name, value in headers.items():
        canonical = allowed.get(name.lower())
        if canonical is None:
            raise _Problem(
                f"{where}headers.{name}",
                f"header not allowed (one of {', '.join(ALLOWED_HEADERS)})",
            )
        text = _string(value, f"{where}headers.{name}")
        if not text.isprintable():
            raise _Problem(f"{where}headers.{name}", "must be printable text on one line")
        out[canonical] = text
    return out


def _parse_users(section: Mapping[str, object]) -> dict[str, bytes]:
    users = {}
    for user, hashed in section.items():
        where = f"basic_auth_users.{user}"
        if ":" in user or not user:
            raise _Problem(where, "a user name must be non-empty and hold no ':'")
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise _Problem(where, "not a bcrypt hash ($2y$10$ followed by 53 characters)")
        users[user] = hashed.encode()
    return users
