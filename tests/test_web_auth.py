"""HEALTHCHECK_WEB_CONFIG_FILE: the exporter-toolkit web config (strict parsing, basic auth with
bcrypt, TLS with client certificates, reloads), with the real exporter and real Prometheus."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml

from exporter.web.auth import Guard
from exporter.web.config import load_web_config
from exporter.web.tls import WebConfigWatcher
from tests.certs import Certificates, make_certificates
from tests.observability import PROMTOOL_INSTALL, background_process, eventually, require_tool
from tests.process import exporter, run_cli
from tests.servers import target_server, unused_port
from tests.test_container import IMAGE

PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "web.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


# -- strict parsing: exit 2, one line naming the file and the key -----------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}, "x": 1}, "x"),
        ({"tls_server_config": {"cert_file": "server.crt"}}, "tls_server_config.key_file"),
        ({"tls_server_config": {"key_file": "server.key"}}, "tls_server_config.cert_file"),
        (
            {"tls_server_config": {"cert_file": "server.crt", "key_file": "nope.key"}},
            "tls_server_config.key_file",
        ),
        (
            {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                                   "client_auth_type": "RequireAnyClientCert",
                                   "client_ca_file": "ca.crt"}},
            "tls_server_config.client_auth_type",
        ),
        (
            {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                                   "client_auth_type": "Sometimes", "client_ca_file": "ca.crt"}},
            "tls_server_config.client_auth_type",
        ),
        (
            {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                                   "client_auth_type": "RequireAndVerifyClientCert"}},
            "tls_server_config.client_ca_file",
        ),
        (
            {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                                   "min_version": "TLS14"}},
            "tls_server_config.min_version",
        ),
        (
            {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                                   "colour": "blue"}},
            "tls_server_config.colour",
        ),
        ({"basic_auth_users": {"alice": "plaintext"}}, "basic_auth_users.alice"),
        ({"basic_auth_users": {"alice": HASH[:-1]}}, "basic_auth_users.alice"),
        ({"basic_auth_users": ["alice"]}, "basic_auth_users"),
        ({"http_server_config": {"headers": {"Server": "x"}}}, "http_server_config.headers.Server"),
        ({"http_server_config": {"http3": True}}, "http_server_config.http3"),
    ],
)  # fmt: skip
async def test_bad_web_config_is_exit_2_naming_the_file_and_key(
    tmp_path: Path, certs: Certificates, config: dict[str, Any], key: str
):
    for pair in (certs.server, certs.ca):
        for source in (pair.cert, pair.key):
            (tmp_path / source.name).write_bytes(source.read_bytes())
    path = write_config(tmp_path, config)
    env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:80", "HEALTHCHECK_WEB_CONFIG_FILE": str(path)}
    for command in (["validate"], []):
        code, out, err = await run_cli(*command, env=env)
        assert code == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err  # one line, no traceback
        assert str(path) in lines[0] and f": {key}: " in lines[0], lines[0]


async def test_unreadable_or_invalid_yaml_web_config_is_exit_2(tmp_path: Path):
    broken = tmp_path / "broken.yml"
    broken.write_text("basic_auth_users: [unclosed\n")
    fifo = tmp_path / "fifo.yml"  # opening it for reading would wait for a writer forever
    os.mkfifo(fifo)
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe\x00")
    for path in (broken, tmp_path / "missing.yml", fifo, binary, tmp_path):
        env = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:80", "HEALTHCHECK_WEB_CONFIG_FILE": str(path)}
        code, _, err = await run_cli("validate", env=env)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "HEALTHCHECK_WEB_CONFIG_FILE" in err and str(path) in err


# -- basic auth ------------------------------------------------------------------------------


async def test_basic_auth_guards_every_endpoint_but_healthy_and_ready(tmp_path: Path):
    config = {
        "basic_auth_users": {"alice": HASH},
        "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
    }
    path = write_config(tmp_path, config)
    async with target_server() as srv:
        env = {
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}",
            "HEALTHCHECK_WEB_CONFIG_FILE": str(path),
        }
        async with exporter(env) as proc, aiohttp.ClientSession() as session:
            for open_path in ("/-/healthy", "/-/ready"):
                assert (await proc.get(open_path))[0] == 200
            for guarded in ("/metrics", "/", "/api/v1/targets", "/static/status.js"):
                for headers in ({}, basic("alice", "wrong"), basic("mallory", PASSWORD)):
                    async with session.get(proc.base_url + guarded, headers=headers) as resp:
                        assert resp.status == 401, (guarded, headers)
                        assert resp.headers["WWW-Authenticate"].startswith("Basic")
                        assert resp.headers["X-Frame-Options"] == "deny"
                for _ in range(2):
                    url = proc.base_url + guarded
                    async with session.get(url, headers=basic("alice", PASSWORD)) as resp:
                        assert resp.status == 200, guarded
                        assert resp.headers["X-Frame-Options"] == "deny"
            headers = {"Authorization": "Basic !!!notbase64"}
            async with session.get(proc.base_url + "/metrics", headers=headers) as resp:
                assert resp.status == 401


async def test_bcrypt_runs_off_the_loop_good_passwords_are_cached_unknown_users_hash_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[tuple[bytes, int]] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append((hashed, threading.get_ident()))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    guard = Guard(load_web_config(write_config(tmp_path, {"basic_auth_users": {"alice": HASH}})))
    alice = basic("alice", PASSWORD)["Authorization"]
    assert await guard.authorized(alice)
    assert await guard.authorized(alice)  # remembered: no second hash
    assert len(calls) == 1 and calls[0][0] == HASH.encode()
    assert not await guard.authorized(basic("alice", "wrong")["Authorization"])
    assert len(calls) == 2  # a wrong password is always hashed
    assert not await guard.authorized(basic("mallory", PASSWORD)["Authorization"])
    assert len(calls) == 3 and calls[2][0] != HASH.encode()  # the dummy hash...
    assert calls[2][0][:7] == HASH.encode()[:7]  # ...of the same cost
    assert threading.get_ident() not in {thread for _, thread in calls}
    assert not await guard.authorized(basic("alice", "x" * 100)["Authorization"])


# -- TLS -------------------------------------------------------------------------------------


def tls_config(certs: Certificates, **extra: str) -> dict[str, Any]:
    return {
        "tls_server_config": {
            "cert_file": str(certs.server.cert),
            "key_file": str(certs.server.key),
            **extra,
        }
    }


def client_context(certs: Certificates, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca.cert))
    if client is not None:
        pair = getattr(certs, client)
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def require_client_certificates(tmp_path: Path, certs: Certificates) -> tuple[Path, dict[str, str]]:
    """A web config requiring client certificates, and the env of an exporter using it."""
    config = tls_config(
        certs, client_ca_file=str(certs.ca.cert), client_auth_type="RequireAndVerifyClientCert"
    )
    path = write_config(tmp_path, config)
    env = {
        "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{unused_port()}",
        "HEALTHCHECK_WEB_CONFIG_FILE": str(path),
    }
    return path, env


async def test_required_client_certificate_is_enforced_except_for_health_endpoints(
    tmp_path: Path, certs: Certificates
):
    path, env = require_client_certificates(tmp_path, certs)
    async with exporter(env) as proc, aiohttp.ClientSession() as session:
        assert proc.base_url.startswith("https://")
        url = proc.base_url + "/metrics"
        async with session.get(url, ssl=client_context(certs, "client")) as resp:
            assert resp.status == 200
        async with session.get(url, ssl=client_context(certs)) as resp:
            assert resp.status == 403  # no certificate
        async with session.get(proc.base_url + "/-/healthy", ssl=client_context(certs)) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientError):  # untrusted: the handshake fails
            async with session.get(url, ssl=client_context(certs, "stranger")):
                pass
        # The image's HEALTHCHECK command (with this Python) passes with TLS on.
        port = proc.base_url.rpartition(":")[2]
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            *IMAGE.healthcheck[1:],
            env={
                "HEALTHCHECK_LISTEN_ADDRESS": f":{port}",
                "HEALTHCHECK_WEB_CONFIG_FILE": str(path),
            },
        )
        assert await asyncio.wait_for(check.wait(), 10) == 0


async def test_certificate_is_reread_when_its_files_change(tmp_path: Path, certs: Certificates):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.crt", live / "server.key"
    cert.write_bytes(certs.server.cert.read_bytes())
    key.write_bytes(certs.server.key.read_bytes())
    path = write_config(
        live, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}
    )
    renewed = make_certificates(tmp_path / "renewed")  # a new CA and server certificate
    env = {
        "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{unused_port()}",
        "HEALTHCHECK_WEB_CONFIG_FILE": str(path),
    }
    async with exporter(env) as proc, aiohttp.ClientSession() as session:
        url = proc.base_url + "/metrics"
        async with session.get(url, ssl=client_context(certs)) as resp:
            assert resp.status == 200
        key.write_bytes(renewed.server.key.read_bytes())
        cert.write_bytes(renewed.server.cert.read_bytes())

        async def served_by_renewed() -> bool:
            try:
                async with session.get(url, ssl=client_context(renewed)) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(served_by_renewed, bool, what="the renewed certificate", timeout=15)
        await proc.wait_for_log("web config reloaded")


# -- the real Prometheus ---------------------------------------------------------------------


async def prometheus_target_health(
    tmp_path: Path, exporter_url: str, scrape: dict[str, Any]
) -> tuple[str, str]:
    """Run Prometheus scraping the exporter with `scrape` (TLS/auth settings) until its target
    has been scraped at least once; (health, lastError)."""
    binary = require_tool("prometheus", install=PROMTOOL_INSTALL)
    workdir = tmp_path / f"prometheus-{unused_port()}"
    workdir.mkdir()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "healthcheck-exporter",
                "scheme": "https",
                "static_configs": [{"targets": [exporter_url.removeprefix("https://")]}],
                **scrape,
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{unused_port()}"
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]
    async with (
        aiohttp.ClientSession() as session,
        background_process(argv, workdir / "prometheus.log", f"{url}/-/ready", session),
    ):

        async def target() -> dict[str, Any]:
            async with session.get(f"{url}/api/v1/targets") as resp:
                active = (await resp.json())["data"]["activeTargets"]
            return dict(active[0]) if active else {}

        found = await eventually(
            target, lambda t: t.get("health") in ("up", "down"), what="a scrape"
        )
        return found["health"], found["lastError"]


async def test_prometheus_scrapes_over_https_with_basic_auth_and_with_a_client_certificate(
    tmp_path: Path, certs: Certificates
):
    config = tls_config(
        certs, client_ca_file=str(certs.ca.cert), client_auth_type="VerifyClientCertIfGiven"
    )
    config["basic_auth_users"] = {"prometheus": HASH}
    path = write_config(tmp_path, config)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    async with target_server() as srv:
        env = {
            "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}",
            "HEALTHCHECK_WEB_CONFIG_FILE": str(path),
        }
        async with exporter(env) as proc:
            ca = {"ca_file": str(certs.ca.cert)}
            auth = {"basic_auth": {"username": "prometheus", "password_file": str(secret)}}
            health = await prometheus_target_health(
                tmp_path, proc.base_url, {"tls_config": ca, **auth}
            )
            assert health == ("up", "")
            wrong = {"basic_auth": {"username": "prometheus", "password": "wrong"}}
            health, error = await prometheus_target_health(
                tmp_path, proc.base_url, {"tls_config": ca, **wrong}
            )
            assert health == "down" and "401" in error

    path, env = require_client_certificates(tmp_path, certs)
    async with exporter(env) as proc:
        client = {
            "ca_file": str(certs.ca.cert),
            "cert_file": str(certs.client.cert),
            "key_file": str(certs.client.key),
        }
        health = await prometheus_target_health(tmp_path, proc.base_url, {"tls_config": client})
        assert health == ("up", "")
        stranger = {
            **client,
            "cert_file": str(certs.stranger.cert),
            "key_file": str(certs.stranger.key),
        }
        health, error = await prometheus_target_health(
            tmp_path, proc.base_url, {"tls_config": stranger}
        )
        assert health == "down" and error
        health, error = await prometheus_target_health(
            tmp_path, proc.base_url, {"tls_config": {"ca_file": str(certs.ca.cert)}}
        )
        assert health == "down" and "403" in error


async def test_reloaded_users_apply_and_a_bad_version_keeps_the_last_good_one(tmp_path: Path):
    path = write_config(tmp_path, {"basic_auth_users": {"alice": HASH}})
    config = load_web_config(path)
    guard = Guard(config)
    watcher = WebConfigWatcher(config, None, guard.apply, logging.getLogger("test"))
    alice = basic("alice", PASSWORD)["Authorization"]
    assert await guard.authorized(alice)
    other = bcrypt.hashpw(b"new password", bcrypt.gensalt(4)).decode()
    write_config(tmp_path, {"basic_auth_users": {"alice": other}})
    assert watcher.reload()
    assert not await guard.authorized(alice)  # the remembered good password is forgotten too
    assert await guard.authorized(basic("alice", "new password")["Authorization"])
    write_config(tmp_path, {"basic_auth_users": {"alice": "not a hash"}})
    assert not watcher.reload()
    assert await guard.authorized(basic("alice", "new password")["Authorization"])
    write_config(tmp_path, {"tls_server_config": {"cert_file": str(path), "key_file": str(path)}})
    assert not watcher.reload()  # turning TLS on needs a restart
