"""Targets from DNS (`HEALTHCHECK_DNS_SD`), as Prometheus's `dns_sd_configs` finds them.

Entries `app=name` are SRV names: one target per record, its target host resolved (A and AAAA)
and the port taken from the record. `app=A:name:port` and `app=AAAA:name:port` give one target
per address. Ids are `app-ip-port`. Names are absolute (no search domains), as in Prometheus.

Every name is asked again every `HEALTHCHECK_DNS_REFRESH`, or when the shortest TTL it got runs
out if that comes first (never more often than once a second). A failed lookup (timeout,
SERVFAIL, refused) keeps the last good set of that name; NXDOMAIN or an empty answer empties it
only when seen twice in a row, so one odd answer during a zone reload removes nothing.
Uses dnspython's asyncio resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.SRV import SRV
from prometheus_client.core import CounterMetricFamily, Metric

from exporter.model import DEFAULT_CHECK_OPTIONS, CheckOptions, Target
from exporter.settings import ConfigError, check_host, parse_port, quoted, split_host_port
from exporter.sources.base import SourceHealth
from exporter.targets import DEFAULT_HEALTH_CHECK_PATH

QueryKind = Literal["SRV", "A", "AAAA"]

_SEPARATORS = re.compile(r"[\s,]+")
_APP = re.compile(r"[A-Za-z0-9._:-]{1,253}")
MIN_REFRESH = 1.0  # seconds: a TTL of 0 (dnsmasq's default for local records) must not spin
LOOKUP_LIFETIME = 5.0  # seconds for one name, retries included


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One `HEALTHCHECK_DNS_SD` entry."""

    app: str
    kind: QueryKind
    name: str  # absolute, with the trailing dot
    port: int | None = None  # A/AAAA only; SRV records carry their own

    @property
    def label(self) -> str:
        """The `name` label of its metrics: the name, prefixed by A:/AAAA: for address lookups."""
        return self.name if self.kind == "SRV" else f"{self.kind}:{self.name}"


def _absolute_name(text: str) -> str:
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ValueError(f"invalid DNS name {quoted(text)}: {exc}") from None
    if name == dns.name.root:
        raise ValueError("missing DNS name")
    return name.to_text()


def _parse_entry(entry: str) -> DnsQuery:
    app, equals, spec = entry.partition("=")
    if not equals:
        raise ValueError("expected app=SRV-name, app=A:name:port or app=AAAA:name:port")
    if not _APP.fullmatch(app):
        raise ValueError(
            f"app {quoted(app)} must be 1-253 characters of letters, digits, '.', '_', ':', '-'"
        )
    kind, colon, rest = spec.partition(":")
    if colon and kind.upper() in ("A", "AAAA"):
        name, colon, port = rest.rpartition(":")
        if not colon:
            raise ValueError(f"expected {kind.upper()}:name:port")
        family: QueryKind = "AAAA" if kind.upper() == "AAAA" else "A"
        return DnsQuery(app, family, _absolute_name(name), parse_port(port))
    if ":" in spec:
        raise ValueError("an SRV name has no port (use A:name:port or AAAA:name:port)")
    return DnsQuery(app, "SRV", _absolute_name(spec))


def parse_dns_sd(text: str, variable: str = "HEALTHCHECK_DNS_SD") -> list[DnsQuery]:
    """The entries of the variable; raises ConfigError naming it and the entry."""
    entries = [entry for entry in _SEPARATORS.split(text) if entry]
    if not entries:
        raise ConfigError(f"{variable}: no entries in {quoted(text)}")
    queries: list[DnsQuery] = []
    for index, entry in enumerate(entries, 1):
        try:
            query = _parse_entry(entry)
        except ValueError as exc:
            raise ConfigError(f"{variable}: entry {index} {quoted(entry)}: {exc}") from None
        if query in queries:
            raise ConfigError(f"{variable}: entry {index} {quoted(entry)} is given twice")
        queries.append(query)
    return queries


def parse_dns_server(text: str, variable: str = "HEALTHCHECK_DNS_SERVER") -> tuple[str, int]:
    """`ip:port` or `[ipv6]:port` of the server to ask; raises ConfigError naming the variable."""
    try:
        host, port = split_host_port(text.strip())
        ipaddress.ip_address(check_host(host))
        return host, parse_port(port)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc} (expected ip:port, e.g. 127.0.0.1:53)") from None


# --- one lookup ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one entry's lookup gave: addresses, nothing (NXDOMAIN/empty), or an error."""

    result: Literal["success", "empty", "nxdomain", "failure"]
    addresses: tuple[tuple[str, int], ...] = ()  # (ip, port)
    ttl: float | None = None
    error: str | None = None


class _Empty(Exception):
    def __init__(self, result: Literal["empty", "nxdomain"]) -> None:
        self.result = result


async def _ask(
    resolver: dns.asyncresolver.Resolver, name: str, kind: str
) -> tuple[list[dns.rdata.Rdata], float]:
    """The records and their TTL; raises _Empty for NXDOMAIN or no records."""
    try:
        answer = await resolver.resolve(name, kind, search=False, lifetime=LOOKUP_LIFETIME)
    except dns.resolver.NXDOMAIN:
        raise _Empty("nxdomain") from None
    except dns.resolver.NoAnswer:
        raise _Empty("empty") from None
    assert answer.rrset is not None  # resolve() raises NoAnswer otherwise
    return list(answer.rrset), float(answer.rrset.ttl)


async def _addresses_of(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[list[str], float]:
    """A and AAAA of an SRV record's target host; either may be missing."""
    found: list[str] = []
    ttls: list[float] = []
    for kind in ("A", "AAAA"):
        try:
            records, ttl = await _ask(resolver, host, kind)
        except _Empty:
            continue
        found.extend(record.to_text() for record in records)
        ttls.append(ttl)
    return found, min(ttls, default=float("inf"))


async def lookup(resolver: dns.asyncresolver.Resolver, query: DnsQuery) -> _Answer:
    """Resolve one entry; never raises (but for cancellation)."""
    try:
        if query.kind != "SRV":
            records, ttl = await _ask(resolver, query.name, query.kind)
            assert query.port is not None
            addresses = [(record.to_text(), query.port) for record in records]
        else:
            records, ttl = await _ask(resolver, query.name, "SRV")
            addresses = []
            for record in records:
                if not isinstance(record, SRV) or record.target == dns.name.root:
                    continue  # target "." means: no service here
                ips, host_ttl = await _addresses_of(resolver, record.target.to_text())
                ttl = min(ttl, host_ttl)
                addresses.extend((ip, int(record.port)) for ip in ips)
    except _Empty as empty:
        return _Answer(empty.result)
    except dns.exception.DNSException as exc:
        return _Answer("failure", error=str(exc) or type(exc).__name__)
    except OSError as exc:  # e.g. no route, no fds
        return _Answer("failure", error=str(exc))
    if not addresses:
        return _Answer("empty")
    return _Answer("success", tuple(dict.fromkeys(addresses)), ttl)


# --- the source ----------------------------------------------------------------------------------


@dataclass
class _NameState:
    targets: list[Target] = field(default_factory=list)
    empty_streak: int = 0
    error: str | None = None  # the last lookup's error, while it fails


class DnsSource:
    """A `Source` over the `HEALTHCHECK_DNS_SD` entries, asked on one schedule."""

    name = "dns"

    def __init__(
        self,
        queries: Sequence[DnsQuery],
        logger: logging.Logger,
        refresh_interval: float = 30.0,
        server: tuple[str, int] | None = None,
        options: CheckOptions = DEFAULT_CHECK_OPTIONS,
    ) -> None:
        self.queries = list(queries)
        self.options = options  # HEALTHCHECK_CHECK_DEFAULTS: DNS gives addresses only
        self.refresh_interval = refresh_interval
        self.health = SourceHealth()
        self.lookups: Counter[tuple[str, str]] = Counter()  # (name label, result) -> count
        self._logger = logger
        self._states = {query: _NameState() for query in self.queries}
        self._targets: list[Target] = []
        self._refresh_requested = asyncio.Event()
        self._resolver = dns.asyncresolver.Resolver(configure=server is None)
        if server is not None:
            self._resolver.nameservers = [server[0]]
            self._resolver.port = server[1]

    def get_health_check_targets(self) -> list[Target]:
        return list(self._targets)

    def refresh(self) -> None:
        self._refresh_requested.set()

    async def run(self, on_change: Callable[[], None]) -> None:
        while True:
            delay = self.refresh_interval
            try:
                changed, ttl = await self.refresh_once()
                if changed:
                    on_change()
                delay = min(self.refresh_interval, max(ttl, MIN_REFRESH))
            except Exception:
                self._logger.exception("DNS service discovery round failed")
            try:
                await asyncio.wait_for(self._refresh_requested.wait(), delay)
            except TimeoutError:
                continue
            self._refresh_requested.clear()

    async def refresh_once(self) -> tuple[bool, float]:
        """Ask every name once; (did the targets change, shortest TTL seen)."""
        answers = await asyncio.gather(*(lookup(self._resolver, q) for q in self.queries))
        for query, answer in zip(self.queries, answers, strict=True):
            self._take(query, answer)
        targets = list({t.id: t for s in self._states.values() for t in s.targets}.values())
        changed = targets != self._targets
        self._targets = targets
        errors = [f"{q.label}: {s.error}" for q, s in self._states.items() if s.error]
        if errors:
            self.health.failed("; ".join(errors))
        else:
            self.health.succeeded(len(targets))
        if changed:
            self._logger.info("DNS targets changed", extra={"targets": len(targets)})
        return changed, min((a.ttl for a in answers if a.ttl is not None), default=float("inf"))

    def _take(self, query: DnsQuery, answer: _Answer) -> None:
        state = self._states[query]
        self.lookups[(query.label, answer.result)] += 1
        if answer.result == "failure":
            if state.error is None:  # log when a name starts failing, not every round
                self._logger.error(
                    "DNS lookup failed, keeping the last good targets of that name",
                    extra={"dns_name": query.label, "error": answer.error},
                )
            state.error = answer.error
            return
        if state.error is not None:
            self._logger.info("DNS lookup works again", extra={"dns_name": query.label})
        state.error = None
        if answer.result == "success":
            state.empty_streak = 0
            state.targets = [
                _target(query.app, ip, port, self.options) for ip, port in answer.addresses
            ]
            return
        state.empty_streak += 1
        if state.empty_streak >= 2 and state.targets:
            self._logger.warning(
                "DNS name gone twice in a row, dropping its targets",
                extra={"dns_name": query.label, "answer": answer.result},
            )
            state.targets = []

    def collect(self) -> Iterator[Metric]:
        """`healthcheck_dns_lookups_total{name, result}` (built on the event loop)."""
        family = CounterMetricFamily(
            "healthcheck_dns_lookups",
            "DNS service discovery lookups per HEALTHCHECK_DNS_SD name, by result: success,"
            " empty (no records), nxdomain, failure (timeout, SERVFAIL: last good set kept).",
            labels=["name", "result"],
        )
        for (label, result), count in sorted(self.lookups.items()):
            family.add_metric([label, result], count)
        yield family


def _target(app: str, ip: str, port: int, options: CheckOptions) -> Target:
    return Target(
        id=f"{app}-{ip}-{port}",
        app_name=app,
        ip=ip,
        port=str(port),
        health_check_path=DEFAULT_HEALTH_CHECK_PATH,
        options=options,
    )
