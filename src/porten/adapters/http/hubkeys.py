"""Typed keys for what the hub's aiohttp application holds (``web.AppKey``)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from porten.adapters.http.relay import Relay
from porten.bootstrap import Hub
from porten.config import Settings

SETTINGS: Final = web.AppKey("settings", Settings)
HUB: Final = web.AppKey("hub", Hub)
RELAY: Final = web.AppKey("relay", Relay)
