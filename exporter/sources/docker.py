"""Targets from a Docker engine: every running container labelled `healthcheck.app`.

As the seed's haloy finds its targets (its `dev.haloy.*` labels work too): the target id is the
container's short id, so a container re-created under the same name is a new target. The engine's
event stream triggers a re-list within moments of a start, stop, death or network change; a full
re-list also runs every minute and after every reconnect, so a missed event costs at most that.
While the engine cannot be reached, the last known targets stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from exporter.checks.options import OptionValues, options_from_labels
from exporter.model import Target
from exporter.settings import ConfigError, quoted
from exporter.sources.base import SourceHealth
from exporter.sources.docker_api import (
    Container,
    EngineAddress,
    EngineClient,
    EngineError,
    EventStream,
)
from exporter.targets import _check_name, _check_path, _check_port

# Labels, ours first, then haloy's (`internal/config/labels.go`); ours win when both are set.
APP_LABELS = ("healthcheck.app", "dev.haloy.appName")
PORT_LABELS = ("healthcheck.port", "dev.haloy.port")
PATH_LABELS = ("healthcheck.path", "dev.haloy.health-check-path")
OPTION_PREFIX = "healthcheck."  # healthcheck.<option>: a per-target check option
DEFAULT_PATH = "/health"
HALOY_DEFAULT_PATH = "/"  # haloy's own default for a container without the path label

# Engine events after which the running set or an address may have changed. `die` covers
# stop, kill and a crash; `connect`/`disconnect` are network events (a new IP).
EVENT_FILTERS = {
    "type": ["container", "network"],
    "event": ["start", "die", "destroy", "pause", "unpause", "connect", "disconnect"],
}
SHORT_ID_LENGTH = 12  # as `docker ps` shows it
LOOPBACK = "127.0.0.1"  # the address of a container on the host network


class ContainerSkipped(ValueError):
    """A labelled container that cannot be a target; the message names the label or setting."""


def _first_label(labels: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        if name in labels:
            return name, labels[name]
    return None


def container_name(container: Container) -> str:
    names = container.get("Names") or []
    return str(names[0]).lstrip("/") if names else short_id(container)


def short_id(container: Container) -> str:
    return str(container.get("Id", ""))[:SHORT_ID_LENGTH]


def container_address(container: Container, network: str | None) -> str:
    """The IP to check: on `network`, else on the container's only network; raises ContainerSkipped.

    A container on the host network is checked on 127.0.0.1 (it listens on the host).
    """
    host_config = container.get("HostConfig") or {}
    mode = str(host_config.get("NetworkMode", ""))
    if mode == "host":
        return LOOPBACK
    networks: Mapping[str, Mapping[str, str]] = (container.get("NetworkSettings") or {}).get(
        "Networks"
    ) or {}
    if network is not None:
        if network not in networks:
            on = ", ".join(sorted(networks)) or "none"
            raise ContainerSkipped(
                f"not on network {quoted(network)} (HEALTHCHECK_DOCKER_NETWORK); it is on: {on}"
            )
        chosen = network
    elif len(networks) == 1:
        chosen = next(iter(networks))
    elif not networks:
        raise ContainerSkipped(f"has no network to check it on (network mode {quoted(mode)})")
    else:
        raise ContainerSkipped(
            f"is on several networks ({', '.join(sorted(networks))}):"
            " set HEALTHCHECK_DOCKER_NETWORK to the one to check it on"
        )
    settings = networks[chosen] or {}
    ip = settings.get("IPAddress") or settings.get("GlobalIPv6Address")
    if not ip:
        raise ContainerSkipped(f"has no IP address on network {quoted(chosen)}")
    return str(ip)


def container_target(
    container: Container, network: str | None, defaults: OptionValues | None = None
) -> Target | None:
    """The target a container stands for; None without an app label. Its check options are its
    `healthcheck.<option>` labels over `defaults` (HEALTHCHECK_CHECK_DEFAULTS).

    Raises ContainerSkipped naming the label (or setting) that makes it unusable.
    """
    labels: Mapping[str, str] = container.get("Labels") or {}
    app = _first_label(labels, APP_LABELS)
    if app is None:
        return None
    port = _first_label(labels, PORT_LABELS)
    if port is None:
        raise ContainerSkipped(f"label {quoted(PORT_LABELS[0])} is missing")
    path = _first_label(labels, PATH_LABELS)
    if path is None:
        haloy = app[0] == APP_LABELS[1]
        path = ("", HALOY_DEFAULT_PATH if haloy else DEFAULT_PATH)
    try:
        options = options_from_labels(option_labels(labels), f"{OPTION_PREFIX}* labels", defaults)
    except ConfigError as exc:
        raise ContainerSkipped(str(exc)) from None
    return Target(
        id=short_id(container),
        app_name=_checked(app, partial(_check_name, "app")),
        ip=container_address(container, network),
        port=_checked(port, _check_port),
        health_check_path=_checked(path, _check_path),
        options=options,
    )


def option_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The `healthcheck.<option>` labels, by option name (the prefix removed)."""
    own = (APP_LABELS[0], PORT_LABELS[0], PATH_LABELS[0])
    return {
        name.removeprefix(OPTION_PREFIX): value
        for name, value in labels.items()
        if name.startswith(OPTION_PREFIX) and name not in own
    }


def _checked(label: tuple[str, str], check: Callable[[str], str]) -> str:
    """`check(value)` of a (name, value) label, its ValueError turned into ContainerSkipped."""
    name, value = label
    try:
        return check(value)
    except ValueError as exc:
        raise ContainerSkipped(f"label {quoted(name)}: {exc}") from None


@dataclass
class _Listing:
    targets: list[Target]
    skipped: dict[str, str]  # container short id -> why it was skipped


def list_targets(
    containers: list[Container], network: str | None, defaults: OptionValues | None = None
) -> _Listing:
    """The targets among `containers`, sorted by id, and why each labelled misfit was skipped."""
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for container in containers:
        try:
            target = container_target(container, network, defaults)
        except ContainerSkipped as exc:
            skipped[short_id(container)] = f"container {quoted(container_name(container))}: {exc}"
            continue
        if target is not None:
            targets.append(target)
    targets.sort(key=lambda t: t.id)
    return _Listing(targets, skipped)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnects: doubling from `first` up to `longest` seconds."""

    first: float = 0.5
    longest: float = 30.0

    def after(self, delay: float) -> float:
        return min(delay * 2, self.longest)


class DockerSource:
    """The `Source` over a Docker engine (`HEALTHCHECK_DOCKER_HOST`)."""

    name = "docker"

    def __init__(
        self,
        address: EngineAddress,
        network: str | None,
        logger: logging.Logger,
        *,
        defaults: OptionValues | None = None,
        relist_interval: float = 60.0,
        settle: float = 0.1,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.address = address
        self.network = network
        self.defaults = defaults  # HEALTHCHECK_CHECK_DEFAULTS, under every container's labels
        self.health = SourceHealth()
        self._logger = logger
        self._relist_interval = relist_interval
        self._settle = settle  # wait this long after an event, so a burst costs one re-list
        self._backoff = backoff
        self._targets: list[Target] = []
        self._skipped: dict[str, str] = {}  # logged once per container while it stays skipped
        self._wakeup = asyncio.Event()

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    def refresh(self) -> None:
        """Re-list now (or, while disconnected, reconnect now instead of after the backoff)."""
        self._wakeup.set()

    async def load(self) -> None:
        """Reach the engine and list once (at startup, `validate`); raises EngineError."""
        async with EngineClient(self.address) as client:
            await client.ping()
            self._apply(await client.running_containers())

    async def run(self, on_change: Callable[[], None]) -> None:
        """Follow the engine until cancelled; reconnect with backoff, keeping the last targets."""
        delay = self._backoff.first
        while True:
            try:
                await self._follow(on_change)
            except Exception as exc:  # any failure: keep the targets, count, log, retry
                if self.health.last_error is None:
                    delay = self._backoff.first  # it was connected: start the backoff over
                self._failed(exc, delay)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)
            delay = self._backoff.after(delay)

    def _failed(self, exc: Exception, retry_in: float) -> None:
        self.health.failed(str(exc) or type(exc).__name__)
        extra = {
            "source": self.name,
            "error": self.health.last_error,
            "targets": len(self._targets),
            "retry_in": retry_in,
            "failures": self.health.failures,
        }
        message = "docker engine unreachable, keeping the last known targets"
        if isinstance(exc, EngineError):
            self._logger.warning(message, extra=extra)
        else:  # a bug or an answer of a shape not foreseen: with its traceback
            self._logger.exception(message, extra=extra)

    async def _follow(self, on_change: Callable[[], None]) -> None:
        """One connection: subscribe to events, list, then re-list on every event or minute."""
        async with EngineClient(self.address) as client:
            await client.ping()
            # Subscribed before listing, so nothing that happens in between is missed.
            async with client.events(EVENT_FILTERS) as stream:
                await self._relist(client, on_change)
                reader = asyncio.create_task(self._wake_on_events(stream))
                try:
                    while True:
                        await self._wait_for_reason_to_relist(reader)
                        await asyncio.sleep(self._settle)
                        self._wakeup.clear()
                        await self._relist(client, on_change)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)

    async def _wake_on_events(self, stream: EventStream) -> None:
        while True:
            await stream.next()
            self._wakeup.set()

    async def _wait_for_reason_to_relist(self, reader: asyncio.Task[None]) -> None:
        """Until an event, `refresh()` or the re-list interval; raises if the stream broke."""
        woken = asyncio.ensure_future(self._wakeup.wait())
        try:
            done, _ = await asyncio.wait(
                {reader, woken}, timeout=self._relist_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
        if reader in done:
            reader.result()  # raises EngineError: the stream ended or broke
            raise EngineError(f"{self.address}: the event stream ended")

    async def _relist(self, client: EngineClient, on_change: Callable[[], None]) -> None:
        was_failing = self.health.last_error is not None
        changed = self._apply(await client.running_containers())
        if was_failing:
            self._logger.info(
                "docker engine reachable again",
                extra={"source": self.name, "targets": len(self._targets)},
            )
        if changed:
            on_change()

    def _apply(self, containers: list[Container]) -> bool:
        """Take a listing as the current targets; True if they changed."""
        listing = list_targets(containers, self.network, self.defaults)
        for container_id, why in listing.skipped.items():
            if self._skipped.get(container_id) != why:
                self._logger.warning(
                    "docker container skipped", extra={"source": self.name, "error": why}
                )
        self._skipped = listing.skipped
        changed = listing.targets != self._targets
        self._targets = listing.targets
        self.health.succeeded(len(listing.targets))
        return changed
