"""Agent mode's HAProxy file: it follows the fleet's membership, never health.

Health reaches HAProxy through agent checks, so the file lists every known target (of every
shard: each server's `agent-addr` points at the replica that checks it) and changes, through
the configured reload, only when targets come, go or move. The target list is read from the
unsharded provider once a `period`; a list equal to the last one written costs no render.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from exporter.haproxy.updater import HAProxyUpdater
from exporter.model import Target, TargetProvider, TargetState


class MembershipFile:
    """Feeds an HAProxy updater with every target of `provider`, all written as healthy.

    Call `updater.track(membership.states)` so that the updater renders from here."""

    def __init__(
        self,
        provider: TargetProvider,
        updater: HAProxyUpdater,
        logger: logging.Logger,
        period: float = 1.0,
    ) -> None:
        self.provider = provider
        self.updater = updater
        self.logger = logger
        self.period = period
        self._targets: Sequence[Target] = ()

    def states(self) -> list[tuple[Target, TargetState]]:
        """What the updater renders: membership only (the agent carries health)."""
        return [(target, TargetState.HEALTHY) for target in self._targets]

    async def run(self) -> None:
        """Write the file now, then whenever the targets change (a failed write is tried again
        every period; the updater logs and counts it); runs until cancelled."""
        written: list[Target] | None = None
        while True:
            try:
                targets = list(self.provider.get_health_check_targets())
            except Exception:
                self.logger.exception("target provider failed, keeping the HAProxy file as is")
            else:
                if targets and targets != written:  # never an empty file, as the monitor
                    self._targets = targets
                    failures = self.updater.stats.writes["failure"]
                    await asyncio.to_thread(self.updater.on_health_change, targets)
                    if self.updater.stats.writes["failure"] == failures:
                        written = targets  # else try again next period
            await asyncio.sleep(self.period)
