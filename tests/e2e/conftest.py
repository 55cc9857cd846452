"""Fixtures for the ``/v1`` end-to-end tests: a real hub and node per test (see ``v1_harness``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from v1_harness import Porten, serving

from porten.config import Settings


@pytest.fixture
def settings(database_url: str, data_dir: Path) -> Settings:
    """Hub settings on a fresh database and data dir, listening on a free loopback port."""
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        host="127.0.0.1",
        port=0,
        log_level="warning",
    )


@pytest.fixture
async def porten(settings: Settings) -> AsyncIterator[Porten]:
    """The hub serving, with the local node holding chat, reasoning, vision and embedding models."""
    async with serving(settings) as p:
        yield p
