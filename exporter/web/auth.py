"""Basic auth, required client certificates and the configured response headers, for every
endpoint but `/-/healthy` and `/-/ready` (which container and orchestrator probes reach without
credentials: our one difference from the exporter-toolkit).

bcrypt runs in a worker thread, never on the event loop. A good password is remembered (as a
SHA-256 digest) so a scrape every few seconds does not cost a bcrypt hash each; an unknown user
is checked against a dummy hash of the same cost, so it takes as long as a known one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections.abc import Awaitable, Callable

import bcrypt
from aiohttp import web

from exporter.web.config import WebConfig

OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
BCRYPT_MAX_PASSWORD = 72  # bcrypt 5 refuses longer passwords

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(user: str, password: bytes) -> bytes:
    return hashlib.sha256(user.encode() + b"\0" + password).digest()


class Guard:
    """The access rules of one web config; `apply` swaps in a reloaded one."""

    def __init__(self, config: WebConfig) -> None:
        self.apply(config)

    def apply(self, config: WebConfig) -> None:
        self.users = dict(config.users)
        self.headers = dict(config.headers)
        self.require_client_cert = config.tls is not None and config.tls.requires_client_cert
        self._cost = config.bcrypt_cost
        self._dummy: bytes | None = None  # made in a worker thread on first use
        self._good: dict[str, bytes] = {}  # user -> digest of the last password that passed

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            if self.require_client_cert and not _peer_certificate(request):
                return web.Response(status=403, text="A client certificate is required\n")
            if self.users and not await self.authorized(request.headers.get("Authorization")):
                return web.Response(
                    status=401,
                    text="Unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="healthcheck-exporter"'},
                )
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """The configured headers on every response (the status page's own CSP gives way)."""
        response.headers.update(self.headers)

    async def authorized(self, header: str | None) -> bool:
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        if len(password) > BCRYPT_MAX_PASSWORD:
            return False
        digest = _digest(user, password)
        known = self._good.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        hashed = self.users.get(user)
        ok = await asyncio.to_thread(self._check, password, hashed)
        if ok and hashed is not None and self.users.get(user) == hashed:
            self._good[user] = digest
        return ok and hashed is not None

    def _check(self, password: bytes, hashed: bytes | None) -> bool:
        """In a worker thread: bcrypt against the user's hash, or the dummy for an unknown one."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(self._cost))
            bcrypt.checkpw(password, self._dummy)
            return False
        return bcrypt.checkpw(password, hashed)


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _peer_certificate(request: web.Request) -> bool:
    """Whether the client presented a certificate (verified: the handshake checked it)."""
    transport = request.transport
    return transport is not None and bool(transport.get_extra_info("peercert"))
