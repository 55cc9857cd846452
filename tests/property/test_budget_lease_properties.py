"""Budget slices across hubs, for any sequence of requests, settlements, time and failures.

Three :class:`~porten.services.admission.Gate` objects (three hubs) lease
slices of one key's budget from one shared limiter: the in-process
:class:`~porten.services.ratelimit.LocalLimiter` (which the limiter
contract holds to the Redis script's behaviour) behind a test adapter of
the :class:`~porten.services.ratelimit.Limiter` port that can fail a call
*before* it reaches the limiter or *after* it was applied (a lost answer) —
the two cases a hub cannot tell apart. The promises:

* what requests are charged never exceeds the budget, whatever fails — but
  for what they cost beyond their reservation (a prompt longer than its
  estimate: the machine meters up to 40 tokens more than the 10 the gate assumed);
* the limiter never holds and counts more than that;
* each hub's lease accounts exactly for what the limiter holds for it;
* once everything is settled, given back and abandoned holds have expired,
  the pool holds nothing, and what it counts as spent is what was charged
  (less what failed calls lost — the log has that, and it is never more).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from msgspec.structs import replace

from porten.domain.quota import request_cost_nano
from porten.domain.state import EMPTY, KeyState
from porten.domain.values import CatalogEntry, KeyPolicy
from porten.services.admission import Admission, Gate, LimitsUnavailable, Refused
from porten.services.ratelimit import Ask, LocalLimiter, Settlement, Verdict

T0 = 1_800_000_000.0
HOLD_S = 1e6  # longer than the machine runs: a hold only expires when the test says so
ENTRY = CatalogEntry(id="m", vram_mb=1, disk_mb=1, ctx=200, price_in_per_m=1.0,
                     price_out_per_m=2.0)
Failure = Literal["", "before", "after"]


@attrs.define
class Clock:
    """A clock the machine moves."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Flaky:
    """A Limiter whose next call fails before reaching ``inner`` or after ``inner`` applied it."""

    inner: LocalLimiter = attrs.field(factory=LocalLimiter)
    fail: Failure = ""
    failed: int = 0

    def _failure(self) -> Failure:
        mode, self.fail = self.fail, ""
        self.failed += mode != ""
        return mode

    async def admit(self, ask: Ask) -> Verdict:
        """Admit in ``inner``, or fail."""
        mode = self._failure()
        if mode == "before":
            raise ConnectionError("the connection dropped before the call")
        verdict = self.inner.admit_now(ask)
        if mode == "after":
            raise TimeoutError("the answer was lost")
        return verdict

    async def settle(self, settlement: Settlement) -> None:
        """Settle in ``inner``, or fail."""
        mode = self._failure()
        if mode == "before":
            raise ConnectionError("the connection dropped before the call")
        self.inner.settle_now(settlement)
        if mode == "after":
            raise TimeoutError("the answer was lost")


class BudgetLeaseMachine(RuleBasedStateMachine):
    """Three hubs, one budgeted key, one shared limiter that fails when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.limiter = Flaky()
        self.gates = [Gate(state=lambda: EMPTY, clock=self.clock, shared=self.limiter,
                           hold_s=HOLD_S) for _ in range(3)]
        #: Admissions not yet settled, with the completion cap their client sent.
        self.open: list[tuple[Admission, int]] = []
        self.charged = 0
        #: What requests cost beyond what they reserved.
        self.overdrawn = 0
        self.budget = 0
        self.key = KeyState(key_id="k", owner_id="u", secret_hash="h", created_at=0.0)
        self.serial = 0

    def run(self, coro: Coroutine[Any, Any, None] | None = None) -> None:
        """Run ``coro``, then let background settlements finish."""
        async def step() -> None:
            if coro is not None:
                await coro
            for gate in self.gates:
                await gate.flush()
        self.loop.run_until_complete(step())

    @initialize(budget=st.integers(20_000, 3_000_000))
    def budget_of(self, budget: int) -> None:
        """A budget of a fraction of a request to a hundred requests' worst case."""
        self.budget = budget
        self.key = replace(self.key, policy=KeyPolicy(budget_usd=budget / 1e9))

    @rule(hubs=st.lists(st.integers(0, 2), min_size=1, max_size=8),
          cap=st.integers(1, 150))
    def requests(self, hubs: list[int], cap: int) -> None:
        """Requests arrive at once on the given hubs (10 prompt tokens, ``cap`` output tokens)."""
        async def one(hub: int) -> None:
            self.serial += 1
            try:
                admission = await self.gates[hub].admit(
                    self.key, f"r{self.serial}", ENTRY, prompt_tokens=10, completion_cap=cap)
            except (Refused, LimitsUnavailable):
                return
            admission_cap = admission.completion_cap
            assert admission.reserved_nano >= request_cost_nano(
                10, cap if admission_cap is None else admission_cap, 1.0, 2.0)
            self.open.append((admission, cap))

        async def together() -> None:
            await asyncio.gather(*(one(h) for h in hubs))
        self.run(together())

    @precondition(lambda self: bool(self.open))
    @rule(which=st.integers(0, 1000), used=st.floats(0.0, 1.0), charged=st.booleans(),
          longer_prompt=st.integers(0, 40))
    def settle(self, which: int, used: float, charged: bool, longer_prompt: int) -> None:
        """A request ends: metered with part of what it may generate, or never served."""
        admission, cap = self.open.pop(which % len(self.open))
        if admission.completion_cap is not None:
            cap = min(cap, admission.completion_cap)
        completion, prompt = int(used * cap), 10 + longer_prompt
        cost = request_cost_nano(prompt, completion, 1.0, 2.0) if charged else 0

        async def end() -> None:
            if charged:
                admission.charge("n", prompt, completion)
            else:
                admission.release()
        self.run(end())
        self.charged += cost
        self.overdrawn += max(0, cost - admission.reserved_nano)

    @rule(seconds=st.floats(0.0, 3.0))
    def time_passes(self, seconds: float) -> None:
        """Time passes; leases may end."""
        self.clock.now += seconds

    @rule(hub=st.integers(0, 2))
    def sweep(self, hub: int) -> None:
        """A hub gives back what its ended leases no longer use."""
        limits = self.gates[hub].shared_limits
        assert limits is not None

        async def give_back() -> None:
            limits.return_leases()
        self.run(give_back())

    @rule(mode=st.sampled_from(["before", "after"]))
    def next_call_fails(self, mode: Failure) -> None:
        """The next call to the shared limiter fails (and the hubs treat it as down for 1 s)."""
        self.limiter.fail = mode

    @invariant()
    def never_charged_beyond_the_budget(self) -> None:
        """What requests were charged stays within the budget (and what they overdrew)."""
        assert self.charged <= self.budget + self.overdrawn

    @invariant()
    def the_limiter_never_holds_more_than_the_budget(self) -> None:
        """Spent plus every hold (slices and reservations) stays within the budget."""
        budget = self.limiter.inner._budgets.get("k")
        if budget is not None:
            assert budget.spent + budget.held <= self.budget + self.overdrawn

    @invariant()
    def each_lease_accounts_for_its_hold(self) -> None:
        """A hub's free + reserved + unreported spent is exactly what the limiter holds for it."""
        budget = self.limiter.inner._budgets.get("k")
        for gate in self.gates:
            assert gate.shared_limits is not None
            lease = gate.shared_limits.leases._leases.get("k")
            if lease is None or budget is None:
                continue
            assert lease.reserved >= 0
            held = budget.holds.get(lease.hold_id, (0, 0.0))[0]
            assert held == lease.free + lease.reserved + lease.spent

    def teardown(self) -> None:
        """Settle everything, give every lease back, expire abandoned holds: the pool is whole."""
        try:
            self.limiter.fail = ""
            self.clock.now += 5.0  # past any outage

            async def close() -> None:
                for admission, _ in self.open:
                    admission.release()
                for gate in self.gates:
                    await gate.aclose()
            self.run(close())
            self.clock.now += 2 * HOLD_S
            probe = self.limiter.inner.admit_now(Ask(
                key_id="k", request_id="probe", now=self.clock.now, budget_nano=self.budget,
                want_nano=0))
            assert self.limiter.inner._budgets["k"].held == 0
            assert probe.spent_nano <= self.charged
            if self.limiter.failed == 0:
                assert probe.spent_nano == self.charged
        finally:
            self.loop.close()


BudgetLeaseMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                deadline=None)
TestBudgetLeaseMachine = BudgetLeaseMachine.TestCase
