"""Many clients at once through one hub and one node link: every answer exact, metered once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import pytest
from v1_harness import CHAT, EMBEDDING, LOCAL, REASONING, Porten, plan_for, user

pytestmark = pytest.mark.postgres

STREAMS = 200
#: Caps each answer so 200 streams stay quick; most answers end with finish_reason "length".
CAP = 32


def request(i: int) -> dict[str, Any]:
    """Chat request ``i``: every tenth to the reasoning model, all capped at ``CAP`` tokens."""
    model = REASONING if i % 10 == 0 else CHAT
    return {"model": model, "messages": user(f"concurrent question number {i}"), "max_tokens": CAP}


async def one_stream(
    porten: Porten, http: aiohttp.ClientSession, i: int
) -> tuple[str, str, dict[str, Any]]:
    """Stream request ``i`` (raw SSE); its request id, its text, its finish reason and usage."""
    request_id = f"e2e-stream-{i:03d}"
    body = {**request(i), "stream": True, "stream_options": {"include_usage": True}}
    headers = {**porten.auth(), "X-Request-Id": request_id}
    async with http.post(porten.api_base + "/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == request_id
        assert resp.headers["X-Porten-Node"] == LOCAL
        events = [e for e in (await resp.read()).split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    *chunks, last = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert last["choices"] == []
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    text = "".join(d.get("reasoning_content") or d.get("content") or "" for d in deltas)
    usage = {
        "finish": chunks[-1]["choices"][0]["finish_reason"],
        "prompt": last["usage"]["prompt_tokens"],
        "completion": last["usage"]["completion_tokens"],
    }
    return request_id, text, usage


async def test_200_concurrent_streams_complete_with_exact_usage(porten: Porten) -> None:
    """200 concurrent streams all finish with the engine's text and usage, one event each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(*(one_stream(porten, http, i) for i in range(STREAMS)))
    expected: dict[str, tuple[str, dict[str, Any]]] = {}
    for i in range(STREAMS):
        plan = plan_for(request(i)["model"], request(i))
        usage = {
            "finish": plan.finish_reason,
            "prompt": plan.prompt_tokens,
            "completion": plan.completion_tokens,
        }
        expected[f"e2e-stream-{i:03d}"] = (plan.reasoning_content + plan.content, usage)
    assert {rid: (text, usage) for rid, text, usage in results} == expected
    assert {u["finish"] for _, u in expected.values()} == {"length", "stop"}

    served = await porten.served(STREAMS)
    assert Counter(e.request_id for e in served) == Counter(list(expected))  # one each
    for event in served:
        _, usage = expected[event.request_id]
        assert (event.prompt_tokens, event.completion_tokens) == (
            usage["prompt"],
            usage["completion"],
        )
        assert (event.node_id, event.outcome) == (LOCAL, "ok")
    stats = await porten.sim_stats()
    assert (stats["started"], stats["completed"], stats["cancelled"]) == (STREAMS, STREAMS, 0)


async def test_mixed_concurrent_requests_are_each_answered_and_metered(porten: Porten) -> None:
    """Concurrent completions, streams and embeddings each get their own answer and one event."""
    client = porten.client()

    async def complete(i: int) -> None:
        messages = user(f"plain question {i}")
        completion = await client.chat.completions.create(model=CHAT, messages=messages)
        expected = plan_for(CHAT, {"messages": messages}).content
        assert completion.choices[0].message.content == expected

    async def embed(i: int) -> None:
        result = await client.embeddings.create(model=EMBEDDING, input=[f"text {i}", "shared"])
        assert [len(d.embedding) for d in result.data] == [768, 768]

    async def stream(i: int) -> None:
        messages = user(f"streamed question {i}")
        chunks = await client.chat.completions.create(model=CHAT, messages=messages, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in chunks])
        assert text == plan_for(CHAT, {"messages": messages}).content

    jobs = [complete(i) for i in range(30)] + [embed(i) for i in range(30)]
    jobs += [stream(i) for i in range(30)]
    await asyncio.gather(*jobs)
    served = await porten.served(90)
    assert len({e.request_id for e in served}) == 90
    assert Counter(e.model_id for e in served) == Counter({EMBEDDING: 30, CHAT: 60})
    assert {e.outcome for e in served} == {"ok"}
