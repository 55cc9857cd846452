"""Requests for cold models through the real hub: one shared load, failover, back-off, eviction.

Every test runs the hub on a real Postgres with real agents over real
WebSockets; their sim engines download and load for a fraction of a second
(:data:`loading_harness.LOADING`), so every phase really happens. The log is
the witness: how many ``load_requested`` events, on which node, failed or
loaded, evicting what and why.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import attrs
import pytest
from loading_harness import (
    BIG_LOADING,
    CRAWLING,
    LOADING,
    assert_answered,
    big_engine,
    chat,
    chat_body,
    error_of,
    explain,
    loading_hub,
    logged,
    placement,
    placement_log,
    settled,
    sim_agent_process,
    sim_node,
    until_phase,
)
from v1_harness import (
    BIG,
    CHAT,
    EMBEDDING,
    LOCAL,
    PRELOADED,
    REASONING,
    SPARE,
    VISION,
    Porten,
    Reply,
    eventually,
    long_prompt,
    plan_for,
    sim_model,
    user,
)

from porten.agent.engines.sim import SimProfile
from porten.agent.engines.sim_engine import SimEngine
from porten.config import Settings
from porten.domain import events as ev
from porten.services.loads import MAX_ATTEMPTS

pytestmark = pytest.mark.postgres

#: Streams 20 tokens a second, so one is reliably in flight while a test acts; loads fast.
HELD = SimProfile(ttft_ms=0, tokens_per_s=20, download_mb_per_s=4000, load_s_per_gb=0.1)
SHORT = {"max_tokens": 1}  # a HELD answer in about 50 ms


# --- one shared load ------------------------------------------------------------------------


async def test_concurrent_requests_for_a_cold_model_share_one_load(settings: Settings) -> None:
    """100 concurrent requests for a cold model start exactly one load; all get exact 200s."""
    async with loading_hub(settings) as porten:
        texts = [f"cold question number {i}" for i in range(100)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def ask(text: str) -> Reply:
                async with http.post(
                    porten.api_base + "/chat/completions",
                    json=chat_body(SPARE, text),
                    headers=porten.auth(),
                ) as r:
                    return Reply(r.status, r.headers, await r.read())

            replies = await asyncio.gather(*(ask(t) for t in texts))
        for text, reply in zip(texts, replies, strict=True):
            assert_answered(reply, LOADING, SPARE, text)
            assert reply.headers["X-Porten-Node"] == LOCAL
        [load] = await logged(porten, ev.LoadRequested, model=SPARE)
        assert load.node_id == LOCAL
        assert await placement_log(porten, SPARE) == [
            ("LoadRequested", LOCAL),
            ("ModelLoaded", LOCAL),
        ]
        served = await porten.served(100)
        assert {s.model_id for s in served} == {SPARE}


async def test_models_list_shows_a_cold_model_not_ready_until_loaded(settings: Settings) -> None:
    """``/v1/models`` lists an offered cold model with ready false, and ready true once loaded."""
    async with loading_hub(settings) as porten:

        async def readiness() -> dict[str, bool]:
            reply = await porten.get("/v1/models")
            assert reply.status == 200
            return {m["id"]: m["x_porten"]["ready"] for m in reply.json()["data"]}

        before = await readiness()
        assert before[CHAT] is True
        assert before[SPARE] is False
        assert_answered(await chat(porten, SPARE, "wake up"), LOADING, SPARE, "wake up")
        after = await readiness()
        assert after[SPARE] is True
        assert {m for m, ready in after.items() if ready} == {CHAT, SPARE}


# --- the warm-up budget ----------------------------------------------------------------------


async def test_a_load_longer_than_the_budget_is_503_model_warming_and_goes_on(
    settings: Settings,
) -> None:
    """A load outlasting the warm-up budget: 503 model_warming + Retry-After; it still finishes."""
    async with loading_hub(attrs.evolve(settings, warmup_budget_s=0.1)) as porten:
        reply = await chat(porten, SPARE, "too soon")
        error = error_of(reply, 503, "model_warming")
        assert SPARE in error["message"]
        retry_after = reply.headers["Retry-After"]
        assert retry_after.isdigit(), retry_after
        assert int(retry_after) >= 1
        p = placement(porten, LOCAL, SPARE)
        assert p is not None
        assert p.phase != "ready"
        await porten.until_serving(LOCAL, SPARE)
        assert_answered(await chat(porten, SPARE, "now"), LOADING, SPARE, "now")
        assert await placement_log(porten, SPARE) == [
            ("LoadRequested", LOCAL),
            ("ModelLoaded", LOCAL),
        ]


# --- failed loads ---------------------------------------------------------------------------


async def test_a_failed_load_is_tried_again_on_another_fitting_node(settings: Settings) -> None:
    """The first-choice node fails the load; the request is answered by the next fitting node."""
    # node-a holds the weights already, so urgent placement prefers it; its load fails.
    failing = big_engine(BIG_LOADING, on_disk=[BIG], fail_loads=[BIG])
    async with (
        loading_hub(settings) as porten,
        sim_node(porten, "node-a", failing),
        sim_node(porten, "node-b", big_engine(BIG_LOADING)),
    ):
        reply = await chat(porten, BIG, "big question")
        assert_answered(reply, BIG_LOADING, BIG, "big question")
        assert reply.headers["X-Porten-Node"] == "node-b"
        assert await placement_log(porten, BIG) == [
            ("LoadRequested", "node-a"),
            ("LoadFailed", "node-a"),
            ("LoadRequested", "node-b"),
            ("ModelLoaded", "node-b"),
        ]
        [failed] = await logged(porten, ev.LoadFailed)
        assert "simulated failure" in failed.error


async def test_when_every_fitting_node_fails_the_request_gets_502_naming_them(
    settings: Settings,
) -> None:
    """Every fitting node failing its load ends the request with 502 node_error, each load once."""
    async with (
        loading_hub(settings) as porten,
        sim_node(porten, "node-a", big_engine(BIG_LOADING, fail_loads=[BIG])),
        sim_node(porten, "node-b", big_engine(BIG_LOADING, fail_loads=[BIG])),
    ):
        reply = await asyncio.wait_for(chat(porten, BIG, "doomed"), 15.0)
        error = error_of(reply, 502, "node_error")
        for node in ("node-a", "node-b"):
            assert error["message"].count(f"{node}: simulated failure") == 1, error
        assert await placement_log(porten, BIG) == [
            ("LoadRequested", "node-a"),
            ("LoadFailed", "node-a"),
            ("LoadRequested", "node-b"),
            ("LoadFailed", "node-b"),
        ]


async def test_loads_for_one_request_are_bounded(settings: Settings) -> None:
    """With more failing nodes than MAX_ATTEMPTS, one request starts exactly MAX_ATTEMPTS loads."""
    nodes = [f"node-{c}" for c in "abcd"]
    assert len(nodes) > MAX_ATTEMPTS
    async with loading_hub(settings) as porten:
        agents = [sim_node(porten, n, big_engine(BIG_LOADING, fail_loads=[BIG])) for n in nodes]
        for agent in agents:
            await agent.__aenter__()
        try:
            reply = await asyncio.wait_for(chat(porten, BIG, "doomed"), 15.0)
            error_of(reply, 502, "node_error")
            loads = await logged(porten, ev.LoadRequested, model=BIG)
            assert [e.node_id for e in loads] == nodes[:MAX_ATTEMPTS]
        finally:
            for agent in reversed(agents):
                await agent.__aexit__(None, None, None)


async def test_a_node_that_failed_a_load_backs_off_from_it(settings: Settings) -> None:
    """After a failed load, a new request starts no load on that node; another node can take it."""
    async with (
        loading_hub(settings) as porten,
        sim_node(porten, "node-a", big_engine(BIG_LOADING, fail_loads=[BIG])),
    ):
        first = await chat(porten, BIG, "first")
        assert "node-a: simulated failure" in error_of(first, 502, "node_error")["message"]
        again = await chat(porten, BIG, "again")
        error = error_of(again, 503, "no_available_node")
        assert "backing off after 1 failed load on node-a" in error["message"]
        assert int(again.headers["Retry-After"]) >= 1
        assert await placement_log(porten, BIG) == [
            ("LoadRequested", "node-a"),
            ("LoadFailed", "node-a"),
        ]
        async with sim_node(porten, "node-b", big_engine(BIG_LOADING)):
            reply = await chat(porten, BIG, "third")
            assert_answered(reply, BIG_LOADING, BIG, "third")
            assert reply.headers["X-Porten-Node"] == "node-b"
        assert await placement_log(porten, BIG) == [
            ("LoadRequested", "node-a"),
            ("LoadFailed", "node-a"),
            ("LoadRequested", "node-b"),
            ("ModelLoaded", "node-b"),
        ]


# --- the loading node goes away ---------------------------------------------------------------


async def test_a_node_killed_mid_download_has_its_load_replaced_elsewhere(
    settings: Settings, tmp_path: Path
) -> None:
    """SIGKILL of the node downloading a model: the load moves to another node; waiters complete."""
    async with (
        loading_hub(settings) as porten,
        sim_agent_process(porten, "a-doomed", tmp_path, CRAWLING) as doomed,
        sim_node(porten, "b-rescue", big_engine(BIG_LOADING)),
    ):
        texts = [f"waiting question {i}" for i in range(5)]
        waiting = [asyncio.create_task(chat(porten, BIG, t)) for t in texts]
        await until_phase(porten, "a-doomed", BIG, "downloading")
        assert not any(t.done() for t in waiting)
        doomed.send_signal(signal.SIGKILL)
        replies = await asyncio.wait_for(asyncio.gather(*waiting), 15.0)
        for text, reply in zip(texts, replies, strict=True):
            assert_answered(reply, BIG_LOADING, BIG, text)
            assert reply.headers["X-Porten-Node"] == "b-rescue"
        assert await placement_log(porten, BIG) == [
            ("LoadRequested", "a-doomed"),
            ("LoadRequested", "b-rescue"),
            ("ModelLoaded", "b-rescue"),
        ]
        [gone] = await logged(porten, ev.NodeDisconnected)
        assert gone.node_id == "a-doomed"
        assert await doomed.wait() == -signal.SIGKILL


# --- the catalog changes under a load ----------------------------------------------------------


async def test_withdrawing_a_model_ends_the_requests_waiting_for_its_load(
    settings: Settings,
) -> None:
    """Requests waiting for a model's load get 404 model_not_found when it is withdrawn."""
    async with loading_hub(settings, profile=CRAWLING) as porten:
        waiting = [asyncio.create_task(chat(porten, SPARE, f"wait {i}")) for i in range(5)]
        await until_phase(porten, LOCAL, SPARE, "downloading")  # takes ~40 s to finish
        position = await porten.hub.writer.append(
            [
                ev.ModelWithdrawn(
                    at=time.time(),
                    actor="user:op",
                    model_id=SPARE,
                    reason="retired by the operator",
                )
            ]
        )
        assert await porten.hub.projection.wait_until(position, 10.0)
        replies = await asyncio.wait_for(asyncio.gather(*waiting), 5.0)
        for reply in replies:
            error = error_of(reply, 404, "model_not_found")
            assert SPARE in error["message"]
        error_of(await chat(porten, SPARE, "a new one"), 404, "model_not_found")
        assert [e.node_id for e in await logged(porten, ev.LoadRequested, model=SPARE)] == [LOCAL]


# --- urgent eviction ------------------------------------------------------------------------------


async def record_demand(porten: Porten) -> None:
    """Requests that make CHAT the most wanted, then EMBEDDING, then REASONING; VISION none."""
    asks = [
        *(chat(porten, CHAT, f"c{i}", **SHORT) for i in range(6)),
        *(chat(porten, REASONING, f"r{i}", **SHORT) for i in range(2)),
        *(porten.post("/v1/embeddings", {"model": EMBEDDING, "input": f"e{i}"}) for i in range(4)),
    ]
    assert {r.status for r in await asyncio.gather(*asks)} == {200}
    porten.hub.demand.flush()
    await settled(porten)
    demand = porten.hub.projection.state.demand
    assert VISION not in demand
    assert {CHAT, REASONING, EMBEDDING} <= set(demand)


async def test_a_cold_model_that_fits_nowhere_evicts_the_least_demanded(
    settings: Settings,
) -> None:
    """No room for a cold model: the lowest-demand model is evicted at once, reasons logged."""
    async with loading_hub(settings, preloaded=PRELOADED, profile=HELD) as porten:
        # The local node's 24 GB hold 22.9 GB of preloaded models: the 3 GB model needs room.
        await record_demand(porten)
        reply = await chat(porten, SPARE, "make room", **SHORT)
        assert_answered(reply, HELD, SPARE, "make room", **SHORT)
        [unloaded] = await logged(porten, ev.ModelUnloaded)
        assert (unloaded.node_id, unloaded.model_id) == (LOCAL, VISION)
        assert (unloaded.reason, unloaded.evicted_for) == ("evicted", SPARE)
        [load] = await logged(porten, ev.LoadRequested, model=SPARE)
        assert f"evicting {VISION} on {LOCAL}" in load.reason
        assert porten.serves(LOCAL, SPARE)
        assert not porten.serves(LOCAL, VISION)
        assert all(porten.serves(LOCAL, m) for m in (CHAT, REASONING, EMBEDDING))
        victim, winner = await asyncio.gather(explain(settings, VISION), explain(settings, SPARE))
        assert f"unloaded (evicted) to make room for {SPARE}: made room for {SPARE}" in victim
        assert f"load requested: requested now (0 req/s); evicting {VISION} on {LOCAL}" in winner
        assert "loaded and serving" in winner


async def test_a_model_with_a_request_in_flight_is_never_the_victim(settings: Settings) -> None:
    """The least-demanded model is streaming an answer: the next least-demanded one is evicted."""
    async with loading_hub(settings, preloaded=PRELOADED, profile=HELD) as porten:
        await record_demand(porten)
        prompt = long_prompt(VISION, HELD, min_tokens=24)
        stream = await porten.client().chat.completions.create(  # 1.2 s of tokens
            model=VISION, messages=user(prompt), stream=True, max_tokens=24
        )
        assert porten.hub.busy() == {(LOCAL, VISION): 1}
        reply = await chat(porten, SPARE, "make room", **SHORT)
        assert_answered(reply, HELD, SPARE, "make room", **SHORT)
        [unloaded] = await logged(porten, ev.ModelUnloaded)
        assert (unloaded.model_id, unloaded.reason, unloaded.evicted_for) == (
            REASONING,
            "evicted",
            SPARE,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        expected = plan_for(VISION, {"messages": user(prompt), "max_tokens": 24}, HELD)
        assert text == expected.content
        assert porten.serves(LOCAL, VISION)


async def test_when_only_busy_models_could_make_room_the_request_is_refused(
    settings: Settings,
) -> None:
    """The one evictable model is serving a stream: 503 no_available_node, and nothing evicted."""
    # 12 GB with the 10.5 GB model in it: the 3 GB model needs it gone.
    engine = SimEngine(HELD, vram_budget_mb=12_000, preloaded=[sim_model(REASONING)])
    async with loading_hub(settings, engine=engine, preloaded=(REASONING,)) as porten:
        prompt = long_prompt(REASONING, HELD, min_tokens=10)
        stream = await porten.client().chat.completions.create(  # half a second of tokens
            model=REASONING, messages=user(prompt), stream=True, max_tokens=10
        )
        refused = await chat(porten, SPARE, "no room", **SHORT)
        error = error_of(refused, 503, "no_available_node")
        assert f"{REASONING} on {LOCAL}: 0.0017 req/s, serving requests" in error["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert await logged(porten, ev.ModelUnloaded) == []
        assert await logged(porten, ev.LoadRequested) == []
        async for _ in stream:
            pass
        await eventually(lambda: not porten.hub.busy(), what="the stream metered")
        reply = await chat(porten, SPARE, "room now", **SHORT)
        assert_answered(reply, HELD, SPARE, "room now", **SHORT)
        [unloaded] = await logged(porten, ev.ModelUnloaded)
        assert (unloaded.model_id, unloaded.evicted_for) == (REASONING, SPARE)
