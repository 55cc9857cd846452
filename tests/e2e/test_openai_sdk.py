"""The official ``openai`` SDK against a running hub: every /v1 feature a client relies on.

The local node's sim engine answers deterministically, so each test knows the
exact answer (:func:`plan_for`) and asserts it byte for byte, usage included.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from v1_harness import (
    CHAT,
    EMBEDDING,
    LOCAL,
    PRELOADED,
    REASONING,
    VISION,
    Porten,
    as_float32,
    data_url,
    plan_for,
    png,
    sim_model,
    user,
)

from porten.agent.engines.sim import count_tokens, embed
from porten.domain.catalog import DEFAULT_CATALOG, default_entry

pytestmark = pytest.mark.postgres

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def usage_of(plan: Any) -> dict[str, int]:
    """The usage triple the plan implies."""
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }


def triple(usage: Any) -> dict[str, int]:
    """An SDK usage object as the usage triple."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


async def test_chat_completion_has_content_usage_and_headers(porten: Porten) -> None:
    """A non-streamed chat answers the engine's text, its usage, 'stop', and both headers."""
    messages = user("Write a haiku about the aurora.")
    plan = plan_for(CHAT, {"messages": messages})
    raw = await porten.client().chat.completions.with_raw_response.create(
        model=CHAT, messages=messages
    )
    completion = raw.parse()
    assert raw.status_code == 200
    assert raw.headers["X-Porten-Node"] == LOCAL
    request_id = raw.headers["X-Request-Id"]
    assert re.fullmatch(r"req_[0-9a-f]{32}", request_id)
    assert completion.object == "chat.completion"
    assert completion.model == CHAT
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == plan.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert triple(completion.usage) == usage_of(plan)
    [served] = await porten.served(1)
    assert (served.request_id, served.node_id, served.model_id) == (request_id, LOCAL, CHAT)
    assert (served.prompt_tokens, served.completion_tokens) == (
        plan.prompt_tokens,
        plan.completion_tokens,
    )
    assert served.outcome == "ok"


async def test_client_request_id_is_echoed_and_metered(porten: Porten) -> None:
    """A caller's own X-Request-Id is echoed and names the request_served event."""
    raw = await porten.client().chat.completions.with_raw_response.create(
        model=CHAT, messages=user("hello"), extra_headers={"X-Request-Id": "trace-42.a:b"}
    )
    assert raw.headers["X-Request-Id"] == "trace-42.a:b"
    [served] = await porten.served(1)
    assert served.request_id == "trace-42.a:b"


async def test_stream_with_include_usage_ends_with_a_usage_chunk(porten: Porten) -> None:
    """A stream carries the tokens in order, then 'stop', then one usage-only chunk, then ends."""
    messages = user("Stream me a story about tokens.")
    plan = plan_for(CHAT, {"messages": messages})
    stream = await porten.client().chat.completions.create(
        model=CHAT, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    assert stream.response.headers["X-Porten-Node"] == LOCAL
    assert stream.response.headers["X-Request-Id"].startswith("req_")
    chunks = [chunk async for chunk in stream]
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == CHAT for c in chunks)
    *token_chunks, finish, usage = chunks
    assert [c.choices[0].delta.content for c in token_chunks] == plan.content_tokens
    assert token_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in [*token_chunks, finish])
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert triple(usage.usage) == usage_of(plan)


async def test_stream_without_include_usage_has_no_usage_chunk(porten: Porten) -> None:
    """Without stream_options.include_usage no chunk carries usage, yet the hub still meters it."""
    messages = user("Stream me a story about tokens.")
    plan = plan_for(CHAT, {"messages": messages})
    stream = await porten.client().chat.completions.create(
        model=CHAT, messages=messages, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plan.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    [served] = await porten.served(1)
    assert (served.prompt_tokens, served.completion_tokens) == (
        plan.prompt_tokens,
        plan.completion_tokens,
    )


async def test_tools_give_tool_calls_and_finish_reason_tool_calls(porten: Porten) -> None:
    """Tools on a tool-capable model answer with the engine's tool call and 'tool_calls'."""
    messages = user("What's the weather in Oslo?")
    plan = plan_for(CHAT, {"messages": messages, "tools": [WEATHER_TOOL]})
    assert plan.tool_calls is not None
    [expected] = plan.tool_calls
    completion = await porten.client().chat.completions.create(
        model=CHAT, messages=messages, tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == expected["id"]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments == json.loads(expected["function"]["arguments"])
    assert set(arguments) == {"city", "unit"}
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert completion.usage is not None
    assert triple(completion.usage) == usage_of(plan)


async def test_streamed_tool_call_reassembles(porten: Porten) -> None:
    """A streamed tool call arrives as fragments the SDK's consumer joins into the same call."""
    messages = user("What's the weather in Oslo?")
    plan = plan_for(CHAT, {"messages": messages, "tools": [WEATHER_TOOL]})
    assert plan.tool_calls is not None
    stream = await porten.client().chat.completions.create(
        model=CHAT, messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [chunk async for chunk in stream]
    fragments = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert fragments[0].id == plan.tool_calls[0]["id"]
    assert fragments[0].function is not None
    assert fragments[0].function.name == "get_weather"
    assert (
        "".join(f.function.arguments or "" for f in fragments if f.function)
        == (plan.tool_calls[0]["function"]["arguments"])
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_json_mode_content_parses_as_json(porten: Porten) -> None:
    """response_format json_object gives content that parses as a JSON object."""
    messages = user("Describe Oslo as JSON.")
    request = {"messages": messages, "response_format": {"type": "json_object"}}
    plan = plan_for(CHAT, request)
    completion = await porten.client().chat.completions.create(
        model=CHAT, messages=messages, response_format={"type": "json_object"}
    )
    content = completion.choices[0].message.content
    assert content == plan.content
    assert content is not None
    parsed = json.loads(content)
    assert isinstance(parsed, dict)
    assert list(parsed) == ["answer"]


async def test_reasoning_content_is_separate_from_content(porten: Porten) -> None:
    """A reasoning model returns reasoning_content apart from the answer, both exact."""
    messages = user("Is 17 prime?")
    plan = plan_for(REASONING, {"messages": messages})
    assert plan.reasoning_content
    assert plan.content
    completion = await porten.client().chat.completions.create(
        model=REASONING, messages=messages, max_tokens=4096
    )
    message = completion.choices[0].message
    assert message.content == plan.content
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == plan.reasoning_content
    assert plan.reasoning_content not in message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == (
        len(plan.reasoning_tokens) + len(plan.content_tokens)
    )
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == len(plan.reasoning_tokens)


async def test_streamed_reasoning_comes_first_as_its_own_delta(porten: Porten) -> None:
    """Streamed, reasoning_content deltas all precede the content deltas and never mix."""
    messages = user("Is 17 prime?")
    plan = plan_for(REASONING, {"messages": messages})
    stream = await porten.client().chat.completions.create(
        model=REASONING, messages=messages, stream=True
    )
    kinds: list[tuple[str, str]] = []
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        thought = (delta.model_extra or {}).get("reasoning_content")
        assert thought is None or delta.content is None
        if thought is not None:
            kinds.append(("reasoning", thought))
        elif delta.content is not None:
            kinds.append(("content", delta.content))
    assert kinds == [("reasoning", t) for t in plan.reasoning_tokens] + [
        ("content", t) for t in plan.content_tokens
    ]


async def test_vision_with_inline_data_image(porten: Porten) -> None:
    """A data: image reaches a vision model, which answers and counts the image's tokens."""
    image = data_url(png(8, 8))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
            ],
        }
    ]
    plan = plan_for(VISION, {"messages": messages})
    text_only = plan_for(VISION, {"messages": user("What is in this picture?")})
    completion = await porten.client().chat.completions.create(model=VISION, messages=messages)
    assert completion.choices[0].message.content == plan.content
    assert completion.usage is not None
    assert triple(completion.usage) == usage_of(plan)
    assert completion.usage.prompt_tokens == text_only.prompt_tokens + 85


async def test_embeddings_default_sdk_call_is_base64_and_decodes(porten: Porten) -> None:
    """The SDK's default (base64) embeddings decode to the engine's vectors, catalog-sized."""
    texts = ["text to embed", "and another"]
    expected = embed(sim_model(EMBEDDING), texts, porten.profile)
    raw = await porten.client().embeddings.with_raw_response.create(model=EMBEDDING, input=texts)
    on_wire = json.loads(raw.content)
    assert all(isinstance(d["embedding"], str) for d in on_wire["data"])  # base64 was asked
    result = raw.parse()
    dim = default_entry(EMBEDDING).embedding_dim
    assert dim == 768
    assert result.model == EMBEDDING
    assert [d.index for d in result.data] == [0, 1]
    assert [len(d.embedding) for d in result.data] == [dim, dim]
    assert [d.embedding for d in result.data] == [as_float32(v) for v in expected]
    tokens = sum(count_tokens(t) for t in texts)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (tokens, tokens)


async def test_embeddings_float_format_and_string_input(porten: Porten) -> None:
    """encoding_format=float with a string input gives one exact float vector of catalog size."""
    expected = embed(sim_model(EMBEDDING), ["just one string"], porten.profile)
    result = await porten.client().embeddings.create(
        model=EMBEDDING, input="just one string", encoding_format="float"
    )
    [item] = result.data
    assert item.index == 0
    assert len(item.embedding) == default_entry(EMBEDDING).embedding_dim
    assert item.embedding == expected[0]
    listed = await porten.client().embeddings.create(
        model=EMBEDDING, input=["a", "b", "c"], encoding_format="float"
    )
    assert [d.embedding for d in listed.data] == embed(
        sim_model(EMBEDDING), ["a", "b", "c"], porten.profile
    )


async def test_models_list_every_offered_model_with_x_porten(porten: Porten) -> None:
    """GET /v1/models lists the whole catalog with x_porten; ready exactly for preloaded ones."""
    page = await porten.client().models.list()
    models = [m async for m in page]
    assert [m.id for m in models] == sorted(e.id for e in DEFAULT_CATALOG)
    for model in models:
        entry = default_entry(model.id)
        assert model.object == "model"
        assert model.owned_by == "porten"
        assert model.model_extra is not None
        assert model.model_extra["x_porten"] == {
            "ready": model.id in PRELOADED,
            "type": entry.type,
            "ctx": entry.ctx,
            "capabilities": sorted(entry.capabilities),
        }
