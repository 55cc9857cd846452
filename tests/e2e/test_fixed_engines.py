"""Fixed-set engines behind a real hub: an Ollama that is down at start, and one that goes away.

The Ollama is the stand-in of ``tests/standins/ollama_standin.py`` (its
HTTP API shape), on a port chosen here so it can be started late and
stopped early; the node is a real agent over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from loading_harness import chat, error_of
from ollama_standin import OllamaStandIn, running
from v1_harness import Porten, eventually

from porten.agent.connection import Agent
from porten.agent.engines.ollama_engine import OllamaEngine
from porten.agent.settings import AgentSettings
from porten.domain.values import CatalogEntry

pytestmark = pytest.mark.postgres

MODEL = "llama3.2"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def online(porten: Porten, node_id: str) -> bool:
    node = porten.hub.projection.state.nodes.get(node_id)
    return porten.hub.gateway.link(node_id) is not None and node is not None and node.online


async def offer(porten: Porten) -> None:
    from porten.services.local_setup import ensure_local_setup

    await ensure_local_setup(
        data_dir=porten.hub.settings.data_dir, server_secret=porten.hub.server_secret,
        writer=porten.hub.writer, projection=porten.hub.projection, catalog=(),
        # too big for the local sim node to load on demand: only the Ollama node can serve it
        refresh=[CatalogEntry(id=MODEL, vram_mb=60_000, disk_mb=2000)],
    )


async def test_an_ollama_down_at_start_serves_once_it_answers_and_stops_when_it_goes(
    porten: Porten,
) -> None:
    """Down: 503, nothing served. Up: answered through the hub. Gone: 502, and withdrawn."""
    await offer(porten)
    port = free_port()
    engine = OllamaEngine(f"http://127.0.0.1:{port}", models=[MODEL])
    credential = await porten.enrol("ollama-node")
    # the inventory poll (30 s in production) shortened, so "it answers now" is seen soon
    agent = Agent(AgentSettings(hub_url=porten.url, credential=credential), engine,
                  inventory_poll_s=0.05)
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: online(porten, "ollama-node"), what="the node online")
        down = await chat(porten, MODEL, "anyone?")
        error_of(down, 503, "no_available_node")

        standin = OllamaStandIn(pulled=["llama3.2:latest"])
        async with running(standin, port):
            await porten.until_serving("ollama-node", MODEL, within=30.0)
            up = await chat(porten, MODEL, "hello")
            assert up.status == 200, up.body
            assert up.json()["choices"][0]["message"]["content"] == "llama3.2 says: hello"
            assert standin.requests[-1]["model"] == MODEL

        gone = await chat(porten, MODEL, "still there?")
        error = error_of(gone, 502, "node_error")
        assert error["message"].startswith(f"every node that could serve {MODEL} failed")
        await eventually(lambda: not porten.serves("ollama-node", MODEL),
                         what="the model withdrawn from routing")
    finally:
        await agent.stop()
        await task
