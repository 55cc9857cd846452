"""Usage per key per day, and an owner's earnings per day, as the portal shows them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import re

from enrolment_harness import agent_post
from portal_harness import create_account, signed_in
from test_portal_keys import create_key
from v1_harness import SPARE, Porten, sim_model

from porten.agent.connection import Agent
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings


def bar_value(text: str, chart_id: str, date: str) -> float:
    """The value of ``date``'s bar in the SVG chart ``chart_id`` of a page."""
    chart = text[text.index(f'id="{chart_id}"'):]
    chart = chart[: chart.index("</svg>")]
    found = re.search(rf'data-label="{date}" data-value="([^"]+)"', chart)
    assert found, chart[:500]
    return float(found.group(1))


async def test_usage_and_earnings_sum_the_metered_requests(porten: Porten) -> None:
    """Two requests with a key: the key's usage and the serving owner's earnings both show them."""
    account = await create_account(porten, "ada@example.org")
    minted = await porten.hub.enrolment_tokens.mint(account.user_id, actor="test")
    status, node = await agent_post(porten, "/agent/v1/enrol", {"token": minted.token,
                                                                "name": "ada-gpu"})
    assert status == 200
    engine = SimEngine(porten.profile, preloaded=[sim_model(SPARE)])
    agent = Agent(AgentSettings(hub_url=porten.url, credential=node["credential"]), engine)
    task = asyncio.create_task(agent.run())
    try:
        await porten.until_serving(node["node_id"], SPARE)
        async with signed_in(porten, "ada@example.org") as client:
            _, token = await create_key(client, name="metered")
            for text in ("one", "two"):
                reply = await porten.post("/v1/chat/completions", {
                    "model": SPARE, "messages": [{"role": "user", "content": text}]},
                    headers={"Authorization": f"Bearer {token}"})
                assert reply.status == 200, reply.body
            served = await porten.served(2)
            tokens = sum(e.prompt_tokens + e.completion_tokens for e in served)
            cost = sum(e.cost_usd for e in served)
            assert cost > 0
            assert {e.node_id for e in served} == {node["node_id"]}
            today = dt.datetime.now(dt.UTC).date().isoformat()

            usage = await client.get("/build/usage")
            assert usage.status == 200
            assert html.unescape(usage.text).count("metered (sk-porten-") == 1
            assert '<td class="num">2</td>' in usage.text
            assert bar_value(usage.text, "usage-chart", today) == tokens
            assert f"{tokens:,} tokens, ${cost:.6f}" in usage.text

            earn = await client.get("/earn")
            assert '<tr data-node="' + node["node_id"] + '">' in earn.text
            assert bar_value(earn.text, "tokens-chart", today) == tokens
            assert f'id="earned-total">${cost:.6f}</strong>' in earn.text
    finally:
        await agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
