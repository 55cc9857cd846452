"""A node that breaks the agent protocol loses its own connection; /v1 keeps being served.

The rogue here is a hand-driven WebSocket that enrols, says a valid hello
claiming the chat model (so it is a routing candidate beside the local
node), and then sends a frame the hub must not accept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from v1_harness import CHAT, LOCAL, Porten, eventually, plan_for, user

from porten.domain import events as ev
from porten.protocol import (
    MAX_FRAME_BYTES,
    AgentHello,
    HubWelcome,
    Inventory,
    decode_hub_message,
    encode,
)

pytestmark = pytest.mark.postgres

ROGUE = "rogue"


@contextlib.asynccontextmanager
async def rogue_session(porten: Porten) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An enrolled node's raw connection, past the welcome, serving the chat model."""
    credential = await porten.enrol(ROGUE)
    hello = AgentHello(
        agent_version="rogue",
        inventory=Inventory(
            engine="sim",
            provisionable=False,
            vram_total_mb=24_000,
            vram_budget_mb=24_000,
            disk_budget_mb=0,
            models_loaded=(CHAT,),
        ),
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            porten.url.replace("http://", "ws://") + "/agent/v1/connect",
            headers={"Authorization": f"Bearer {credential}"},
            max_msg_size=0,
        ) as ws,
    ):
        await ws.send_bytes(encode(hello))
        welcome = await ws.receive(timeout=10.0)
        assert welcome.type is aiohttp.WSMsgType.BINARY, welcome
        assert isinstance(decode_hub_message(welcome.data), HubWelcome)
        await porten.until_serving(ROGUE, CHAT)
        yield ws


async def closed_by_hub(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the hub closes the connection; its close code."""
    async with asyncio.timeout(10.0):
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return ws.close_code


async def assert_still_serving(porten: Porten, requests: int = 5) -> None:
    """Chat requests succeed, served by the local node, with the exact answer."""
    client = porten.client()
    for i in range(requests):
        messages = user(f"still there? {i}")
        raw = await client.chat.completions.with_raw_response.create(model=CHAT, messages=messages)
        assert raw.headers["X-Porten-Node"] == LOCAL
        expected = plan_for(CHAT, {"messages": messages}).content
        assert raw.parse().choices[0].message.content == expected


async def disconnect_reason(porten: Porten) -> str:
    """Why the rogue's session ended, as the log recorded it."""
    found: list[ev.NodeDisconnected] = []

    async def recorded() -> bool:
        records = await porten.hub.store.read_filtered(types=["node_disconnected"])
        found[:] = [
            r.event
            for r in records
            if isinstance(r.event, ev.NodeDisconnected) and r.event.node_id == ROGUE
        ]
        return bool(found)

    await eventually(recorded, what="the rogue's disconnect is recorded")
    [event] = found
    return event.reason


async def test_malformed_frame_drops_only_that_node(porten: Porten) -> None:
    """A frame that does not decode closes the rogue with 1002; the hub keeps serving."""
    async with rogue_session(porten) as ws:
        await ws.send_bytes(b"\x93\xffnot a protocol frame")
        assert await closed_by_hub(ws) == 1002
    await porten.until_gone(ROGUE)
    assert (await disconnect_reason(porten)).startswith("protocol violation: malformed frame")
    await assert_still_serving(porten)


async def test_text_frame_drops_only_that_node(porten: Porten) -> None:
    """A text frame (the protocol is binary) closes the rogue with 1002; the hub keeps serving."""
    async with rogue_session(porten) as ws:
        await ws.send_str('{"type": "heartbeat"}')
        assert await closed_by_hub(ws) == 1002
    await porten.until_gone(ROGUE)
    assert await disconnect_reason(porten) == (
        "protocol violation: a text frame (the protocol is binary)"
    )
    await assert_still_serving(porten)


async def test_oversized_frame_drops_only_that_node(porten: Porten) -> None:
    """A frame over the 16 MiB limit drops the rogue from its header on; the hub keeps serving."""
    async with rogue_session(porten) as ws:
        # The hub closes once the declared length is over the limit, so the rogue's own
        # send may fail part-way (the socket is reset under it).
        with contextlib.suppress(ConnectionError):
            await ws.send_bytes(b"\x00" * (MAX_FRAME_BYTES + 1))
    await porten.until_gone(ROGUE)
    assert await disconnect_reason(porten) == (
        f"connection error: Message size {MAX_FRAME_BYTES + 1} exceeds limit {MAX_FRAME_BYTES}"
    )
    await assert_still_serving(porten)
