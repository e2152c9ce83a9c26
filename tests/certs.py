"""Throwaway certificates for TLS tests, made with the openssl command (ECDSA P-256, fast)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _key(path: Path) -> Path:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    return path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def make_ca(folder: Path, name: str) -> Pair:
    key = _key(folder / f"{name}.key")
    cert = folder / f"{name}.crt"
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
    )  # fmt: skip
    return Pair(cert, key)


def make_leaf(folder: Path, name: str, ca: Pair, *, server: bool) -> Pair:
    """A certificate signed by `ca`: for 127.0.0.1/localhost if `server`, else a client's."""
    key = _key(folder / f"{name}.key")
    csr = folder / f"{name}.csr"
    cert = folder / f"{name}.crt"
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    extensions = folder / f"{name}.ext"
    if server:
        extensions.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        )
    else:
        extensions.write_text("extendedKeyUsage=clientAuth\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return Pair(cert, key)


@dataclass(frozen=True)
class Certificates:
    ca: Pair
    server: Pair
    client: Pair
    stranger: Pair  # a client certificate from a CA the server does not trust


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "ca")
    other = make_ca(folder, "other-ca")
    return Certificates(
        ca,
        make_leaf(folder, "server", ca, server=True),
        make_leaf(folder, "client", ca, server=False),
        make_leaf(folder, "stranger", other, server=False),
    )
