"""The limiter port and its in-process implementation: per-key rates and budget reservations.

A :class:`Limiter` answers one atomic question per request — may this key
send one more request, of about this many tokens, reserving this much of
its budget? — and later settles what the request really used. Two
implementations: :class:`LocalLimiter` here (one hub process, no Redis) and
:class:`porten.adapters.redis.limiter.RedisLimiter` (every hub process
sharing one Redis, via one Lua script). Both apply the arithmetic of
:mod:`porten.domain.quota`; ``tests/contract/test_limiter_contract.py``
runs the same scenarios against each.

Budget reservations are *holds*, named by the ask's ``request_id``: a
request's own (reserved, then released whole when it settles), or a hub's
lease of a slice of the budget (:mod:`porten.services.leases`), which
grows with each slice granted and shrinks as the hub reports what it spent
and what it no longer needs. Holds add up, and ``spent + every hold <=
budget`` is the one inequality every admission keeps.

Spent money is ``max(what the limiter counted, what the log says)``: the
limiter sees settlements at once (the log only after they are folded), the
log sees every settlement (also ones a lost Redis never got), so the larger
is the best lower bound on what the key has really spent.
"""

from __future__ import annotations

from typing import Literal, Protocol

import attrs
import msgspec

from porten.domain.quota import budget_slice, gcra, gcra_adjust

Limit = Literal["", "requests", "tokens", "budget"]


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    """One request asking to be admitted."""

    key_id: str
    request_id: str
    now: float
    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    #: Requests charged against ``requests_per_min`` (more than one: a lease of several).
    request_cost: int = 1
    #: Unused units of an earlier lease, given back first (whatever the verdict).
    refund_requests: int = 0
    refund_tokens: int = 0
    #: Tokens charged against ``tokens_per_min`` now (the prompt's estimate; at most a
    #: minute's allowance is charged at admission, the rest at settlement).
    tokens: int = 0
    #: The key's budget in nano-dollars (None: no budget, nothing reserved).
    budget_nano: int | None = None
    #: What the log says the key has spent, in nano-dollars.
    spent_nano: int = 0
    #: The reservation wanted (the worst case) and the least that lets the request run.
    want_nano: int = 0
    least_nano: int = 0
    #: A budget slice: reserve up to this much (see :func:`~porten.domain.quota.budget_slice`;
    #: 0: ``want_nano`` alone). What is reserved is added to the hold ``request_id``.
    slice_nano: int = 0
    #: A report on the hold ``request_id``, applied first (whatever the verdict): release
    #: this much of it, and count this much as spent (what it paid for; the holder may have
    #: paid more than it held — a prompt longer than its estimate).
    hold_release_nano: int = 0
    hold_spent_nano: int = 0
    #: How long a hold may go unrenewed before it is dropped (a hub that died).
    hold_s: float = 900.0


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The answer: admitted (with what was reserved), or which limit refused and for how long."""

    allowed: bool
    limit: Limit = ""
    retry_after_s: float = 0.0
    reserved_nano: int = 0
    #: What the key had spent (nano-dollars) when it was asked, for the error message.
    spent_nano: int = 0


class Settlement(msgspec.Struct, frozen=True, kw_only=True):
    """What an admitted request really used."""

    key_id: str
    request_id: str
    now: float
    tokens_per_min: int | None = None
    #: Tokens used minus tokens charged at admission (negative: a refund).
    tokens_delta: int = 0
    #: What the request cost (nano-dollars); only counted for budgeted keys.
    cost_nano: int = 0
    budgeted: bool = False
    #: How much of the hold ``request_id`` to release (None: all of it).
    release_nano: int | None = None


class Limiter(Protocol):
    """Admits requests against per-key rates and budgets, atomically."""

    async def admit(self, ask: Ask) -> Verdict:
        """Admit (and charge) or refuse ``ask``; nothing is charged on a refusal."""
        ...

    async def settle(self, settlement: Settlement) -> None:
        """Release the request's reservation (or part of a hold) and charge what it used."""
        ...


@attrs.define
class _Budget:
    spent: int = 0
    held: int = 0
    #: hold id → (held nano-dollars, expires at)
    holds: dict[str, tuple[int, float]] = attrs.field(factory=dict)

    def expire(self, now: float) -> None:
        for rid in [rid for rid, (_, until) in self.holds.items() if until <= now]:
            self.held -= self.holds.pop(rid)[0]

    def release(self, rid: str, amount: int | None) -> None:
        """Release ``amount`` of hold ``rid`` (None: all of it; never more than it holds)."""
        hold, until = self.holds.get(rid, (0, 0.0))
        freed = hold if amount is None else min(hold, amount)
        self.held -= freed
        if hold - freed > 0:
            self.holds[rid] = (hold - freed, until)
        else:
            self.holds.pop(rid, None)

    def hold(self, rid: str, amount: int, until: float) -> None:
        """Add ``amount`` to hold ``rid`` (if it holds anything, it now lasts until ``until``)."""
        held = self.holds.get(rid, (0, 0.0))[0] + amount
        self.held += amount
        if held > 0:
            self.holds[rid] = (held, until)


@attrs.define
class LocalLimiter:
    """:class:`Limiter` in this process's memory (with no Redis, limits are per hub process)."""

    _requests: dict[str, float] = attrs.field(factory=dict)
    _tokens: dict[str, float] = attrs.field(factory=dict)
    _budgets: dict[str, _Budget] = attrs.field(factory=dict)

    async def admit(self, ask: Ask) -> Verdict:
        """See :meth:`Limiter.admit`."""
        return self.admit_now(ask)

    def admit_now(self, ask: Ask) -> Verdict:
        """:meth:`admit` without the coroutine (it never waits)."""
        req_tat = tok_tat = 0.0
        self._refund(ask)
        budget = None
        if ask.budget_nano is not None:
            budget = self._budgets.setdefault(ask.key_id, _Budget())
            budget.expire(ask.now)
            if ask.hold_release_nano > 0 or ask.hold_spent_nano > 0:
                budget.release(ask.request_id, max(ask.hold_release_nano, 0))
                budget.spent += ask.hold_spent_nano
        if ask.requests_per_min is not None:
            ok, req_tat, wait = gcra(self._requests.get(ask.key_id, 0.0), ask.now,
                                     ask.request_cost, ask.requests_per_min)
            if not ok:
                return Verdict(allowed=False, limit="requests", retry_after_s=wait)
        if ask.tokens_per_min is not None:
            ok, tok_tat, wait = gcra(self._tokens.get(ask.key_id, 0.0), ask.now, ask.tokens,
                                     ask.tokens_per_min)
            if not ok:
                return Verdict(allowed=False, limit="tokens", retry_after_s=wait)
        reserved = spent = 0
        if budget is not None and ask.budget_nano is not None:
            spent = budget.spent = max(budget.spent, ask.spent_nano)
            reserved, wait = budget_slice(ask.budget_nano, spent, budget.held, ask.want_nano,
                                          ask.least_nano, size=ask.slice_nano)
            if reserved == 0 and ask.want_nano > 0:
                return Verdict(allowed=False, limit="budget", retry_after_s=wait,
                               spent_nano=spent)
        if ask.requests_per_min is not None:
            self._requests[ask.key_id] = req_tat
        if ask.tokens_per_min is not None:
            self._tokens[ask.key_id] = tok_tat
        if budget is not None:
            budget.hold(ask.request_id, reserved, ask.now + ask.hold_s)
        return Verdict(allowed=True, reserved_nano=reserved, spent_nano=spent)

    def _refund(self, ask: Ask) -> None:
        for units, limit, tats in ((ask.refund_requests, ask.requests_per_min, self._requests),
                                   (ask.refund_tokens, ask.tokens_per_min, self._tokens)):
            if units > 0 and limit is not None and ask.key_id in tats:
                tats[ask.key_id] = gcra_adjust(tats[ask.key_id], ask.now, -units, limit)

    async def settle(self, settlement: Settlement) -> None:
        """See :meth:`Limiter.settle`."""
        self.settle_now(settlement)

    def settle_now(self, s: Settlement) -> None:
        """:meth:`settle` without the coroutine."""
        if s.tokens_per_min is not None and s.tokens_delta:
            tat = self._tokens.get(s.key_id, 0.0)
            self._tokens[s.key_id] = gcra_adjust(tat, s.now, s.tokens_delta, s.tokens_per_min)
        if not s.budgeted:
            return
        budget = self._budgets.setdefault(s.key_id, _Budget())
        budget.release(s.request_id, s.release_nano)
        budget.spent += s.cost_nano
