"""A real hub-side gateway on a real Postgres log, and real agents to connect to it.

Shared by the agent-connection tests. :func:`running_hub` serves only the
gateway's route over loopback, with the event store, batching writer and
projection the hub itself uses; :func:`running_agent` runs an :class:`Agent`
until the hub holds its link. Waits are bounded polls on conditions
(:func:`eventually`), never sleeps standing in for "long enough".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import attrs
from aiohttp import web

from porten.adapters.agent_gateway import AgentGateway, Exchange, GatewayDeps, NodeLink
from porten.adapters.postgres.event_store import PostgresEventStore
from porten.agent.backoff import Backoff
from porten.agent.connection import Agent
from porten.agent.engines.base import Engine
from porten.agent.engines.sim import SimModel, SimProfile, plan_chat
from porten.agent.settings import AgentSettings
from porten.domain import events as ev
from porten.domain.values import CatalogEntry
from porten.protocol import (
    AgentHello,
    HubRequest,
    HubWelcome,
    Inventory,
    decode_hub_message,
    encode,
)
from porten.services.credentials import new_node_credential, token_hash
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

SECRET = b"agent-gateway-test-secret"
CHAT = CatalogEntry(id="sim-chat", vram_mb=1024, disk_mb=512)
SIM_CHAT = SimModel.from_catalog(CHAT)
#: Tokens as fast as the loop can go, loads and downloads in about a hundredth of a second.
FAST = SimProfile(ttft_ms=0, tokens_per_s=50_000, load_s_per_gb=0.01, download_mb_per_s=50_000)
#: Slow enough that a stream is reliably still running while a test acts on it.
SLOW = SimProfile(ttft_ms=0, tokens_per_s=20)
E = TypeVar("E", bound=ev.Event)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    """Return once ``condition`` holds; fail the test after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = condition()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"condition not met within {within} s: {what}") from None


@attrs.define
class Hub:
    """The gateway's half of the hub, and the log behind it."""

    url: str
    store: PostgresEventStore
    writer: BatchingWriter
    projection: FleetProjection
    gateway: AgentGateway

    @property
    def connect_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/agent/v1/connect"

    async def enrol(self, node_id: str, *, region: str = "eu-west") -> str:
        """Enrol ``node_id`` and return its fresh credential, once the state knows it."""
        credential = new_node_credential()
        enrolled = ev.NodeEnrolled(
            at=time.time(),
            actor="user:op",
            node_id=node_id,
            owner_id="owner-1",
            region=region,
            credential_hash=token_hash(SECRET, credential),
        )
        position = await self.writer.append([enrolled])
        assert await self.projection.wait_until(position, 5.0)
        return credential

    async def events(self, *types: type[E], node_id: str | None = None) -> list[E]:
        """Events of ``types`` in log order (about ``node_id``, if given)."""
        found = [r.event for r in await self.store.read(0, 100_000)]
        return [
            e
            for e in found
            if isinstance(e, types) and (node_id is None or getattr(e, "node_id", None) == node_id)
        ]

    async def sessions(self) -> list[tuple[str, str]]:
        """``("connected" | "disconnected", session id)`` for each session event, in log order."""
        found: list[tuple[str, str]] = []
        for event in await self.events(ev.NodeConnected, ev.NodeDisconnected):
            kind = "connected" if isinstance(event, ev.NodeConnected) else "disconnected"
            found.append((kind, getattr(event, "session_id", "")))
        return found

    async def await_events(
        self, *types: type[E], node_id: str | None = None, count: int = 1
    ) -> list[E]:
        """The events of ``types`` once at least ``count`` of them are in the log."""
        found: list[E] = []

        async def enough() -> bool:
            nonlocal found
            found = await self.events(*types, node_id=node_id)
            return len(found) >= count

        await eventually(enough, what=f"{count} x {[t.__name__ for t in types]}")
        return found

    async def live_link(self, node_id: str, *, not_session: str | None = None) -> NodeLink:
        """The node's link once it is open (and is not session ``not_session``)."""

        def ready() -> bool:
            link = self.gateway.link(node_id)
            return link is not None and link.session_id != not_session

        await eventually(ready, what=f"a live link for {node_id}")
        link = self.gateway.link(node_id)
        assert link is not None
        return link


@contextlib.asynccontextmanager
async def running_hub(database_url: str, **gateway_options: Any) -> AsyncIterator[Hub]:
    """Serve ``GET /agent/v1/connect`` on a free loopback port, backed by Postgres."""
    store = await PostgresEventStore.open(database_url)
    writer = BatchingWriter(store)
    await writer.start()
    projection = FleetProjection(store)
    await projection.catch_up()
    follower = asyncio.create_task(projection.follow())
    deps = GatewayDeps(
        state=lambda: projection.state,
        append=writer.append,
        submit=writer.submit,
        clock=time.time,
        new_id=lambda: uuid.uuid4().hex,
        server_secret=SECRET,
    )
    gateway = AgentGateway(deps, **gateway_options)
    app = web.Application()
    app.router.add_get("/agent/v1/connect", gateway.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield Hub(f"http://{host}:{port}", store, writer, projection, gateway)
    finally:
        await gateway.aclose()
        await runner.cleanup()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await writer.aclose()
        await store.aclose()


@contextlib.asynccontextmanager
async def running_agent(
    hub: Hub, credential: str, engine: Engine, **agent_options: Any
) -> AsyncIterator[Agent]:
    """Run an agent until the hub holds its link; stop it (and its engine) afterwards."""
    settings = AgentSettings(hub_url=hub.url, credential=credential)
    agent_options.setdefault("backoff", Backoff(base_s=0.01, cap_s=0.05, rng=random.Random(7)))
    agent = Agent(settings, engine, **agent_options)
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: agent.session_id is not None or task.done(), what="welcome")
        if task.done():
            task.result()
        assert agent.node_id is not None
        await hub.live_link(agent.node_id)
        yield agent
    finally:
        await agent.stop()
        await task


def chat_request(
    text: str, *, stream: bool, model: str = CHAT.id, request_id: str | None = None
) -> HubRequest:
    """A chat completion as the router would send it."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return HubRequest(
        request_id=request_id or uuid.uuid4().hex,
        path="/v1/chat/completions",
        model_id=model,
        body=json.dumps(body).encode(),
        stream=stream,
    )


def expected_content(request: HubRequest, profile: SimProfile, model: SimModel = SIM_CHAT) -> str:
    """What the sim engine answers to ``request``: the plan's content."""
    return plan_chat(model, json.loads(request.body), profile).content


def content_of(body: bytes, *, stream: bool) -> str:
    """The assistant's text in a chat response body (SSE deltas joined for a stream)."""
    if not stream:
        return str(json.loads(body)["choices"][0]["message"]["content"])
    events = [line.removeprefix(b"data: ") for line in body.split(b"\n\n") if line]
    assert events[-1] == b"[DONE]", events[-1]
    deltas = (json.loads(e)["choices"] for e in events[:-1])
    return "".join(c[0]["delta"].get("content", "") for c in deltas if c)


async def exchange_body(link: NodeLink, request: HubRequest) -> tuple[int, bytes]:
    """Send ``request`` over ``link``; the status and the whole body."""
    async with link.exchange(request) as exchange:
        start = await exchange.start(10.0)
        body = b"".join([chunk async for chunk in exchange.chunks()])
    return start.status, body


async def next_chunk(exchange: Exchange) -> bytes:
    """The next body chunk (the iterator is left open)."""
    async for chunk in exchange.chunks():
        return chunk
    raise AssertionError("the response ended")


def dead_url() -> str:
    """A loopback URL nothing listens on (the port was bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


async def drain(chunks: AsyncIterator[bytes], into: list[bytes]) -> None:
    """Append each chunk to ``into`` until the stream ends or raises."""
    async for chunk in chunks:
        into.append(chunk)  # noqa: PERF401 (keeps what arrived before an error)


async def sim_stats(base_url: str) -> dict[str, int]:
    """The sim server's counters."""
    async with aiohttp.ClientSession() as http, http.get(base_url + "/sim/stats") as resp:
        stats: dict[str, int] = await resp.json()
        return stats


def hello_frame(**inventory: Any) -> bytes:
    """A minimal, valid hello."""
    fields: dict[str, Any] = {
        "engine": "sim",
        "provisionable": False,
        "vram_total_mb": 0,
        "vram_budget_mb": 0,
        "disk_budget_mb": 0,
        **inventory,
    }
    return encode(AgentHello(agent_version="raw", inventory=Inventory(**fields)))


@contextlib.asynccontextmanager
async def raw_session(
    hub: Hub, credential: str, hello: bytes | None = None, **ws_options: Any
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, HubWelcome]]:
    """A hand-driven agent connection, past the welcome."""
    headers = {"Authorization": f"Bearer {credential}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(hub.connect_url, headers=headers, **ws_options) as ws,
    ):
        await ws.send_bytes(hello or hello_frame())
        msg = await ws.receive(timeout=5.0)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        welcome = decode_hub_message(msg.data)
        assert isinstance(welcome, HubWelcome)
        yield ws, welcome
