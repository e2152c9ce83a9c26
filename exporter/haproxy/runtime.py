"""Runtime API mode: health changes become stats-socket commands, with no reload.

A state change is `set server <backend>/<server> state ready|maint|drain`; a new target is
`add server` (a plain command from HAProxy 2.6; the backend needs a dynamic balance algorithm), a
removed one `set server ... state maint` then `del server` (HAProxy refuses while connections
remain: the delete is retried on later updates), a moved one `set server ... addr`. What cannot be
done at runtime (a new backend, a hostname address, any refused command) asks for a reload of the
file, which always holds every server with unhealthy ones `disabled`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.haproxy.reload import ReloadError, cli_command
from exporter.haproxy.render import Backend


@dataclass(frozen=True, slots=True)
class ServerSpec:
    ip: str
    port: str
    healthy: bool


Key = tuple[str, str]  # (backend, server)
Desired = dict[Key, ServerSpec]


def desired_servers(backends: Iterable[Backend]) -> Desired:
    return {
        (b.name, s.name): ServerSpec(s.target.ip, s.target.port, s.healthy)
        for b in backends
        for s in b.servers
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class NeedsReload(Exception):
    """The change cannot be applied at runtime; the message says why."""


class RuntimeAPI:
    """Commands on an HAProxy stats socket (level admin), each checked against its answer."""

    def __init__(self, socket_path: Path, timeout: float, unhealthy_state: str = "maint") -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.unhealthy_state = unhealthy_state
        self.on_command: Callable[[bool], None] = lambda ok: None

    async def command(self, command: str, expect: str = "") -> str:
        """Run `command`; its answer must contain `expect` (or be empty when `expect` is "")."""
        try:
            answer = (await cli_command(self.socket_path, command, self.timeout)).strip()
        except (ReloadError, TimeoutError) as err:
            self.on_command(False)
            raise ReloadError(f"{command!r}: {err or 'timed out'}") from None
        ok = expect in answer if expect else answer == ""
        self.on_command(ok)
        if not ok:
            raise ReloadError(f"{command!r}: HAProxy answered {answer[:200]!r}")
        return answer

    async def actual(self, backend: str) -> dict[str, tuple[str, str]] | None:
        """server -> (ip, port) of the servers HAProxy has in `backend`; None if no such backend."""
        answer = await cli_command(self.socket_path, f"show servers state {backend}", self.timeout)
        if "Can't find backend" in answer:
            return None
        servers: dict[str, tuple[str, str]] = {}
        for line in answer.splitlines():
            fields = line.split()
            if len(fields) > 18 and fields[1] == backend:
                servers[fields[3]] = (fields[4], fields[18])
        return servers

    def _state(self, healthy: bool) -> str:
        return "ready" if healthy else self.unhealthy_state

    async def set_state(self, key: Key, healthy: bool) -> None:
        await self.command(f"set server {key[0]}/{key[1]} state {self._state(healthy)}")

    async def add(self, key: Key, spec: ServerSpec, options: str) -> None:
        if not _is_ip(spec.ip):
            raise NeedsReload(f"{key[0]}/{key[1]}: a hostname needs a reload to resolve")
        host = f"[{spec.ip}]" if ":" in spec.ip else spec.ip
        extra = f" {options}" if options else ""
        await self.command(
            f"add server {key[0]}/{key[1]} {host}:{spec.port}{extra}", "New server registered"
        )
        if spec.healthy:  # added servers start in maintenance
            await self.set_state(key, True)

    async def move(self, key: Key, spec: ServerSpec) -> None:
        if not _is_ip(spec.ip):
            raise NeedsReload(f"{key[0]}/{key[1]}: a hostname needs a reload to resolve")
        await self.command(
            f"set server {key[0]}/{key[1]} addr {spec.ip} port {spec.port}", "changed"
        )

    async def delete(self, key: Key) -> bool:
        """Take the server out of rotation and delete it; False if it still has connections."""
        await self.command(f"set server {key[0]}/{key[1]} state maint")
        try:
            await self.command(f"del server {key[0]}/{key[1]}", "Server deleted")
        except ReloadError:
            return False
        return True


@dataclass
class RuntimeSync:
    """What HAProxy is believed to have; commands bring it to the desired state."""

    api: RuntimeAPI
    server_options: str = ""
    applied: Desired | None = None  # None: unknown (at start, or after a reload)
    backends: set[str] = field(default_factory=set)  # backends HAProxy has
    pending_deletes: set[Key] = field(default_factory=set)

    def reloaded(self, desired: Desired) -> None:
        """HAProxy loaded a file holding `desired`: that is its state now."""
        self.applied = dict(desired)
        self.backends = {b for b, _ in desired}
        self.pending_deletes.clear()

    async def apply(self, desired: Desired) -> None:
        """Bring HAProxy to `desired`; raise NeedsReload or ReloadError if it must reload."""
        if self.applied is None:
            self.applied = await self._read_actual(desired)
        applied = self.applied
        new_backends = sorted({b for b, _ in desired} - self.backends)
        if new_backends:
            raise NeedsReload(f"backend {new_backends[0]} is new: it cannot be added at runtime")
        for key, spec in sorted(desired.items()):
            old = applied.get(key)
            if old is None and key in self.pending_deletes:  # back before it could be deleted
                self.pending_deletes.discard(key)
                await self.api.move(key, spec)
                await self.api.set_state(key, spec.healthy)
            elif old is None:
                await self.api.add(key, spec, self.server_options)
            else:
                if (old.ip, old.port) != (spec.ip, spec.port):
                    await self.api.move(key, spec)
                if old.healthy != spec.healthy:
                    await self.api.set_state(key, spec.healthy)
            applied[key] = spec
        self.pending_deletes |= applied.keys() - desired.keys()
        for key in sorted(self.pending_deletes):
            if await self.api.delete(key):
                self.pending_deletes.discard(key)
            applied.pop(key, None)

    async def _read_actual(self, desired: Desired) -> Desired:
        """Learn which servers HAProxy has, then force each one's state: the admin flags of
        `show servers state` keep config-time bits, so they are not a reliable reading."""
        known: Desired = {}
        self.backends = set()
        for backend in sorted({b for b, _ in desired}):
            servers = await self.api.actual(backend)
            if servers is None:
                continue
            self.backends.add(backend)
            for name, (ip, port) in servers.items():
                spec = desired.get((backend, name))
                healthy = spec.healthy if spec is not None else False
                await self.api.set_state((backend, name), healthy)
                known[(backend, name)] = ServerSpec(ip, port, healthy)
        return known
