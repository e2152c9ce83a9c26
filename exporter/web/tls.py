"""The server's TLS context from the web config, and the watcher that re-reads the web config
and its certificates when their files change, with no restart (as the exporter-toolkit does)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from exporter.haproxy.files import read_regular
from exporter.settings import ConfigError
from exporter.web.config import TLS_VERSIONS, VARIABLE, TLSConfig, WebConfig, load_web_config

POLL_INTERVAL = 1.0


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The SSLContext for `tls`; raises ConfigError naming the file that would not load.

    A required client certificate is requested (and verified when given) during the handshake
    but enforced per request (`auth.py`), so `/-/healthy` and `/-/ready` answer any client.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    load_certificate(context, tls)
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"{VARIABLE}: tls_server_config.client_ca_file: {tls.client_ca_file}: {err}"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def load_certificate(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """(Re)load the certificate and key into `context`: the next handshake uses them."""
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"{VARIABLE}: tls_server_config.cert_file/key_file: {tls.cert_file}, "
            f"{tls.key_file}: {err}"
        ) from None


def _contents(path: Path) -> bytes | None:
    """The file's bytes (a config or a certificate: a few KiB), None if unreadable. Comparing
    contents, not mtimes, also sees a renewal that keeps size and timestamp."""
    try:
        return read_regular(path)  # a FIFO put in its place must not block the loop
    except (OSError, ValueError):
        return None


class WebConfigWatcher:
    """Polls the web config file and its certificate files; on a change, re-reads them and
    hands a valid new config to `apply`. A bad version is logged once and the old one kept."""

    def __init__(
        self,
        config: WebConfig,
        context: ssl.SSLContext | None,
        apply: Callable[[WebConfig], None],
        logger: logging.Logger,
    ) -> None:
        self.config = config
        self.context = context
        self._apply = apply
        self._logger = logger
        self._seen = self._signatures()

    def _signatures(self) -> tuple[bytes | None, ...]:
        files = [self.config.path, *(self.config.tls.files if self.config.tls else ())]
        return tuple(_contents(f) for f in files)

    async def watch(self, poll_interval: float = POLL_INTERVAL) -> None:
        while True:
            await asyncio.sleep(poll_interval)
            current = self._signatures()
            if current != self._seen:
                self._seen = current
                self.reload()

    def reload(self) -> bool:
        """Re-read everything now; True if the new version is in use."""
        try:
            config = load_web_config(self.config.path)
            if (config.tls is None) != (self.context is None) or (
                config.tls is not None
                and self.config.tls is not None
                and (config.tls.client_auth_type, config.tls.client_ca_file)
                != (self.config.tls.client_auth_type, self.config.tls.client_ca_file)
            ):
                raise ConfigError(
                    f"{VARIABLE}: {config.path}: turning TLS on or off, or changing client "
                    "certificate settings, needs a restart"
                )
            if config.tls is not None and self.context is not None:
                load_certificate(self.context, config.tls)
        except ConfigError as err:
            self._logger.error(
                "web config not reloaded, keeping the previous one", extra={"error": str(err)}
            )
            return False
        self.config = config
        self._seen = self._signatures()
        self._apply(config)
        self._logger.info("web config reloaded", extra={"file": str(config.path)})
        return True
