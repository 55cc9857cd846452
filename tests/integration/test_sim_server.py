"""The sim engine over real sockets: OpenAI shapes, SSE framing, and cancels reaching it."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from porten.agent.engines.sim import SimModel, SimProfile, embed, plan_chat
from porten.agent.engines.sim_server import create_app
from porten.agent.engines.sim_server import serve as serve_sim

CHAT = SimModel(id="sim-chat", capabilities=frozenset({"chat", "tools", "json"}))
THINKER = SimModel(id="sim-r1", capabilities=frozenset({"chat", "reasoning"}))
EMBEDDER = SimModel(id="sim-embed", type="embedding", capabilities=frozenset({"embeddings"}))
BROKEN = SimModel(id="sim-broken")
MODELS = [CHAT, THINKER, EMBEDDER, BROKEN]
FAST = SimProfile(ttft_ms=0, tokens_per_s=100_000)
SLOW = SimProfile(ttft_ms=0, tokens_per_s=20)

TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"term": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["term", "limit"],
        },
    },
}

Serve = Callable[[SimProfile], AbstractAsyncContextManager[str]]


def chat(model: SimModel, text: str, **extra: Any) -> dict[str, Any]:
    """A one-turn chat request for ``model``."""
    return {"model": model.id, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def serve() -> Serve:
    """Start the real sim server on a free loopback port; yields its base URL."""

    @asynccontextmanager
    async def running(profile: SimProfile) -> AsyncIterator[str]:
        runner = web.AppRunner(create_app(MODELS, profile, fail_models={BROKEN.id}))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()

    return running


@pytest.fixture
async def base_url(serve: Serve) -> AsyncIterator[str]:
    """A fast sim server, for tests that do not care about pacing."""
    async with serve(FAST) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that is closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


async def sse_events(response: aiohttp.ClientResponse) -> list[Any]:
    """Every ``data:`` payload of an SSE response, decoded, with ``[DONE]`` kept as a string."""
    events: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_health_and_model_list(base_url: str, http: aiohttp.ClientSession) -> None:
    """/health answers ok and /v1/models lists every model in OpenAI's list shape."""
    async with http.get(f"{base_url}/health") as response:
        assert await response.json() == {"status": "ok"}
    async with http.get(f"{base_url}/v1/models") as response:
        listing = await response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == sorted(m.id for m in MODELS)
    embedder = next(m for m in listing["data"] if m["id"] == EMBEDDER.id)
    assert embedder["object"] == "model"
    assert embedder["x_porten"] == {
        "ready": True,
        "type": "embedding",
        "ctx": EMBEDDER.ctx,
        "capabilities": ["embeddings"],
    }


async def test_chat_completion_matches_the_plan(base_url: str, http: aiohttp.ClientSession) -> None:
    """A non-streaming completion carries the planned content and usage."""
    request = chat(CHAT, "describe the fleet", max_tokens=50)
    async with http.post(f"{base_url}/v1/chat/completions", json=request) as response:
        assert response.status == 200
        body = await response.json()
    plan = plan_chat(CHAT, request, FAST)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == CHAT.id
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": plan.content}
    assert choice["finish_reason"] == plan.finish_reason
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        plan.prompt_tokens,
        plan.completion_tokens,
    )
    assert usage["total_tokens"] == plan.prompt_tokens + plan.completion_tokens


async def test_reasoning_content_is_separate(base_url: str, http: aiohttp.ClientSession) -> None:
    """A reasoning model returns reasoning_content apart from content."""
    request = chat(THINKER, "why is the sky blue")
    async with http.post(f"{base_url}/v1/chat/completions", json=request) as response:
        message = (await response.json())["choices"][0]["message"]
    plan = plan_chat(THINKER, request, FAST)
    assert message["reasoning_content"] == plan.reasoning_content != ""
    assert message["content"] == plan.content


async def test_streaming_deltas_rebuild_the_answer(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    """SSE chunks parse, rebuild reasoning and content, finish, report usage, then [DONE]."""
    request = chat(THINKER, "stream me", stream=True, stream_options={"include_usage": True})
    async with http.post(f"{base_url}/v1/chat/completions", json=request) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = await sse_events(response)
    plan = plan_chat(THINKER, request, FAST)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk, _ = events
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in events[:-1]}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == plan.reasoning_content
    assert "".join(d.get("content", "") for d in deltas) == plan.content
    assert len(chunks) - 1 == plan.completion_tokens
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == plan.completion_tokens


async def test_streaming_without_usage_option(base_url: str, http: aiohttp.ClientSession) -> None:
    """Without stream_options.include_usage no usage chunk is sent."""
    request = chat(CHAT, "short", stream=True, max_tokens=3)
    async with http.post(f"{base_url}/v1/chat/completions", json=request) as response:
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    assert all(event == "[DONE]" or "usage" not in event for event in events)
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_tool_calls_non_streaming(base_url: str, http: aiohttp.ClientSession) -> None:
    """Tools give message.tool_calls with JSON arguments and finish_reason tool_calls."""
    request = chat(CHAT, "look up sovereignty", tools=[TOOL])
    async with http.post(f"{base_url}/v1/chat/completions", json=request) as response:
        (choice,) = (await response.json())["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments["term"], str)
    assert isinstance(arguments["limit"], int)


async def test_tool_calls_streaming(base_url: str, http: aiohttp.ClientSession) -> None:
    """Streamed tool-call fragments carry an index, and their arguments join to valid JSON."""
    request = chat(CHAT, "look up sovereignty", tools=[TOOL], stream=True)
    async with http.post(f"{base_url}/v1/chat/completions", json=request) as response:
        events = await sse_events(response)
    fragments = [
        call for event in events[:-1] for call in event["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert {fragment["index"] for fragment in fragments} == {0}
    assert fragments[0]["function"]["name"] == "lookup"
    assert fragments[0]["id"].startswith("call_")
    arguments = "".join(fragment["function"]["arguments"] for fragment in fragments)
    assert set(json.loads(arguments)) == {"term", "limit"}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_embeddings_as_floats_and_base64(base_url: str, http: aiohttp.ClientSession) -> None:
    """Embeddings come back in OpenAI's shape, as floats or as base64 float32."""
    texts = ["alpha beta", "gamma"]
    request = {"model": EMBEDDER.id, "input": texts}
    async with http.post(f"{base_url}/v1/embeddings", json=request) as response:
        body = await response.json()
    assert body["object"] == "list"
    assert body["model"] == EMBEDDER.id
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert [item["embedding"] for item in body["data"]] == embed(EMBEDDER, texts, FAST)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    single = {"model": EMBEDDER.id, "input": "gamma", "encoding_format": "base64"}
    async with http.post(f"{base_url}/v1/embeddings", json=single) as response:
        (item,) = (await response.json())["data"]
    raw = base64.b64decode(item["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == EMBEDDER.embedding_dim
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(decoded, body["data"][1]["embedding"], strict=True)
    )


@pytest.mark.parametrize(
    ("path", "payload", "status", "code"),
    [
        ("/v1/chat/completions", chat(SimModel(id="ghost"), "hi"), 404, "model_not_found"),
        ("/v1/embeddings", {"model": "ghost", "input": "hi"}, 404, "model_not_found"),
        ("/v1/chat/completions", b"{not json", 400, "invalid_request_error"),
        ("/v1/chat/completions", chat(EMBEDDER, "hi"), 400, "invalid_request_error"),
        ("/v1/embeddings", {"model": EMBEDDER.id, "input": [1, 2]}, 400, "invalid_request_error"),
        ("/v1/chat/completions", chat(CHAT, "hi", max_tokens=0), 400, "invalid_request_error"),
        ("/v1/chat/completions", chat(BROKEN, "hi"), 500, "engine_error"),
        ("/v1/nowhere", {}, 404, "not_found"),
    ],
)
async def test_errors_have_the_openai_shape(
    base_url: str,
    http: aiohttp.ClientSession,
    path: str,
    payload: dict[str, Any] | bytes,
    status: int,
    code: str,
) -> None:
    """Unknown models, bad JSON, bad params and failures answer {"error": {...}} with a code."""
    kwargs: dict[str, Any] = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
    async with http.post(f"{base_url}{path}", **kwargs) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]


async def stats_when(
    http: aiohttp.ClientSession, base_url: str, ready: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    """Poll /sim/stats until ``ready`` holds (bounded), and return the counters seen last."""
    for _ in range(1000):
        async with http.get(f"{base_url}/sim/stats") as response:
            stats: dict[str, int] = await response.json()
        if ready(stats):
            break
        await asyncio.sleep(0.01)
    return stats


async def test_client_disconnect_cancels_generation(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Closing a stream mid-way stops generation, and /sim/stats records the cancel."""
    request = chat(THINKER, "think slowly", stream=True)
    planned = plan_chat(THINKER, request, SLOW).completion_tokens
    assert planned > 10  # reasoning alone is at least 8 words: the stream is long
    async with serve(SLOW) as url:
        response = await http.post(f"{url}/v1/chat/completions", json=request)
        for _ in range(3):
            assert (await response.content.readline()).startswith(b"data: ")
            await response.content.readline()  # the blank line ending the event
        response.close()  # drops the connection, as a client that gives up does
        stats = await stats_when(http, url, lambda s: s["cancelled"] > 0)
    assert (stats["started"], stats["cancelled"], stats["completed"]) == (1, 1, 0)
    assert 3 <= stats["tokens_generated"] < planned


async def test_abandoned_completion_is_cancelled(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A non-streaming request whose client gives up stops generating and counts as cancelled."""
    request = chat(THINKER, "think slowly")
    planned = plan_chat(THINKER, request, SLOW).completion_tokens
    async with serve(SLOW) as url:

        async def ask() -> None:
            async with (
                aiohttp.ClientSession() as own,
                own.post(f"{url}/v1/chat/completions", json=request),
            ):
                pass

        asking = asyncio.create_task(ask())
        await stats_when(http, url, lambda s: s["tokens_generated"] >= 2)
        asking.cancel()
        stats = await stats_when(http, url, lambda s: s["cancelled"] > 0)
    assert (stats["cancelled"], stats["completed"]) == (1, 0)
    assert stats["tokens_generated"] < planned


async def test_serve_logs_its_port_and_stops_when_cancelled(http: aiohttp.ClientSession) -> None:
    """serve() on port 0 logs the port it bound, answers there, and exits cleanly on cancel."""
    with capture_logs() as logs:
        serving = asyncio.create_task(serve_sim("127.0.0.1", 0, MODELS, FAST))
        for _ in range(1000):
            if serving.done() or any(e["event"] == "sim_engine_listening" for e in logs):
                break
            await asyncio.sleep(0.01)
        listening = next(e for e in logs if e["event"] == "sim_engine_listening")
    async with http.get(f"http://127.0.0.1:{listening['port']}/health") as response:
        assert response.status == 200
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


async def test_openai_sdk_talks_to_the_sim(base_url: str) -> None:
    """The official openai SDK can chat (plain and streamed) and embed against the sim."""
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x")
    try:
        messages = [{"role": "user", "content": "hello sdk"}]
        completion = await client.chat.completions.create(model=CHAT.id, messages=messages)
        plan = plan_chat(CHAT, {"messages": messages}, FAST)
        assert completion.choices[0].message.content == plan.content
        assert completion.usage is not None
        assert completion.usage.completion_tokens == plan.completion_tokens
        stream = await client.chat.completions.create(
            model=CHAT.id, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == plan.content
        assert usage is not None
        assert usage.total_tokens == plan.prompt_tokens + plan.completion_tokens
        embedded = await client.embeddings.create(model=EMBEDDER.id, input=["hello sdk"])
        (expected,) = embed(EMBEDDER, ["hello sdk"], FAST)
        got = embedded.data[0].embedding
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got, expected, strict=True))
    finally:
        await client.close()
