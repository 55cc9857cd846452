"""Rate limits and budgets through the real hub: exact 429s, no overspending, Redis shared or gone.

The Redis tests run real ``redis-server`` processes on 127.0.0.1; two hubs on
one log and one Redis stand for two hub processes behind a load balancer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import attrs
import pytest
from keys_harness import bearer, key_for, keyed_account
from v1_harness import BIG, CHAT, Porten, Reply, eventually, serving, user

from porten.cli.hub import listening
from porten.config import Settings
from porten.domain.catalog import default_entry
from porten.domain.values import KeyPolicy
from redis_server import RedisServer

pytestmark = pytest.mark.postgres

CHAT_PATH = "/v1/chat/completions"
PRICES = default_entry(CHAT)


def chat(model: str = CHAT, **fields: Any) -> dict[str, Any]:
    """A chat request."""
    return {"model": model, "messages": user("tell me a long story"), **fields}


def assert_429(reply: Reply, message: str, *, max_wait: int) -> int:
    """``reply`` is exactly the 429 with ``message``; its Retry-After (1..``max_wait``)."""
    assert reply.status == 429, reply.body
    assert reply.error == {"message": message, "type": "rate_limit_error", "param": None,
                           "code": "rate_limit_exceeded"}
    wait = int(reply.headers["Retry-After"])
    assert 1 <= wait <= max_wait
    return wait


async def post(url: str, body: Any, token: str) -> Reply:
    """POST to any hub."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + CHAT_PATH, json=body, headers=bearer(token)) as resp,
    ):
        return Reply(resp.status, resp.headers, await resp.read())


async def test_requests_per_minute(porten: Porten) -> None:
    """2/min: two answered, the third is 429 with Retry-After up to 30 s, and nothing runs."""
    _, token = await keyed_account(porten, "r@example.org", KeyPolicy(requests_per_min=2))
    for _ in range(2):
        assert (await porten.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(token))).status \
            == 200
    started = (await porten.sim_stats())["started"]
    assert_429(await porten.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(token)),
               "Rate limit exceeded: this API key allows 2 requests per minute. Retry after "
               "the Retry-After delay.", max_wait=30)
    assert (await porten.sim_stats())["started"] == started


async def test_tokens_per_minute_count_what_was_generated(porten: Porten) -> None:
    """A request that generated more than the minute's tokens leaves the key waiting."""
    _, token = await keyed_account(porten, "t@example.org", KeyPolicy(tokens_per_min=60))
    first = await porten.post(CHAT_PATH, chat(max_tokens=200), headers=bearer(token))
    assert first.status == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 60
    assert_429(await porten.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(token)),
               "Rate limit exceeded: this API key allows 60 tokens per minute. Retry after "
               "the Retry-After delay.", max_wait=60 * used // 60 + 1)


async def test_a_budget_caps_the_completion_then_refuses(porten: Porten) -> None:
    """A tiny budget: the answer is cut to what it buys, the spend stays within it, then 429."""
    budget = 0.000005  # 5,000 nano-dollars: a short prompt and a few dozen output tokens
    _, token = await keyed_account(porten, "b@example.org", KeyPolicy(budget_usd=budget))
    reply = await porten.post(CHAT_PATH, {**chat(), "stream": False},
                              headers={**bearer(token), "X-Request-Id": "budget-1"})
    assert reply.status == 200, reply.body
    assert reply.json()["choices"][0]["finish_reason"] == "length"
    served = await porten.served_once("budget-1")
    assert 0 < served.cost_usd <= budget
    assert served.cost_usd == pytest.approx(
        (served.prompt_tokens * PRICES.price_in_per_m
         + served.completion_tokens * PRICES.price_out_per_m) / 1e6)
    await porten.hub.projection.wait_until(await porten.hub.store.head(), 10.0)
    assert_429(await porten.post(CHAT_PATH, chat(), headers=bearer(token)),
               "This API key's spending budget ($5e-06) is used up or fully reserved by requests "
               f"in flight (${served.cost_usd:.6f} spent). Retry after the Retry-After delay, "
               "or ask an operator to raise the budget.", max_wait=3600)


async def test_concurrent_requests_cannot_overspend_a_budget(porten: Porten) -> None:
    """Thirty requests at once against a budget for a few: what is billed stays within it."""
    budget = 0.00002
    owner, token = await keyed_account(porten, "c@example.org", KeyPolicy(budget_usd=budget))
    replies = await asyncio.gather(*(
        porten.post(CHAT_PATH, chat(max_tokens=40), headers=bearer(token)) for _ in range(30)))
    statuses = sorted(r.status for r in replies)
    assert set(statuses) == {200, 429}
    served = await porten.served(statuses.count(200))
    assert all(s.account_id == owner.user_id for s in served)
    assert sum(s.cost_usd for s in served) <= budget


@pytest.fixture
def redis_settings(settings: Settings, redis_url: str) -> Settings:
    """The test's hub settings with the shared redis-server."""
    return attrs.evolve(settings, redis_url=redis_url)


async def test_two_hubs_share_one_limit_through_redis(redis_settings: Settings) -> None:
    """3/min across two hubs: two requests on one, one on the other, the fourth anywhere is 429."""
    async with serving(redis_settings) as a, listening(redis_settings) as (_, b_url):
        _, token = await keyed_account(a, "s@example.org", KeyPolicy(requests_per_min=3))
        # BIG fits no node: each admitted request ends in a quick 503, and still counts.
        results = [await post(url, chat(BIG), token) for url in (a.url, a.url, b_url)]
        assert [r.status for r in results] == [503, 503, 503]
        for url in (b_url, a.url):
            assert_429(await post(url, chat(BIG), token),
                       "Rate limit exceeded: this API key allows 3 requests per minute. Retry "
                       "after the Retry-After delay.", max_wait=20)


async def test_when_redis_is_down_limits_fall_back_and_budgets_fail_closed(
    settings: Settings, own_redis: RedisServer
) -> None:
    """Redis gone: rate limits hold per hub, a budgeted key gets 503; back once Redis is."""
    async with serving(attrs.evolve(settings, redis_url=own_redis.url)) as p:
        owner, limited = await keyed_account(p, "l@example.org", KeyPolicy(requests_per_min=2))
        budgeted = await key_for(p, owner, KeyPolicy(budget_usd=1.0), name="budgeted")
        assert (await p.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(budgeted))).status \
            == 200
        own_redis.stop()
        for _ in range(2):
            assert (await p.post(CHAT_PATH, chat(max_tokens=4),
                                 headers=bearer(limited))).status == 200
        assert_429(await p.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(limited)),
                   "Rate limit exceeded: this API key allows 2 requests per minute. Retry "
                   "after the Retry-After delay.", max_wait=30)
        down = await p.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(budgeted))
        assert down.status == 503
        assert down.headers["Retry-After"] == "1"
        assert down.error == {
            "message": "This API key has a spending budget, and the hub cannot check it right "
                       "now. Retry after the Retry-After delay.",
            "type": "service_unavailable", "param": None, "code": "budget_unavailable"}
        own_redis.start()

        async def budget_works_again() -> bool:
            reply = await p.post(CHAT_PATH, chat(max_tokens=4), headers=bearer(budgeted))
            return reply.status == 200

        await eventually(budget_works_again, within=20.0, what="the budgeted key served again")
