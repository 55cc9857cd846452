"""When nodes fail, time runs out or clients leave: a clear answer, never a hang, metered once.

Broken nodes are real agents whose engine is a sim server told to fail the
model (``fail_models``: it answers 500 before any token), a node killed with
SIGKILL is a real ``porten agent run`` process, and a departing client is
the SDK closing its stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import openai
import pytest
from aiohttp import web
from v1_harness import (
    BIG,
    CHAT,
    LOCAL,
    PRELOADED,
    SLOW,
    SPARE,
    Porten,
    eventually,
    long_prompt,
    plan_for,
    serving,
    sim_model,
    user,
)

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.agent.engines import sim_server
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.agent.engines.sim import SimModel, SimProfile, plan_chat
from porten.agent.engines.sim_engine import SimEngine
from porten.cli._local_node import local_node
from porten.cli.hub import listening
from porten.config import Settings
from porten.domain import events as ev

pytestmark = pytest.mark.postgres


@attrs.frozen
class BrokenSim:
    """A sim server that answers 500 for every model it holds."""

    url: str


@pytest.fixture
async def broken_sim() -> AsyncIterator[BrokenSim]:
    """A sim server holding the chat and the big model, failing both before any token."""
    models = [sim_model(CHAT), sim_model(BIG)]
    app = sim_server.create_app(models, SLOW, fail_models=[CHAT, BIG])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield BrokenSim(f"http://{host}:{port}")
    finally:
        await runner.cleanup()


def broken_engine(sim: BrokenSim, model: str) -> OpenAIEngine:
    """An engine that proxies to the broken sim (as a vLLM node would to its runtime)."""
    return OpenAIEngine(sim.url, models=[model])


async def read_stream(stream: Any, each: Callable[[Any], None]) -> None:
    """Read an SDK stream to its end, calling ``each`` per chunk; never longer than 10 s."""
    async with asyncio.timeout(10.0):
        async for chunk in stream:
            each(chunk)


# --- before the first byte -----------------------------------------------------------------


async def test_failure_before_first_byte_retries_on_the_next_node(
    porten: Porten, broken_sim: BrokenSim
) -> None:
    """A node whose engine fails before any byte is skipped: the healthy node answers."""
    # "a-broken" sorts before "local", so with equal load the router tries it first.
    async with porten.node("a-broken", broken_engine(broken_sim, CHAT), [CHAT]):
        client = porten.client()
        messages = user("Who answers this?")
        plan = plan_for(CHAT, {"messages": messages})
        raw = await client.chat.completions.with_raw_response.create(model=CHAT, messages=messages)
        assert raw.headers["X-Porten-Node"] == LOCAL
        assert raw.parse().choices[0].message.content == plan.content
        stream = await client.chat.completions.create(model=CHAT, messages=messages, stream=True)
        assert stream.response.headers["X-Porten-Node"] == LOCAL
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == plan.content
        assert (await porten.sim_stats(broken_sim.url))["failed"] == 2  # tried first, twice
        served = await porten.served(2)
        assert [(s.node_id, s.outcome) for s in served] == [(LOCAL, "ok"), (LOCAL, "ok")]
        assert {s.completion_tokens for s in served} == {plan.completion_tokens}


async def test_all_candidates_failing_is_502_node_error(
    porten: Porten, broken_sim: BrokenSim
) -> None:
    """When every node serving the model fails before answering, the client gets 502."""
    # The big model: the local node can neither serve it nor load it on demand.
    async with (
        porten.node("a-broken", broken_engine(broken_sim, BIG), [BIG]),
        porten.node("b-broken", broken_engine(broken_sim, BIG), [BIG]),
    ):
        for stream in (False, True):
            body = {"model": BIG, "messages": user("anyone?"), "stream": stream}
            reply = await porten.post("/v1/chat/completions", body)
            assert reply.status == 502
            error = reply.error
            assert (error["type"], error["code"], error["param"]) == (
                "server_error",
                "node_error",
                None,
            )
            assert error["message"] == (
                f"every node that could serve {BIG} failed (2 tried); try again"
            )
        assert (await porten.sim_stats(broken_sim.url))["failed"] == 4
        with pytest.raises(openai.InternalServerError) as raised:
            await porten.client().chat.completions.create(model=BIG, messages=user("x"))
        assert raised.value.status_code == 502
        assert raised.value.code == "node_error"


async def test_no_node_serving_the_model_is_503_with_retry_after(porten: Porten) -> None:
    """An offered model no node serves (or could load) is 503 no_available_node, Retry-After."""
    for stream in (False, True):
        body = {"model": BIG, "messages": user("hello"), "stream": stream}
        reply = await porten.post("/v1/chat/completions", body)
        assert reply.status == 503
        error = reply.error
        assert (error["type"], error["code"], error["param"]) == (
            "service_unavailable",
            "no_available_node",
            None,
        )
        retry_after = reply.headers["Retry-After"]
        assert retry_after.isdigit()
        assert int(retry_after) >= 1
    assert (await porten.sim_stats())["started"] == 0


# --- after the first byte ------------------------------------------------------------------


@pytest.fixture
async def doomed_agent(porten: Porten, tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``porten agent run`` in its own process: a slow sim node serving the spare model."""
    credential = await porten.enrol("doomed")
    env = {
        **os.environ,
        "PORTEN_HUB_URL": porten.url,
        "PORTEN_NODE_CREDENTIAL": credential,
        "PORTEN_ENGINE": "sim",
        "PORTEN_ENGINE_MODELS": SPARE,
        "PORTEN_SIM_PROFILE": json.dumps({"ttft_ms": 0, "tokens_per_s": SLOW.tokens_per_s}),
        "PORTEN_DATA_DIR": str(tmp_path / "agent"),
        "PORTEN_LOG_LEVEL": "warning",
        "PORTEN_LOG_FORMAT": "json",
    }
    log = (tmp_path / "agent.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "porten",
        "agent",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    try:
        await eventually(
            lambda: proc.returncode is not None or porten.serves("doomed", SPARE),
            within=60.0,
            what="the agent process serving",
        )
        if proc.returncode is not None:
            raise AssertionError("the agent exited:\n" + (tmp_path / "agent.log").read_text())
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        log.close()


async def test_node_killed_mid_stream_ends_the_stream_with_an_error(
    porten: Porten, doomed_agent: asyncio.subprocess.Process
) -> None:
    """SIGKILL of the serving node mid-stream: the SDK raises promptly, and usage is metered."""
    served_model = SimModel(id=SPARE)  # what PORTEN_ENGINE_MODELS makes the agent's sim serve
    messages = user(long_prompt(served_model, SLOW, min_tokens=40))
    plan = plan_chat(served_model, {"messages": messages}, SLOW)
    stream = await porten.client().chat.completions.create(
        model=SPARE, messages=messages, stream=True
    )
    assert stream.response.headers["X-Porten-Node"] == "doomed"
    received: list[str] = []

    def kill_after_three(chunk: Any) -> None:
        received.append(chunk.choices[0].delta.content or "")
        if len(received) == 3:
            doomed_agent.send_signal(signal.SIGKILL)

    with pytest.raises(openai.APIError) as raised:
        await read_stream(stream, kill_after_three)
    assert raised.value.code == "node_error"
    assert raised.value.type == "server_error"
    assert received == plan.content_tokens[: len(received)]
    assert 3 <= len(received) < len(plan.content_tokens)
    [served] = await porten.served(1)
    assert (served.node_id, served.model_id, served.outcome) == ("doomed", SPARE, "node_error")
    assert served.completion_tokens == len(received)
    assert served.prompt_tokens >= 1
    await porten.until_gone("doomed")
    assert await doomed_agent.wait() == -signal.SIGKILL


@pytest.fixture
async def slow_porten(settings: Settings) -> AsyncIterator[Porten]:
    """The hub with a local node that generates 20 tokens a second."""
    async with serving(settings, profile=SLOW) as p:
        yield p


async def test_client_disconnect_cancels_on_the_engine(slow_porten: Porten) -> None:
    """A client leaving mid-stream cancels the generation on the engine; usage is what ran."""
    porten = slow_porten
    prompt = long_prompt(CHAT, SLOW, min_tokens=40)
    plan = plan_for(CHAT, {"messages": user(prompt)}, SLOW)
    stream = await porten.client().chat.completions.create(
        model=CHAT, messages=user(prompt), stream=True
    )
    received = 0
    async for chunk in stream:
        assert chunk.choices[0].delta.content == plan.content_tokens[received]
        received += 1
        if received == 3:
            break
    await stream.close()

    async def cancelled() -> bool:
        return (await porten.sim_stats())["cancelled"] == 1

    await eventually(cancelled, what="the engine saw the cancel")
    stats = await porten.sim_stats()
    assert (stats["started"], stats["completed"], stats["cancelled"]) == (1, 0, 1)
    [served] = await porten.served(1)
    assert served.outcome == "cancelled"
    assert served.completion_tokens == stats["tokens_generated"]
    assert received <= served.completion_tokens < len(plan.content_tokens)


async def test_a_client_hanging_up_on_a_non_streamed_answer_cancels_it_on_the_engine(
    slow_porten: Porten,
) -> None:
    """No byte of a non-streamed answer has gone out, yet the hub notices the client leave:
    the engine stops at once, the node is free again, and the request is metered once."""
    porten = slow_porten
    prompt = long_prompt(CHAT, SLOW, min_tokens=40)  # 2 s of generation
    asking = asyncio.create_task(porten.post("/v1/chat/completions",
                                             {"model": CHAT, "messages": user(prompt)}))

    async def generating() -> bool:
        return (await porten.sim_stats())["tokens_generated"] > 0

    await eventually(generating, what="the engine generating")
    assert porten.hub.busy() == {(LOCAL, CHAT): 1}
    asking.cancel()  # the client hangs up
    with pytest.raises(asyncio.CancelledError):
        await asking

    async def cancelled() -> bool:
        return (await porten.sim_stats())["cancelled"] == 1

    await eventually(cancelled, what="the engine saw the cancel")
    stats = await porten.sim_stats()
    assert (stats["started"], stats["completed"]) == (1, 0)
    [served] = await porten.served(1)
    assert (served.outcome, served.completion_tokens) == ("cancelled", 0)
    assert porten.hub.busy() == {}


async def test_a_request_holds_its_node_busy_from_the_moment_it_is_sent(settings: Settings) -> None:
    """Busy before the node's first byte (a long prefill here), so no drain or eviction can
    pull the model out from under it; a client that gives up releases it."""
    prefill = SimProfile(ttft_ms=60_000, tokens_per_s=20)
    async with serving(settings, profile=prefill) as porten:
        asking = asyncio.create_task(porten.post(
            "/v1/chat/completions", {"model": CHAT, "messages": user("hello")}))

        async def started() -> bool:
            return (await porten.sim_stats())["started"] == 1

        await eventually(started, what="the engine working on it")
        assert porten.hub.busy() == {(LOCAL, CHAT): 1}
        assert not asking.done()
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await eventually(lambda: porten.hub.busy() == {}, what="the node free again")
        [served] = await porten.served(1)
        assert served.outcome == "cancelled"


async def test_total_timeout_is_504_gateway_timeout(settings: Settings) -> None:
    """Past request_timeout_s a request ends with 504 (or, streaming, a gateway_timeout event)."""
    crawl = SimProfile(ttft_ms=0, tokens_per_s=10)
    async with serving(attrs.evolve(settings, request_timeout_s=0.5), profile=crawl) as porten:
        prompt = long_prompt(CHAT, crawl, min_tokens=40)  # at least 4 s of generation
        reply = await porten.post("/v1/chat/completions", {"model": CHAT, "messages": user(prompt)})
        assert reply.status == 504  # a 200 would mean it waited out the whole generation
        error = reply.error
        assert (error["type"], error["code"], error["param"]) == (
            "server_error",
            "gateway_timeout",
            None,
        )

        async def cancelled() -> bool:
            return (await porten.sim_stats())["cancelled"] == 1

        await eventually(cancelled, what="the timed-out generation was cancelled")

        stream = await porten.client().chat.completions.create(
            model=CHAT, messages=user(prompt), stream=True
        )
        seen: list[Any] = []
        with pytest.raises(openai.APIError) as raised:
            await read_stream(stream, seen.append)
        assert raised.value.code == "gateway_timeout"
        received = len(seen)
        assert 0 < received < 40
        served = await porten.served_once(stream.response.headers["X-Request-Id"])
        assert served.outcome == "timeout"
        assert served.completion_tokens == received


# --- shutdown ------------------------------------------------------------------------------


async def refuses_connections(url: str) -> bool:
    """Whether nothing accepts connections at ``url``'s port any more."""
    host, port = url.removeprefix("http://").split(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except (ConnectionRefusedError, ConnectionResetError):  # reset: the listener is closing
        return True
    writer.close()
    return False


async def test_graceful_shutdown_drains_an_in_flight_stream(settings: Settings) -> None:
    """A hub told to stop mid-stream finishes that stream with [DONE] and records it durably."""
    engine = SimEngine(SLOW, preloaded=[sim_model(m) for m in PRELOADED])
    prompt = long_prompt(CHAT, SLOW, min_tokens=20)
    plan = plan_for(CHAT, {"messages": user(prompt)}, SLOW)
    body = {"model": CHAT, "messages": user(prompt), "stream": True}
    hub_context = listening(settings)
    hub, url = await hub_context.__aenter__()
    shutdown: asyncio.Task[None] | None = None
    events: list[bytes] = []
    try:
        async with (
            local_node(hub, url, PRELOADED, engine=engine) as setup,
            aiohttp.ClientSession() as http,
            http.post(
                url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {setup.api_key}"},
            ) as resp,
        ):
            assert resp.status == 200
            events.append(await resp.content.readuntil(b"\n\n"))
            shutdown = asyncio.create_task(hub_context.__aexit__(None, None, None))
            await eventually(lambda: refuses_connections(url), what="the hub stopped listening")
            async with asyncio.timeout(10.0):
                events += (await resp.content.read()).split(b"\n\n")
        async with asyncio.timeout(15.0):
            await shutdown
    finally:
        if shutdown is None:
            await hub_context.__aexit__(None, None, None)
    events = [e for e in events if e.strip()]
    assert events[-1] == b"data: [DONE]"
    deltas = [json.loads(e.removeprefix(b"data: "))["choices"] for e in events[:-1]]
    assert "".join(c[0]["delta"].get("content") or "" for c in deltas if c) == plan.content
    store = await PostgresEventStore.open(settings.database_url or "")
    try:
        [record] = await store.read_filtered(types=["request_served"])
    finally:
        await store.aclose()
    assert isinstance(record.event, ev.RequestServed)
    assert (record.event.outcome, record.event.completion_tokens) == ("ok", plan.completion_tokens)
