"""Drains in the real hub: a busy copy makes room without cutting off what it is serving.

The local node has room for one of two models; the one loaded is streaming
an answer when the other — with far more demand — is requested. The hub
drains the busy copy (``model_draining``: no new requests reach it), the
stream finishes untouched, the copy is unloaded and the requested model
loads in its room. Demand is recorded as the meter would record it
(``demand_observed`` events), so the test controls who has more.
"""

from __future__ import annotations

import asyncio
import time

import attrs
import pytest
from loading_harness import (
    assert_answered,
    chat,
    error_of,
    loading_hub,
    logged,
    placement,
)
from v1_harness import (
    LOCAL,
    REASONING,
    SPARE,
    Porten,
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
from porten.scheduler.eligibility import Requester
from porten.scheduler.routing import NodeLoad, candidates

pytestmark = pytest.mark.postgres

#: Streams 20 tokens a second, so an answer is reliably in flight while the test acts.
HELD = SimProfile(ttft_ms=0, tokens_per_s=20, download_mb_per_s=4000, load_s_per_gb=0.1)
SHORT = {"max_tokens": 1}


def one_model_node() -> SimEngine:
    """12 GB: the 10.5 GB reasoning model, preloaded, leaves no room for the 3 GB one."""
    return SimEngine(HELD, vram_budget_mb=12_000, preloaded=[sim_model(REASONING)])


async def demand(porten: Porten, model: str, served: int) -> None:
    """Record ``served`` requests for ``model`` in the last minute, as the meter would."""
    now = time.time()
    position = await porten.hub.writer.append(
        [ev.DemandObserved(at=now, actor="hub", model_id=model, window_start=now - 60.0,
                           window_s=60.0, served=served)]
    )
    assert await porten.hub.projection.wait_until(position, 10.0)


async def stream_reasoning(porten: Porten, tokens: int) -> tuple[object, str]:
    """Start a streamed answer from the reasoning model; (the stream, its prompt)."""
    prompt = long_prompt(REASONING, HELD, min_tokens=tokens)
    stream = await porten.client().chat.completions.create(
        model=REASONING, messages=user(prompt), stream=True, max_tokens=tokens
    )
    assert porten.hub.busy() == {(LOCAL, REASONING): 1}
    return stream, prompt


async def finish(stream: object, prompt: str, tokens: int) -> None:
    """Read the stream to its end and check it is the whole answer, never cut."""
    text = "".join(
        [c.choices[0].delta.content or "" async for c in stream if c.choices]  # type: ignore[attr-defined]
    )
    expected = plan_for(REASONING, {"messages": user(prompt), "max_tokens": tokens}, HELD)
    assert text == expected.content


async def test_a_busy_copy_is_drained_for_a_model_with_far_more_demand(settings: Settings) -> None:
    """The requested model waits for the drain; the stream completes; then it loads."""
    async with loading_hub(settings, engine=one_model_node(), preloaded=(REASONING,)) as porten:
        await demand(porten, SPARE, served=1200)  # 2 req/s
        stream, prompt = await stream_reasoning(porten, tokens=24)  # 1.2 s of tokens
        waiting = asyncio.create_task(chat(porten, SPARE, "make room", **SHORT))

        def draining() -> bool:
            p = placement(porten, LOCAL, REASONING)
            return p is not None and p.draining

        await eventually(draining, what="the reasoning model draining")
        assert not waiting.done()
        # The router sends nothing new to a draining copy.
        anyone = Requester(owner_id="anyone")
        state = porten.hub.projection.state
        assert candidates(state, REASONING, anyone, {LOCAL: NodeLoad()}) == []
        await finish(stream, prompt, tokens=24)
        reply = await asyncio.wait_for(waiting, 15.0)
        assert_answered(reply, HELD, SPARE, "make room", **SHORT)
        [drained] = await logged(porten, ev.ModelDraining)
        assert (drained.node_id, drained.model_id, drained.evicted_for) == (LOCAL, REASONING, SPARE)
        assert drained.detail.startswith(f"drained to make room for {SPARE}, requested now")
        [unloaded] = await logged(porten, ev.ModelUnloaded)
        assert (unloaded.model_id, unloaded.reason, unloaded.evicted_for) == (
            REASONING,
            "evicted",
            SPARE,
        )
        assert unloaded.detail == f"drained: its last request finished; made room for {SPARE}"
        order = await logged(porten, ev.ModelDraining, ev.ModelUnloaded, ev.LoadRequested)
        assert [type(e).__name__ for e in order] == [
            "ModelDraining",
            "ModelUnloaded",
            "LoadRequested",
        ]
        assert porten.serves(LOCAL, SPARE)
        assert not porten.serves(LOCAL, REASONING)


async def test_the_planner_tick_finishes_a_drain_nobody_waits_for(settings: Settings) -> None:
    """The request that caused a drain gave up (a 0.5 s warm-up budget, a 2 s stream): it is told
    what is being drained; the stream's end still unloads the copy, on the planner's tick."""
    short = attrs.evolve(settings, warmup_budget_s=0.5)
    async with loading_hub(
        short, engine=one_model_node(), preloaded=(REASONING,), planner=True
    ) as porten:
        await demand(porten, SPARE, served=1200)
        stream, prompt = await stream_reasoning(porten, tokens=40)  # 2 s of tokens
        refused = await chat(porten, SPARE, "make room", **SHORT)
        error = error_of(refused, 503, "no_available_node")
        assert f"making room for it: draining {REASONING} on {LOCAL}" in error["message"]
        await finish(stream, prompt, tokens=40)

        async def unloaded() -> bool:
            return bool(await logged(porten, ev.ModelUnloaded, model=REASONING))

        await eventually(unloaded, what="the drained copy unloaded by the planner's tick")
        await porten.hub.loads.ensure_ready(SPARE, Requester(owner_id="anyone"), budget_s=30.0)
        reply = await chat(porten, SPARE, "room now", **SHORT)
        assert_answered(reply, HELD, SPARE, "room now", **SHORT)
