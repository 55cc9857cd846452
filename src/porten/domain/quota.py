"""Rate limits and budgets as arithmetic: GCRA for rates, reserve-then-settle for money.

**GCRA** (the generic cell rate algorithm, as in ATM networks and
``redis-cell``) keeps one number per key and limit: the *theoretical arrival
time* (TAT) — when the key's allowance would be back to full. A request of
``cost`` units moves it ``cost * 60 / limit`` seconds later; the request is
admitted if the TAT then lies at most one period (60 s) ahead of now. A
fresh key may therefore spend a whole minute's allowance at once (the
burst), then one unit per ``60 / limit`` seconds; over any period it never
gets more than ``limit`` plus what drained meanwhile. A request costing more
than a whole period's allowance is charged the allowance (it is admitted
when the bucket is full, rather than never).

**Money** is integer nano-dollars (1e-9 USD), so sums are exact in Python,
in Redis and in a Lua script's doubles alike (exact up to 2^53 nano ≈ $9M
per key). A request *reserves* its worst-case cost before it is routed and
*settles* its actual cost when metered; the budget admits it only if
``spent + held + reservation <= budget``, so concurrent requests cannot
together overspend. A hub may hold a *slice* of the budget and reserve
from it locally (:func:`budget_slice`); the slice is held like a
reservation, so the same inequality bounds every hub together. Where the
worst case does not fit, the reservation is whatever is left (at least the
prompt and one token) and the request's completion is capped to what that
buys.

Pure: the clock is an argument. The in-process limiter uses these functions
directly; the Redis limiter's Lua script is their transcription, and one
contract test runs the same scenarios against both.
"""

from __future__ import annotations

import math
from typing import Final

#: Every limit is per minute.
PERIOD_S: Final = 60.0
#: Rounding allowance: times are ~1.8e9 s, where a double resolves ~0.2 µs, so a minute's
#: allowance summed request by request may land a hair past the period.
SLACK_S: Final = 1e-3
#: Nano-dollars per dollar.
NANO: Final = 1_000_000_000
#: A budget slice (one hub's lease of a key's money) is at most this fraction of what the key
#: has available, so hubs leave each other most of it. A power of two: the division is exact
#: in a Lua double too.
SLICE_SHARE: Final = 8


def gcra(tat: float, now: float, cost: float, limit: int) -> tuple[bool, float, float]:
    """``(admitted, new_tat, retry_after_s)`` for ``cost`` units against ``limit`` per minute.

    ``tat`` is the stored theoretical arrival time (0 for a fresh key). When
    not admitted, ``new_tat`` is ``tat`` unchanged and ``retry_after_s`` is
    how long until the same request would be.
    """
    interval = PERIOD_S / limit
    charged = min(cost, float(limit)) * interval
    new_tat = max(tat, now) + charged
    ahead = new_tat - now
    if ahead <= PERIOD_S + SLACK_S:
        return True, new_tat, 0.0
    return False, tat, ahead - PERIOD_S


def gcra_adjust(tat: float, now: float, delta: float, limit: int) -> float:
    """``tat`` after charging ``delta`` more units (negative: a refund), never before ``now``."""
    return max(now, max(tat, now) + delta * PERIOD_S / limit)


def nano_usd(usd: float) -> int:
    """Dollars as integer nano-dollars (rounded to the nearest)."""
    return round(usd * NANO)


def usd(nano: int) -> float:
    """Nano-dollars as dollars."""
    return nano / NANO


def token_cost_nano(tokens: int, price_per_m: float) -> int:
    """What ``tokens`` cost at ``price_per_m`` USD per million, in nano-dollars (rounded up)."""
    if tokens <= 0 or price_per_m <= 0:
        return 0
    return math.ceil(tokens * price_per_m * 1000 - 1e-6)


def request_cost_nano(
    prompt_tokens: int, completion_tokens: int, price_in_per_m: float, price_out_per_m: float
) -> int:
    """A request's cost in nano-dollars: input and output tokens at their prices."""
    return token_cost_nano(prompt_tokens, price_in_per_m) + token_cost_nano(
        completion_tokens, price_out_per_m
    )


def budget_reserve(
    budget: int, spent: int, held: int, want: int, least: int
) -> tuple[int, float]:
    """``(reserved, retry_after_s)``: how much of ``want`` the budget can hold for a request.

    ``reserved`` is ``want`` if it fits, else everything left if that is at
    least ``least``, else 0 (refused). A refusal retries in 1 s if money is
    only held by requests in flight, else in an hour (the budget is spent).
    """
    available = budget - spent - held
    if available >= want:
        return want, 0.0
    if available >= least and available > 0:
        return available, 0.0
    return 0, (1.0 if held > 0 else 3600.0)


def budget_slice(
    budget: int, spent: int, held: int, want: int, least: int, *, size: int
) -> tuple[int, float]:
    """``(reserved, retry_after_s)`` for a slice of up to ``size`` that covers a request's ``want``.

    Where the budget has room for ``want``, the slice is ``size`` but at most
    1/:data:`SLICE_SHARE` of what is available, and never less than ``want``.
    Otherwise — and for a ``size`` no bigger than ``want`` — it is
    :func:`budget_reserve`, for the request alone: so a key's last cents go
    request by request, however many hubs ask.
    """
    available = budget - spent - held
    if size > want and available >= want:
        return max(want, min(size, available // SLICE_SHARE)), 0.0
    return budget_reserve(budget, spent, held, want, least)


def affordable_tokens(nano: int, price_out_per_m: float) -> int | None:
    """Completion tokens ``nano`` buys at ``price_out_per_m`` (None: unlimited, they are free)."""
    if price_out_per_m <= 0:
        return None
    return max(0, math.floor(nano / (price_out_per_m * 1000) + 1e-9))
