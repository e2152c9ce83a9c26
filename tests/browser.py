"""A real browser for tests: Debian's chromium driven by Playwright (never `playwright install`,
which downloads a browser and cannot work offline)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

import pytest

CHROMIUM = "/usr/bin/chromium"
# Quiet offline: no update checks, sync, first-run pages or GPU.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_or_skip() -> str:
    """chromium's path; in CI its absence (or Playwright's) fails, never skips."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "chromium or playwright missing (scripts/test.sh installs them)"
        if os.environ.get("CI"):
            raise AssertionError(message)
        pytest.skip(message)
    return path


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    path = chromium_or_skip()
    async with async_playwright() as driver:
        instance = await driver.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            await instance.close()
