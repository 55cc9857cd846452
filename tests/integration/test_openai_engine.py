"""The openai engine against a real sim server over loopback: health, relaying, cancel."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from porten.agent.engines import create_engine
from porten.agent.engines.base import Engine, EngineError, NotProvisionable
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.agent.engines.sim import SimModel, SimProfile, plan_chat
from porten.agent.engines.sim_server import create_app
from porten.agent.settings import AgentSettings
from porten.domain.values import CatalogEntry

sys.path.insert(0, str(Path(__file__).parent))
from agent_harness import dead_url, drain, eventually

CHAT = SimModel(id="sim-chat")
FAST = SimProfile(ttft_ms=0, tokens_per_s=100_000)
SLOW = SimProfile(ttft_ms=0, tokens_per_s=20)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def started(engine: OpenAIEngine) -> AsyncIterator[OpenAIEngine]:
    """``engine``, started, and closed afterwards."""
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


def chat(text: str, **extra: object) -> bytes:
    """A chat request body for the sim's chat model."""
    return json.dumps(
        {"model": CHAT.id, "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


async def stats(base_url: str) -> dict[str, int]:
    """The sim server's counters."""
    async with aiohttp.ClientSession() as http, http.get(base_url + "/sim/stats") as resp:
        counters: dict[str, int] = await resp.json()
        return counters


async def test_health_and_inventory_follow_the_endpoint() -> None:
    """Health is ok; the inventory is the allow-list narrowed to what the endpoint serves."""
    async with serving(create_app([CHAT], FAST)) as url:
        engine = OpenAIEngine(url + "/v1/", models=[CHAT.id, "not-served"], vram_budget_mb=262_144)
        async with started(engine):
            assert isinstance(engine, Engine)
            assert engine.url == url
            assert await engine.health()
            inventory = await engine.inventory()
            assert inventory.models_loaded == (CHAT.id,)
            assert (inventory.engine, inventory.provisionable) == ("openai", False)
            assert inventory.vram_budget_mb == inventory.vram_total_mb == 262_144
        async with started(OpenAIEngine(url)) as everything:
            assert (await everything.inventory()).models_loaded == (CHAT.id,)


async def test_a_down_endpoint_is_unhealthy_and_serves_nothing() -> None:
    """With nothing listening, health is false, nothing is loaded, and requests raise."""
    async with started(OpenAIEngine(dead_url(), models=[CHAT.id])) as engine:
        assert not await engine.health()
        assert (await engine.inventory()).models_loaded == ()
        with pytest.raises(EngineError, match="unreachable"):
            await engine.request("/v1/chat/completions", chat("hi"), stream=False)


async def test_requests_relay_bodies_as_the_engine_sends_them() -> None:
    """Non-streaming and streaming answers arrive intact, with the engine's status and type."""
    async with serving(create_app([CHAT], FAST)) as url, started(OpenAIEngine(url)) as engine:
        expected = plan_chat(CHAT, json.loads(chat("hello there")), FAST).content
        response = await engine.request("/v1/chat/completions", chat("hello there"), stream=False)
        try:
            assert (response.status, response.content_type) == (200, "application/json")
            body = b"".join([c async for c in response.chunks()])
        finally:
            await response.aclose()
        assert json.loads(body)["choices"][0]["message"]["content"] == expected

        streamed = chat("hello there", stream=True)
        response = await engine.request("/v1/chat/completions", streamed, stream=True)
        try:
            assert (response.status, response.content_type) == (200, "text/event-stream")
            pieces = [c async for c in response.chunks()]
        finally:
            await response.aclose()
        events = [e.removeprefix(b"data: ") for e in b"".join(pieces).split(b"\n\n") if e]
        assert events[-1] == b"[DONE]"
        deltas = [json.loads(e)["choices"] for e in events[:-1]]
        assert "".join(d[0]["delta"].get("content", "") for d in deltas if d) == expected
        assert (await stats(url))["completed"] == 2


async def test_engine_errors_pass_through_as_status() -> None:
    """An OpenAI error from the engine is a response (status and body), not an exception."""
    async with serving(create_app([CHAT], FAST)) as url, started(OpenAIEngine(url)) as engine:
        body = json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        response = await engine.request("/v1/chat/completions", body.encode(), stream=False)
        try:
            assert response.status == 404
            payload = json.loads(b"".join([c async for c in response.chunks()]))
        finally:
            await response.aclose()
        assert payload["error"]["code"] == "model_not_found"


async def test_closing_a_response_mid_stream_cancels_on_the_engine() -> None:
    """Closing before the end aborts the engine's request: the sim counts it as cancelled."""
    async with serving(create_app([CHAT], SLOW)) as url, started(OpenAIEngine(url)) as engine:
        response = await engine.request(
            "/v1/chat/completions", chat("a long answer", stream=True), stream=True
        )
        async for _ in response.chunks():
            break
        await response.aclose()

        async def cancelled() -> bool:
            return (await stats(url))["cancelled"] == 1

        await eventually(cancelled, what="the sim counted the cancel")
        assert (await stats(url))["completed"] == 0


async def test_an_engine_dying_mid_body_raises_engine_error() -> None:
    """A body cut off by the engine raises EngineError after the bytes that did arrive."""

    async def dies(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", dies)
    async with serving(app) as url, started(OpenAIEngine(url)) as engine:
        response = await engine.request("/v1/chat/completions", chat("x"), stream=True)
        received: list[bytes] = []
        with pytest.raises(EngineError, match="broke off"):
            await drain(response.chunks(), received)
        await response.aclose()
        assert b"".join(received) == b"data: {}\n\n"


async def test_load_and_unload_are_refused() -> None:
    """The endpoint's owner decides what it serves: loads and unloads raise NotProvisionable."""
    engine = OpenAIEngine(dead_url())
    with pytest.raises(NotProvisionable):
        await engine.load(CatalogEntry(id="m", vram_mb=1, disk_mb=1), lambda *_: None)
    with pytest.raises(NotProvisionable):
        await engine.unload("m")


async def test_an_endpoint_down_at_start_is_told_to_the_owner() -> None:
    """Starting against a dead endpoint is not fatal, but the owner reads why nothing serves."""
    url = dead_url()
    engine = OpenAIEngine(url, models=["m"])
    with capture_logs() as logs:
        await engine.start()
    try:
        assert {"event": f"the openai endpoint at {url} is not answering; this node serves "
                "nothing until it does", "log_level": "warning"} in logs
    finally:
        await engine.aclose()


async def test_the_budget_override_makes_a_cluster_one_big_node() -> None:
    """PORTEN_VRAM_BUDGET_MB replaces the detected memory as the budget the hub fills."""
    async with serving(create_app([SimModel(id="big-model")], FAST)) as url:
        engine = create_engine(AgentSettings.from_env({
            "PORTEN_ENGINE": "openai", "PORTEN_ENGINE_URL": url + "/v1",
            "PORTEN_ENGINE_MODELS": "big-model", "PORTEN_VRAM_BUDGET_MB": "400000",
        }))
        assert isinstance(engine, OpenAIEngine)
        async with started(engine):
            inventory = await engine.inventory()
    assert (inventory.vram_budget_mb, inventory.models_loaded) == (400_000, ("big-model",))
