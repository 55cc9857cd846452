"""Whether a request may run now, what it holds of its key's budget, and what it is charged.

Every /v1 request passes the :class:`Gate` after authentication and before
routing. A key with no rate limit and no budget costs nothing here: no
limiter is asked. Otherwise the request is checked against requests/min,
tokens/min (the prompt's estimate now, the rest when metered) and the
budget (reserving the request's worst-case cost, or what is left, capping
its completion to what that buys):

* without Redis, in this process's :class:`~porten.services.ratelimit.LocalLimiter`,
  one call per request;
* with Redis, from this hub's *lease* on the key (:mod:`porten.services.leases`):
  a second's worth of its rates and a slice of its budget, taken in one
  atomic Lua call and drawn on in memory — one Redis call per lease, not
  per request (:mod:`porten.services.shared_limits`).

The :class:`Admission` it returns is settled exactly once: when the relay
meters the request (:meth:`Admission.charge`, which also prices it for the
``request_served`` event) or, if it never got that far, when the handler
ends (:meth:`Admission.release`).

**When Redis is down** (``PORTEN_REDIS_URL`` set but unreachable, or too
slow: each call gives up after 250 ms) the hub decides per key:

* rate limits fall back to this process's in-memory limiter — still
  enforced, but per hub process (N hubs admit up to N times the limit) until
  Redis answers again. Availability wins: a rate limit protects capacity,
  and a brief over-admission is recoverable;
* a key **with a budget fails closed**: 503 ``budget_unavailable`` with
  ``Retry-After``. Money spent cannot be taken back, and budgets held in
  one process cannot stop another from spending the same dollars.

It asks Redis again after a second, one request at a time (see
:mod:`porten.services.shared_limits`), and logs one warning when Redis goes
away and one line when it is back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import msgspec

from porten.domain.quota import (
    affordable_tokens,
    nano_usd,
    request_cost_nano,
    token_cost_nano,
    usd,
)
from porten.domain.state import FleetState, KeyState
from porten.domain.values import CatalogEntry
from porten.services.ratelimit import Ask, Limit, Limiter, LocalLimiter, Settlement
from porten.services.shared_limits import Decision, LimitsUnavailable, SharedLimits

__all__ = ["Admission", "Charge", "Gate", "LimitsUnavailable", "Refused"]


class Refused(Exception):
    """A limit refused the request; ``retry_after_s`` says when it would not."""

    def __init__(self, limit: Limit, retry_after_s: float, message: str) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(message)


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    """What a metered request costs and whom it concerns (for the ``request_served`` event)."""

    cost_usd: float = 0.0
    account_id: str = ""
    node_owner_id: str = ""


@attrs.define(eq=False)
class Admission:
    """One admitted request: what it holds, and its settlement (exactly once)."""

    gate: Gate
    key: KeyState
    request_id: str
    price_in_per_m: float
    price_out_per_m: float
    #: Tokens charged against tokens/min at admission.
    tokens_charged: int = 0
    reserved_nano: int = 0
    #: The completion limit to forward when the budget binds (None: as the client asked).
    completion_cap: int | None = None
    #: Admitted under this hub's lease on the key (see :mod:`porten.services.leases`).
    leased: bool = False
    #: Admitted by the in-memory limiter (settles there).
    limited: bool = False
    #: The budget hold its money is reserved under (its own, or its hub's lease's).
    hold_id: str = ""
    settled: bool = False

    def charge(self, node_id: str, prompt_tokens: int, completion_tokens: int) -> Charge:
        """Price what the request used, settle its reservation, and say whom it concerns."""
        cost = request_cost_nano(prompt_tokens, completion_tokens, self.price_in_per_m,
                                 self.price_out_per_m)
        self._settle(prompt_tokens + completion_tokens, cost)
        node = self.gate.state().nodes.get(node_id)
        return Charge(cost_usd=usd(cost), account_id=self.key.owner_id,
                      node_owner_id=node.owner_id if node is not None else "")

    def release(self) -> None:
        """Settle a request that was never metered (no node took it): it cost nothing."""
        self._settle(0, 0)

    def _settle(self, tokens_used: int, cost_nano: int) -> None:
        if self.settled:
            return
        self.settled = True
        policy, delta = self.key.policy, tokens_used - self.tokens_charged
        if self.leased and self.gate.shared_limits is not None:
            self.gate.shared_limits.settle(
                self.key.key_id, self.hold_id, reserved=self.reserved_nano, cost=cost_nano,
                tokens_per_min=policy.tokens_per_min, tokens_delta=delta)
        elif self.limited:
            self.gate.local.settle_now(Settlement(
                key_id=self.key.key_id, request_id=self.hold_id, now=self.gate.clock(),
                tokens_per_min=policy.tokens_per_min, tokens_delta=delta, cost_nano=cost_nano,
                budgeted=policy.budget_usd is not None))


@attrs.define(eq=False)
class Gate:
    """Admits requests against their key's limits, in Redis if there is one, else in memory."""

    state: Callable[[], FleetState]
    clock: Callable[[], float]
    local: LocalLimiter = attrs.field(factory=LocalLimiter)
    shared: Limiter | None = None
    #: How long a reservation may stay unsettled (longer than any request may take).
    hold_s: float = 900.0
    #: Leases on ``shared`` (None without it).
    shared_limits: SharedLimits | None = attrs.field(init=False)
    _holds: itertools.count[int] = attrs.field(factory=itertools.count)

    def __attrs_post_init__(self) -> None:
        self.shared_limits = (SharedLimits(self.shared, self.clock)
                              if self.shared is not None else None)

    async def admit(
        self, key: KeyState, request_id: str, entry: CatalogEntry, *, prompt_tokens: int,
        completion_cap: int | None, completion: bool = True,
    ) -> Admission:
        """Admit the request or raise :class:`Refused` / :class:`LimitsUnavailable`.

        ``completion_cap`` is the client's completion limit (None: up to the
        context); ``completion`` is False for requests that generate no tokens
        (embeddings).
        """
        policy = key.policy
        admission = Admission(gate=self, key=key, request_id=request_id,
                              price_in_per_m=entry.price_in_per_m,
                              price_out_per_m=entry.price_out_per_m)
        if policy.requests_per_min is None and policy.tokens_per_min is None and (
            policy.budget_usd is None
        ):
            return admission
        ask = self._ask(key, entry, prompt_tokens=prompt_tokens,
                        completion_cap=completion_cap, completion=completion)
        decision = None
        if self.shared_limits is not None:
            decision = await self.shared_limits.admit(ask)
            admission.leased = decision is not None
        if decision is None:
            verdict = self.local.admit_now(ask)
            decision = Decision(verdict, verdict.reserved_nano, ask.request_id)
            admission.limited = True
        verdict = decision.verdict
        if not verdict.allowed:
            raise Refused(verdict.limit, verdict.retry_after_s,
                          _refusal(key, verdict.limit, verdict.spent_nano))
        admission.hold_id, admission.reserved_nano = decision.hold_id, decision.reserved
        if policy.tokens_per_min is not None:  # GCRA charges at most a minute's allowance
            admission.tokens_charged = min(ask.tokens, policy.tokens_per_min)
        if policy.budget_usd is not None and completion and decision.reserved < ask.want_nano:
            prompt_nano = token_cost_nano(prompt_tokens, entry.price_in_per_m)
            admission.completion_cap = affordable_tokens(decision.reserved - prompt_nano,
                                                         entry.price_out_per_m)
        return admission

    def _ask(self, key: KeyState, entry: CatalogEntry, *, prompt_tokens: int,
             completion_cap: int | None, completion: bool) -> Ask:
        policy = key.policy
        budget = nano_usd(policy.budget_usd) if policy.budget_usd is not None else None
        want = least = 0
        if budget is not None:
            worst = 0
            if completion:
                worst = completion_cap if completion_cap is not None else max(
                    entry.ctx - prompt_tokens, 1)
            want = request_cost_nano(prompt_tokens, worst, entry.price_in_per_m,
                                     entry.price_out_per_m)
            least = request_cost_nano(prompt_tokens, 1 if completion else 0,
                                      entry.price_in_per_m, entry.price_out_per_m)
        # The hold is named here, never after the client's X-Request-Id: two requests
        # sending the same one must not share a reservation.
        return Ask(
            key_id=key.key_id, request_id=f"hold:{next(self._holds)}", now=self.clock(),
            requests_per_min=policy.requests_per_min, tokens_per_min=policy.tokens_per_min,
            tokens=prompt_tokens, budget_nano=budget, spent_nano=nano_usd(key.spent_usd),
            want_nano=want, least_nano=least, hold_s=self.hold_s,
        )

    async def flush(self) -> None:
        """Wait for settlements on their way to the shared limiter."""
        if self.shared_limits is not None:
            await self.shared_limits.flush()

    async def aclose(self) -> None:
        """Give back this hub's leases and wait for settlements on their way."""
        if self.shared_limits is not None:
            await self.shared_limits.aclose()


def _refusal(key: KeyState, limit: Limit, spent_nano: int) -> str:
    policy = key.policy
    if limit == "requests":
        return (f"Rate limit exceeded: this API key allows {policy.requests_per_min} requests "
                "per minute. Retry after the Retry-After delay.")
    if limit == "tokens":
        return (f"Rate limit exceeded: this API key allows {policy.tokens_per_min} tokens per "
                "minute. Retry after the Retry-After delay.")
    budget = policy.budget_usd or 0.0
    return (f"This API key's spending budget (${budget:g}) is used up or fully reserved by "
            f"requests in flight (${usd(spent_nano):.6f} spent). Retry after the Retry-After "
            "delay, or ask an operator to raise the budget.")
