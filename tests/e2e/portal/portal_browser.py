"""A real headless Chromium for the portal tests: Debian's ``chromium``, driven by Playwright.

The browser is the system one (``/usr/bin/chromium``, or ``PORTEN_CHROMIUM``);
Playwright's own browser download is never used (``playwright install``
needs the internet). Each test gets a fresh profile directory, so no
cookie or storage leaks between tests. :class:`Tab` records every console
error and uncaught page exception — a Content-Security-Policy violation
shows up there — and a test fails if any occurred. Screenshots of each page
go under the test artefacts (``$PORTEN_TEST_ARTIFACTS`` or
``test-artifacts/`` at the repository root).

When the browser is missing the browser tests are skipped with a loud
reason, unless ``PORTEN_REQUIRE_BROWSER=1`` (set by ``nox -s tests``), in
which case they fail: CI must run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REPO = Path(__file__).resolve().parents[3]


def chromium_path() -> str | None:
    """The system Chromium, if installed."""
    configured = os.environ.get("PORTEN_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (``None`` when they can)."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the 'playwright' Python package is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return ("no system Chromium (apt-get install -y chromium, or set PORTEN_CHROMIUM); "
                "never `playwright install`")
    return None


def require_browser() -> None:
    """Skip (loudly) or fail when the browser is missing, as the environment demands."""
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("PORTEN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"BROWSER TESTS CANNOT RUN: {reason}")
    pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")


def artefacts_dir() -> Path:
    """Where screenshots go (created)."""
    root = Path(os.environ.get("PORTEN_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path = root / "portal"
    path.mkdir(parents=True, exist_ok=True)
    return path


@attrs.define
class Tab:
    """One page in the browser, with its console errors recorded."""

    page: Any
    test_name: str
    #: Screenshots taken in this test so far (shared by its tabs, so names never collide).
    shots: list[int]
    errors: list[str] = attrs.field(factory=list)

    async def goto(self, url: str) -> Any:
        """Open ``url`` and wait for it to load."""
        return await self.page.goto(url, wait_until="load")

    async def until(self, expression: str, *, within: float = 20.0) -> Any:
        """Wait until the JS ``expression`` is truthy in the page; its value.

        Polled from outside the page (the DevTools protocol is not bound by the
        page's CSP, while Playwright's ``wait_for_function`` would need ``eval``).
        """
        try:
            async with asyncio.timeout(within):
                while True:
                    value = await self.page.evaluate(expression)
                    if value:
                        return value
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"not true within {within} s: {expression}") from None

    async def shot(self, name: str) -> Path:
        """A full-page screenshot under the artefacts, numbered in the order taken."""
        self.shots[0] += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.test_name}-{self.shots[0]:02d}-{name}")
        path = artefacts_dir() / f"{safe}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_no_errors(self) -> None:
        """No console error, CSP violation or uncaught exception happened in the page."""
        assert not self.errors, self.errors


@attrs.define
class Browser:
    """A fresh Chromium profile; :meth:`tab` opens pages in it."""

    context: Any
    test_name: str
    tabs: list[Tab] = attrs.field(factory=list)
    shots: list[int] = attrs.field(factory=lambda: [0])

    async def tab(self, *, allow_errors: tuple[str, ...] = ()) -> Tab:
        """A new page; console errors matching none of ``allow_errors`` fail the test."""
        page = await self.context.new_page()
        tab = Tab(page, self.test_name, self.shots)

        def on_console(message: Any) -> None:
            if message.type == "error" and not any(a in message.text for a in allow_errors):
                tab.errors.append(f"console: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: tab.errors.append(f"pageerror: {exc}"))
        self.tabs.append(tab)
        return tab

    async def cookies(self) -> list[dict[str, Any]]:
        """Every cookie the profile holds."""
        found: list[dict[str, Any]] = await self.context.cookies()
        return found


@contextlib.asynccontextmanager
async def chromium(profile_dir: Path, test_name: str) -> AsyncIterator[Browser]:
    """Headless Chromium on a fresh profile; every tab error-free at the end."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=chromium_path(),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(20_000)
        browser = Browser(context, test_name)
        try:
            yield browser
        finally:
            await context.close()
        for tab in browser.tabs:
            tab.assert_no_errors()
