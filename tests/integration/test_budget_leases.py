"""Budget slices over a real Redis: hubs never overspend together, and unused money comes back.

Several :class:`~porten.services.admission.Gate` objects on one real
``redis-server`` stand for several hub processes; the clock is the test's.
Prices are $1 and $2 per million tokens in and out: 1,000 and 2,000
nano-dollars a token, so a request of 10 prompt tokens capped at 10 output
tokens reserves 30,000 nano-dollars.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import attrs
import pytest
import redis.asyncio

from porten.adapters.redis.limiter import RedisLimiter
from porten.domain.quota import request_cost_nano
from porten.domain.state import EMPTY, KeyState
from porten.domain.values import CatalogEntry, KeyPolicy
from porten.services.admission import Admission, Gate, LimitsUnavailable, Refused
from porten.services.leases import LEASE_S
from porten.services.ratelimit import Ask

T0 = 1_800_000_000.0
ENTRY = CatalogEntry(id="m", vram_mb=1, disk_mb=1, ctx=1000, price_in_per_m=1.0,
                     price_out_per_m=2.0)
WANT = request_cost_nano(10, 10, 1.0, 2.0)  # 30,000


@attrs.define
class Clock:
    """A clock the test moves."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


def key(budget_usd: float, key_id: str = "k1", **policy: int) -> KeyState:
    """A key of account u1 with a budget."""
    return KeyState(key_id=key_id, owner_id="u1", secret_hash="h", created_at=0.0,
                    policy=KeyPolicy(budget_usd=budget_usd, **policy))


@pytest.fixture
async def hubs(redis_url: str) -> AsyncIterator[tuple[Clock, list[Gate]]]:
    """Four hubs' gates on one real redis-server, sharing the test's clock."""
    clock = Clock()
    limiters = [RedisLimiter.from_url(redis_url, timeout_s=5.0) for _ in range(4)]
    gates = [Gate(state=lambda: EMPTY, clock=clock, shared=lim) for lim in limiters]
    try:
        yield clock, gates
    finally:
        for gate, lim in zip(gates, limiters, strict=True):
            await gate.aclose()
            await lim.aclose()


async def admit(gate: Gate, k: KeyState, rid: str = "r", cap: int = 10) -> Admission | None:
    """The admission of a 10-token prompt capped at ``cap``, or None if refused."""
    try:
        return await gate.admit(k, rid, ENTRY, prompt_tokens=10, completion_cap=cap)
    except Refused:
        return None


async def left_in_the_pool(gate: Gate, k: KeyState) -> tuple[int, int]:
    """(What one request can still reserve, what Redis says was spent), via a fresh hold."""
    assert gate.shared is not None
    budget = round((k.policy.budget_usd or 0) * 1e9)
    verdict = await gate.shared.admit(Ask(
        key_id=k.key_id, request_id="probe", now=T0 + 10_000, budget_nano=budget,
        want_nano=budget, least_nano=1))
    return verdict.reserved_nano, verdict.spent_nano


async def test_hubs_together_never_overspend_a_budget(hubs: tuple[Clock, list[Gate]]) -> None:
    """4 hubs x 3 rounds of 400 concurrent requests: what is charged stays within the budget.

    Each admitted request is charged a random cost within what it reserved,
    concurrently with the others; leases expire and renew between rounds.
    Afterwards every hub gives its slices back, and Redis's pool holds
    exactly the budget less what was charged.
    """
    clock, gates = hubs
    rng = random.Random(7)
    k = key(0.003)  # 3,000,000 nano: 100 worst cases, ~150 average requests
    charged: list[int] = []

    async def one(i: int) -> None:
        gate = gates[i % len(gates)]
        admission = await admit(gate, k, f"r{i}")
        if admission is None:
            return
        await asyncio.sleep(0)  # let the others interleave
        cap = admission.completion_cap if admission.completion_cap is not None else 10
        if rng.random() < 0.1:
            admission.release()
            return
        completion = rng.randint(0, cap)
        admission.charge("n1", 10, completion)
        charged.append(request_cost_nano(10, completion, 1.0, 2.0))

    for round_ in range(3):
        await asyncio.gather(*(one(round_ * 1000 + i) for i in range(400)))
        assert sum(charged) <= 3_000_000
        clock.now += LEASE_S + 0.5
        for gate in gates:
            assert gate.shared_limits is not None
            gate.shared_limits.return_leases()
            await gate.flush()
    assert sum(charged) > 2_500_000  # the budget was used, not just protected
    for gate in gates:
        await gate.aclose()
    left, spent = await left_in_the_pool(gates[0], k)
    assert spent == sum(charged)
    assert left == 3_000_000 - sum(charged)


async def test_most_budgeted_requests_never_ask_redis(
    hubs: tuple[Clock, list[Gate]], redis_url: str
) -> None:
    """A slice covers many requests: 2,000 requests on 4 hubs make far fewer Redis calls."""
    _, gates = hubs
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.config_resetstat()
        k = key(1000.0)
        for i in range(500):
            admissions = [await admit(g, k, f"r{i}") for g in gates]
            for a in admissions:
                assert a is not None
                a.charge("n1", 10, 5)
        calls = (await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    finally:
        await client.aclose()
    assert calls <= 2000 / 16 + 8


async def test_what_a_request_did_not_use_returns_to_the_shared_pool(
    hubs: tuple[Clock, list[Gate]],
) -> None:
    """Hub A reserves a worst case and uses a third; once its lease ends, B can spend the rest."""
    clock, (a, b, *_) = hubs
    k = key(0.001)  # 1,000,000 nano
    first = await admit(a, k)
    assert first is not None
    assert first.reserved_nano == WANT
    first.charge("n1", 10, 0)  # 10,000 of the 30,000 reserved
    clock.now += LEASE_S + 0.1
    assert a.shared_limits is not None
    a.shared_limits.return_leases()
    await a.flush()
    everything = await admit(b, k, cap=(1_000_000 - 10_000 - 10_000) // 2000)
    assert everything is not None
    assert everything.reserved_nano == 1_000_000 - 10_000  # all of it but what A spent
    assert everything.completion_cap is None
    assert await admit(a, k) is None
    assert await admit(b, k) is None


async def test_a_small_budget_goes_request_by_request(hubs: tuple[Clock, list[Gate]]) -> None:
    """Room for three worst cases: three hubs get exactly one each, the fourth is refused.

    Once the first hub's request has settled, its next request reports what
    it spent and freed, and fits again.
    """
    _, gates = hubs
    k = key(0.0001)  # 100,000 nano: 3 x 30,000 and 10,000 left (less than the 12,000 least)
    firsts = [await admit(g, k) for g in gates[:3]]
    assert [a.reserved_nano if a else None for a in firsts] == [WANT] * 3
    with pytest.raises(Refused) as refused:
        await gates[3].admit(k, "r", ENTRY, prompt_tokens=10, completion_cap=10)
    assert (refused.value.limit, refused.value.retry_after_s) == ("budget", 1.0)
    assert firsts[0] is not None
    firsts[0].charge("n1", 10, 0)  # cost 10,000; 20,000 back in hub 0's slice
    again = await admit(gates[0], k)
    assert again is not None
    assert again.reserved_nano == WANT  # 100,000 - 10,000 spent - 60,000 held by the others


async def test_requests_sending_the_same_request_id_hold_separately() -> None:
    """Two requests with one X-Request-Id cannot share (and so double-free) a reservation."""
    gate = Gate(state=lambda: EMPTY, clock=Clock())
    k = key(0.00006)  # 60,000 nano: two worst cases
    one, two = await admit(gate, k, "same"), await admit(gate, k, "same")
    assert one is not None
    assert two is not None
    one.charge("n1", 10, 0)  # 10,000: the second request still holds its 30,000
    third = await admit(gate, k, "same")
    assert third is not None
    assert third.reserved_nano == 20_000
    assert third.completion_cap == 5


async def test_redis_down_costs_one_attempt_per_second() -> None:
    """A Redis that drops every connection: concurrent requests make one attempt, then 1 a second.

    Budgeted keys get LimitsUnavailable (503), rate-limited keys are admitted
    in memory, and none of the requests queued behind a failed call tries again.
    """
    accepted = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = Clock()
    limiter = RedisLimiter.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=5.0)
    gate = Gate(state=lambda: EMPTY, clock=clock, shared=limiter)

    async def burst() -> list[str]:
        async def one(i: int) -> str:
            k = (key(1.0, f"b{i}") if i % 2 else
                 KeyState(key_id=f"r{i}", owner_id="u1", secret_hash="h", created_at=0.0,
                          policy=KeyPolicy(requests_per_min=600)))
            try:
                await admit(gate, k, f"q{i}")
            except LimitsUnavailable:
                return "503"
            return "admitted"
        return await asyncio.gather(*(one(i) for i in range(20)))

    try:
        assert sorted(set(await burst())) == ["503", "admitted"]
        assert accepted == 1
        assert set(await burst()) == {"503", "admitted"}
        assert accepted == 1
        clock.now += 1.0
        await burst()
        assert accepted == 2
    finally:
        await gate.aclose()
        await limiter.aclose()
        server.close()
        await server.wait_closed()
