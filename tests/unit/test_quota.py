"""GCRA and budget arithmetic (porten.domain.quota): the promises limits are built on."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from porten.domain.quota import (
    SLICE_SHARE,
    affordable_tokens,
    budget_reserve,
    budget_slice,
    gcra,
    gcra_adjust,
    request_cost_nano,
    token_cost_nano,
)

T0 = 1_800_000_000.0


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 120),
    gaps=st.lists(st.floats(0.0, 30.0, allow_nan=False), min_size=1, max_size=300),
)
def test_gcra_never_admits_more_than_a_burst_plus_the_rate(limit: int, gaps: list[float]) -> None:
    """In any interval of W seconds at most limit + W * limit / 60 requests get through."""
    tat, now, admitted = 0.0, T0, []
    for gap in gaps:
        now += gap
        ok, tat, _ = gcra(tat, now, 1, limit)
        if ok:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            assert j - i + 1 <= limit + window * limit / 60.0 + 1e-6


@given(limit=st.integers(1, 1000), cost=st.integers(1, 5000))
def test_a_refusal_says_how_long_to_wait_and_then_it_passes(limit: int, cost: int) -> None:
    """Retry-After is exact: retrying after it is admitted, a hair before it is not."""
    ok, tat, _ = gcra(0.0, T0, limit, limit)  # spend the whole minute
    assert ok
    ok, same, wait = gcra(tat, T0, cost, limit)
    assert not ok
    assert same == tat
    assert gcra(tat, T0 + wait + 1e-6, cost, limit)[0]
    if wait > 0.01:
        assert not gcra(tat, T0 + wait - 0.01, cost, limit)[0]


def test_adjust_charges_debt_and_refunds_never_before_now() -> None:
    """A positive delta pushes the TAT later; a refund never moves it before now."""
    assert gcra_adjust(T0 + 10, T0, 30, 60) == T0 + 40
    assert gcra_adjust(T0 + 10, T0, -30, 60) == T0
    assert gcra_adjust(0.0, T0, 6, 60) == T0 + 6


def test_token_costs_round_up_to_the_nano_dollar() -> None:
    """$0.03 per million is 30 nano-dollars a token; fractions round up; free is free."""
    assert token_cost_nano(1, 0.03) == 30
    assert token_cost_nano(1_000_000, 0.03) == 30_000_000
    assert token_cost_nano(3, 0.0001) == 1
    assert token_cost_nano(5, 0.0) == 0
    assert request_cost_nano(10, 20, 0.08, 0.16) == 10 * 80 + 20 * 160


@given(
    budget=st.integers(0, 10**12), spent=st.integers(0, 10**12), held=st.integers(0, 10**12),
    want=st.integers(0, 10**10), least=st.integers(0, 10**10),
)
def test_a_reservation_never_exceeds_what_is_left(
    budget: int, spent: int, held: int, want: int, least: int
) -> None:
    """Reserved is at most want and at most budget - spent - held; refused retries later."""
    reserved, wait = budget_reserve(budget, spent, held, min(want, least) or want, least)
    assert reserved >= 0
    assert spent + held + reserved <= max(budget, spent + held)
    if reserved == 0 and want:
        assert wait in {1.0, 3600.0}


def test_affordable_tokens() -> None:
    """What is left buys whole tokens; free output is unlimited."""
    assert affordable_tokens(1600, 0.16) == 10
    assert affordable_tokens(1599, 0.16) == 9
    assert affordable_tokens(0, 0.16) == 0
    assert affordable_tokens(1, 0.0) is None


@given(
    budget=st.integers(0, 10**12), spent=st.integers(0, 10**12), held=st.integers(0, 10**12),
    want=st.integers(0, 10**9), least=st.integers(0, 10**9), size=st.integers(0, 10**11),
)
def test_a_slice_fits_the_budget_covers_its_request_and_leaves_most_to_others(
    budget: int, spent: int, held: int, want: int, least: int, size: int
) -> None:
    """Never more than is left; at least the want when it fits; a bigger slice takes <= 1/8."""
    least = min(least, want)
    available = budget - spent - held
    reserved, wait = budget_slice(budget, spent, held, want, least, size=size)
    assert reserved <= max(available, 0)
    if available >= want:
        assert want <= reserved <= max(want, min(size, available // SLICE_SHARE))
        assert wait == 0.0
    else:
        assert (reserved, wait) == budget_reserve(budget, spent, held, want, least)
