"""Fixtures for the portal tests: a real hub, and a real headless Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from portal_browser import Browser, chromium

from porten.config import Settings

#: Agents poll every second here (5 s in production), so login flows take a second or two.
POLL_INTERVAL_S = 1


@pytest.fixture
def settings(database_url: str, data_dir: Path) -> Settings:
    """The e2e hub settings, with a one-second device-code polling interval."""
    return Settings(database_url=database_url, data_dir=data_dir, host="127.0.0.1", port=0,
                    log_level="warning", device_poll_interval_s=POLL_INTERVAL_S)


@pytest.fixture
async def browser(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """System Chromium on a fresh profile (skipped loudly, or failed in CI, when missing)."""
    async with chromium(tmp_path / "chromium-profile", request.node.name) as b:
        yield b
