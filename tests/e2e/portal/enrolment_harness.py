"""The agent's side of enrolment, spoken over HTTP exactly as ``porten agent login`` speaks it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from v1_harness import Porten

from porten.services.control import ControlLog
from porten.services.enrolment import DeviceFlow
from porten.services.enrolment_tokens import EnrolmentTokens

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


async def agent_post(porten: Porten, path: str, form: dict[str, str]) -> tuple[int, Any]:
    """POST ``form`` (form-encoded) as an agent does; status and JSON body."""
    async with aiohttp.ClientSession() as http, http.post(porten.url + path, data=form) as resp:
        return resp.status, await resp.json()


async def start(porten: Porten, name: str = "gpu-box") -> dict[str, Any]:
    """``POST /agent/v1/device/code``."""
    status, body = await agent_post(porten, "/agent/v1/device/code", {"name": name})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def poll(porten: Porten, device_code: str) -> tuple[int, Any]:
    """``POST /agent/v1/device/token``."""
    return await agent_post(porten, "/agent/v1/device/token",
                            {"grant_type": DEVICE_GRANT, "device_code": device_code})


def flow_at(porten: Porten, offset_s: float) -> DeviceFlow:
    """The hub's device flow with a clock ``offset_s`` away: it writes to the same log."""
    log = ControlLog(projection=porten.hub.projection, append=porten.hub.writer.append)
    return DeviceFlow(log=log, accounts=porten.hub.accounts,
                      server_secret=porten.hub.server_secret,
                      clock=lambda: time.time() + offset_s)


def tokens_at(porten: Porten, offset_s: float) -> EnrolmentTokens:
    """The hub's enrolment tokens with a clock ``offset_s`` away (same log)."""
    log = ControlLog(projection=porten.hub.projection, append=porten.hub.writer.append)
    return EnrolmentTokens(log=log, accounts=porten.hub.accounts,
                           server_secret=porten.hub.server_secret,
                           clock=lambda: time.time() + offset_s)
