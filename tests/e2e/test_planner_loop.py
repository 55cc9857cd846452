"""The hub's planner loop on a real fleet: demand pulls models in, idleness sends them out.

The background cadence is paused (see :func:`loading_harness.loading_hub`);
each test records demand through the real meter (requests, then
``hub.demand.flush()``) and runs a round with ``hub.planner.plan_once()``,
which appends its decisions and commands the real agents. Time passes on the
real clock only where idleness must: about a second, waited for as a
condition on the folded state.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import attrs
import pytest
from aiohttp import web
from loading_harness import (
    BIG_LOADING,
    LOADING,
    assert_answered,
    big_engine,
    chat,
    loading_hub,
    logged,
    placement_log,
    settled,
    sim_node,
)
from v1_harness import BIG, CHAT, LOCAL, REASONING, SPARE, Porten, eventually, sim_model

from porten.agent.engines import sim_server
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.config import Settings
from porten.domain import events as ev

pytestmark = pytest.mark.postgres

#: Idle this long on a provisionable node and a model is unloaded.
IDLE_S = 1.0


@pytest.fixture
async def fixed_sim_url() -> AsyncIterator[str]:
    """A sim server holding the spare model: the runtime behind a fixed-set (openai) node."""
    app = sim_server.create_app([sim_model(SPARE)], LOADING)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_round_places_a_model_with_unmet_demand(settings: Settings) -> None:
    """Requests no node could serve are demand; when room appears, a planner round loads it."""
    async with loading_hub(settings) as porten:
        for i in range(3):
            refused = await chat(porten, BIG, f"too big {i}")
            assert refused.status == 503, refused.body
            assert refused.error["code"] == "no_available_node"
        async with sim_node(porten, "big", big_engine(BIG_LOADING)):
            porten.hub.demand.flush()
            await settled(porten)
            [window] = porten.hub.projection.state.demand[BIG].windows
            assert (window.served, window.unmet) == (0, 3)
            plan = await porten.hub.planner.plan_once()
            [load] = plan.loads
            assert (load.node_id, load.model_id) == ("big", BIG)
            assert load.reason.startswith("demand ")
            assert "downloading weights" in load.reason
            assert plan.unloads == ()
            await porten.until_serving("big", BIG)
            reply = await chat(porten, BIG, "now it fits")
            assert_answered(reply, BIG_LOADING, BIG, "now it fits")
            assert reply.headers["X-Porten-Node"] == "big"
            [requested] = await logged(porten, ev.LoadRequested, model=BIG)
            assert (requested.actor, requested.reason) == ("planner", load.reason)
            assert await placement_log(porten, BIG) == [
                ("LoadRequested", "big"),
                ("ModelLoaded", "big"),
            ]
            again = await porten.hub.planner.plan_once()
            assert again.empty, again  # applied, the same demand asks for nothing more


def idle_for(porten: Porten, seconds: float, nodes: tuple[str, ...]) -> bool:
    """Whether every placement on ``nodes`` has been unused for ``seconds``."""
    now = time.time()
    state = porten.hub.projection.state
    return all(
        now - p.last_used_at >= seconds for n in nodes for p in state.nodes[n].placements.values()
    )


async def test_a_round_unloads_idle_models_keeping_weights_and_fixed_nodes(
    settings: Settings, fixed_sim_url: str
) -> None:
    """Idle models leave provisionable nodes (weights kept on disk); fixed-set nodes stay."""
    fast_idle = attrs.evolve(settings, idle_unload_s=IDLE_S)
    async with (
        loading_hub(fast_idle, preloaded=(CHAT, REASONING)) as porten,
        porten.node("fixed", OpenAIEngine(fixed_sim_url, models=[SPARE]), [SPARE]),
    ):
        fixed = porten.hub.projection.state.nodes["fixed"]
        assert not fixed.provisionable
        await eventually(
            lambda: idle_for(porten, IDLE_S, (LOCAL, "fixed")),
            within=5.0,
            what=f"every model unused for {IDLE_S} s",
        )
        assert_answered(await chat(porten, CHAT, "still wanted"), LOADING, CHAT, "still wanted")
        await porten.served(1)
        await settled(porten)

        plan = await porten.hub.planner.plan_once()
        [unload] = plan.unloads
        assert (unload.node_id, unload.model_id, unload.reason) == (LOCAL, REASONING, "idle")
        assert plan.loads == ()
        [unloaded] = await logged(porten, ev.ModelUnloaded)
        assert (unloaded.actor, unloaded.node_id, unloaded.model_id, unloaded.reason) == (
            "planner",
            LOCAL,
            REASONING,
            "idle",
        )

        async def reported_on_disk() -> bool:
            reports = await logged(porten, ev.NodeCapabilitiesReported)
            last = [r for r in reports if r.node_id == LOCAL][-1]
            return REASONING in last.models_on_disk and REASONING not in last.models_loaded

        await eventually(reported_on_disk, what="the node reporting the weights kept on disk")
        assert porten.serves(LOCAL, CHAT)
        assert not porten.serves(LOCAL, REASONING)
        assert porten.serves("fixed", SPARE)
        assert REASONING in porten.hub.projection.state.nodes[LOCAL].on_disk

        # Back on request, from disk: a load with no download.
        assert_answered(await chat(porten, REASONING, "back"), LOADING, REASONING, "back")
        [_, reload] = await logged(porten, ev.LoadRequested, ev.ModelUnloaded, model=REASONING)
        assert isinstance(reload, ev.LoadRequested)
        assert "weights already on disk" in reload.reason
        phases = {e.phase for e in await logged(porten, ev.LoadProgressed, model=REASONING)}
        assert phases == {"loading"}
        decisions = await logged(porten, ev.ModelUnloaded, ev.LoadRequested)
        assert "fixed" not in {getattr(e, "node_id", "") for e in decisions}


async def test_a_round_with_nothing_to_change_changes_nothing(settings: Settings) -> None:
    """With no demand and nothing idle long enough, a round plans and appends nothing."""
    async with loading_hub(settings) as porten:
        await settled(porten)
        before = porten.hub.projection.position
        plan = await porten.hub.planner.plan_once()
        assert plan.empty
        assert plan.unplaceable == ()
        await settled(porten)
        assert porten.hub.projection.position == before
