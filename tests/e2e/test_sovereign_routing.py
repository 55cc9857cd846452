"""Fail-closed routing through the real hub: a key's region, trust and fleet are never escaped.

The local node (region ``local``, trusted, owner ``local``) serves the chat
model and could load cold ones; other nodes are real agents placed by
operator events. A key pinned elsewhere must get 503 ``no_available_node``
— never an answer from the local node, never a load started on it — and a
model outside its list 403 ``model_not_allowed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from keys_harness import bearer, enrol, keyed_account, placed_node
from v1_harness import BIG, CHAT, LOCAL, SLOW, SPARE, Porten, sim_model, user

from porten.agent.connection import Agent
from porten.agent.engines import sim_server
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.agent.settings import AgentSettings
from porten.domain import events as ev
from porten.domain.values import KeyPolicy
from porten.protocol import PROTOCOL_VERSION

pytestmark = pytest.mark.postgres

CHAT_PATH = "/v1/chat/completions"
EU = KeyPolicy(regions=frozenset({"eu"}))


def chat(model: str = CHAT, **fields: Any) -> dict[str, Any]:
    """A small chat request."""
    return {"model": model, "messages": user("where do I run?"), "max_tokens": 8, **fields}


def assert_no_available_node(reply: Any, model: str, reason: str) -> None:
    """``reply`` is exactly the fail-closed 503."""
    assert reply.status == 503, reply.body
    assert reply.headers["Retry-After"] == "5"
    assert reply.error == {
        "message": f"No node can serve the model '{model}' right now ({reason}). "
                   "Retry after the Retry-After delay.",
        "type": "service_unavailable", "param": None, "code": "no_available_node",
    }


async def loads_requested(porten: Porten) -> list[ev.LoadRequested]:
    """Every load_requested event in the log so far."""
    await porten.hub.writer.flush()
    records = await porten.hub.store.read_filtered(types=["load_requested"], limit=10_000)
    return [r.event for r in records if isinstance(r.event, ev.LoadRequested)]


async def test_a_region_pinned_key_is_never_served_outside_its_region(porten: Porten) -> None:
    """The model is ready only on a node outside the key's region: 503, nothing runs or loads."""
    _, token = await keyed_account(porten, "eu@example.org", EU)
    for stream in (False, True):
        reply = await porten.post(CHAT_PATH, chat(stream=stream), headers=bearer(token))
        assert_no_available_node(reply, CHAT,
                                 "no online provisionable node satisfies this key's policy")
    assert (await porten.sim_stats())["started"] == 0
    assert await loads_requested(porten) == []
    unrestricted = await porten.post(CHAT_PATH, chat())  # the node itself is fine
    assert unrestricted.status == 200
    assert unrestricted.headers["X-Porten-Node"] == LOCAL


async def test_a_region_pinned_key_is_served_in_its_region(porten: Porten) -> None:
    """With a node in the key's region, every request goes there and none to the local node."""
    _, token = await keyed_account(porten, "eu@example.org", EU)
    async with placed_node(porten, "eu1", [CHAT], region="eu"):
        for i in range(6):
            reply = await porten.post(CHAT_PATH, chat(user=f"u{i}"), headers=bearer(token))
            assert reply.status == 200, reply.body
            assert reply.headers["X-Porten-Node"] == "eu1"
    assert (await porten.sim_stats())["started"] == 0


async def test_a_cold_model_is_loaded_only_on_a_compliant_node(porten: Porten) -> None:
    """The spare model, cold everywhere: loaded on the eu node, never on the local one."""
    _, token = await keyed_account(porten, "eu@example.org", EU)
    async with placed_node(porten, "eu1", [CHAT], region="eu"):
        reply = await porten.post(CHAT_PATH, chat(SPARE), headers=bearer(token))
        assert reply.status == 200, reply.body
        assert reply.headers["X-Porten-Node"] == "eu1"
    assert [(e.node_id, e.model_id) for e in await loads_requested(porten)] == [("eu1", SPARE)]


async def test_a_cold_model_with_no_compliant_node_starts_no_load(porten: Porten) -> None:
    """Pinned to a region with no node: 503, and the local node that could load it does not."""
    _, token = await keyed_account(porten, "eu@example.org", EU)
    reply = await porten.post(CHAT_PATH, chat(SPARE), headers=bearer(token))
    assert_no_available_node(reply, SPARE,
                             "no online provisionable node satisfies this key's policy")
    assert await loads_requested(porten) == []
    assert SPARE not in porten.hub.projection.state.nodes[LOCAL].placements


async def test_minimum_trust_class_excludes_lesser_nodes(porten: Porten) -> None:
    """min_trust confidential: the trusted local node is out; a confidential node serves."""
    _, token = await keyed_account(porten, "c@example.org", KeyPolicy(min_trust="confidential"))
    reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
    assert_no_available_node(reply, CHAT,
                             "no online provisionable node satisfies this key's policy")
    async with placed_node(porten, "vault", [CHAT], trust_class="confidential"):
        reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
        assert reply.status == 200, reply.body
        assert reply.headers["X-Porten-Node"] == "vault"


async def test_my_nodes_only_never_uses_anyone_elses(porten: Porten) -> None:
    """fleet=own: served by the account's node while it is up, 503 after — never the local node."""
    owner, token = await keyed_account(porten, "own@example.org", KeyPolicy(fleet="own"))
    async with placed_node(porten, "mine", [CHAT], owner_id=owner.user_id, region="eu"):
        reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
        assert reply.status == 200, reply.body
        assert reply.headers["X-Porten-Node"] == "mine"
    await porten.until_gone("mine")
    reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
    assert_no_available_node(reply, CHAT,
                             "no online provisionable node satisfies this key's policy")
    assert (await porten.sim_stats())["started"] == 0


async def test_regions_trust_and_fleet_apply_together(porten: Porten) -> None:
    """Own + eu + verified: a node that misses any one of the three is never used."""
    owner, token = await keyed_account(porten, "all@example.org", KeyPolicy(
        regions=frozenset({"eu"}), min_trust="verified", fleet="own"))
    async with (
        placed_node(porten, "a-not-mine", [CHAT], region="eu", trust_class="trusted"),
        placed_node(porten, "b-wrong-region", [CHAT], owner_id=owner.user_id, region="us",
                    trust_class="trusted"),
        placed_node(porten, "c-too-weak", [CHAT], owner_id=owner.user_id, region="eu",
                    trust_class="community"),
    ):
        reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
        assert_no_available_node(reply, CHAT,
                                 "no online provisionable node satisfies this key's policy")
        async with placed_node(porten, "d-right", [CHAT], owner_id=owner.user_id, region="eu",
                               trust_class="verified"):
            for i in range(4):
                reply = await porten.post(CHAT_PATH, chat(user=f"u{i}"), headers=bearer(token))
                assert reply.headers["X-Porten-Node"] == "d-right"


@pytest.fixture
async def broken_sim_url() -> AsyncIterator[str]:
    """A sim server that answers 500 for the chat model before any token."""
    app = sim_server.create_app([sim_model(CHAT)], SLOW, fail_models=[CHAT])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_failing_compliant_node_is_not_retried_elsewhere(
    porten: Porten, broken_sim_url: str
) -> None:
    """The only eu node fails before its first byte: 502 node_error; the local node never runs."""
    _, token = await keyed_account(porten, "eu@example.org", EU)
    credential = await enrol(porten, "eu-broken", region="eu")
    engine = OpenAIEngine(broken_sim_url, models=[CHAT])
    agent = Agent(AgentSettings(hub_url=porten.url, credential=credential), engine)
    task = asyncio.create_task(agent.run())
    try:
        await porten.until_serving("eu-broken", CHAT)
        reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
        assert reply.status == 502, reply.body
        assert reply.error == {
            "message": f"every node that could serve {CHAT} failed (1 tried); try again",
            "type": "server_error", "param": None, "code": "node_error",
        }
    finally:
        await agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (await porten.sim_stats())["started"] == 0


async def test_a_model_outside_the_keys_list_is_403(porten: Porten) -> None:
    """A model the key's policy does not list: 403 model_not_allowed, before any routing."""
    _, token = await keyed_account(porten, "m@example.org",
                                   KeyPolicy(models=frozenset({"nomic-embed-text"})))
    reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
    assert reply.status == 403
    assert reply.error == {
        "message": f"This API key may not use the model '{CHAT}'. It is not among the models "
                   "its policy allows.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_allowed",
    }
    assert (await porten.sim_stats())["started"] == 0


async def test_models_list_follows_the_policy(porten: Porten) -> None:
    """/v1/models lists only allowed models, ready only where a compliant node holds them."""
    _, token = await keyed_account(porten, "eu@example.org", KeyPolicy(
        regions=frozenset({"eu"}), models=frozenset({CHAT, BIG})))
    listing = await porten.get("/v1/models", headers=bearer(token))
    cards = {m["id"]: m for m in listing.json()["data"]}
    assert set(cards) == {CHAT, BIG}
    assert cards[CHAT]["x_porten"]["ready"] is False


async def test_an_agent_cannot_move_itself_into_a_region(porten: Porten) -> None:
    """A hello claiming region eu and confidential changes nothing: the eu key still gets 503."""
    _, token = await keyed_account(porten, "eu@example.org",
                                   KeyPolicy(regions=frozenset({"eu"}), min_trust="confidential"))
    credential = await enrol(porten, "liar", region="us", trust_class="community")
    hello = msgspec.msgpack.encode({
        "t": "AgentHello", "protocol": PROTOCOL_VERSION, "agent_version": "raw",
        "region": "eu", "trust_class": "confidential", "owner_id": "someone-else",
        "inventory": {"engine": "sim", "provisionable": False, "vram_total_mb": 24_000,
                      "vram_budget_mb": 24_000, "disk_budget_mb": 100_000,
                      "models_loaded": [CHAT], "region": "eu",
                      "trust_class": "confidential"},
    })
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(porten.url + "/agent/v1/connect", headers=bearer(credential)) as ws,
    ):
        await ws.send_bytes(hello)
        await porten.until_serving("liar", CHAT)
        node = porten.hub.projection.state.nodes["liar"]
        assert (node.region, node.trust_class, node.owner_id) == ("us", "community", "local")
        reply = await porten.post(CHAT_PATH, chat(), headers=bearer(token))
        assert_no_available_node(reply, CHAT,
                                 "no online provisionable node satisfies this key's policy")
