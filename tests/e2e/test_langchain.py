"""LangChain's OpenAI integration pointed at the hub, as "Use it from your tools" shows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from v1_harness import CHAT, EMBEDDING, Porten, plan_for, sim_model, user

from porten.agent.engines.sim import embed

pytestmark = pytest.mark.postgres

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat_model(porten: Porten, **options: Any) -> ChatOpenAI:
    """ChatOpenAI configured exactly as the docs tell a user to."""
    return ChatOpenAI(
        model=CHAT, base_url=porten.api_base, api_key=porten.api_key, max_retries=0, **options
    )


async def test_ainvoke_returns_the_answer_and_usage(porten: Porten) -> None:
    """ChatOpenAI.ainvoke gets the engine's answer and its token usage."""
    prompt = "Summarize the CAP theorem in two sentences."
    plan = plan_for(CHAT, {"messages": user(prompt)})
    reply = await chat_model(porten).ainvoke(prompt)
    assert isinstance(reply, AIMessage)
    assert reply.content == plan.content
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == plan.prompt_tokens
    assert reply.usage_metadata["output_tokens"] == plan.completion_tokens
    assert reply.usage_metadata["total_tokens"] == plan.prompt_tokens + plan.completion_tokens


async def test_astream_yields_the_tokens_in_order(porten: Porten) -> None:
    """ChatOpenAI.astream yields the answer token by token, with usage at the end."""
    prompt = "Explain streaming in one paragraph."
    plan = plan_for(CHAT, {"messages": user(prompt)})
    pieces: list[AIMessageChunk] = [
        chunk async for chunk in chat_model(porten, stream_usage=True).astream(prompt)
    ]
    texts = [p.content for p in pieces if p.content]
    assert texts == plan.content_tokens
    total = pieces[0]
    for piece in pieces[1:]:
        total += piece
    assert total.content == plan.content
    assert total.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == plan.prompt_tokens
    assert total.usage_metadata["output_tokens"] == plan.completion_tokens


async def test_bind_tools_gets_a_tool_call(porten: Porten) -> None:
    """A model with bound tools answers with a parsed tool call: the engine's name and args."""
    prompt = "What's the weather in Oslo?"
    plan = plan_for(CHAT, {"messages": user(prompt), "tools": [WEATHER_TOOL]})
    assert plan.tool_calls is not None
    [expected] = plan.tool_calls
    reply = await chat_model(porten).bind_tools([WEATHER_TOOL]).ainvoke(prompt)
    assert isinstance(reply, AIMessage)
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    [call] = reply.tool_calls
    assert call["id"] == expected["id"]
    assert call["name"] == "get_weather"
    assert call["args"] == json.loads(expected["function"]["arguments"])


async def test_openai_embeddings_embed_documents_and_query(porten: Porten) -> None:
    """OpenAIEmbeddings gets one catalog-sized vector per document, and one for a query."""
    embedder = OpenAIEmbeddings(
        model=EMBEDDING,
        base_url=porten.api_base,
        api_key=porten.api_key,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    docs = ["the first document", "the second one"]
    vectors = await embedder.aembed_documents(docs)
    expected = embed(sim_model(EMBEDDING), docs, porten.profile)
    assert [len(v) for v in vectors] == [768, 768]
    for got, want in zip(vectors, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    query = await embedder.aembed_query("a question")
    assert query == pytest.approx(
        embed(sim_model(EMBEDDING), ["a question"], porten.profile)[0], abs=1e-6
    )
