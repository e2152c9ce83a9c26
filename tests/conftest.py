"""Test-suite wide hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

# The check engine drives sockets through loop callbacks, which asyncio and uvloop implement
# differently: its tests run on both. The service runs on uvloop when it is installed.
BOTH_LOOPS_MODULES = frozenset(
    {"test_checker", "test_monitor", "test_check_options", "test_tls_checks"}
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    del config
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rsplit(".", 1)[-1] in BOTH_LOOPS_MODULES:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
