"""Requests and loads over the agent connection: multiplexing, cancel, credit, failures."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from porten.adapters.agent_gateway import EngineFailed, NodeGone
from porten.agent.backoff import Backoff
from porten.agent.connection import Agent
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.agent.engines.sim import SimProfile, plan_chat
from porten.agent.engines.sim_engine import MIB, SimEngine
from porten.agent.settings import AgentSettings
from porten.domain import events as ev
from porten.domain.values import CatalogEntry
from porten.protocol import HubRequest
from porten.services.credentials import new_node_credential

sys.path.insert(0, str(Path(__file__).parent))
from agent_harness import (
    CHAT,
    FAST,
    SIM_CHAT,
    SLOW,
    Hub,
    chat_request,
    content_of,
    dead_url,
    drain,
    eventually,
    exchange_body,
    expected_content,
    next_chunk,
    running_agent,
    running_hub,
    sim_stats,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[Hub]:
    """A gateway with default settings on a fresh log."""
    async with running_hub(database_url) as h:
        yield h


def long_request(profile: SimProfile, *, min_tokens: int = 30) -> HubRequest:
    """A streaming chat request whose answer has at least ``min_tokens`` tokens."""
    for i in range(1000):
        request = chat_request(f"please explain topic {i} in detail", stream=True)
        plan = plan_chat(SIM_CHAT, json.loads(request.body), profile)
        if len(plan.content_tokens) >= min_tokens:
            return request
    raise AssertionError("no long enough answer in 1000 prompts")


async def test_fifty_concurrent_requests_share_one_link(hub: Hub) -> None:
    """50 concurrent requests, streaming and not, multiplex over one link with correct bodies."""
    credential = await hub.enrol("n1")
    engine = SimEngine(FAST, preloaded=[SIM_CHAT])
    async with running_agent(hub, credential, engine) as agent:
        link = await hub.live_link("n1")
        requests = [chat_request(f"question {i}", stream=i % 2 == 0) for i in range(50)]
        peak = 0

        async def one(request: HubRequest) -> tuple[int, str]:
            nonlocal peak
            async with link.exchange(request) as exchange:
                peak = max(peak, link.in_flight)
                status = (await exchange.start(10.0)).status
                body = b"".join([chunk async for chunk in exchange.chunks()])
            return status, content_of(body, stream=request.stream)

        results = await asyncio.gather(*(one(r) for r in requests))
        assert results == [(200, expected_content(r, FAST)) for r in requests]
        assert peak > 1
        assert link.in_flight == 0
        assert agent.sessions == 1
        assert list(hub.gateway.links()) == ["n1"]
        stats = await sim_stats(engine.url)
        assert (stats["started"], stats["completed"], stats["cancelled"]) == (50, 50, 0)


async def test_a_reply_rides_in_its_start_frame(hub: Hub) -> None:
    """A non-streamed reply is one frame (start + body + end); a stream's start has its first event.

    Each frame costs the hub a read, a decode and a wake-up, so this is what
    keeps the hub's added latency and time to first token down.
    """
    credential = await hub.enrol("n1")
    engine = SimEngine(FAST, preloaded=[SIM_CHAT])
    async with running_agent(hub, credential, engine):
        link = await hub.live_link("n1")
        request = chat_request("one frame please", stream=False)
        async with link.exchange(request) as exchange:
            assert (await exchange.start(10.0)).status == 200
            assert exchange.done, "the start frame did not carry the end"
            assert (exchange.buffered, exchange.received) == (1, 1)
            body = b"".join([chunk async for chunk in exchange.chunks()])
        assert content_of(body, stream=False) == expected_content(request, FAST)
        streamed = chat_request("first event with the start", stream=True)
        async with link.exchange(streamed) as exchange:
            assert (await exchange.start(10.0)).status == 200
            assert exchange.received >= 1, "the stream's start came without its first event"
            body = b"".join([chunk async for chunk in exchange.chunks()])
        assert content_of(body, stream=True) == expected_content(streamed, FAST)


async def test_leaving_an_exchange_early_cancels_on_the_engine(hub: Hub) -> None:
    """A consumer that leaves mid-stream, or cancels explicitly, stops the engine's generation."""
    credential = await hub.enrol("n1")
    engine = SimEngine(SLOW, preloaded=[SIM_CHAT])
    async with running_agent(hub, credential, engine):
        link = await hub.live_link("n1")
        async with link.exchange(chat_request("stream then leave", stream=True)) as exchange:
            assert (await exchange.start(10.0)).status == 200
            await next_chunk(exchange)
        await eventually(lambda: _stat(engine, "cancelled", 1), what="the engine counted a cancel")
        async with link.exchange(chat_request("cancel me", stream=False)) as exchange:
            await eventually(lambda: _stat(engine, "started", 2), what="the engine started")
            await exchange.cancel()
            await exchange.cancel()  # idempotent
        await eventually(lambda: _stat(engine, "cancelled", 2), what="a second cancel")
        stats = await sim_stats(engine.url)
        assert stats["completed"] == 0
        assert link.in_flight == 0
        assert link.is_open


async def _stat(engine: SimEngine, name: str, at_least: int) -> bool:
    return (await sim_stats(engine.url))[name] >= at_least


async def test_the_agent_stops_at_the_window_and_resumes_on_credit(database_url: str) -> None:
    """With a consumer that stops reading, the agent holds at the window; reading resumes it."""
    profile = SimProfile(ttft_ms=0, tokens_per_s=400)
    async with running_hub(database_url, window=4) as hub:
        credential = await hub.enrol("n1")
        engine = SimEngine(profile, preloaded=[SIM_CHAT])
        async with running_agent(hub, credential, engine):
            link = await hub.live_link("n1")
            request = long_request(profile)
            async with link.exchange(request) as exchange:
                assert (await exchange.start(10.0)).status == 200
                await eventually(lambda: exchange.buffered == 4, what="a full window")
                await eventually(
                    lambda: _stat(engine, "completed", 1), what="the engine finished generating"
                )
                assert exchange.received == 4, "the agent sent past its window"
                body = b"".join([chunk async for chunk in exchange.chunks()])
            assert exchange.received > 4
            assert link.is_open
            assert content_of(body, stream=True) == expected_content(request, profile)


def _agent_env(hub: Hub, credential: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PORTEN_HUB_URL": hub.url,
        "PORTEN_NODE_CREDENTIAL": credential,
        "PORTEN_ENGINE": "sim",
        "PORTEN_ENGINE_MODELS": CHAT.id,
        "PORTEN_SIM_PROFILE": msgspec.json.encode(SLOW).decode(),
        "PORTEN_DATA_DIR": str(data_dir),
        "PORTEN_LOG_FORMAT": "json",
    }


async def _spawn_agent(hub: Hub, credential: str, tmp_path: Path) -> asyncio.subprocess.Process:
    """An agent in its own process (``python -m porten.agent.runner``), connected."""
    log = (tmp_path / "agent.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "porten.agent.runner",
        env=_agent_env(hub, credential, tmp_path),
        stdout=log,
        stderr=log,
    )
    log.close()
    return process


async def test_a_killed_agent_fails_its_exchange_with_node_gone(hub: Hub, tmp_path: Path) -> None:
    """SIGKILL mid-stream: the exchange raises NodeGone (it never hangs) and the drop is logged."""
    credential = await hub.enrol("n1")
    process = await _spawn_agent(hub, credential, tmp_path)
    try:
        link = await hub.live_link("n1")
        async with link.exchange(chat_request("a long answer", stream=True)) as exchange:
            assert (await exchange.start(10.0)).status == 200
            await next_chunk(exchange)
            process.kill()
            with pytest.raises(NodeGone):
                await asyncio.wait_for(drain(exchange.chunks(), []), 10.0)
        [gone] = await hub.await_events(ev.NodeDisconnected)
        assert gone.session_id == link.session_id
        assert hub.gateway.link("n1") is None
        with pytest.raises(NodeGone):
            await link.send_unload(CHAT.id, "operator")
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_sigterm_stops_an_agent_process_cleanly(hub: Hub, tmp_path: Path) -> None:
    """SIGTERM closes the session gracefully and the process exits 0."""
    credential = await hub.enrol("n1")
    process = await _spawn_agent(hub, credential, tmp_path)
    try:
        await hub.live_link("n1")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10.0):
            assert await process.wait() == 0, (tmp_path / "agent.log").read_text()
        [gone] = await hub.await_events(ev.NodeDisconnected)
        assert "1001" in gone.reason  # going away: the agent said goodbye
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_an_unreachable_engine_fails_the_exchange(hub: Hub) -> None:
    """When the engine is down the agent ends the request with an error: EngineFailed."""
    credential = await hub.enrol("n1")
    engine = OpenAIEngine(dead_url(), models=[CHAT.id], connect_timeout_s=2.0)
    async with running_agent(hub, credential, engine):
        link = await hub.live_link("n1")
        [caps] = await hub.events(ev.NodeCapabilitiesReported)
        assert caps.models_loaded == ()
        assert not caps.provisionable
        async with link.exchange(chat_request("anyone?", stream=True)) as exchange:
            with pytest.raises(EngineFailed, match="unreachable"):
                await exchange.start(10.0)
            with pytest.raises(EngineFailed):
                async for _ in exchange.chunks():
                    pass


async def test_an_engine_dying_mid_stream_fails_the_exchange_after_its_chunks(hub: Hub) -> None:
    """The chunks that arrived are delivered, then EngineFailed ends the client's stream."""

    async def dies(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", dies)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        credential = await hub.enrol("n1")
        engine = OpenAIEngine(f"http://{host}:{port}", models=[CHAT.id])
        async with running_agent(hub, credential, engine):
            link = await hub.live_link("n1")
            async with link.exchange(chat_request("x", stream=True)) as exchange:
                assert (await exchange.start(10.0)).status == 200
                received: list[bytes] = []
                with pytest.raises(EngineFailed, match="broke off"):
                    await drain(exchange.chunks(), received)
                assert b"".join(received) == b"data: {}\n\n"
            assert link.is_open
    finally:
        await runner.cleanup()


async def test_a_load_reports_progress_then_serves(hub: Hub) -> None:
    """HubLoad on the sim: downloading (bytes) → loading → ModelLoaded, then the model serves."""
    credential = await hub.enrol("n1")
    async with running_agent(hub, credential, SimEngine(FAST)):
        link = await hub.live_link("n1")
        requested = ev.LoadRequested(
            at=time.time(), actor="planner", node_id="n1", model_id=CHAT.id, load_id="l1",
            reason="test",
        )  # fmt: skip
        await hub.writer.append([requested])
        await link.send_load("l1", CHAT)
        [loaded] = await hub.await_events(ev.ModelLoaded)
        assert (loaded.load_id, loaded.actor) == ("l1", "node:n1")
        phases = [
            (p.phase, p.done_bytes, p.total_bytes) for p in await hub.events(ev.LoadProgressed)
        ]
        disk, vram = CHAT.disk_mb * MIB, CHAT.vram_mb * MIB
        downloading = [p for p in phases if p[0] == "downloading"]
        assert phases[: len(downloading)] == downloading, "loading began before the download ended"
        assert downloading[0] == ("downloading", 0, disk)
        assert downloading[-1] == (
            "downloading",
            disk,
            disk,
        )
        assert phases[-1] == ("loading", vram, vram)
        caps = await hub.await_events(ev.NodeCapabilitiesReported, count=2)
        assert caps[-1].models_loaded == (CHAT.id,)
        assert caps[-1].models_on_disk == (CHAT.id,)
        await hub.projection.wait_until(await hub.store.head(), 5.0)
        assert hub.projection.state.nodes["n1"].placements[CHAT.id].phase == "ready"
        status, body = await exchange_body(link, request := chat_request("now?", stream=False))
        assert status == 200
        assert content_of(body, stream=False) == expected_content(request, FAST)


async def test_failed_loads_and_unloads_are_recorded(hub: Hub) -> None:
    """Refused loads are LoadFailed; a commanded unload shows in the inventory, logged once.

    The hub records an unload it commands when it decides it (with its reason), so
    the agent's answer (``commanded=True``) is not recorded again.
    """
    credential = await hub.enrol("n1")
    engine = SimEngine(FAST, preloaded=[SIM_CHAT], fail_loads={"broken"}, vram_budget_mb=4096)
    async with running_agent(hub, credential, engine):
        link = await hub.live_link("n1")
        await link.send_load("l-broken", CatalogEntry(id="broken", vram_mb=100, disk_mb=100))
        await link.send_load("l-huge", CatalogEntry(id="huge", vram_mb=10_000, disk_mb=100))
        failed = await hub.await_events(ev.LoadFailed, count=2)
        errors = {f.load_id: f.error for f in failed}
        assert "simulated failure" in errors["l-broken"]
        assert "VRAM" in errors["l-huge"]
        await link.send_unload(CHAT.id, "operator")
        caps = await hub.await_events(ev.NodeCapabilitiesReported, count=3)
        assert caps[-1].models_loaded == ()
        assert set(caps[-1].models_on_disk) == {CHAT.id, "broken"}
        status, _ = await exchange_body(link, chat_request("still there?", stream=False))
        assert status == 404
        assert await hub.events(ev.ModelUnloaded) == []


async def test_a_lost_connection_cancels_in_flight_requests_on_the_engine(hub: Hub) -> None:
    """When the link drops mid-stream the agent aborts the engine's request, then reconnects."""
    credential = await hub.enrol("n1")
    engine = SimEngine(SLOW, preloaded=[SIM_CHAT])
    async with running_agent(hub, credential, engine):
        link = await hub.live_link("n1")
        async with link.exchange(chat_request("a long answer", stream=True)) as exchange:
            assert (await exchange.start(10.0)).status == 200
            await next_chunk(exchange)
            await link.close("simulated network drop")
            with pytest.raises(NodeGone):
                await drain(exchange.chunks(), [])
        await eventually(lambda: _stat(engine, "cancelled", 1), what="the engine was told")
        await hub.live_link("n1", not_session=link.session_id)


async def test_stop_leaves_no_task_and_no_engine_behind() -> None:
    """An agent stopped while it cannot reach its hub closes its engine and every task."""
    before = asyncio.all_tasks()
    engine = SimEngine(FAST)
    settings = AgentSettings(hub_url=dead_url(), credential=new_node_credential())
    agent = Agent(settings, engine, backoff=Backoff(base_s=0.01, cap_s=0.02, rng=random.Random(1)))
    running = asyncio.create_task(agent.run())
    await eventually(engine.health, what="the engine started")
    await agent.stop()
    await running
    assert not await engine.health()
    assert asyncio.all_tasks() - before == set()


async def test_heartbeats_report_the_requests_in_flight(database_url: str) -> None:
    """The agent's heartbeats reach the link and count its open requests."""
    async with running_hub(database_url, heartbeat_s=0.25) as hub:
        credential = await hub.enrol("n1")
        engine = SimEngine(SLOW, preloaded=[SIM_CHAT])
        async with running_agent(hub, credential, engine):
            link = await hub.live_link("n1")
            async with link.exchange(chat_request("keep going", stream=True)) as exchange:
                await exchange.start(10.0)

                def busy() -> bool:
                    beat = link.last_heartbeat
                    return beat is not None and beat.in_flight == 1

                await eventually(busy, what="a heartbeat with one request in flight")
            assert hub.gateway.link("n1") is link
