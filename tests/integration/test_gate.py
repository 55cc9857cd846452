"""The gate (services/admission.py) over a real Redis and in memory: leases, budgets, settlement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import attrs
import pytest

from porten.adapters.redis.limiter import RedisLimiter
from porten.domain import events as ev
from porten.domain.fold import fold
from porten.domain.state import EMPTY, FleetState, KeyState
from porten.domain.values import CatalogEntry, KeyPolicy
from porten.services.admission import Admission, Gate, Refused
from porten.services.leases import LEASE_S

T0 = 1_800_000_000.0
ENTRY = CatalogEntry(id="m", vram_mb=1, disk_mb=1, ctx=1000, price_in_per_m=1.0,
                     price_out_per_m=2.0)


@attrs.define
class Clock:
    """A clock the test moves."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


def key(policy: KeyPolicy, key_id: str = "k1", spent_usd: float = 0.0) -> KeyState:
    """A key of account u1."""
    return KeyState(key_id=key_id, owner_id="u1", secret_hash="h", created_at=0.0,
                    policy=policy, spent_usd=spent_usd)


STATE: FleetState = fold([ev.NodeEnrolled(at=0.0, actor="t", node_id="n1", owner_id="u2")],
                         EMPTY)


@pytest.fixture
async def limiters(redis_url: str) -> AsyncIterator[list[RedisLimiter]]:
    """Five clients of one real redis-server: five hubs' worth."""
    clients = [RedisLimiter.from_url(redis_url, timeout_s=5.0) for _ in range(5)]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


async def admit(gate: Gate, k: KeyState, rid: str, tokens: int = 10) -> Admission | None:
    """The admission, or None if refused."""
    try:
        return await gate.admit(k, rid, ENTRY, prompt_tokens=tokens, completion_cap=10)
    except Refused:
        return None


async def test_leases_across_hubs_never_exceed_the_limit(limiters: list[RedisLimiter]) -> None:
    """Five hubs leasing slices of 600/min: exactly 600 admitted at one instant, not one more."""
    clock = Clock()
    gates = [Gate(state=lambda: STATE, clock=clock, shared=lim) for lim in limiters]
    k = key(KeyPolicy(requests_per_min=600))
    results = await asyncio.gather(*(admit(gates[i % 5], k, f"r{i}") for i in range(1500)))
    assert sum(r is not None for r in results) == 600
    assert sum(r is not None and r.leased for r in results) > 500  # most never asked Redis


async def test_an_expired_lease_gives_back_what_it_did_not_use(
    limiters: list[RedisLimiter],
) -> None:
    """A hub leases 10 of 60... uses one; after the lease ends the unused nine are back."""
    clock = Clock()
    a, b = (Gate(state=lambda: STATE, clock=clock, shared=lim) for lim in limiters[:2])
    k = key(KeyPolicy(requests_per_min=120))  # slices of 2
    assert await admit(a, k, "a1") is not None  # leases 2, uses 1
    clock.now += LEASE_S + 0.1
    assert await admit(a, k, "a2") is not None  # gives the unused one back, leases 2 again
    admitted = [await admit(b, k, f"b{i}") for i in range(200)]
    assert sum(r is not None for r in admitted) == 120 - 2  # a holds exactly its one lease


async def test_tokens_beyond_a_lease_are_charged_to_redis(limiters: list[RedisLimiter]) -> None:
    """A request that generates a minute's tokens on hub A leaves hub B nothing to admit."""
    clock = Clock()
    a, b = (Gate(state=lambda: STATE, clock=clock, shared=lim) for lim in limiters[:2])
    k = key(KeyPolicy(tokens_per_min=6000))
    first = await admit(a, k, "a1", tokens=10)
    assert first is not None
    assert first.leased
    first.charge("n1", 10, 5990)
    await a.aclose()
    assert await admit(b, k, "b1", tokens=10) is None


async def test_a_budget_reserves_per_request_and_caps_the_completion() -> None:
    """In memory: the reservation is what is left, the cap what it buys, then refusal."""
    gate = Gate(state=lambda: STATE, clock=Clock())
    k = key(KeyPolicy(budget_usd=0.00005))  # 50,000 nano-dollars
    first = await gate.admit(k, "r1", ENTRY, prompt_tokens=10, completion_cap=None)
    assert first.reserved_nano == 50_000
    assert first.completion_cap == (50_000 - 10 * 1000) // 2000
    with pytest.raises(Refused) as refused:
        await gate.admit(k, "r2", ENTRY, prompt_tokens=10, completion_cap=None)
    assert (refused.value.limit, refused.value.retry_after_s) == ("budget", 1.0)
    charge = first.charge("n1", 10, 5)
    assert charge.cost_usd == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    assert (charge.account_id, charge.node_owner_id) == ("u1", "u2")
    first.release()  # already settled: nothing more happens
    second = await gate.admit(k, "r3", ENTRY, prompt_tokens=10, completion_cap=4)
    assert second.reserved_nano == 10 * 1000 + 4 * 2000
    assert second.completion_cap is None  # the client's own cap fits


async def test_a_key_without_limits_never_touches_a_limiter(limiters: list[RedisLimiter]) -> None:
    """No limits, no budget: admitted without a limiter, charged all the same."""
    gate = Gate(state=lambda: STATE, clock=Clock(), shared=limiters[0])
    admission = await gate.admit(key(KeyPolicy()), "r", ENTRY, prompt_tokens=3,
                                 completion_cap=None)
    assert not admission.leased
    assert not admission.limited
    assert admission.charge("gone", 3, 0).node_owner_id == ""
