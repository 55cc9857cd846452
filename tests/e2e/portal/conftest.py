"""Fixtures for the portal tests: a real hub, and a real headless Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from portal_browser import Browser, chromium


@pytest.fixture
async def browser(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """System Chromium on a fresh profile (skipped loudly, or failed in CI, when missing)."""
    async with chromium(tmp_path / "chromium-profile", request.node.name) as b:
        yield b
