"""The ollama engine against a stand-in Ollama on loopback: allow-list, relay, going away."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from agent_harness import dead_url
from ollama_standin import OllamaStandIn, running
from structlog.testing import capture_logs

from porten.agent.engines import create_engine
from porten.agent.engines.base import EngineError, NotProvisionable
from porten.agent.engines.ollama_engine import OllamaEngine, canonical
from porten.agent.settings import AgentSettings
from porten.domain.values import CatalogEntry


def chat(model: str, text: str, **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}],
                       **extra}).encode()


def test_names_match_as_ollama_matches_them() -> None:
    """A name without a tag is the :latest one; namespaces and explicit tags are kept."""
    assert canonical("llama3.2") == "llama3.2:latest"
    assert canonical("qwen2.5:7b") == "qwen2.5:7b"
    assert canonical("registry.local:5000/team/model") == "registry.local:5000/team/model:latest"


async def test_the_allow_list_narrowed_to_pulled_models_is_served() -> None:
    """Only allowed models Ollama has pulled are reported, under the allow-list's spelling."""
    standin = OllamaStandIn(pulled=["llama3.2:latest", "qwen2.5:7b", "mistral:latest"])
    async with running(standin) as url:
        engine = OllamaEngine(url, models=["llama3.2", "qwen2.5:7b", "phi4"],
                              vram_total_mb=8192, vram_budget_mb=7000)
        await engine.start()
        try:
            inventory = await engine.inventory()
            assert inventory.engine == "ollama"
            assert not inventory.provisionable
            assert inventory.models_loaded == ("llama3.2", "qwen2.5:7b")
            assert inventory.models_on_disk == ("llama3.2", "qwen2.5:7b")
            assert (inventory.vram_total_mb, inventory.vram_budget_mb) == (8192, 7000)
            assert await engine.health()

            response = await engine.request("/v1/chat/completions", chat("llama3.2", "hi"),
                                            stream=False)
            body = json.loads(b"".join([c async for c in response.chunks()]))
            await response.aclose()
            assert body["choices"][0]["message"]["content"] == "llama3.2 says: hi"

            response = await engine.request(
                "/v1/chat/completions", chat("llama3.2", "a b", stream=True), stream=True
            )
            streamed = b"".join([c async for c in response.chunks()])
            await response.aclose()
            assert (response.status, response.content_type) == (200, "text/event-stream")
            assert streamed.endswith(b"data: [DONE]\n\n")
        finally:
            await engine.aclose()


async def test_loads_and_unloads_are_refused() -> None:
    """Ollama manages its own memory: the hub never provisions or evicts here."""
    engine = OllamaEngine(dead_url(), models=["m"])
    with pytest.raises(NotProvisionable):
        await engine.load(CatalogEntry(id="m", vram_mb=1, disk_mb=1), lambda *a: None)
    with pytest.raises(NotProvisionable):
        await engine.unload("m")


async def test_an_ollama_down_at_start_is_told_and_serves_nothing() -> None:
    """The owner reads a warning naming the URL; the hub hears no model until it answers."""
    url = dead_url()
    engine = OllamaEngine(url, models=["llama3.2"])
    with capture_logs() as logs:
        await engine.start()
    try:
        assert {"event": f"the ollama endpoint at {url} is not answering; this node serves "
                "nothing until it does", "log_level": "warning"} in logs
        assert (await engine.inventory()).models_loaded == ()
        assert not await engine.health()
    finally:
        await engine.aclose()


async def test_an_ollama_that_goes_away_fails_requests_and_empties_the_inventory() -> None:
    """After Ollama stops, a request fails with a clear error and nothing is reported served."""
    standin = OllamaStandIn(pulled=["llama3.2:latest"])
    async with running(standin) as url:
        engine = OllamaEngine(url, models=["llama3.2"])
        await engine.start()
        assert (await engine.inventory()).models_loaded == ("llama3.2",)
    try:
        with pytest.raises(EngineError) as caught:
            await engine.request("/v1/chat/completions", chat("llama3.2", "hi"), stream=False)
        port = urlsplit(url).port
        assert str(caught.value).startswith(
            f"the engine at {url} is unreachable: Cannot connect to host 127.0.0.1:{port}"
        )
        assert (await engine.inventory()).models_loaded == ()
    finally:
        await engine.aclose()


def test_the_factory_defaults_to_the_local_daemon_and_reads_the_allow_list() -> None:
    """PORTEN_ENGINE=ollama builds the engine with Ollama's default URL and the allow-list."""
    engine = create_engine(AgentSettings.from_env({
        "PORTEN_ENGINE": "ollama", "PORTEN_ENGINE_MODELS": "llama3.2, qwen2.5:7b",
        "PORTEN_VRAM_BUDGET_MB": "6000",
    }))
    assert isinstance(engine, OllamaEngine)
    assert (engine.url, engine.models) == ("http://127.0.0.1:11434", ("llama3.2", "qwen2.5:7b"))
