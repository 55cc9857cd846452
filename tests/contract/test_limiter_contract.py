"""One limiter contract, run against the in-process limiter and a real Redis.

The two implementations must agree exactly: a hub falls back from one to the
other when Redis goes away, and the Lua script is a transcription of
:mod:`porten.domain.quota`. Time is passed in, so every scenario is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from porten.adapters.redis.limiter import RedisLimiter
from porten.services.ratelimit import Ask, Limiter, LocalLimiter, Settlement

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    """Each limiter implementation in turn (Redis: a real redis-server on 127.0.0.1)."""
    if request.param == "memory":
        yield LocalLimiter()
        return
    url = request.getfixturevalue("redis_url")
    redis_limiter = RedisLimiter.from_url(url, timeout_s=5.0)
    try:
        yield redis_limiter
    finally:
        await redis_limiter.aclose()


def ask(rid: str = "r", **fields: Any) -> Ask:
    """An ask for key ``k1`` at :data:`NOW` unless ``fields`` say otherwise."""
    fields.setdefault("now", NOW)
    return Ask(key_id=fields.pop("key_id", "k1"), request_id=rid, **fields)


async def test_requests_per_minute_admit_a_burst_then_one_per_interval(limiter: Limiter) -> None:
    """3/min: three at once, the fourth waits 20 s, and is admitted 20 s later."""
    verdicts = [await limiter.admit(ask(f"r{i}", requests_per_min=3)) for i in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[3].limit == "requests"
    assert verdicts[3].retry_after_s == pytest.approx(20.0)
    assert (await limiter.admit(ask("r5", requests_per_min=3, now=NOW + 19.9))).allowed is False
    assert (await limiter.admit(ask("r6", requests_per_min=3, now=NOW + 20.0))).allowed is True


async def test_keys_are_limited_separately(limiter: Limiter) -> None:
    """One key's limit does not touch another's."""
    assert (await limiter.admit(ask(requests_per_min=1))).allowed
    assert not (await limiter.admit(ask(requests_per_min=1))).allowed
    assert (await limiter.admit(ask(key_id="k2", requests_per_min=1))).allowed


async def test_tokens_per_minute_charge_the_estimate_then_settle(limiter: Limiter) -> None:
    """60 of 100 tokens, then 60 more is refused for 12 s; a refund of 50 makes room."""
    assert (await limiter.admit(ask("a", tokens_per_min=100, tokens=60))).allowed
    refused = await limiter.admit(ask("b", tokens_per_min=100, tokens=60))
    assert (refused.allowed, refused.limit) == (False, "tokens")
    assert refused.retry_after_s == pytest.approx(12.0)
    await limiter.settle(Settlement(key_id="k1", request_id="a", now=NOW, tokens_per_min=100,
                                    tokens_delta=-50))
    assert (await limiter.admit(ask("c", tokens_per_min=100, tokens=60))).allowed


async def test_a_request_bigger_than_a_minute_is_admitted_when_the_bucket_is_full(
    limiter: Limiter,
) -> None:
    """500 tokens against 100/min: admitted on a full bucket; settled, it is five minutes' worth."""
    assert (await limiter.admit(ask("a", tokens_per_min=100, tokens=500))).allowed
    await limiter.settle(Settlement(key_id="k1", request_id="a", now=NOW, tokens_per_min=100,
                                    tokens_delta=400))  # admission charged a minute's 100
    later = await limiter.admit(ask("b", tokens_per_min=100, tokens=1, now=NOW + 239))
    assert (later.allowed, later.limit) == (False, "tokens")
    assert (await limiter.admit(ask("c", tokens_per_min=100, tokens=1, now=NOW + 241))).allowed


async def test_the_budget_reserves_then_settles(limiter: Limiter) -> None:
    """Reservations never exceed budget - spent - held; settling frees what was not used."""
    budget = {"budget_nano": 1000, "want_nano": 600, "least_nano": 100}
    first = await limiter.admit(ask("a", **budget))
    assert (first.allowed, first.reserved_nano) == (True, 600)
    second = await limiter.admit(ask("b", **budget))
    assert (second.allowed, second.reserved_nano) == (True, 400)  # what is left
    third = await limiter.admit(ask("c", **budget))
    assert (third.allowed, third.limit, third.retry_after_s) == (False, "budget", 1.0)
    await limiter.settle(Settlement(key_id="k1", request_id="a", now=NOW, cost_nano=100,
                                    budgeted=True))
    fourth = await limiter.admit(ask("d", **budget))
    assert (fourth.allowed, fourth.reserved_nano, fourth.spent_nano) == (True, 500, 100)


async def test_a_spent_budget_refuses_for_an_hour(limiter: Limiter) -> None:
    """Nothing held and nothing left: refused with a long Retry-After."""
    v = await limiter.admit(ask(budget_nano=1000, spent_nano=1000, want_nano=10, least_nano=1))
    assert (v.allowed, v.limit, v.retry_after_s, v.spent_nano) == (False, "budget", 3600.0, 1000)


async def test_spent_is_the_larger_of_the_limiters_count_and_the_logs(limiter: Limiter) -> None:
    """A log that knows more spending than the limiter wins; a smaller one does not."""
    await limiter.admit(ask("a", budget_nano=1000, want_nano=0))
    await limiter.settle(Settlement(key_id="k1", request_id="a", now=NOW, cost_nano=300,
                                    budgeted=True))
    v = await limiter.admit(ask("b", budget_nano=1000, spent_nano=100, want_nano=0))
    assert v.spent_nano == 300
    v = await limiter.admit(ask("c", budget_nano=1000, spent_nano=800, want_nano=300,
                                least_nano=300))
    assert (v.allowed, v.spent_nano) == (False, 800)


async def test_an_unsettled_hold_expires(limiter: Limiter) -> None:
    """A reservation nobody settles (its hub died) is released after hold_s."""
    budget = {"budget_nano": 100, "want_nano": 100, "least_nano": 100, "hold_s": 60.0}
    assert (await limiter.admit(ask("a", **budget))).allowed
    assert not (await limiter.admit(ask("b", now=NOW + 59, **budget))).allowed
    assert (await limiter.admit(ask("c", now=NOW + 61, **budget))).allowed


async def test_a_refusal_charges_nothing(limiter: Limiter) -> None:
    """A request refused by its budget does not use up its request rate, and vice versa."""
    refused = await limiter.admit(ask("a", requests_per_min=1, budget_nano=10, want_nano=20,
                                      least_nano=20))
    assert (refused.allowed, refused.limit) == (False, "budget")
    assert (await limiter.admit(ask("b", requests_per_min=1))).allowed


async def test_concurrent_requests_never_exceed_the_request_limit(
    limiter: Limiter, request: pytest.FixtureRequest
) -> None:
    """200 requests at once from four clients (hubs) against 25/min: exactly 25 admitted."""
    clients = [limiter]
    if isinstance(limiter, RedisLimiter):
        url = request.getfixturevalue("redis_url")
        clients += [RedisLimiter.from_url(url, timeout_s=5.0) for _ in range(3)]
    try:
        verdicts = await asyncio.gather(*(
            clients[i % len(clients)].admit(ask(f"r{i}", requests_per_min=25))
            for i in range(200)
        ))
    finally:
        for c in clients[1:]:
            assert isinstance(c, RedisLimiter)
            await c.aclose()
    assert sum(v.allowed for v in verdicts) == 25


async def test_concurrent_requests_never_overspend_a_budget(
    limiter: Limiter, request: pytest.FixtureRequest
) -> None:
    """100 requests at once, each wanting 7% of the budget: reservations total at most 100%."""
    clients = [limiter]
    if isinstance(limiter, RedisLimiter):
        url = request.getfixturevalue("redis_url")
        clients += [RedisLimiter.from_url(url, timeout_s=5.0) for _ in range(3)]
    try:
        verdicts = await asyncio.gather(*(
            clients[i % len(clients)].admit(
                ask(f"r{i}", budget_nano=1000, want_nano=70, least_nano=70))
            for i in range(100)
        ))
    finally:
        for c in clients[1:]:
            assert isinstance(c, RedisLimiter)
            await c.aclose()
    admitted = [v for v in verdicts if v.allowed]
    assert len(admitted) == 14
    assert sum(v.reserved_nano for v in admitted) == 980


async def test_a_lease_charges_several_requests_and_refunds_what_went_unused(
    limiter: Limiter,
) -> None:
    """A lease of 4 of 6/min leaves 2; giving 3 back makes room for a lease of 5."""
    assert (await limiter.admit(ask("a", requests_per_min=6, request_cost=4))).allowed
    assert not (await limiter.admit(ask("b", requests_per_min=6, request_cost=3))).allowed
    assert (await limiter.admit(ask("c", requests_per_min=6, request_cost=2))).allowed
    assert not (await limiter.admit(ask("d", requests_per_min=6))).allowed
    assert (await limiter.admit(ask("e", requests_per_min=6, refund_requests=3))).allowed
    assert (await limiter.admit(ask("f", requests_per_min=6, request_cost=2))).allowed
    assert not (await limiter.admit(ask("g", requests_per_min=6))).allowed


async def test_token_refunds_never_move_the_allowance_past_full(limiter: Limiter) -> None:
    """Refunding more than was charged leaves a full bucket, not a bigger one."""
    assert (await limiter.admit(ask("a", tokens_per_min=100, tokens=10,
                                    refund_tokens=1000))).allowed
    assert (await limiter.admit(ask("b", tokens_per_min=100, tokens=90))).allowed
    assert not (await limiter.admit(ask("c", tokens_per_min=100, tokens=5))).allowed


BUDGET = {"budget_nano": 1000, "least_nano": 1}


async def test_a_slice_is_at_most_an_eighth_of_what_is_left_and_covers_the_request(
    limiter: Limiter,
) -> None:
    """Slices of 200 wanted from 1000: 125 (1000/8), then 109 (875/8); never below the want."""
    first = await limiter.admit(ask("lease-a", want_nano=10, slice_nano=200, **BUDGET))
    assert (first.allowed, first.reserved_nano) == (True, 125)
    second = await limiter.admit(ask("lease-b", want_nano=10, slice_nano=200, **BUDGET))
    assert second.reserved_nano == 109
    big = await limiter.admit(ask("lease-c", want_nano=300, slice_nano=4800, **BUDGET))
    assert big.reserved_nano == 300  # 766/8 is less than the request itself needs


async def test_near_the_end_a_slice_is_the_request_alone(limiter: Limiter) -> None:
    """Less left than the want: the slice is what is left (capped request), then refused."""
    assert (await limiter.admit(ask("a", want_nano=950, **BUDGET))).reserved_nano == 950
    last = await limiter.admit(ask("lease", want_nano=40, slice_nano=640, **BUDGET))
    assert (last.allowed, last.reserved_nano) == (True, 40)  # 50 left: 50/8 < 40
    capped = await limiter.admit(ask("lease", want_nano=40, slice_nano=640, **BUDGET))
    assert (capped.allowed, capped.reserved_nano) == (True, 10)
    refused = await limiter.admit(ask("lease", want_nano=40, slice_nano=640, **BUDGET))
    assert (refused.allowed, refused.limit, refused.retry_after_s) == (False, "budget", 1.0)


async def test_a_hold_grows_with_each_slice_and_shrinks_with_each_report(
    limiter: Limiter,
) -> None:
    """A report moves what the hold spent to spent and frees what it does not need."""
    assert (await limiter.admit(ask("h", want_nano=100, slice_nano=800, **BUDGET))
            ).reserved_nano == 125
    assert (await limiter.admit(ask("h", want_nano=100, slice_nano=800, **BUDGET))
            ).reserved_nano == 109  # the hold is 234
    report = await limiter.admit(ask("h", hold_release_nano=134, hold_spent_nano=30,
                                     want_nano=0, **BUDGET))
    assert report.spent_nano == 30  # the hold is now 100
    rest = await limiter.admit(ask("other", want_nano=870, **BUDGET))
    assert (rest.allowed, rest.reserved_nano) == (True, 870)  # 1000 - 30 - 100
    await limiter.settle(Settlement(key_id="k1", request_id="h", now=NOW, cost_nano=60,
                                    budgeted=True, release_nano=60))
    await limiter.settle(Settlement(key_id="k1", request_id="other", now=NOW, cost_nano=0,
                                    budgeted=True))
    left = await limiter.admit(ask("last", want_nano=870, **BUDGET))
    assert (left.reserved_nano, left.spent_nano) == (870, 90)  # the hold keeps 40


async def test_a_report_applies_even_when_the_ask_is_refused(limiter: Limiter) -> None:
    """A refused lease renewal still returns the old lease's money and counts its spending."""
    assert (await limiter.admit(ask("h", want_nano=500, **BUDGET))).reserved_nano == 500
    assert (await limiter.admit(ask("r1", requests_per_min=1))).allowed
    refused = await limiter.admit(ask("h", requests_per_min=1, want_nano=10,
                                      hold_release_nano=500, hold_spent_nano=200, **BUDGET))
    assert (refused.allowed, refused.limit) == (False, "requests")
    after = await limiter.admit(ask("x", want_nano=800, **BUDGET))
    assert (after.allowed, after.reserved_nano, after.spent_nano) == (True, 800, 200)


async def test_a_release_never_frees_more_than_the_hold(limiter: Limiter) -> None:
    """Releasing 500 from a hold of 100 frees 100, not other holds' money."""
    assert (await limiter.admit(ask("a", want_nano=100, **BUDGET))).allowed
    assert (await limiter.admit(ask("b", want_nano=900, **BUDGET))).allowed
    await limiter.settle(Settlement(key_id="k1", request_id="a", now=NOW, cost_nano=0,
                                    budgeted=True, release_nano=500))
    assert (await limiter.admit(ask("c", want_nano=100, least_nano=100,
                                    budget_nano=1000))).allowed
    assert not (await limiter.admit(ask("d", want_nano=1, least_nano=1,
                                        budget_nano=1000))).allowed


async def test_a_hold_lives_hold_s_past_the_last_ask_naming_it(limiter: Limiter) -> None:
    """Each slice renews the hold's expiry; a hold nobody renews is dropped."""
    budget = {"budget_nano": 100, "least_nano": 1, "hold_s": 60.0}
    assert (await limiter.admit(ask("h", want_nano=50, **budget))).allowed
    assert (await limiter.admit(ask("h", now=NOW + 50, want_nano=50, **budget))).allowed
    assert not (await limiter.admit(ask("x", now=NOW + 70, want_nano=1, **budget))).allowed
    assert (await limiter.admit(ask("x", now=NOW + 111, want_nano=100, **budget))).allowed
