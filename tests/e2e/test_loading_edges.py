"""Edges of on-demand loading in the real hub: shared failures, budgets, back-off, withdrawal.

Real Postgres, real agents over WebSockets, sim engines that download and
load in a fraction of a second (``loading_harness``). Where the behaviour is
the coordinator's own (what it raises, and with which retry delay), the test
calls ``hub.loads.ensure_ready`` directly, as the relay does.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from loading_harness import (
    BIG_LOADING,
    assert_answered,
    big_engine,
    chat,
    error_of,
    loading_hub,
    logged,
    placement_log,
    settled,
    sim_node,
)
from v1_harness import BIG, CHAT, LOCAL, REASONING, SPARE, eventually

from porten.config import Settings
from porten.domain import events as ev
from porten.scheduler import filters as f
from porten.scheduler.eligibility import Requester
from porten.services.loads import ModelWarming, NoCompliantNode

pytestmark = pytest.mark.postgres

ANYONE = Requester(owner_id="anyone")


async def test_every_waiter_of_a_failed_shared_load_gets_the_same_502(settings: Settings) -> None:
    """Ten requests share one load that fails on the only fitting node: each gets 502
    node_error naming the node's error — none a 503 about the back-off it caused."""
    async with (
        loading_hub(settings) as porten,
        sim_node(porten, "node-a", big_engine(BIG_LOADING, fail_loads=[BIG])),
    ):
        replies = await asyncio.wait_for(
            asyncio.gather(*(chat(porten, BIG, f"doomed {i}") for i in range(10))), 15.0
        )
        for reply in replies:
            error = error_of(reply, 502, "node_error")
            assert error["message"] == (
                f"{BIG} could not be loaded: node-a: simulated failure loading '{BIG}'"
            ), error
        assert await placement_log(porten, BIG) == [
            ("LoadRequested", "node-a"),
            ("LoadFailed", "node-a"),
        ]


async def test_a_load_decision_never_holds_a_request_past_its_budget(settings: Settings) -> None:
    """With the model's decision lock busy, a request with a short budget gets model_warming
    at once instead of waiting for the lock; the load still starts once the lock is free."""
    async with loading_hub(settings) as porten:
        lock = porten.hub.loads._locks[SPARE]
        await lock.acquire()
        try:
            with pytest.raises(ModelWarming) as warming:
                await porten.hub.loads.ensure_ready(SPARE, ANYONE, budget_s=0.2)
            assert lock.locked()  # it did not wait for the lock
            assert warming.value.retry_after_s >= 1.0
            assert await logged(porten, ev.LoadRequested, model=SPARE) == []
        finally:
            lock.release()

        async def started() -> bool:
            return bool(await logged(porten, ev.LoadRequested, model=SPARE))

        await eventually(started, what="the decision started after the request gave up")
        assert_answered(await chat(porten, SPARE, "now"), porten.profile, SPARE, "now")


async def test_a_request_with_no_budget_left_starts_the_load_and_is_told_to_retry(
    settings: Settings,
) -> None:
    """Budget 0: 503 model_warming for this request; the load goes on for the next one."""
    async with loading_hub(settings) as porten:
        with pytest.raises(ModelWarming):
            await porten.hub.loads.ensure_ready(SPARE, ANYONE, budget_s=0.0)
        await porten.until_serving(LOCAL, SPARE)
        assert [e.node_id for e in await logged(porten, ev.LoadRequested, model=SPARE)] == [LOCAL]


async def test_retry_after_for_a_back_off_follows_the_schedule(settings: Settings) -> None:
    """After a failed load the only fitting node backs off 30 s: the refusal's retry delay is
    what is left of those 30 s (the relay's Retry-After), not a fixed guess."""
    async with (
        loading_hub(settings) as porten,
        sim_node(porten, "node-a", big_engine(BIG_LOADING, fail_loads=[BIG])),
    ):
        config = porten.hub.loads.config
        error_of(await chat(porten, BIG, "fails"), 502, "node_error")
        await settled(porten)
        node = porten.hub.projection.state.nodes["node-a"]
        with pytest.raises(NoCompliantNode) as refused:
            await porten.hub.loads.ensure_ready(BIG, ANYONE, budget_s=5.0)
        left = f.backoff_ends_at(node, BIG, config) - time.time()
        assert "backing off after 1 failed load on node-a" in refused.value.reason
        assert 0 < refused.value.retry_after_s <= config.failure_backoff_s
        assert abs(refused.value.retry_after_s - left) < 2.0
        reply = await chat(porten, BIG, "again, over HTTP")
        error_of(reply, 503, "no_available_node")
        header = int(reply.headers["Retry-After"])
        left = f.backoff_ends_at(node, BIG, config) - time.time()
        assert abs(header - left) < 2.0, (header, left)


async def test_withdrawing_a_model_unloads_it_from_provisionable_nodes(settings: Settings) -> None:
    """A planner round after a withdrawal unloads the model's copies, reason operator, and
    keeps everything else."""
    async with loading_hub(settings, preloaded=(CHAT, REASONING)) as porten:
        position = await porten.hub.writer.append(
            [ev.ModelWithdrawn(at=time.time(), actor="user:op", model_id=REASONING,
                               reason="retired")]
        )
        assert await porten.hub.projection.wait_until(position, 10.0)
        plan = await porten.hub.planner.plan_once()
        [unload] = plan.unloads
        assert (unload.node_id, unload.model_id, unload.reason) == (LOCAL, REASONING, "operator")
        assert unload.detail == f"{REASONING} was withdrawn from the catalog"
        [unloaded] = await logged(porten, ev.ModelUnloaded, model=REASONING)
        assert (unloaded.reason, unloaded.detail) == ("operator", unload.detail)
        await eventually(lambda: not porten.serves(LOCAL, REASONING), what="it left memory")
        assert porten.serves(LOCAL, CHAT)
        assert (await porten.hub.planner.plan_once()).empty
